"""Content keys for KV-cache blocks, computed from token ids alone.

A block's key is a 64-bit hash of (its parent block's key, the LoRA adapter it was
computed under, its token ids). The event side computes it from each ``BlockStored``
event's token ids and parent; the request side from the prompt's token ids, chunked into
blocks of the endpoint's block size. Equal prefixes give equal keys on both sides, and
nothing depends on the model server's own hash function (vLLM's is a seeded SHA-256 or a
builtin hash of pickled tuples that varies by version and configuration).

Only full blocks have keys: a model server caches (and reports) only full blocks.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence

import xxhash

__all__ = ["ROOT_KEY", "block_key", "block_keys"]

ROOT_KEY = 0  # the parent of a sequence's first block
_BIG_ENDIAN = sys.byteorder == "big"
if array("I").itemsize != 4:  # pragma: no cover - every platform CPython supports today has 4-byte unsigned int
    raise ImportError("block keys need a 4-byte array('I')")


def block_key(parent: int, token_ids: Sequence[int], lora_id: int | None = None) -> int:
    """The key of one block; ``parent`` is the previous block's key (``ROOT_KEY`` for the first)."""
    h = xxhash.xxh3_64()
    h.update(parent.to_bytes(8, "little"))
    h.update((lora_id or 0).to_bytes(8, "little", signed=True))
    h.update(b"".join(t.to_bytes(4, "little") for t in token_ids))
    return h.intdigest()


def block_keys(token_ids: Sequence[int], block_size: int, lora_id: int | None = None,
               parent: int = ROOT_KEY, limit: int | None = None) -> list[int]:
    """Keys of the full blocks of ``token_ids`` (a trailing partial block has none), at most ``limit``."""
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    count = len(token_ids) // block_size
    if limit is not None:
        count = min(count, limit)
    if count == 0:
        return []
    # The same bytes block_key hashes, laid out once: a prompt's 250 blocks cost ~0.1 ms instead of ~0.3 ms.
    packed = array("I", token_ids[:count * block_size])
    if _BIG_ENDIAN:
        packed.byteswap()
    data = memoryview(packed).cast("B")
    lora = (lora_id or 0).to_bytes(8, "little", signed=True)
    stride = 4 * block_size
    keys = []
    for offset in range(0, count * stride, stride):
        parent = xxhash.xxh3_64_intdigest(b"".join((parent.to_bytes(8, "little"), lora, data[offset:offset + stride])))
        keys.append(parent)
    return keys
