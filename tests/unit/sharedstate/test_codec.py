"""The prefix records' wire form: round trips, and garbage refused with ``CodecError``."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from epp.sharedstate.codec import MAX_HASHES, CodecError, PrefixRecord, decode_batch, encode_batch

U64 = st.integers(min_value=0, max_value=2**64 - 1)
RECORDS = st.lists(st.builds(PrefixRecord, st.text(max_size=20), st.text(min_size=1, max_size=40),
                             st.integers(0, 2**32 - 1), st.lists(U64, max_size=40).map(tuple)), max_size=8)


@given(RECORDS)
def test_a_batch_decodes_to_what_was_encoded(records: list[PrefixRecord]) -> None:
    decoded = decode_batch(encode_batch(records))
    assert [(*r[:3], list(r.hashes)) for r in decoded] == [(*r[:3], list(r.hashes)) for r in records]


def test_the_wire_is_little_endian() -> None:
    data = encode_batch([PrefixRecord("p", "e", 64, [1])])
    assert data.endswith((1).to_bytes(8, "little"))


def test_an_overlong_chain_keeps_its_head() -> None:
    hashes = list(range(MAX_HASHES + 5))
    (record,) = decode_batch(encode_batch([PrefixRecord("p", "e", 64, hashes)]))
    assert record.hashes[0] == 0 and record.hashes[-1] == MAX_HASHES - 1
    assert list(record.hashes) == hashes[:MAX_HASHES]


@pytest.mark.parametrize("data", [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x02", id="unknown version"),
    pytest.param(b"\x01\x05ab", id="truncated source"),
    pytest.param(b"\x01\x01p\x09\x00e", id="truncated endpoint"),
    pytest.param(b"\x01\x01p\x00\x00" + b"\x40\x00\x00\x00\x00\x00", id="empty endpoint"),
    pytest.param(b"\x01\x01p\x01\x00e\x40\x00\x00\x00\x02\x00" + b"\x00" * 9, id="truncated hashes"),
    pytest.param(b"\x01\x01p\x01\x00e\x40\x00", id="truncated header"),
    pytest.param(b"\x01\x01\xff\x01\x00e\x40\x00\x00\x00\x00\x00", id="source not UTF-8"),
])
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_batch(data)


def test_random_bytes_never_raise_anything_but_codec_error() -> None:
    rng = random.Random(7)
    good = encode_batch([PrefixRecord("prefix", "10.0.0.1:8000", 64, [1, 2, 3])])
    refused = 0
    for _ in range(2000):
        data = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = data[: rng.randrange(len(data) + 1)]
        try:
            decode_batch(bytes(data))
        except CodecError:
            refused += 1
    assert 0 < refused < 2000  # some corruptions still parse (a changed hash byte), none crash
