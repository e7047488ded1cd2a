"""Prompt → chained block hashes, as the Go EPP's approximate prefix producer computes them."""

from __future__ import annotations

import random

import pytest
import xxhash

from epp.framework.attributes import CHARS_PER_TOKEN
from epp.plugins.prefix.hashing import block_bytes, hash_prompt

BLOCK_TOKENS = 4
BLOCK = BLOCK_TOKENS * CHARS_PER_TOKEN  # 16 bytes


def reference_hashes(prompt: bytes, model: str, salt: str, block_tokens: int, max_blocks: int) -> list[int]:
    """An independent transcription of the Go algorithm (gie-facts §2.1)."""
    size = block_tokens * 4
    if size <= 0 or len(prompt) < size:
        return []
    prompt = prompt[: size * max_blocks]
    previous = xxhash.xxh64((model + salt).encode(), seed=0).intdigest()
    out = []
    for i in range(0, len(prompt), size):
        previous = xxhash.xxh64(prompt[i : i + size] + previous.to_bytes(8, "little"), seed=0).intdigest()
        out.append(previous)
    return out


def text(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.randrange(32, 127) for _ in range(n))


@pytest.mark.parametrize(
    ("length", "max_blocks", "salt"),
    [
        pytest.param(16, 256, "", id="exactly one block"),
        pytest.param(100, 256, "", id="several blocks and a partial tail"),
        pytest.param(160, 256, "tenant", id="whole blocks with a salt"),
        pytest.param(1000, 5, "", id="truncated to max blocks"),
        pytest.param(4096, 256, "s", id="a long prompt"),
    ],
)
def test_hashes_match_an_independent_implementation(length: int, max_blocks: int, salt: str) -> None:
    prompt = text(length, seed=length)
    assert hash_prompt(prompt, "llama", salt, BLOCK_TOKENS, max_blocks) == reference_hashes(
        prompt, "llama", salt, BLOCK_TOKENS, max_blocks)


def test_the_first_hash_chains_from_the_model_and_salt_seed() -> None:
    prompt = b"a" * BLOCK
    seed = xxhash.xxh64(b"llamatenant").intdigest()
    expected = xxhash.xxh64(prompt + seed.to_bytes(8, "little")).intdigest()
    assert hash_prompt(prompt, "llama", "tenant", BLOCK_TOKENS, 256) == [expected]


def test_the_same_text_and_model_give_the_same_hashes() -> None:
    prompt = text(200)
    assert hash_prompt(prompt, "m", "", BLOCK_TOKENS, 256) == hash_prompt(bytes(prompt), "m", "", BLOCK_TOKENS, 256)


@pytest.mark.parametrize(
    ("other_model", "other_salt"),
    [
        pytest.param("other-model", "", id="a different model"),
        pytest.param("m", "tenant-b", id="a different salt"),
        pytest.param("m", "tenant-a", id="a salt against no salt"),
    ],
)
def test_a_different_model_or_salt_shares_no_block(other_model: str, other_salt: str) -> None:
    prompt = text(200)
    base = hash_prompt(prompt, "m", "", BLOCK_TOKENS, 256)
    other = hash_prompt(prompt, other_model, other_salt, BLOCK_TOKENS, 256)
    assert len(base) == len(other) == 13
    assert not set(base) & set(other)


def test_a_shared_prefix_shares_leading_hashes_then_diverges_for_good() -> None:
    shared = text(3 * BLOCK, seed=1)
    a = hash_prompt(shared + b"A" * BLOCK + b"same tail bytes!", "m", "", BLOCK_TOKENS, 256)
    b = hash_prompt(shared + b"B" * BLOCK + b"same tail bytes!", "m", "", BLOCK_TOKENS, 256)
    assert a[:3] == b[:3]
    assert a[3] != b[3]
    assert a[4] != b[4]  # an identical later block still differs: hashes chain


@pytest.mark.parametrize(
    ("length", "count"),
    [
        pytest.param(0, 0, id="an empty prompt"),
        pytest.param(BLOCK - 1, 0, id="less than one block gives no hashes"),
        pytest.param(BLOCK, 1, id="one full block"),
        pytest.param(BLOCK + 1, 2, id="a one-byte tail is hashed as a partial block"),
        pytest.param(3 * BLOCK, 3, id="whole blocks have no partial block"),
    ],
)
def test_block_counts(length: int, count: int) -> None:
    assert len(hash_prompt(b"x" * length, "m", "", BLOCK_TOKENS, 256)) == count


def test_the_partial_tail_changes_only_the_last_hash() -> None:
    head = text(2 * BLOCK)
    a = hash_prompt(head + b"tail-one", "m", "", BLOCK_TOKENS, 256)
    b = hash_prompt(head + b"tail-two", "m", "", BLOCK_TOKENS, 256)
    assert a[:2] == b[:2] and a[2] != b[2]


def test_truncation_keeps_max_blocks_and_ignores_the_rest() -> None:
    long = text(10 * BLOCK)
    truncated = hash_prompt(long, "m", "", BLOCK_TOKENS, 4)
    assert truncated == hash_prompt(long[: 4 * BLOCK], "m", "", BLOCK_TOKENS, 256)
    assert truncated == hash_prompt(long[: 4 * BLOCK] + b"anything else", "m", "", BLOCK_TOKENS, 4)


@pytest.mark.parametrize(
    ("block_tokens", "max_blocks"),
    [pytest.param(0, 256, id="a zero block size"), pytest.param(4, 0, id="zero max blocks")],
)
def test_degenerate_sizes_give_no_hashes(block_tokens: int, max_blocks: int) -> None:
    assert hash_prompt(text(100), "m", "", block_tokens, max_blocks) == []


def test_block_size_is_four_bytes_per_token() -> None:
    assert CHARS_PER_TOKEN == 4
    assert len(hash_prompt(b"x" * 64, "m", "", 16, 256)) == 1
    assert len(hash_prompt(b"x" * 63, "m", "", 16, 256)) == 0


def test_a_learned_ratio_sizes_the_blocks_in_bytes() -> None:
    # CPU vLLM's 128-token blocks: 512 bytes at the default ratio, 282 at 2.2 chars/token (code).
    assert (block_bytes(128), block_bytes(128, 2.2)) == (512, 282)
    prompt = text(300)
    assert hash_prompt(prompt, "m", "", 128, 256) == []
    learned = hash_prompt(prompt, "m", "", 128, 256, chars_per_token=2.2)
    assert hash_prompt(prompt[:282] + b"y" * 30, "m", "", 128, 256, 2.2)[0] == learned[0]
    assert len(learned) == 2  # one full block of 282 bytes and the 18-byte tail


def test_blocks_hashed_at_another_ratio_never_match() -> None:
    prompt = text(40 * BLOCK)
    assert not set(hash_prompt(prompt, "m", "", BLOCK_TOKENS, 256)) & set(
        hash_prompt(prompt, "m", "", BLOCK_TOKENS, 256, chars_per_token=2.2))
