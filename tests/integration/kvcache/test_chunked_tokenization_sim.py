"""The picker's chunk-cached tokenization gives the simulator's own ids (``epp sim --tokenizer``, its /tokenize).

A byte-level BPE with the Llama 3 pre-tokenizer regex (the common real-model shape) is
trained here; prompts share long prefixes so the picker answers later ones mostly from its
chunk cache, and each answer must equal what the model server computes for the same body.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors, trainers

from epp.plugins.kvcache.tokenizer import TokenizerPool
from epp.sim.config import SimConfig
from epp.sim.server import SimServer

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
WORDS = ["policy", "refund", "river's", "gateway", "12345", "(see", "section", "4.2)", "naïve", "—", "we'll",
         "answer:", "\n", "\n\n", "  ", "中文"]


def write_bpe(directory: Path) -> Path:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(80)) for _ in range(200)]
    specials = ["<s>", "<|system|>", "<|user|>", "<|assistant|>"]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=500, special_tokens=specials, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "chat_template": TEMPLATE}))
    return directory / "tokenizer.json"


@pytest.fixture
async def sim_and_path(tmp_path: Path) -> AsyncIterator[tuple[SimServer, Path]]:
    path = write_bpe(tmp_path / "tok")
    server = SimServer(SimConfig(port=0, time_scale=0.05, tokenizer_path=str(path), model="m"))
    await server.start()
    yield server, path
    await server.stop()


async def sim_tokens(session: aiohttp.ClientSession, sim: SimServer, payload: dict[str, Any]) -> list[int]:
    async with session.post(f"http://127.0.0.1:{sim.port}/tokenize", json=payload) as response:
        assert response.status == 200, await response.text()
        tokens: list[int] = (await response.json())["tokens"]
        return tokens


async def test_chunk_cached_ids_equal_the_simulators_ids(sim_and_path: tuple[SimServer, Path]) -> None:
    sim, path = sim_and_path
    pool = TokenizerPool(model_paths={"m": path}, remote=False, chunk_chars=128)
    rng = random.Random(1)
    system = " ".join(rng.choice(WORDS) for _ in range(1500))
    chats = [[{"role": "system", "content": system}, {"role": "user", "content": f"question {i}: " + " ".join(
        rng.choice(WORDS) for _ in range(30))}] for i in range(4)]
    prompts = [system + " " + " ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(3)]
    async with aiohttp.ClientSession() as session:
        for messages in chats:
            mine = await pool.tokenize("m", "chat_completions", {"messages": messages})
            theirs = await sim_tokens(session, sim, {"model": "m", "messages": messages, "add_generation_prompt": True})
            assert mine == theirs
        for prompt in prompts:
            mine = await pool.tokenize("m", "completions", {"prompt": prompt})
            assert mine == await sim_tokens(session, sim, {"model": "m", "prompt": prompt})
    stats = pool.chunk_stats()
    assert stats["tokenChunkHits"] > 5 * stats["tokenChunkMisses"] / 2  # most of each later prompt came from cache
    pool.close()
