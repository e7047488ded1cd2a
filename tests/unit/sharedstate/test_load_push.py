"""How pushed load changes and round hashes combine: the newer news wins, whichever arrives last."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from epp.sharedstate.address import parse_store_url
from epp.sharedstate.load_sync import EndpointLoad, LoadReplication, decode_push, encode_push
from epp.sharedstate.store import StateStore


class Producer:
    """Stands in for the in-flight producer: what replication hands it is what its scorers would read."""

    def __init__(self) -> None:
        self.local: dict[str, EndpointLoad] = {}
        self.remote: dict[str, EndpointLoad] = {}
        self.on_change: Callable[[str], None] | None = None

    def local_load(self) -> dict[str, EndpointLoad]:
        return dict(self.local)

    def set_remote_load(self, remote: Mapping[str, EndpointLoad]) -> None:
        self.remote = dict(remote)

    def watch_local(self, on_change: Callable[[str], None] | None) -> None:
        self.on_change = on_change


def _replication() -> tuple[LoadReplication, Producer]:
    producer = Producer()
    # Never connects: these tests hand messages and hashes in directly.
    store = StateStore(parse_store_url("redis://127.0.0.1:1/0"))
    replication = LoadReplication(store, "epp:p", "me", {"inflight": producer}, ttl=3.0)
    replication.apply_round([], [])  # a first round read the store: pushes refine what it built
    return replication, producer


def _hash(sequence: int, generation: bytes = b"g1", **loads: str) -> dict[bytes, bytes]:
    values = {b"_hb": b"1000", b"_gen": generation, b"_seq": b"%d" % sequence}
    values.update({f"inflight\t{ep}".encode(): v.encode() for ep, v in loads.items()})
    return values


def test_a_push_round_trips_and_garbage_is_refused() -> None:
    payload = encode_push("peer", b"g1", 7, {b"inflight\te1": (2, 300, 100), b"inflight\te 2": (0, 0, 0)})
    assert decode_push(payload) == ("peer", b"g1", 7, {b"inflight\te1": (2, 300, 100), b"inflight\te 2": (0, 0, 0)})
    assert decode_push(b"peer") is None
    assert decode_push(b"peer\ng1 x") is None
    assert decode_push(b"peer\ng1 7\n1 2 inflight\te1") is None


def test_a_pushed_change_is_seen_at_once_and_its_release_too() -> None:
    replication, producer = _replication()
    replication.receive(encode_push("peer", b"g1", 1, {b"inflight\te1": (1, 100, 60)}))
    assert producer.remote == {"e1": (1, 100, 60)}
    replication.receive(encode_push("peer", b"g1", 2, {b"inflight\te1": (1, 100, 0)}))  # first byte
    assert producer.remote == {"e1": (1, 100, 0)}
    replication.receive(encode_push("peer", b"g1", 3, {b"inflight\te1": (0, 0, 0)}))  # finished
    assert producer.remote == {}


def test_an_older_hash_keeps_newer_pushes_and_a_newer_hash_replaces_older_ones() -> None:
    replication, producer = _replication()
    replication.receive(encode_push("peer", b"g1", 5, {b"inflight\te1": (2, 200, 120)}))
    replication.apply_round(["peer"], [_hash(4, e1="1 100 60", e2="1 50 0")])
    assert producer.remote == {"e1": (2, 200, 120), "e2": (1, 50, 0)}
    replication.apply_round(["peer"], [_hash(6, e2="1 50 0")])  # e1 went idle after push 5
    assert producer.remote == {"e2": (1, 50, 0)}
    replication.receive(encode_push("peer", b"g1", 5, {b"inflight\te1": (2, 200, 120)}))  # late duplicate
    assert producer.remote == {"e2": (1, 50, 0)}


def test_a_replica_restarted_under_the_same_id_starts_a_new_sequence() -> None:
    replication, producer = _replication()
    replication.apply_round(["peer"], [_hash(90, e1="3 300 0")])
    replication.receive(encode_push("peer", b"g2", 1, {b"inflight\te1": (1, 10, 10)}))
    assert producer.remote == {"e1": (1, 10, 10)}


def test_pushed_load_of_an_unregistered_or_expired_replica_is_dropped_at_the_next_round() -> None:
    replication, producer = _replication()
    replication.receive(encode_push("gone", b"g1", 1, {b"inflight\te1": (1, 10, 10)}))
    assert producer.remote == {"e1": (1, 10, 10)}
    replication.apply_round([], [])  # not registered (it stopped gracefully)
    assert producer.remote == {}
    replication.receive(encode_push("peer", b"g1", 1, {b"inflight\te1": (1, 10, 10)}))
    replication.apply_round(["peer"], [{}])  # registered, but its key expired: it died
    assert producer.remote == {}


def test_own_pushes_are_ignored_and_local_changes_are_noted_for_the_push_loop() -> None:
    replication, producer = _replication()
    replication.receive(encode_push("me", b"other", 1, {b"inflight\te1": (1, 10, 10)}))
    assert producer.remote == {}
    replication.attach()
    assert producer.on_change is not None
    producer.on_change("e1")
    producer.on_change("e1")
    assert replication._dirty == {("inflight", "e1")}  # noqa: SLF001 - what the push loop will send
    replication.detach()
    assert producer.on_change is None


def test_pushes_are_ignored_while_rounds_fail_so_pushed_load_cannot_outlive_the_ttl() -> None:
    now = [0.0]
    producer = Producer()
    store = StateStore(parse_store_url("redis://127.0.0.1:1/0"))
    replication = LoadReplication(store, "epp:p", "me", {"inflight": producer}, ttl=3.0, monotonic=lambda: now[0])
    replication.receive(encode_push("peer", b"g1", 1, {b"inflight\te1": (1, 100, 60)}))
    assert producer.remote == {}  # no round yet
    replication.apply_round(["peer"], [_hash(1, e1="1 100 60")])
    assert producer.remote == {"e1": (1, 100, 60)}
    now[0] = 10.0  # rounds have failed for longer than the TTL
    replication.expire_if_stale()
    replication.receive(encode_push("peer", b"g1", 2, {b"inflight\te1": (2, 200, 120)}))
    assert producer.remote == {}


def test_numbers_too_long_for_a_load_are_refused_not_raised() -> None:
    huge = b"9" * 5000  # int() of this raises on Python 3.11; 1,000 digits would overflow floats
    assert decode_push(b"peer\ng1 " + huge) is None
    assert decode_push(b"peer\ng1 1\n" + huge + b" 0 0 inflight\te1") is None
    replication, producer = _replication()
    replication.apply_round(["peer"], [_hash(1, e1=f"{'9' * 1000} 0 0", e2="1 10 0")])
    assert producer.remote == {"e2": (1, 10, 0)}
    assert replication.counters.bad_fields == 1


def test_shared_ratios_reach_every_producer_and_garbage_is_counted() -> None:
    from epp.sharedstate.ratio_sync import RatioReplication

    class Sharer:
        def __init__(self) -> None:
            self.agreed: dict[str, float] = {}

        def adopted_ratios(self) -> dict[str, float]:
            return {}

        def agree_ratio(self, model: str, chars_per_token: float) -> None:
            self.agreed[model] = chars_per_token

    sharer = Sharer()
    replication = RatioReplication(StateStore(parse_store_url("redis://127.0.0.1:1/0")), "epp:p", {"p": sharer})
    replication.apply({b"m": b"2.25", b"n": b"nan", b"o": b"x" * 10, b"q" * 2000: b"2.0"})
    assert sharer.agreed == {"m": 2.25}
    assert replication.counters.bad_values == 3
