"""TokenizerPool: local tokenizer files per model, the /tokenize fallback, the bounded cache."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from epp.plugins.kvcache.tokenizer import TokenizerPool
from epp.testing.tokenizers import write_tiny_tokenizer
from epp.testing.waiting import eventually
from epp.tokenization import PromptTokenizer

VOCAB = {"[UNK]": 0, "<s>": 1, "<|user|>": 2, "<|assistant|>": 3, "hello": 4, "world": 5, "again": 6}
TEMPLATE = "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}<|assistant|>"
CHAT = {"messages": [{"role": "user", "content": "hello world"}]}


def write_tokenizer(directory: Path) -> Path:
    return write_tiny_tokenizer(directory, vocab=VOCAB, special_tokens=["<s>", "<|user|>", "<|assistant|>"],
                                chat_template=TEMPLATE)


class TokenizeServer:
    """vLLM's /tokenize, answering fixed ids and recording what it was sent."""

    def __init__(self, tokens: list[int], status: int = 200) -> None:
        self.tokens = tokens
        self.status = status
        self.received: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        if self.status != 200:
            return web.json_response({"error": "nope"}, status=self.status)
        return web.json_response({"count": len(self.tokens), "max_model_len": 4096, "tokens": self.tokens})


@pytest.fixture
async def tokenize_server() -> AsyncIterator[tuple[TokenizeServer, str]]:
    server = TokenizeServer([7, 8, 9])
    app = web.Application()
    app.router.add_post("/tokenize", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield server, f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_model_directory_layout_is_found(tmp_path: Path) -> None:
    write_tokenizer(tmp_path / "org" / "model-a")
    pool = TokenizerPool(model_dir=tmp_path, remote=False)
    assert await pool.tokenize("org/model-a", "chat_completions", CHAT) == [1, 2, 4, 5, 3]
    assert await pool.tokenize("org/model-a", "completions", {"prompt": "hello again"}) == [1, 4, 6]
    assert await pool.tokenize("other", "completions", {"prompt": "hello"}) is None
    pool.close()


async def test_hugging_face_cache_layout_is_found(tmp_path: Path) -> None:
    write_tokenizer(tmp_path / "models--org--model-b" / "snapshots" / "abc123")
    pool = TokenizerPool(model_dir=tmp_path, remote=False)
    assert await pool.tokenize("org/model-b", "completions", {"prompt": "world"}) == [1, 5]
    pool.close()


async def test_explicit_map_wins_over_the_directory(tmp_path: Path) -> None:
    write_tokenizer(tmp_path / "dir" / "m")
    explicit = write_tokenizer(tmp_path / "elsewhere")
    pool = TokenizerPool(model_dir=tmp_path / "dir", model_paths={"m": explicit, "n": explicit}, remote=False)
    assert pool.tokenizer_path("m") == explicit
    assert await pool.tokenize("n", "completions", {"prompt": "hello"}) == [1, 4]
    pool.close()


async def test_long_prompts_are_encoded_off_the_loop_with_the_same_result(tmp_path: Path) -> None:
    write_tokenizer(tmp_path / "m")
    inline = TokenizerPool(model_dir=tmp_path, remote=False)
    threaded = TokenizerPool(model_dir=tmp_path, remote=False, inline_max_chars=0)
    body = {"prompt": "hello world " * 300}
    expected = [1] + [4, 5] * 300
    assert await inline.tokenize("m", "completions", body) == expected
    assert await threaded.tokenize("m", "completions", body) == expected
    inline.close()
    threaded.close()


async def test_token_id_prompts_pass_through(tmp_path: Path) -> None:
    pool = TokenizerPool(remote=False)
    assert await pool.tokenize("anything", "completions", {"prompt": [5, 6, 7]}) == [5, 6, 7]
    assert len(pool) == 0


async def test_cache_is_bounded_and_serves_repeats(tmp_path: Path) -> None:
    write_tokenizer(tmp_path / "m")
    pool = TokenizerPool(model_dir=tmp_path, remote=False, cache_size=2)
    prompts = ["hello", "world", "again"]
    for p in prompts:
        await pool.tokenize("m", "completions", {"prompt": p})
    assert len(pool) == 2 and pool.misses == 3
    assert await pool.tokenize("m", "completions", {"prompt": "again", "max_tokens": 9}) == [1, 6]
    assert pool.hits == 1  # other body fields do not change the key
    assert await pool.tokenize("m", "completions", {"prompt": "hello"}) == [1, 4]
    assert pool.misses == 4  # the oldest entry was evicted
    pool.close()


async def test_cache_separates_models(tmp_path: Path, tokenize_server: tuple[TokenizeServer, str]) -> None:
    server, address = tokenize_server
    write_tokenizer(tmp_path / "local")
    pool = TokenizerPool(model_dir=tmp_path)
    assert await pool.tokenize("local", "completions", {"prompt": "hello"}) == [1, 4]
    assert await pool.tokenize("remote", "completions", {"prompt": "hello"}, [address]) == [7, 8, 9]
    assert pool.hits == 0
    await pool.aclose()
    pool.close()


async def test_tokenize_fallback_sends_vllms_request_shape(tokenize_server: tuple[TokenizeServer, str]) -> None:
    server, address = tokenize_server
    pool = TokenizerPool()
    assert await pool.tokenize("m", "completions", {"prompt": "hi there", "max_tokens": 3}, [address]) == [7, 8, 9]
    assert await pool.tokenize("m", "chat_completions", CHAT, [address]) == [7, 8, 9]
    assert server.received == [
        {"model": "m", "prompt": "hi there"},
        {"model": "m", "messages": CHAT["messages"], "add_generation_prompt": True},
    ]
    assert await pool.tokenize("m", "chat_completions", CHAT, [address]) == [7, 8, 9]
    assert len(server.received) == 2  # served from the cache
    await pool.aclose()
    pool.close()


async def test_tokenize_fallback_tries_the_next_server(tokenize_server: tuple[TokenizeServer, str],
                                                       unused_tcp_port: int) -> None:
    server, address = tokenize_server
    pool = TokenizerPool(remote_timeout=2.0)
    assert await pool.tokenize("m", "completions", {"prompt": "x"}, [f"127.0.0.1:{unused_tcp_port}", address]) \
        == [7, 8, 9]
    await pool.aclose()
    pool.close()


async def test_failures_give_none_and_are_not_cached(tokenize_server: tuple[TokenizeServer, str]) -> None:
    server, address = tokenize_server
    server.status = 500
    pool = TokenizerPool()
    assert await pool.tokenize("m", "completions", {"prompt": "x"}, [address]) is None
    assert await pool.tokenize("m", "completions", {"prompt": "x"}, []) is None
    assert await pool.tokenize("m", "embeddings", {"input": "x"}, [address]) is None
    server.status = 200
    assert await pool.tokenize("m", "completions", {"prompt": "x"}, [address]) == [7, 8, 9]
    assert pool.failures == 2
    await pool.aclose()
    pool.close()


async def test_malformed_request_with_local_tokenizer_gives_none(tmp_path: Path) -> None:
    write_tokenizer(tmp_path / "m")
    pool = TokenizerPool(model_dir=tmp_path, remote=False)
    assert await pool.tokenize("m", "chat_completions", {"messages": "not a list"}) is None
    assert await pool.tokenize("m", "completions", {"prompt": 42}) is None
    pool.close()


async def test_unreadable_tokenizer_file_gives_none(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "tokenizer.json").write_text("{not json")
    pool = TokenizerPool(model_dir=tmp_path, remote=False)
    assert await pool.tokenize("m", "completions", {"prompt": "hello"}) is None
    pool.close()


async def test_chat_prompts_sharing_a_system_prompt_encode_only_their_new_part(tmp_path: Path) -> None:
    path = write_tiny_tokenizer(tmp_path / "m", corpus=["policy refund river gateway question one two three"])
    pool = TokenizerPool(model_paths={"m": path}, remote=False, inline_max_chars=100_000)
    whole = PromptTokenizer.from_file(path)
    rng = random.Random(4)
    system = " ".join(rng.choice(["policy", "refund", "river", "gateway"]) for _ in range(2000))
    bodies = [{"messages": [{"role": "system", "content": system}, {"role": "user", "content": f"question {q}"}]}
              for q in ("one", "two", "three")]
    for body in bodies:
        assert await pool.tokenize("m", "chat_completions", body) == whole.encode_request("chat_completions", body)
    stats = pool.chunk_stats()
    # The first prompt encodes every chunk; each later one only the chunk holding its question.
    first_prompt_chunks = stats["tokenChunks"] - 2
    assert first_prompt_chunks >= 20
    assert stats["tokenChunkMisses"] == first_prompt_chunks + 2
    assert stats["tokenChunkHits"] == 2 * (first_prompt_chunks - 1)
    await eventually(lambda: pool._encoders["m"].verified >= 3, what="the sampled whole-prompt checks")
    assert pool._encoders["m"].enabled
    pool.close()


async def test_without_a_chunk_budget_prompts_are_encoded_whole(tmp_path: Path) -> None:
    path = write_tokenizer(tmp_path)
    pool = TokenizerPool(model_paths={"m": path}, remote=False, chunk_cache_bytes=0)
    assert await pool.tokenize("m", "completions", {"prompt": "hello world " * 300}) == [1, *[4, 5] * 300]
    assert pool.chunk_stats()["tokenChunks"] == 0
    pool.close()
