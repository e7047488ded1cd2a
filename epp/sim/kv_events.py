"""KV-cache events of one replica, in vLLM's wire layout (``vllm/distributed/kv_events.py``).

The KV cache records what happens to its cached blocks in a ``KVEventLog``; the engine drains
the log once per step into one batch, as vLLM's scheduler does, and hands it to the
publisher. Encoding follows vLLM's msgspec structs with ``array_like=True``, ``tag=True`` and
``omit_defaults=True``, i.e. plain msgpack arrays whose first element is the class name::

    batch          = [ts: float, events: list, data_parallel_rank: int]
    BlockStored    = ["BlockStored", block_hashes: list[int], parent_block_hash: int | None,
                      token_ids: list[int], block_size: int, lora_id: int | None,
                      medium: "GPU", lora_name: str | None]
    BlockRemoved   = ["BlockRemoved", block_hashes: list[int], medium: "GPU"]
    AllBlocksCleared = ["AllBlocksCleared"]

Trailing fields that hold their default (``extra_keys``, ``group_idx``, ...) are omitted, as
msgspec does. Block hashes are the simulator's own chained xxh64 hashes (unsigned 64-bit);
like vLLM's they are opaque to consumers, which only need them to link parents and removals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgpack

__all__ = [
    "MEDIUM_GPU",
    "AllBlocksCleared",
    "BlockRemoved",
    "BlockStored",
    "KVEvent",
    "KVEventLog",
    "encode_batch",
]

MEDIUM_GPU = "GPU"


@dataclass(frozen=True, slots=True)
class BlockStored:
    """Consecutive blocks of one request that entered the prefix cache in one step."""

    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]  # block_size tokens per block, concatenated
    block_size: int
    lora_id: int | None
    lora_name: str | None

    def wire(self) -> list[object]:
        return ["BlockStored", self.block_hashes, self.parent_block_hash, self.token_ids, self.block_size,
                self.lora_id, MEDIUM_GPU, self.lora_name]


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    """Blocks evicted from the prefix cache."""

    block_hashes: list[int]

    def wire(self) -> list[object]:
        return ["BlockRemoved", self.block_hashes, MEDIUM_GPU]


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    """The whole prefix cache was dropped."""

    def wire(self) -> list[object]:
        return ["AllBlocksCleared"]


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


class KVEventLog:
    """Events since the last ``drain``, in the order they happened.

    Concurrency: event-loop owned (written by the KV cache and scheduler, drained by the engine).
    """

    __slots__ = ("block_size", "_events")

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._events: list[KVEvent] = []

    def stored(self, hashes: list[int], parent: int | None, token_ids: list[int], lora_id: int | None,
               lora_name: str | None) -> None:
        self._events.append(BlockStored(hashes, parent, token_ids, self.block_size, lora_id, lora_name))

    def removed(self, block_hash: int) -> None:
        # vLLM's block pool emits one event per evicted block; consecutive evictions are merged
        # into one event here (same meaning to a consumer), which keeps heavy eviction cheap.
        events = self._events
        if events and type(last := events[-1]) is BlockRemoved:
            last.block_hashes.append(block_hash)
        else:
            events.append(BlockRemoved([block_hash]))

    def cleared(self) -> None:
        self._events.append(AllBlocksCleared())

    def drain(self) -> list[KVEvent]:
        events, self._events = self._events, []
        return events

    def __len__(self) -> int:
        return len(self._events)


def encode_batch(ts: float, events: Sequence[KVEvent], data_parallel_rank: int = 0) -> bytes:
    """The msgpack payload of one ``KVEventBatch``."""
    return msgpack.packb([ts, [e.wire() for e in events], data_parallel_rank], use_bin_type=True)
