"""What the precise prefix scorer's tokenization costs per request, before and after chunk caching.

A stream of ~4k-token prompts sharing a ~3.5k-token prefix, each with its own ~500-token
tail (as the shared-prefix routing workload: one system prompt, many questions):

- ``whole``: one encode of the whole prompt (the tokenizer pool before chunk caching);
- ``chunked, shared prefix``: ``ChunkedEncoder`` after the prefix was seen once (the new tail
  and the chunk that straddles the divergence are encoded);
- ``chunked, cold``: every prompt new (nothing to reuse): the price of chunking a miss;
- block keys of the same prompt (16-token blocks), packed against chained per block.

Two tokenizers: the routing benchmark's word-level one and a byte-level BPE with the Llama 3
pre-tokenizer regex, trained here on the same words. Medians of 7 batches, each over
distinct prompts; ratios are against ``whole`` of the same run.

    python -m benchmarks.prefix.precise_tokens
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

from benchmarks.routing.precise import write_tokenizer
from benchmarks.routing.workloads import _WORDS
from epp.plugins.kvcache.chunked import ChunkedEncoder
from epp.plugins.kvcache.keys import block_key, block_keys

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BATCHES = 7
PER_BATCH = 20


def byte_level_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(_WORDS) for _ in range(200)) + f". Question {i}: " for i in range(400)]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=2000, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def words_for(tok: Tokenizer, tokens: int, rng: random.Random) -> str:
    words: list[str] = []
    while len(tok.encode(" ".join(words), add_special_tokens=False).ids) < tokens:
        words.extend(rng.choice(_WORDS) for _ in range(100))
    return " ".join(words)


def median_us_per_call(fn: Callable[[str], object], batches: Sequence[Sequence[str]]) -> float:
    samples = []
    for batch in batches:
        start = time.perf_counter()
        for prompt in batch:
            fn(prompt)
        samples.append((time.perf_counter() - start) / len(batch))
    return statistics.median(samples) * 1e6


def chained_keys(tokens: list[int], size: int) -> list[int]:
    parent, keys = 0, []
    for i in range(len(tokens) // size):
        parent = block_key(parent, tokens[i * size:(i + 1) * size])
        keys.append(parent)
    return keys


def measure(name: str, tok: Tokenizer) -> None:
    rng = random.Random(1)
    prefix = "Customer 1 policy handbook. " + words_for(tok, 3500, rng)
    shared = [[f"{prefix} Question {b}-{i}: {words_for(tok, 500, rng)}" for i in range(PER_BATCH)]
              for b in range(BATCHES)]
    cold = [[f"Customer {b}-{i} handbook. {words_for(tok, 4000, rng)}" for i in range(PER_BATCH)]
            for b in range(BATCHES)]
    sample = shared[0][0]
    tokens = tok.encode(sample, add_special_tokens=False).ids
    encoder = ChunkedEncoder(tok)
    assert encoder.enabled, encoder.disabled_reason
    encoder.encode(prefix, False)  # the prefix seen once, as the first request of a group
    for prompt in shared[0][:2]:
        assert encoder.encode(prompt, False) == tok.encode(prompt, add_special_tokens=False).ids

    whole = median_us_per_call(lambda p: tok.encode(p, add_special_tokens=False), shared)
    warm = median_us_per_call(lambda p: encoder.encode(p, False), shared)
    cold_whole = median_us_per_call(lambda p: tok.encode(p, add_special_tokens=False), cold)
    cold_encoder = ChunkedEncoder(tok)  # every cold prompt is new to it: nothing to reuse
    cold_chunked = median_us_per_call(lambda p: cold_encoder.encode(p, False), cold)
    packed = median_us_per_call(lambda _: block_keys(tokens, 16), shared)
    chained = median_us_per_call(lambda _: chained_keys(tokens, 16), shared)
    print(f"{name}: {len(tokens)} tokens, {len(sample)} chars; prefix {len(tok.encode(prefix).ids)} tokens")
    print(f"  tokenize whole (before):        {whole:8.0f} us per request")
    print(f"  tokenize chunked, shared prefix: {warm:7.0f} us per request   {warm / whole:.2f}x of whole")
    print(f"  tokenize whole, cold prompts:   {cold_whole:8.0f} us per request")
    print(f"  tokenize chunked, cold prompts: {cold_chunked:8.0f} us per request   "
          f"{cold_chunked / cold_whole:.2f}x of whole")
    print(f"  block keys chained (before):    {chained:8.0f} us per request")
    print(f"  block keys packed (after):      {packed:8.0f} us per request   {packed / chained:.2f}x")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        word_level = Tokenizer.from_file(str(write_tokenizer(Path(tmp))))
    measure("word-level (routing benchmark)", word_level)
    measure("byte-level BPE, Llama 3 regex", byte_level_bpe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
