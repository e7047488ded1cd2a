"""Decoding vLLM's KV-cache event messages, across the layouts vLLM has published.

The fixtures under ``fixtures/`` are msgpack payloads written from vLLM's documented
structs (``vllm/distributed/kv_events.py``): v0.9 (positional, no ``medium``, two-field
batch), v0.10 (``medium``, ``data_parallel_rank``), 0.2x (``lora_name``, ``extra_keys``,
``group_idx``, ``kv_cache_spec_kind``, SHA-256 bytes hashes, plus an invented trailing
field), and map-encoded events (vLLM PR #42892; the payload shape volcano-sh/kthena#1535
observed from vLLM 0.26).
"""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.plugins.kvcache.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    DecodeLimits,
    MalformedMessage,
    decode_message,
    decode_payload,
)

FIXTURES = Path(__file__).parent / "fixtures"
TOKENS = tuple(range(100, 132))


def frames(payload: bytes, seq: int = 5, topic: bytes = b"kv@10.0.0.1@m") -> list[bytes]:
    return [topic, seq.to_bytes(8, "big"), payload]


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_vllm_0_9_positional_batch_without_medium_or_rank() -> None:
    batch = decode_message(frames(fixture("vllm-0.9-array.msgpack"), seq=42))
    assert batch.seq == 42
    assert batch.topic == "kv@10.0.0.1@m"
    assert batch.ts == 1747000000.5
    assert batch.data_parallel_rank is None
    assert batch.events == (BlockStored((111, 222), None, TOKENS, 16), BlockRemoved((111,)), AllBlocksCleared())
    assert batch.skipped == 0


def test_vllm_0_10_medium_lora_and_data_parallel_rank() -> None:
    batch = decode_message(frames(fixture("vllm-0.10-array-medium-dp.msgpack")))
    assert batch.data_parallel_rank == 1
    assert batch.events == (BlockStored((333,), 111, TOKENS[:16], 16, lora_id=7, medium="GPU"),
                            BlockRemoved((333,), medium="GPU"))


def test_newer_positional_fields_and_bytes_hashes_are_read_and_unknown_trailing_fields_ignored() -> None:
    batch = decode_message(frames(fixture("vllm-0.20-array-extra-fields.msgpack")))
    digest = int.from_bytes(bytes(range(32)), "big")
    assert batch.events == (BlockStored((digest,), None, TOKENS[:16], 16, None, "GPU", None, 0),
                            BlockRemoved((digest,), "GPU", 0))


def test_map_encoded_events() -> None:
    batch = decode_message(frames(fixture("vllm-map-events.msgpack")))
    assert batch.data_parallel_rank == 0
    assert batch.events == (BlockStored((15760518052499183552,), None, TOKENS[:16], 16, None, "GPU", None, 0),
                            BlockRemoved((15760518052499183552,), "GPU"), AllBlocksCleared())


def test_map_encoded_batch_with_rank_omitted() -> None:
    payload = msgpack.packb({"ts": 1.0, "events": [{"type": "AllBlocksCleared"}]})
    batch = decode_payload(payload, 3, "t")
    assert batch.events == (AllBlocksCleared(),)
    assert batch.data_parallel_rank is None


def test_unknown_event_types_are_counted_and_skipped() -> None:
    payload = msgpack.packb([1.0, [["BlockMoved", [1]], ["AllBlocksCleared"], {"type": "Future", "x": 1}], 0])
    batch = decode_payload(payload, 0, "")
    assert batch.events == (AllBlocksCleared(),)
    assert batch.skipped == 2


def test_negative_sequence_and_hash_values_round_trip() -> None:
    payload = msgpack.packb([1.0, [["BlockRemoved", [-5]]]])
    batch = decode_message([b"", (7).to_bytes(8, "big"), payload])
    assert batch.events == (BlockRemoved((-5,)),)


@pytest.mark.parametrize("message", [
    [b"topic", b"\x00" * 8],                                               # two frames
    [b"t", b"\x00" * 8, b"x", b"extra"],                                   # four frames
    [b"t", b"\x00" * 7, msgpack.packb([1.0, []])],                         # short sequence
    [b"\xff\xfe", b"\x00" * 8, msgpack.packb([1.0, []])],                  # topic not UTF-8
    [b"t", b"\x00" * 8, b"\xc1"],                                          # never-used msgpack byte
    [b"t", b"\x00" * 8, msgpack.packb([1.0, []])[:-1] + b"\x92"],          # truncated
    [b"t", b"\x00" * 8, msgpack.packb("just a string")],
    [b"t", b"\x00" * 8, msgpack.packb(["ts", []])],                        # timestamp not a number
    [b"t", b"\x00" * 8, msgpack.packb([1.0, {"not": "a list"}])],
    [b"t", b"\x00" * 8, msgpack.packb([1.0, [42]])],                       # event neither array nor map
    [b"t", b"\x00" * 8, msgpack.packb([1.0, [["BlockStored", [1], None]]])],  # required fields missing
    [b"t", b"\x00" * 8, msgpack.packb([1.0, [["BlockStored", [1], None, [1, 2], 4, None]]])],  # tokens ≠ blocks
    [b"t", b"\x00" * 8, msgpack.packb([1.0, [["BlockStored", [1], None, [1.5, 2], 2, None]]])],
    [b"t", b"\x00" * 8, msgpack.packb([1.0, [["BlockStored", [1], None, [1, 2], 0, None]]])],
    [b"t", b"\x00" * 8, msgpack.packb([1.0, [["BlockStored", ["h"], None, [1, 2], 2, None]]])],
    [b"t", b"\x00" * 8, msgpack.packb([1.0, [["BlockRemoved", [1], 5]]])],  # medium not a string
    [b"t", b"\x00" * 8, msgpack.packb([1.0, [{"type": "BlockStored", "block_hashes": [1]}]])],
    [b"t", b"\x00" * 8, msgpack.packb([1.0, [], "rank"])],
    [b"t", b"\x00" * 8, b"\x91" * 5000 + b"\xc0"],                         # nesting deeper than msgpack allows
])
def test_malformed_messages_raise_one_error_type(message: list[bytes]) -> None:
    with pytest.raises(MalformedMessage):
        decode_message(message)


def test_size_and_length_limits_reject_what_a_peer_must_not_send() -> None:
    limits = DecodeLimits(max_payload_bytes=1000, max_array_len=100, max_topic_bytes=8)
    big_payload = msgpack.packb([1.0, [["BlockStored", [1], None, list(range(1000, 1600)), 600, None]]])
    long_array = msgpack.packb([1.0, [["BlockRemoved", list(range(101))]]])
    with pytest.raises(MalformedMessage, match="exceeds"):
        decode_message(frames(big_payload, topic=b"t"), limits)
    with pytest.raises(MalformedMessage):
        decode_message(frames(long_array, topic=b"t"), limits)
    with pytest.raises(MalformedMessage, match="topic"):
        decode_message(frames(msgpack.packb([1.0, []]), topic=b"123456789"), limits)
    # The same payloads are fine within the default limits.
    assert decode_message(frames(long_array, topic=b"t")).events == (BlockRemoved(tuple(range(101))),)


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.binary(max_size=40) | st.sampled_from(["BlockStored", "BlockRemoved", "AllBlocksCleared", "type"]),
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(st.sampled_from(
        ["type", "ts", "events", "block_hashes", "parent_block_hash", "token_ids", "block_size", "medium"]), inner,
        max_size=6),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), _VALUES.map(msgpack.packb)))
def test_any_payload_decodes_or_raises_malformed_never_anything_else(payload: bytes) -> None:
    try:
        batch = decode_payload(payload, 0, "")
    except MalformedMessage:
        return
    assert all(isinstance(e, BlockStored | BlockRemoved | AllBlocksCleared) for e in batch.events)


def test_the_simulators_payloads_decode() -> None:
    """The simulator (epp/sim) publishes what this decoder reads: one wire format on both sides."""
    from epp.sim import kv_events as sim

    log = sim.KVEventLog(block_size=16)
    log.stored([1, 2], None, list(TOKENS), 7, "adapter")
    log.removed(2)
    log.cleared()
    batch = decode_payload(sim.encode_batch(2.5, log.drain(), data_parallel_rank=0), 9, "kv@sim@m")
    assert batch.events == (BlockStored((1, 2), None, TOKENS, 16, 7, "GPU", "adapter"), BlockRemoved((2,), "GPU"),
                            AllBlocksCleared())
