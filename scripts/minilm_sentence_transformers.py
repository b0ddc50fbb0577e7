#!/usr/bin/env python3
"""Reference embeddings of all-MiniLM-L6-v2 from sentence-transformers itself.

Run once, in a throwaway virtual environment (PyTorch is not a dependency of
the project or of CI):

    python3 -m venv /tmp/st && /tmp/st/bin/pip install sentence-transformers
    /tmp/st/bin/python scripts/minilm_sentence_transformers.py models/all-minilm-l6-v2

It reads the sentences of crates/text/tests/fixtures/minilm_reference.json
(empty text, accents, CJK, emoji, whitespace, code, one far past the
256-token limit), encodes them with SentenceTransformer on the CPU, and
writes crates/text/tests/fixtures/minilm_sentence_transformers.json with the
token ids (padding removed) and the embeddings the library returns (its
Pooling and Normalize modules applied). tests/test_minilm.rs compares
BertEmbedder against it.
"""
import json
import sys
from pathlib import Path

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates" / "text" / "tests" / "fixtures"


def main() -> None:
    model_dir = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "models" / "all-minilm-l6-v2")
    sentences = json.loads((FIXTURES / "minilm_reference.json").read_text())["sentences"]
    torch.set_num_threads(2)
    model = SentenceTransformer(str(model_dir), device="cpu")
    features = model.tokenize(sentences)
    input_ids = [
        [int(t) for t, m in zip(ids, mask) if m]
        for ids, mask in zip(features["input_ids"].tolist(), features["attention_mask"].tolist())
    ]
    embeddings = model.encode(sentences, batch_size=4, convert_to_numpy=True)
    out = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "made_by": (
            f"scripts/minilm_sentence_transformers.py with sentence-transformers "
            f"{sentence_transformers.__version__}, torch {torch.__version__}, float32 CPU"
        ),
        "max_seq_length": model.max_seq_length,
        "sentences": sentences,
        "input_ids": input_ids,
        "embeddings": [[float(x) for x in row] for row in embeddings],
    }
    path = FIXTURES / "minilm_sentence_transformers.json"
    path.write_text(json.dumps(out, ensure_ascii=False) + "\n")
    print(f"wrote {path} ({len(sentences)} sentences)")


if __name__ == "__main__":
    main()
