"""Decode vLLM's KV-cache events into typed, immutable values.

Wire format (vLLM ``vllm/distributed/kv_events.py`` and
``examples/online_serving/kv_events_subscriber.py``; read at vllm-project/vllm commits
b4e69e0af33f (v0.9, the first release with events), 0ef0f42653bc (example subscriber) and
0181ea3173e5 (main, 2026)): a ZeroMQ PUB socket sends multipart messages
``[topic, sequence (8 bytes, big-endian), payload]`` where the payload is the msgpack of a
``KVEventBatch``: ``[ts, events, data_parallel_rank]``; every event is tagged with its class
name. The replay ROUTER answers ``[seq, payload]`` frames and ends with ``seq = -1`` and an
empty payload.

Variations this decoder accepts, because publishers of every age are in the field:

- the batch as a positional array (``array_like``; ``data_parallel_rank`` absent before
  v0.10) or as a map;
- each event as a positional array ``[tag, field...]`` (before vLLM PR #42892) or as a map
  with the tag under ``"type"`` and fields by name (after it);
- ``BlockStored`` fields grew at the end over time: ``block_hashes, parent_block_hash,
  token_ids, block_size, lora_id`` (v0.9), ``medium``, ``lora_name``, ``extra_keys``,
  ``group_idx``, ``kv_cache_spec_kind``, ``kv_cache_spec_sliding_window``; only the first
  four are required, later or unknown trailing fields are ignored. ``BlockRemoved``:
  ``block_hashes``, then ``medium``, then ``group_idx``;
- engine block hashes as integers (signed or unsigned 64-bit) or bytes (SHA-256 digests in
  newer versions); bytes are read as a big-endian integer so the index keys one type.

An unknown event type is counted in ``EventBatch.skipped`` and skipped, not an error: a
newer publisher may add one. Everything else that does not fit (wrong frame count, bad
sequence, payload over the size limit, arrays over the length limits, a field of the wrong
type, token ids that do not fill the blocks) raises ``MalformedMessage``; the caller counts
it and drops the whole message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = ["AllBlocksCleared", "BlockRemoved", "BlockStored", "DecodeLimits", "EventBatch", "KVEvent",
           "MalformedMessage", "decode_message", "decode_payload", "decode_sequence"]


class MalformedMessage(ValueError):
    """A message that cannot be decoded; the whole message is dropped."""


@dataclass(frozen=True, slots=True)
class BlockStored:
    block_hashes: tuple[int, ...]
    parent_block_hash: int | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    group_idx: int | None = None


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: tuple[int, ...]
    medium: str | None = None
    group_idx: int | None = None


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True, slots=True)
class EventBatch:
    ts: float
    events: tuple[KVEvent, ...]
    data_parallel_rank: int | None
    seq: int
    topic: str
    skipped: int = 0  # events of a type this decoder does not know


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """What a peer may send; everything beyond is a malformed message."""

    max_payload_bytes: int = 16 * 1024 * 1024
    max_array_len: int = 1 << 20  # token ids of one event, events of one batch
    max_str_len: int = 4096
    max_bin_len: int = 256  # a block hash
    max_map_len: int = 64
    max_topic_bytes: int = 1024


DEFAULT_LIMITS = DecodeLimits()


def decode_sequence(raw: bytes) -> int:
    if len(raw) != 8:
        raise MalformedMessage(f"sequence frame has {len(raw)} bytes, expected 8")
    return int.from_bytes(raw, "big", signed=True)


def decode_message(frames: Sequence[bytes], limits: DecodeLimits = DEFAULT_LIMITS) -> EventBatch:
    """A PUB message ``[topic, seq, payload]`` as an ``EventBatch``."""
    if len(frames) != 3:
        raise MalformedMessage(f"expected 3 frames, got {len(frames)}")
    topic_raw, seq_raw, payload = frames
    if len(topic_raw) > limits.max_topic_bytes:
        raise MalformedMessage("topic too long")
    try:
        topic = bytes(topic_raw).decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedMessage("topic is not UTF-8") from e
    return decode_payload(payload, decode_sequence(seq_raw), topic, limits)


def decode_payload(payload: bytes, seq: int, topic: str, limits: DecodeLimits = DEFAULT_LIMITS) -> EventBatch:
    """One msgpack ``KVEventBatch`` (from a PUB message or a replay frame)."""
    if len(payload) > limits.max_payload_bytes:
        raise MalformedMessage(f"payload of {len(payload)} bytes exceeds {limits.max_payload_bytes}")
    try:
        raw = msgpack.unpackb(payload, raw=False, use_list=True, max_array_len=limits.max_array_len,
                              max_map_len=limits.max_map_len, max_str_len=limits.max_str_len,
                              max_bin_len=limits.max_bin_len, max_ext_len=0)
    except Exception as e:  # msgpack raises several unrelated types for hostile input
        raise MalformedMessage(f"payload is not valid msgpack: {type(e).__name__}") from e
    ts, raw_events, rank = _batch_fields(raw)
    events: list[KVEvent] = []
    skipped = 0
    for raw_event in raw_events:
        event = _decode_event(raw_event)
        if event is None:
            skipped += 1
        else:
            events.append(event)
    return EventBatch(ts, tuple(events), rank, seq, topic, skipped)


def _batch_fields(raw: object) -> tuple[float, list[Any], int | None]:
    if isinstance(raw, list) and len(raw) >= 2:
        ts, events, rank = raw[0], raw[1], raw[2] if len(raw) > 2 else None
    elif isinstance(raw, dict) and "ts" in raw and "events" in raw:
        ts, events, rank = raw["ts"], raw["events"], raw.get("data_parallel_rank")
    else:
        raise MalformedMessage("payload is not an event batch")
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        raise MalformedMessage("batch timestamp is not a number")
    if not isinstance(events, list):
        raise MalformedMessage("batch events is not a list")
    return float(ts), events, _optional_int(rank, "data_parallel_rank")


_STORED_FIELDS = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium", "lora_name",
                  "extra_keys", "group_idx")
_REMOVED_FIELDS = ("block_hashes", "medium", "group_idx")


def _decode_event(raw: object) -> KVEvent | None:
    if isinstance(raw, list) and raw and isinstance(raw[0], str):
        tag, values = raw[0], raw[1:]
        if tag == "BlockStored":
            return _stored(dict(zip(_STORED_FIELDS, values, strict=False)), len(values))
        if tag == "BlockRemoved":
            return _removed(dict(zip(_REMOVED_FIELDS, values, strict=False)), len(values))
    elif isinstance(raw, dict) and isinstance(raw.get("type"), str):
        tag = raw["type"]
        if tag == "BlockStored":
            return _stored(raw, 4 if all(f in raw for f in _STORED_FIELDS[:4]) else 0)
        if tag == "BlockRemoved":
            return _removed(raw, 1 if "block_hashes" in raw else 0)
    else:
        raise MalformedMessage("event is neither a tagged array nor a tagged map")
    return AllBlocksCleared() if tag == "AllBlocksCleared" else None


def _stored(fields: Mapping[str, Any], present: int) -> BlockStored:
    if present < 4:
        raise MalformedMessage("BlockStored lacks its required fields")
    hashes = _hashes(fields["block_hashes"])
    parent = fields["parent_block_hash"]
    block_size = fields["block_size"]
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise MalformedMessage("BlockStored block_size is not a positive integer")
    tokens = fields["token_ids"]
    if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
        raise MalformedMessage("BlockStored token_ids is not a list of integers")
    if len(tokens) != len(hashes) * block_size:
        raise MalformedMessage(f"BlockStored has {len(tokens)} token ids for {len(hashes)} blocks of {block_size}")
    return BlockStored(hashes, None if parent is None else _hash(parent), tuple(tokens), block_size,
                       _optional_int(fields.get("lora_id"), "lora_id"), _optional_str(fields.get("medium"), "medium"),
                       _optional_str(fields.get("lora_name"), "lora_name"),
                       _optional_int(fields.get("group_idx"), "group_idx"))


def _removed(fields: Mapping[str, Any], present: int) -> BlockRemoved:
    if present < 1:
        raise MalformedMessage("BlockRemoved lacks block_hashes")
    return BlockRemoved(_hashes(fields["block_hashes"]), _optional_str(fields.get("medium"), "medium"),
                        _optional_int(fields.get("group_idx"), "group_idx"))


def _hashes(raw: object) -> tuple[int, ...]:
    if not isinstance(raw, list):
        raise MalformedMessage("block_hashes is not a list")
    return tuple(_hash(h) for h in raw)


def _hash(raw: object) -> int:
    if type(raw) is int:
        return raw
    if isinstance(raw, bytes):
        return int.from_bytes(raw, "big")
    raise MalformedMessage(f"block hash of type {type(raw).__name__}")


def _optional_int(raw: object, name: str) -> int | None:
    if raw is None or type(raw) is int:
        return raw
    raise MalformedMessage(f"{name} is not an integer")


def _optional_str(raw: object, name: str) -> str | None:
    if raw is None or isinstance(raw, str):
        return raw
    raise MalformedMessage(f"{name} is not a string")
