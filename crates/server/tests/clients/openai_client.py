"""The official `openai` Python package against a running switchyard-server.

Usage: python openai_client.py BASE_URL CHAT_MODEL EMBED_MODEL IMAGE_MODEL

Calls every OpenAI-compatible endpoint the server has through the client
as an application would, checks the answers are well formed (and agree
with each other where they must), then closes a stream early and checks
that its session is gone from /api/inference/sessions within a second.
Exits non-zero on the first failure.
"""

import base64
import math
import sys
import time

import httpx

import openai
from openai import OpenAI


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}")


def main():
    base, chat_model, embed_model, image_model = sys.argv[1:5]
    client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)

    ids = [m.id for m in client.models.list()]
    check(chat_model in ids and embed_model in ids, f"models.list has both models: {ids}")

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    whole = client.chat.completions.create(
        model=chat_model, messages=messages, max_tokens=24, temperature=0
    )
    text = whole.choices[0].message.content
    check(whole.object == "chat.completion" and bool(text), f"chat answer: {text!r}")
    check(whole.choices[0].finish_reason in ("stop", "length"), "chat finish_reason")
    u = whole.usage
    check(
        u.prompt_tokens > 0 and u.total_tokens == u.prompt_tokens + u.completion_tokens,
        f"chat usage {u}",
    )

    pieces, usage, finish = [], None, None
    for chunk in client.chat.completions.create(
        model=chat_model,
        messages=messages,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    check("".join(pieces) == text, "a greedy stream equals the whole answer")
    check(usage is not None and usage.total_tokens == u.total_tokens, f"stream usage {usage}")
    check(finish == whole.choices[0].finish_reason, "stream finish_reason")

    sampled = client.chat.completions.create(
        model=chat_model, messages=messages, max_tokens=12, temperature=0.8, top_p=0.9,
        seed=7, n=2, stop=["\n\n"],
    )
    again = client.chat.completions.create(
        model=chat_model, messages=messages, max_tokens=12, temperature=0.8, top_p=0.9,
        seed=7, n=2, stop=["\n\n"],
    )
    check(len(sampled.choices) == 2, "n=2 gives two choices")
    check(
        [c.message.content for c in sampled.choices] == [c.message.content for c in again.choices],
        "a seeded request repeats",
    )

    done = client.completions.create(
        model=chat_model, prompt=["The capital of France is", "One, two,"], max_tokens=8,
        temperature=0,
    )
    check(
        done.object == "text_completion" and [c.index for c in done.choices] == [0, 1],
        f"completions of two prompts: {[c.text for c in done.choices]}",
    )
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=chat_model, prompt="The capital of France is", max_tokens=8, temperature=0,
            stream=True,
        )
        if c.choices
    )
    check(streamed == done.choices[0].text, "a streamed completion equals the whole one")

    inputs = ["A red train in a switchyard.", "Freight cars in the snow."]
    default = client.embeddings.create(model=embed_model, input=inputs)  # base64 on the wire
    floats = client.embeddings.create(model=embed_model, input=inputs, encoding_format="float")
    check(len(default.data) == 2 and len(default.data[0].embedding) == 384, "embeddings: 2 x 384")
    check(
        default.usage.prompt_tokens > 4 and default.usage.total_tokens == default.usage.prompt_tokens,
        f"embedding usage {default.usage}",
    )
    check(
        all(
            math.isclose(a, b, abs_tol=1e-5)
            for d, f in zip(default.data, floats.data)
            for a, b in zip(d.embedding, f.embedding)
        ),
        "base64 and float embeddings agree",
    )
    norm = math.sqrt(sum(x * x for x in floats.data[0].embedding))
    check(abs(norm - 1.0) < 1e-3, f"MiniLM embeddings are normalised ({norm:.4f})")

    pictures = client.images.generate(
        model=image_model, prompt="a red train in a switchyard", n=2, size="64x64",
        response_format="b64_json", extra_body={"steps": 2, "seed": 3},
    )
    pngs = [base64.b64decode(d.b64_json) for d in pictures.data]
    check(
        len(pngs) == 2 and all(p.startswith(b"\x89PNG") for p in pngs) and pngs[0] != pngs[1],
        "images.generate gives two different PNGs",
    )
    # PNG IHDR: width and height, big-endian, at bytes 16..24.
    check(
        all(int.from_bytes(p[16:20], "big") == 64 == int.from_bytes(p[20:24], "big") for p in pngs),
        "the PNGs are 64x64",
    )

    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        check(False, "an unknown model is refused")
    except openai.NotFoundError as e:
        check(e.status_code == 404, f"an unknown model is a 404: {e.message}")
    try:
        client.chat.completions.create(model=chat_model, messages=messages, n=0)
        check(False, "n=0 is refused")
    except openai.BadRequestError as e:
        check(e.status_code == 400, f"n=0 is a 400: {e.message}")

    # A client that goes away mid-stream frees its sequence: the session
    # list shows it gone within a second.
    stream = client.chat.completions.create(
        model=chat_model,
        messages=[{"role": "user", "content": "Count from 1 to 1000, one number per line."}],
        max_tokens=1000,
        temperature=0,
        stream=True,
    )
    for _, _chunk in zip(range(3), stream):
        pass
    listed = httpx.get(f"{base}/api/inference/sessions", timeout=10).json()
    check(len(listed) == 1 and listed[0]["state"] == "running", "the stream is a running session")
    stream.close()
    left = time.monotonic()
    while httpx.get(f"{base}/api/inference/sessions", timeout=10).json():
        if time.monotonic() - left > 1.0:
            check(False, "a closed stream's session is gone within a second")
        time.sleep(0.02)
    check(True, f"a closed stream's session was gone after {time.monotonic() - left:.3f} s")
    print("all OpenAI client checks passed")


if __name__ == "__main__":
    main()
