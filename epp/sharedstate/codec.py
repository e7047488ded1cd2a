"""Prefix records on the wire: one stream entry carries a batch, in a compact binary form.

Layout (little-endian): a version byte, then per record

    u8 source length, source (UTF-8: the prefix producer's plugin name)
    u16 endpoint length, endpoint (UTF-8)
    u32 block size in bytes (0 = not known to the recorder)
    u16 hash count, then that many u64 block hashes, head of the chain first

Hashes are random 64-bit values, so they cost 8 bytes each whatever the encoding; the
framing adds 10 bytes plus two names per record. Anything malformed raises ``CodecError``:
the entry comes from the network, and a bad one must be skipped, never trusted.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["MAX_HASHES", "CodecError", "PrefixRecord", "decode_batch", "encode_batch"]

VERSION = 1
MAX_HASHES = 0xFFFF  # longer chains are cut at the tail: the head is what matches
_MAX_NAME = 0xFF
_HEAD = struct.Struct("<IH")  # block bytes, hash count
_SWAP = sys.byteorder != "little"  # array() is native-endian; the wire is little-endian


class CodecError(ValueError):
    """A stream entry that is not a valid batch of prefix records."""


class PrefixRecord(NamedTuple):
    source: str  # the prefix producer's name: every replica runs the same config
    endpoint: str
    block_bytes: int
    hashes: Sequence[int]


def encode_batch(records: Sequence[PrefixRecord]) -> bytes:
    out = bytearray((VERSION,))
    for source, endpoint, block_bytes, hashes in records:
        name = source.encode()[:_MAX_NAME]
        ep = endpoint.encode()
        if len(ep) > 0xFFFF:
            raise CodecError(f"endpoint name of {len(ep)} bytes")
        hashes = hashes[:MAX_HASHES]
        out.append(len(name))
        out += name
        out += len(ep).to_bytes(2, "little")
        out += ep
        out += _HEAD.pack(block_bytes, len(hashes))
        words = array("Q", hashes)
        if _SWAP:
            words.byteswap()
        out += words.tobytes()
    return bytes(out)


def decode_batch(data: bytes) -> list[PrefixRecord]:
    if not data or data[0] != VERSION:
        raise CodecError(f"unknown version {data[:1]!r}")
    records: list[PrefixRecord] = []
    pos, end = 1, len(data)
    try:
        while pos < end:
            n = data[pos]
            if pos + 1 + n > end:
                raise CodecError("truncated source")
            source = data[pos + 1: pos + 1 + n].decode()
            pos += 1 + n
            n = int.from_bytes(data[pos: pos + 2], "little")
            if pos + 2 + n > end:
                raise CodecError("truncated endpoint")
            endpoint = data[pos + 2: pos + 2 + n].decode()
            if not endpoint:
                raise CodecError("empty endpoint name")
            pos += 2 + n
            block_bytes, count = _HEAD.unpack_from(data, pos)
            pos += _HEAD.size
            if pos + 8 * count > end:
                raise CodecError("truncated hashes")
            hashes = array("Q", data[pos: pos + 8 * count])
            if _SWAP:
                hashes.byteswap()
            pos += 8 * count
            records.append(PrefixRecord(source, endpoint, block_bytes, hashes))
    except (struct.error, UnicodeDecodeError, IndexError, OverflowError) as e:
        raise CodecError(str(e)) from None
    return records
