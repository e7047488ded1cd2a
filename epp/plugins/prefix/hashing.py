"""Prompt → chained block hashes, exactly as the Go EPP's approximate prefix producer.

Algorithm (xxhash64, seed 0):

- ``B = blockSizeTokens * 4`` characters (bytes) per block; 4 characters approximate a token.
  Here the 4 is ``chars_per_token``, learned per model from responses when the producer
  has samples (``epp.datalayer.token_ratio``), so ``B = round(blockSizeTokens * ratio)``.
  A block's hash covers its bytes, so blocks hashed at another size never match.
- A prompt shorter than one block gives no hashes. A prompt longer than
  ``maxBlocks * B`` bytes is truncated to that length.
- ``h_0 = xxh64(target_model + cache_salt)``: different models or salts never share blocks.
- ``h_k = xxh64(block_k + h_{k-1} as 8 little-endian bytes)``: a block's hash depends on
  everything before it, so equal hashes mean equal prefixes.
- A trailing partial block is hashed too.
"""

from __future__ import annotations

from xxhash import xxh64_intdigest

from epp.framework.attributes import CHARS_PER_TOKEN

__all__ = ["block_bytes", "hash_prompt"]


def block_bytes(block_size_tokens: int, chars_per_token: float = CHARS_PER_TOKEN) -> int:
    """Bytes of prompt per block of ``block_size_tokens`` tokens."""
    return round(block_size_tokens * chars_per_token)


def hash_prompt(prompt: bytes, model: str, cache_salt: str, block_size_tokens: int, max_blocks: int,
                chars_per_token: float = CHARS_PER_TOKEN) -> list[int]:
    block = block_bytes(block_size_tokens, chars_per_token)
    if block <= 0 or max_blocks <= 0 or len(prompt) < block:
        return []
    limit = block * max_blocks
    if len(prompt) > limit:
        prompt = prompt[:limit]
    previous = xxh64_intdigest((model + cache_salt).encode())
    hashes: list[int] = []
    append = hashes.append
    for start in range(0, len(prompt), block):
        previous = xxh64_intdigest(prompt[start : start + block] + previous.to_bytes(8, "little"))
        append(previous)
    return hashes
