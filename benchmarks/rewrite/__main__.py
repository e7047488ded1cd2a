"""What the byte-preserving model rewrite costs, against re-serialising the body.

For each body, ``replace_model(raw, target)`` (epp/requests/model_rewrite.py) against
``orjson.dumps({**orjson.loads(raw), "model": target})`` (the rewrite it replaces, which
changes numbers, escapes and duplicate keys), both timed in the same run:

- a chat body of about 2.5k tokens (10 KB, model after the messages as the OpenAI SDK writes it);
- a completions body with a 1 MB prompt (model last, so the scan crosses the prompt), in
  prose with 1% of words in double quotes, and again with 20% (each escaped quote costs a
  step in Python);
- a completions body whose prompt is 65,536 token ids.

Also the response side: ``ModelNameRestorer.feed`` on one SSE chunk. Figures are medians of
5 batches.

    python -m benchmarks.rewrite
"""

from __future__ import annotations

import random

import orjson

from benchmarks.timing import median_us
from epp.requests.model_rewrite import ModelNameRestorer, replace_model

INCOMING = "meta-llama/Llama-3.1-8B-Instruct"
TARGET = "llama-3.1-8b-instruct-lora-v2"
WORDS = ["policy", "refund", "river", "gateway", "replica", "token", "model", "cache", "don't", "it's"]


def text_of(chars: int, seed: int, quoted_share: float = 0.01) -> str:
    """Prose: a line break every 12 words, and ``quoted_share`` of words in double quotes."""
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(WORDS)
        if rng.random() < quoted_share:
            word = f'"{word}"'
        out.append(word + ("\n" if len(out) % 12 == 11 else " "))
        size += len(out[-1])
    return "".join(out)[:chars]


def chat_body() -> bytes:
    messages = [{"role": "system", "content": text_of(2000, 1)}]
    for turn in range(4):
        messages.append({"role": "user", "content": text_of(1200, 2 + turn)})
        messages.append({"role": "assistant", "content": text_of(800, 10 + turn)})
    body = {"messages": messages, "model": INCOMING, "max_tokens": 256, "temperature": 0.7, "stream": True,
            "stream_options": {"include_usage": True}}
    return orjson.dumps(body)


def big_prompt_body(quoted_share: float = 0.01) -> bytes:
    return orjson.dumps({"prompt": text_of(1 << 20, 3, quoted_share), "max_tokens": 16, "model": INCOMING})


def token_ids_body() -> bytes:
    rng = random.Random(4)
    return orjson.dumps({"model": INCOMING, "prompt": [rng.randrange(128_000) for _ in range(65_536)],
                         "max_tokens": 16})


def reserialise(raw: bytes) -> bytes:
    return orjson.dumps({**orjson.loads(raw), "model": TARGET})


def main() -> int:
    cases = [
        ("chat, ~2.5k tokens", chat_body(), 300),
        ("completions, 1 MB prompt", big_prompt_body(), 20),
        ("same, 1 word in 5 quoted", big_prompt_body(0.2), 20),
        ("completions, 65,536 token ids", token_ids_body(), 20),
    ]
    print(f"{'body':32} {'bytes':>9} {'replace_model':>14} {'re-serialise':>13} {'ratio':>6}")
    for name, raw, n in cases:
        assert orjson.loads(replace_model(raw, TARGET))["model"] == TARGET
        ours = median_us(lambda raw=raw: replace_model(raw, TARGET), batches=5, n=n)  # type: ignore[misc]
        theirs = median_us(lambda raw=raw: reserialise(raw), batches=5, n=n)  # type: ignore[misc]
        print(f"{name:32} {len(raw):9,d} {ours:11.1f} us {theirs:10.1f} us {ours / theirs:6.2f}")
    chunk = (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"' + TARGET.encode()
             + b'","choices":[{"index":0,"delta":{"content":" token"},"finish_reason":null}]}\n\n')
    restorer = ModelNameRestorer(TARGET, INCOMING)
    feed = median_us(lambda: restorer.feed(chunk, False), batches=5, n=2000)
    print(f"ModelNameRestorer.feed, one {len(chunk)}-byte SSE chunk: {feed:.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
