"""Prefix replication without a store: the outbox's bounds and how stream entries are applied."""

from __future__ import annotations

from collections.abc import Callable

from epp.plugins.prefix.index import PrefixIndex
from epp.sharedstate.address import StoreAddress
from epp.sharedstate.codec import PrefixRecord, encode_batch
from epp.sharedstate.prefix_sync import PrefixReplication
from epp.sharedstate.store import StateStore


def replication(indexes: dict[str, PrefixIndex], limit: int = 8192,
                is_member: Callable[[str], bool] | None = None) -> PrefixReplication:
    # The store is never contacted here: applying entries and queueing records are local.
    store = StateStore(StoreAddress("127.0.0.1", 1))
    sync = PrefixReplication(store, "s", "me", indexes, outbox_limit=limit, is_member=is_member,
                             clock=lambda: 1000.5)
    sync.attach()
    return sync


def entry(replica: bytes, *records: PrefixRecord) -> dict[bytes, bytes]:
    return {b"r": replica, b"v": encode_batch(records)}


def test_the_outbox_keeps_the_newest_records_and_counts_the_dropped() -> None:
    index = PrefixIndex(100)
    sync = replication({"prefix": index}, limit=3)
    for i in range(5):
        index.record("e", [i], 64)
    assert [r.hashes for r in sync.outbox.take(10)] == [[2], [3], [4]]
    assert sync.outbox.dropped == 2
    sync.detach()
    index.record("e", [9], 64)
    assert len(sync.outbox) == 0


def test_take_returns_at_most_n_oldest_first() -> None:
    index = PrefixIndex(100)
    sync = replication({"prefix": index})
    for i in range(5):
        index.record("e", [i])
    assert [r.hashes for r in sync.outbox.take(2)] == [[0], [1]]
    assert len(sync.outbox) == 3


def test_other_replicas_records_are_applied_and_not_published_again() -> None:
    index = PrefixIndex(100)
    sync = replication({"prefix": index})
    sync.apply_entry(b"1000000-0", entry(b"other", PrefixRecord("prefix", "e", 64, (1, 2, 3))))
    assert index.match([1, 2, 3]) == {"e": 3}
    assert len(sync.outbox) == 0
    assert sync.counters.records_applied == 1
    assert sync.counters.lag_seconds == 0.5


def test_own_entries_are_skipped() -> None:
    index = PrefixIndex(100)
    sync = replication({"prefix": index})
    sync.apply_entry(b"1-0", entry(b"me", PrefixRecord("prefix", "e", 64, (1,))))
    assert index.match([1]) == {}
    assert sync.counters.records_applied == 0


def test_bad_entries_are_skipped_and_counted_and_the_rest_still_applied() -> None:
    index = PrefixIndex(100)
    sync = replication({"prefix": index})
    reply = [[b"s", [
        (b"1-0", {b"r": b"other", b"v": b"\x01garbage"}),
        (b"2-0", {b"r": b"other"}),  # no payload
        (b"not-an-id", entry(b"other", PrefixRecord("prefix", "e", 64, (7,)))),
    ]]]
    sync.apply_reply(reply)
    assert sync.counters.bad_entries == 2
    assert index.match([7]) == {"e": 1}
    sync.apply_reply(None)  # a quiet block
    assert sync.counters.entries_read == 3


def test_records_of_another_block_size_or_unknown_producer_are_skipped_and_counted() -> None:
    index = PrefixIndex(100)
    sync = replication({"prefix": index})
    index.record("e", [1], 64)  # this replica records 64-byte blocks
    sync.apply_entry(b"1-0", entry(b"other",
                                   PrefixRecord("prefix", "e", 128, (5,)),
                                   PrefixRecord("elsewhere", "e", 64, (6,)),
                                   PrefixRecord("prefix", "e", 64, (7,))))
    assert sync.counters.block_size_mismatches == 1
    assert sync.counters.unknown_sources == 1
    assert index.match([5]) == {} and index.match([6]) == {} and index.match([7]) == {"e": 1}


def test_records_for_endpoints_outside_the_local_pool_are_skipped() -> None:
    index = PrefixIndex(100)
    sync = replication({"prefix": index}, is_member=lambda name: name == "here")
    sync.apply_entry(b"1-0", entry(b"other", PrefixRecord("prefix", "gone", 64, (1,)),
                                   PrefixRecord("prefix", "here", 64, (2,))))
    assert index.match([1]) == {} and index.match([2]) == {"here": 1}
    assert sync.counters.unknown_endpoints == 1
