"""A bounded load test of a running switchyard-server, on loopback only.

Usage: python load.py BASE_URL CHAT_MODEL EMBED_MODEL [SECONDS] [CHAT_CLIENTS] [EMBED_CLIENTS]

CHAT_CLIENTS (default 32) clients stream chat completions and
EMBED_CLIENTS (default 8) clients embed, each one request after another,
for SECONDS (default 20, at most 60). Prints requests/s, p50/p99 latency
(and time to first token for the streams), tokens/s, errors and dropped
streams as one JSON object; exits non-zero on any error or dropped stream.
"""

import asyncio
import json
import sys
import time

import httpx

QUESTIONS = [
    "What is a switchyard?",
    "Name three colours.",
    "Why is the sky blue?",
    "Write a short poem about trains.",
]
SENTENCES = [
    "A red train waits in the switchyard.",
    "Freight cars are sorted by destination.",
    "The signal box watches every track.",
    "Snow covers the rails at dawn.",
]


def percentile(values, q):
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


async def chat_client(client, base, model, deadline, k, stats):
    n = 0
    while time.monotonic() < deadline:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": QUESTIONS[(k + n) % len(QUESTIONS)]}],
            "max_tokens": 32,
            "temperature": 0.7,
            "seed": k * 1000 + n,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        n += 1
        start = time.monotonic()
        first, done, tokens = None, False, 0
        try:
            async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    stats["errors"].append(f"chat status {r.status_code}")
                    continue
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[len("data: "):]
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        stats["errors"].append(f"chat error {chunk['error']}")
                        break
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                    if first is None and chunk["choices"]:
                        first = time.monotonic() - start
        except (httpx.HTTPError, ValueError) as e:
            stats["errors"].append(f"chat {type(e).__name__}: {e}")
            continue
        if not done:
            stats["dropped"] += 1
            continue
        stats["chat_latency"].append(time.monotonic() - start)
        stats["ttft"].append(first if first is not None else 0.0)
        stats["tokens"] += tokens


async def embed_client(client, base, model, deadline, k, stats):
    n = 0
    while time.monotonic() < deadline:
        body = {"model": model, "input": SENTENCES[(k + n) % 4 :] + SENTENCES[: (k + n) % 4]}
        n += 1
        start = time.monotonic()
        try:
            r = await client.post(f"{base}/v1/embeddings", json=body)
            if r.status_code != 200 or len(r.json()["data"]) != 4:
                stats["errors"].append(f"embed status {r.status_code}")
                continue
        except (httpx.HTTPError, ValueError, KeyError) as e:
            stats["errors"].append(f"embed {type(e).__name__}: {e}")
            continue
        stats["embed_latency"].append(time.monotonic() - start)


async def main():
    base, chat_model, embed_model = sys.argv[1:4]
    seconds = min(60.0, float(sys.argv[4]) if len(sys.argv) > 4 else 20.0)
    chats = int(sys.argv[5]) if len(sys.argv) > 5 else 32
    embeds = int(sys.argv[6]) if len(sys.argv) > 6 else 8
    stats = {"chat_latency": [], "ttft": [], "embed_latency": [], "errors": [], "dropped": 0, "tokens": 0}
    limits = httpx.Limits(max_connections=chats + embeds + 4)
    timeout = httpx.Timeout(120.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        start = time.monotonic()
        deadline = start + seconds
        await asyncio.gather(
            *[chat_client(client, base, chat_model, deadline, k, stats) for k in range(chats)],
            *[embed_client(client, base, embed_model, deadline, k, stats) for k in range(embeds)],
        )
        wall = time.monotonic() - start
    ms = lambda v: None if v is None else round(v * 1e3, 1)
    done = len(stats["chat_latency"]) + len(stats["embed_latency"])
    report = {
        "seconds": round(wall, 1),
        "clients": {"chat_streams": chats, "embeddings": embeds},
        "requests_per_s": round(done / wall, 2),
        "chat": {
            "requests": len(stats["chat_latency"]),
            "p50_ms": ms(percentile(stats["chat_latency"], 0.5)),
            "p99_ms": ms(percentile(stats["chat_latency"], 0.99)),
            "ttft_p50_ms": ms(percentile(stats["ttft"], 0.5)),
            "ttft_p99_ms": ms(percentile(stats["ttft"], 0.99)),
            "tokens_per_s": round(stats["tokens"] / wall, 1),
        },
        "embeddings": {
            "requests": len(stats["embed_latency"]),
            "p50_ms": ms(percentile(stats["embed_latency"], 0.5)),
            "p99_ms": ms(percentile(stats["embed_latency"], 0.99)),
        },
        "errors": len(stats["errors"]),
        "dropped_streams": stats["dropped"],
    }
    print(json.dumps(report, indent=2))
    for e in stats["errors"][:5]:
        print("error:", e, file=sys.stderr)
    if stats["errors"] or stats["dropped"] or not stats["chat_latency"] or not stats["embed_latency"]:
        sys.exit("FAILED: errors, dropped streams, or a kind of request never finished")
    print("load test passed: no errors, no dropped streams")


if __name__ == "__main__":
    asyncio.run(main())
