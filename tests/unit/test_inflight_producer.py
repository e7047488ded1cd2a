"""``inflight-load-producer``: requests and estimated tokens in flight per endpoint."""

from __future__ import annotations

import random
from typing import Any

import pytest

from epp.datalayer.endpoint import EndpointMetadata
from epp.datalayer.pool import EndpointPool
from epp.errors import ConfigError
from epp.framework.attributes import InFlightLoad
from epp.framework.plugin import Handle
from epp.framework.requestcontrol import ResponseInfo
from epp.framework.scheduling import CycleState
from epp.plugins import default_registry
from epp.plugins.inflight.producer import INFLIGHT_LOAD_KEY, InFlightLoadProducer, estimate_tokens


@pytest.mark.parametrize(
    ("prompt", "body", "raw_body", "tokens"),
    [
        pytest.param(b"x" * 400, {}, b"{}", 100 + 150, id="input is prompt bytes / 4, output 1.5x input"),
        pytest.param(b"x" * 41, {}, b"{}", 10 + 15, id="input bytes are divided down"),
        pytest.param(b"xy", {}, b"{}", 1 + 2, id="at least one input token (1.5 rounds to 2)"),
        pytest.param(b"x" * 400, {"max_tokens": 7}, b"{}", 100 + 7, id="max_tokens is the output estimate"),
        pytest.param(b"x" * 400, {"max_completion_tokens": 9}, b"{}", 100 + 9,
                     id="max_completion_tokens is the output estimate"),
        pytest.param(b"x" * 400, {"max_tokens": 0}, b"{}", 100 + 150, id="a zero max_tokens is ignored"),
        pytest.param(b"x" * 400, {"max_tokens": True}, b"{}", 100 + 150, id="a bool max_tokens is ignored"),
        pytest.param(b"x" * 400, {"max_tokens": "7"}, b"{}", 100 + 150, id="a string max_tokens is ignored"),
        pytest.param(b"", {}, b"y" * 80, 20 + 30, id="without prompt text the body size is used"),
    ],
)
def test_token_estimate(make_request: Any, prompt: bytes, body: dict[str, Any], raw_body: bytes, tokens: int) -> None:
    assert estimate_tokens(make_request(prompt, body=body, raw_body=raw_body)) == tokens


def test_pre_request_counts_up_on_the_primary_endpoint_only(create: Any, make_endpoint: Any, make_request: Any,
                                                            routed: Any) -> None:
    producer = create("inflight-load-producer")
    a, b = make_endpoint("a"), make_endpoint("b")
    producer.pre_request(CycleState(), make_request(b"x" * 40, request_id="1"), routed(a, b))
    producer.pre_request(CycleState(), make_request(b"x" * 80, request_id="2"), routed(a))
    assert (producer.load.requests("a"), producer.load.tokens("a")) == (2, 25 + 50)
    assert (producer.load.requests("b"), producer.load.tokens("b")) == (0, 0)


def test_response_complete_counts_down_exactly_once(create: Any, make_endpoint: Any, make_request: Any,
                                                    routed: Any) -> None:
    producer = create("inflight-load-producer")
    a = make_endpoint("a")
    first, second = make_request(b"x" * 40, request_id="1"), make_request(b"x" * 80, request_id="2")
    producer.pre_request(CycleState(), first, routed(a))
    producer.pre_request(CycleState(), second, routed(a))
    producer.response_complete(first, ResponseInfo(endpoint=a, completed=True))
    producer.response_complete(first, ResponseInfo(endpoint=a, completed=True))  # a repeat is a no-op
    assert (producer.load.requests("a"), producer.load.tokens("a")) == (1, 50)
    producer.response_complete(second, ResponseInfo(endpoint=a))  # ended early (disconnect)
    assert (producer.load.requests("a"), producer.load.tokens("a")) == (0, 0)


def test_completing_a_request_that_was_never_routed_changes_nothing(create: Any, make_request: Any) -> None:
    producer = create("inflight-load-producer")
    producer.response_complete(make_request(b"x" * 40), ResponseInfo())
    assert (producer.load.requests("a"), producer.load.tokens("a")) == (0, 0)


def test_a_changed_body_after_routing_releases_what_was_added(create: Any, make_endpoint: Any, make_request: Any,
                                                              routed: Any) -> None:
    producer = create("inflight-load-producer")
    a = make_endpoint("a")
    request = make_request(b"x" * 40)
    producer.pre_request(CycleState(), request, routed(a))
    request.body["max_tokens"] = 1000  # the estimate would now differ
    producer.response_complete(request, ResponseInfo(endpoint=a, completed=True))
    assert (producer.load.requests("a"), producer.load.tokens("a")) == (0, 0)


async def test_prepare_data_publishes_a_live_read_only_view_of_the_counts(create: Any, make_endpoint: Any,
                                                                         make_request: Any, routed: Any) -> None:
    producer = create("inflight-load-producer")
    cycle = CycleState()
    await producer.prepare_data(cycle, make_request(), [])
    load = cycle.read(INFLIGHT_LOAD_KEY, InFlightLoad)
    producer.pre_request(CycleState(), make_request(b"x" * 40), routed(make_endpoint("a")))
    assert (load.requests("a"), load.tokens("a"), load.prefill_backlog("a")) == (1, 25, 10)
    assert not isinstance(load, InFlightLoadProducer)  # consumers get the counts, not the plugin


def test_an_endpoint_removed_from_the_pool_forgets_its_counts(make_request: Any, routed: Any) -> None:
    pool = EndpointPool()
    pool.replace_all([EndpointMetadata("a", "10.0.0.1", 8000, 8000)])
    producer = default_registry().create("inflight-load-producer", "inflight", None,
                                         Handle(pool=pool, rng=random.Random(1)), "plugins[0]")
    assert isinstance(producer, InFlightLoadProducer)
    a = pool.get("a")
    request = make_request(b"x" * 40)
    producer.pre_request(CycleState(), request, routed(a))
    pool.replace_all([])
    assert (producer.load.requests("a"), producer.load.tokens("a")) == (0, 0)
    producer.response_complete(request, ResponseInfo(endpoint=a, completed=True))
    assert (producer.load.requests("a"), producer.load.tokens("a")) == (0, 0)


def test_two_producers_keep_separate_request_state(registry: Any, handle: Any, make_endpoint: Any,
                                                   make_request: Any, routed: Any) -> None:
    one = registry.create("inflight-load-producer", "one", None, handle, "plugins[0]")
    two = registry.create("inflight-load-producer", "two", None, handle, "plugins[1]")
    a = make_endpoint("a")
    request = make_request(b"x" * 40)
    one.pre_request(CycleState(), request, routed(a))
    two.pre_request(CycleState(), request, routed(a))
    one.response_complete(request, ResponseInfo(endpoint=a))
    assert (one.load.requests("a"), two.load.requests("a")) == (0, 1)


def test_inflight_producer_takes_no_parameters(create: Any) -> None:
    with pytest.raises(ConfigError, match="takes no parameters"):
        create("inflight-load-producer", {"outputRatio": 2})


def test_a_request_routed_before_an_endpoint_left_and_rejoined_does_not_release_newer_load(
    make_request: Any, routed: Any
) -> None:
    pool = EndpointPool()
    member = EndpointMetadata("a", "10.0.0.1", 8000, 8000)
    pool.replace_all([member])
    producer = default_registry().create("inflight-load-producer", "inflight", None,
                                         Handle(pool=pool, rng=random.Random(1)), "plugins[0]")
    assert isinstance(producer, InFlightLoadProducer)
    old = make_request(b"x" * 40, request_id="old")
    producer.pre_request(CycleState(), old, routed(pool.get("a")))
    pool.replace_all([])  # the endpoint leaves (its counts are dropped) ...
    pool.replace_all([member])  # ... and comes back
    new = make_request(b"x" * 80, request_id="new")
    producer.pre_request(CycleState(), new, routed(pool.get("a")))
    producer.response_complete(old, ResponseInfo(completed=True))  # the old request finishes late
    assert (producer.load.requests("a"), producer.load.tokens("a")) == (1, 50)


def test_the_membership_map_stays_bounded_as_10000_endpoints_join_and_leave(make_request: Any, routed: Any) -> None:
    # It used to keep one epoch per endpoint name ever seen, for the life of the picker.
    pool = EndpointPool()
    producer = default_registry().create("inflight-load-producer", "inflight", None,
                                         Handle(pool=pool, rng=random.Random(1)), "plugins[0]")
    assert isinstance(producer, InFlightLoadProducer)
    late = []  # requests still running when their endpoint left, finishing afterwards
    largest = 0
    for i in range(10_000):
        pool.replace_all([EndpointMetadata(f"ep-{i}", "10.0.0.1", 8000 + i % 1000, 8000)])
        request = make_request(b"x" * 40, request_id=str(i))
        producer.pre_request(CycleState(), request, routed(pool.get(f"ep-{i}")))
        if i % 2:
            producer.response_complete(request, ResponseInfo(completed=True))
        else:
            late.append(request)
        largest = max(largest, producer.debug_sizes()["memberships"])
    pool.replace_all([])
    for request in late:
        producer.response_complete(request, ResponseInfo(completed=True))
    assert largest == 1
    assert producer.debug_sizes() == {"endpoints": 0, "memberships": 0, "requests": 0, "tokens": 0,
                                      "prefillBacklog": 0}


def test_an_endpoint_that_goes_idle_and_gets_busy_again_counts_only_the_new_load(
    make_endpoint: Any, make_request: Any, routed: Any, create: Any
) -> None:
    producer = create("inflight-load-producer")
    a = make_endpoint("a")
    first, second, third = (make_request(b"x" * 40, request_id=str(i)) for i in range(3))
    producer.pre_request(CycleState(), first, routed(a))
    producer.response_streaming(first, ResponseInfo(endpoint=a), b"x")
    producer.response_complete(first, ResponseInfo(endpoint=a, completed=True))  # idle: the name is forgotten
    producer.pre_request(CycleState(), second, routed(a))
    producer.pre_request(CycleState(), third, routed(a))
    producer.response_streaming(second, ResponseInfo(endpoint=a), b"x")
    producer.response_complete(second, ResponseInfo(endpoint=a, completed=True))
    assert (producer.load.requests("a"), producer.load.tokens("a"), producer.load.prefill_backlog("a")) == (1, 25, 10)


async def test_remote_load_adds_to_what_scorers_read_and_local_load_stays_local(
        create: Any, make_endpoint: Any, make_request: Any, routed: Any) -> None:
    producer = create("inflight-load-producer")
    a = make_endpoint("a")
    request = make_request(b"x" * 40)
    producer.pre_request(CycleState(), request, routed(a))
    producer.set_remote_load({"a": (2, 100, 30), "b": (1, 10, 0)})
    cycle = CycleState()
    await producer.prepare_data(cycle, request, [a])
    load = cycle[INFLIGHT_LOAD_KEY]
    assert (load.requests("a"), load.tokens("a"), load.prefill_backlog("a")) == (3, 125, 40)
    assert (load.requests("b"), load.tokens("b")) == (1, 10)
    assert producer.local_load() == {"a": (1, 25, 10)}  # only what this replica routed is replicated
    producer.response_streaming(request, ResponseInfo(endpoint=a), b"chunk")
    assert load.prefill_backlog("a") == 30
    producer.response_complete(request, ResponseInfo(endpoint=a, completed=True))
    assert (load.requests("a"), load.tokens("a"), load.prefill_backlog("a")) == (2, 100, 30)
    assert producer.local_load() == {}
    producer.set_remote_load({})  # the other replicas' load left (expired or released)
    assert (load.requests("a"), load.requests("b")) == (0, 0)
    assert producer.debug_sizes()["remoteRequests"] == 0


def test_a_removed_endpoint_keeps_only_the_other_replicas_load(create: Any, make_endpoint: Any,
                                                               make_request: Any, routed: Any) -> None:
    producer = create("inflight-load-producer")
    a = make_endpoint("a")
    producer.set_remote_load({"a": (2, 20, 0)})
    producer.pre_request(CycleState(), make_request(b"x" * 40), routed(a))
    assert producer.load.requests("a") == 3
    producer.endpoint_removed(a)
    assert producer.load.requests("a") == 2


def test_routes_and_prefill_backlog_changes_are_named_to_the_watcher(create: Any, make_endpoint: Any,
                                                                     make_request: Any, routed: Any) -> None:
    producer = create("inflight-load-producer")
    a, b = make_endpoint("a"), make_endpoint("b")
    changed: list[str] = []
    producer.watch_local(changed.append)
    request = make_request(b"x" * 40)
    producer.pre_request(CycleState(), request, routed(a))
    producer.response_streaming(request, ResponseInfo(endpoint=a), b"first")
    producer.response_streaming(request, ResponseInfo(endpoint=a), b"second")  # backlog already left
    producer.response_complete(request, ResponseInfo(endpoint=a, completed=True))  # backlog unchanged: no note
    assert changed == ["a", "a"]
    first, second = make_request(b"x" * 40), make_request(b"x" * 40)
    producer.pre_request(CycleState(), first, routed(b))
    producer.pre_request(CycleState(), second, routed(b))
    producer.response_complete(first, ResponseInfo(endpoint=b))  # ended before its first byte: backlog left
    producer.response_complete(second, ResponseInfo(endpoint=b))
    producer.endpoint_removed(b)
    assert changed == ["a", "a", "b", "b", "b", "b"]
    producer.watch_local(None)
    producer.pre_request(CycleState(), make_request(b"x" * 40), routed(a))
    assert len(changed) == 6
