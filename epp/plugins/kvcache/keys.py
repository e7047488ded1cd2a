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

from collections.abc import Sequence

import xxhash

__all__ = ["ROOT_KEY", "block_key", "block_keys"]

ROOT_KEY = 0  # the parent of a sequence's first block


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
    keys = []
    for i in range(count):
        parent = block_key(parent, token_ids[i * block_size:(i + 1) * block_size], lora_id)
        keys.append(parent)
    return keys
