"""``approx-prefix-cache-producer``: hash once per request, match, and record the routed endpoint."""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from epp.datalayer.endpoint import EndpointMetadata
from epp.datalayer.pool import EndpointPool
from epp.errors import ConfigError
from epp.framework.attributes import (
    CHARS_PER_TOKEN_KEY,
    PREFIX_MATCH_KEY,
    PrefixMatch,
    request_chars_per_token,
    request_prompt_tokens,
)
from epp.framework.plugin import Handle
from epp.framework.requestcontrol import ResponseInfo, Usage
from epp.framework.scheduling import CycleState
from epp.plugins import default_registry
from epp.plugins.prefix.hashing import hash_prompt
from epp.plugins.prefix.producer import ApproxPrefixCacheProducer

BLOCK = 16 * 4  # default blockSizeTokens (16) in bytes
PROMPT = bytes(range(32, 96)) * 4  # four full blocks


async def prepare(producer: Any, request: Any, endpoints: list[Any]) -> PrefixMatch:
    cycle = CycleState()
    await producer.prepare_data(cycle, request, endpoints)
    match = cycle[PREFIX_MATCH_KEY]
    assert isinstance(match, PrefixMatch)
    return match


async def route(producer: Any, request: Any, endpoints: list[Any], result: Any) -> PrefixMatch:
    """One request's life as the director runs it: prepare data, then pre-request."""
    cycle = CycleState()
    await producer.prepare_data(cycle, request, endpoints)
    producer.pre_request(cycle, request, result)
    return cycle[PREFIX_MATCH_KEY]


async def test_a_first_request_matches_nothing_and_a_repeat_matches_fully(
    create: Any, make_endpoint: Any, make_request: Any, routed: Any
) -> None:
    producer = create("approx-prefix-cache-producer")
    a, b = make_endpoint("a"), make_endpoint("b")
    first = await route(producer, make_request(PROMPT), [a, b], routed(a))
    assert first == PrefixMatch(total_blocks=4, block_size_tokens=16, matches={})
    again = await prepare(producer, make_request(PROMPT), [a, b])
    assert again == PrefixMatch(total_blocks=4, block_size_tokens=16, matches={"a": 4})
    assert again.ratio("a") == 1.0 and again.ratio("b") == 0.0


async def test_a_shared_prefix_matches_partially(
    create: Any, make_endpoint: Any, make_request: Any, routed: Any
) -> None:
    producer = create("approx-prefix-cache-producer")
    a = make_endpoint("a")
    await route(producer, make_request(PROMPT), [a], routed(a))
    other = PROMPT[: 2 * BLOCK] + b"z" * (3 * BLOCK)
    match = await prepare(producer, make_request(other), [a])
    assert (match.total_blocks, dict(match.matches)) == (5, {"a": 2})


async def test_the_match_uses_the_target_model_and_cache_salt(
    create: Any, make_endpoint: Any, make_request: Any, routed: Any
) -> None:
    producer = create("approx-prefix-cache-producer")
    a = make_endpoint("a")
    await route(producer, make_request(PROMPT, model="base", target_model="lora-1"), [a], routed(a))
    assert (await prepare(producer, make_request(PROMPT, model="base", target_model="lora-1"), [a])).matches == {
        "a": 4}
    assert (await prepare(producer, make_request(PROMPT, model="base"), [a])).matches == {}
    assert (await prepare(producer, make_request(PROMPT, target_model="lora-1", cache_salt="t"), [a])).matches == {}


async def test_only_the_primary_endpoint_is_recorded(
    create: Any, make_endpoint: Any, make_request: Any, routed: Any
) -> None:
    producer = create("approx-prefix-cache-producer")
    a, b = make_endpoint("a"), make_endpoint("b")
    await route(producer, make_request(PROMPT), [a, b], routed(a, b))  # picker returned two endpoints
    assert (await prepare(producer, make_request(PROMPT), [a, b])).matches == {"a": 4}


async def test_the_prefill_profile_endpoint_is_recorded_too(
    create: Any, make_endpoint: Any, make_request: Any, routed: Any
) -> None:
    producer = create("approx-prefix-cache-producer")
    decode, prefill, other = make_endpoint("decode"), make_endpoint("prefill"), make_endpoint("other")
    result = routed(decode, profile="decode", prefill=prefill, other=other)
    await route(producer, make_request(PROMPT), [decode, prefill, other], result)
    assert (await prepare(producer, make_request(PROMPT), [decode, prefill])).matches == {"decode": 4, "prefill": 4}


async def test_a_prompt_shorter_than_a_block_has_no_blocks_and_records_nothing(
    create: Any, make_endpoint: Any, make_request: Any, routed: Any
) -> None:
    producer = create("approx-prefix-cache-producer")
    a = make_endpoint("a")
    match = await route(producer, make_request(b"x" * (BLOCK - 1)), [a], routed(a))
    assert (match.total_blocks, dict(match.matches)) == (0, {})
    assert len(producer.index) == 0


@pytest.mark.parametrize(
    ("params", "cache_block_size", "block_tokens"),
    [
        pytest.param({}, 8, 8, id="autoTune takes the block size an endpoint reports"),
        pytest.param({}, 0, 16, id="autoTune falls back to blockSizeTokens before a scrape"),
        pytest.param({"autoTune": False, "blockSizeTokens": 4}, 8, 4, id="without autoTune blockSizeTokens is used"),
    ],
)
async def test_block_size(create: Any, make_endpoint: Any, make_request: Any, params: dict[str, Any],
                          cache_block_size: int, block_tokens: int) -> None:
    producer = create("approx-prefix-cache-producer", params)
    endpoints = [make_endpoint("a"), make_endpoint("b", cache_block_size=cache_block_size)]
    match = await prepare(producer, make_request(PROMPT), endpoints)
    assert match.block_size_tokens == block_tokens
    assert match.total_blocks == len(PROMPT) // (block_tokens * 4)


async def test_auto_tune_sizes_each_endpoint_lru_from_its_kv_block_count(
    create: Any, make_endpoint: Any, make_request: Any, routed: Any
) -> None:
    producer = create("approx-prefix-cache-producer", {"lruCapacityPerServer": 100})
    small, unknown = make_endpoint("small", cache_num_blocks=3), make_endpoint("unknown")
    await route(producer, make_request(PROMPT), [small, unknown], routed(small))
    await route(producer, make_request(PROMPT), [small, unknown], routed(unknown))
    assert producer.index.capacity("small") == 3
    assert producer.index.capacity("unknown") == 100
    assert (await prepare(producer, make_request(PROMPT), [small, unknown])).matches == {"small": 3, "unknown": 4}


async def test_without_auto_tune_every_lru_has_the_configured_capacity(
    create: Any, make_endpoint: Any, make_request: Any, routed: Any
) -> None:
    producer = create("approx-prefix-cache-producer", {"autoTune": False, "lruCapacityPerServer": 2})
    ep = make_endpoint("a", cache_num_blocks=1000)
    await route(producer, make_request(PROMPT), [ep], routed(ep))
    assert producer.index.capacity("a") == 2
    assert (await prepare(producer, make_request(PROMPT), [ep])).matches == {"a": 2}


@pytest.mark.parametrize(
    ("params", "total"),
    [
        pytest.param({"blockSizeTokens": 4, "maxPrefixBlocksToMatch": 3}, 3, id="maxPrefixBlocksToMatch caps blocks"),
        pytest.param({"blockSizeTokens": 4, "maxPrefixBlocksToMatch": 3, "maxPrefixTokensToMatch": 20}, 5,
                     id="maxPrefixTokensToMatch overrides the block cap"),
        pytest.param({"blockSizeTokens": 4, "maxPrefixTokensToMatch": 10}, 2,
                     id="maxPrefixTokensToMatch is divided down to whole blocks"),
        pytest.param({"blockSizeTokens": 4, "maxPrefixBlocksToMatch": 0}, 0, id="zero max blocks disables matching"),
    ],
)
async def test_prefix_length_limits(create: Any, make_endpoint: Any, make_request: Any, params: dict[str, Any],
                                    total: int) -> None:
    producer = create("approx-prefix-cache-producer", {"autoTune": False, **params})
    match = await prepare(producer, make_request(PROMPT), [make_endpoint("a")])
    assert match.total_blocks == total


async def test_the_hashes_are_the_documented_chain(create: Any, make_endpoint: Any, make_request: Any,
                                                   routed: Any) -> None:
    producer = create("approx-prefix-cache-producer", {"autoTune": False, "blockSizeTokens": 4})
    a = make_endpoint("a")
    await route(producer, make_request(PROMPT, target_model="t", cache_salt="s"), [a], routed(a))
    expected = hash_prompt(PROMPT, "t", "s", 4, 256)
    assert producer.index.match(expected) == {"a": len(expected)}


async def test_endpoints_removed_from_the_pool_are_purged(make_request: Any, routed: Any) -> None:
    pool = EndpointPool()
    pool.replace_all([EndpointMetadata("a", "10.0.0.1", 8000, 8000), EndpointMetadata("b", "10.0.0.2", 8000, 8000)])
    handle = Handle(pool=pool, rng=random.Random(1))
    producer = default_registry().create("approx-prefix-cache-producer", "p", None, handle, "plugins[0]")
    assert isinstance(producer, ApproxPrefixCacheProducer)
    a, b = pool.get("a"), pool.get("b")
    await route(producer, make_request(PROMPT), [a, b], routed(a))
    await route(producer, make_request(PROMPT), [a, b], routed(b))
    pool.replace_all([EndpointMetadata("b", "10.0.0.2", 8000, 8000)])
    assert (await prepare(producer, make_request(PROMPT), [b])).matches == {"b": 4}
    assert producer.index.statistics().endpoints == 1


@pytest.mark.parametrize(
    ("params", "field"),
    [
        pytest.param({"blockSizeTokens": 0}, "blockSizeTokens", id="a zero block size"),
        pytest.param({"maxPrefixBlocksToMatch": -1}, "maxPrefixBlocksToMatch", id="negative max blocks"),
        pytest.param({"maxPrefixTokensToMatch": -1}, "maxPrefixTokensToMatch", id="negative max tokens"),
        pytest.param({"lruCapacityPerServer": 0}, "lruCapacityPerServer", id="a zero LRU capacity"),
    ],
)
def test_invalid_parameters_name_the_field(create: Any, params: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        create("approx-prefix-cache-producer", params)
    assert err.value.field == f"plugins[0].parameters.{field}"


def test_the_deprecated_block_size_is_ignored_with_a_warning(create: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        producer = create("approx-prefix-cache-producer", {"blockSize": 64})
    assert producer.params.block_size_tokens == 16
    assert any("blockSize is deprecated" in r.getMessage() for r in caplog.records)


async def test_indexer_metrics_report_size_and_hit_ratio(make_endpoint: Any, make_request: Any, routed: Any) -> None:
    metrics = CollectorRegistry()
    handle = Handle(pool=EndpointPool(), rng=random.Random(1), metrics_registry=metrics)
    producer = default_registry().create("approx-prefix-cache-producer", "p", None, handle, "plugins[0]")
    a = make_endpoint("a")
    await route(producer, make_request(PROMPT), [a], routed(a))  # miss: ratio 0
    await route(producer, make_request(PROMPT), [a], routed(a))  # full hit: ratio 1
    assert metrics.get_sample_value("inference_extension_prefix_indexer_size") == 4
    assert metrics.get_sample_value("inference_extension_prefix_indexer_hit_ratio_count") == 2
    assert metrics.get_sample_value("inference_extension_prefix_indexer_hit_ratio_sum") == 1.0
    assert metrics.get_sample_value("inference_extension_prefix_indexer_hit_bytes_sum") == 4 * BLOCK


# --- characters per token, learned from responses -----------------------------------------------

CODE_PROMPT = bytes(range(40, 115)) * 4  # 300 bytes


def responded(producer: Any, request: Any, prompt_tokens: int | None, completed: bool = True) -> None:
    """The response ended; its usage (if any) carried ``prompt_tokens``."""
    usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=5) if prompt_tokens is not None else None
    producer.response_complete(request, ResponseInfo(status=200, usage=usage, completed=completed))


async def serve(producer: Any, endpoint: Any, routed: Any, make_request: Any, prompt: bytes, prompt_tokens: int,
                model: str = "m") -> None:
    """One request routed to ``endpoint`` and answered with usage (the prompt is released in between)."""
    request = make_request(prompt, target_model=model)
    await route(producer, request, [endpoint], routed(endpoint))
    request.release_payload()
    responded(producer, request, prompt_tokens)


async def test_a_short_code_prompt_gets_affinity_once_the_ratio_is_learned(
    create: Any, make_endpoint: Any, make_request: Any, routed: Any
) -> None:
    # CPU vLLM's 128-token blocks: at 4 chars/token a block is 512 bytes, so 300 bytes never match.
    producer = create("approx-prefix-cache-producer")
    a = make_endpoint("a", cache_block_size=128)
    await route(producer, make_request(CODE_PROMPT), [a], routed(a))
    assert (await prepare(producer, make_request(CODE_PROMPT), [a])).total_blocks == 0
    for i in range(8):  # the tokenizer reads code at 2.2 chars/token
        await serve(producer, a, routed, make_request, bytes([65 + i]) * 660, 300)
    assert producer.chars_per_token_snapshot() == {"m": {"charsPerToken": 2.2, "learned": 2.2, "samples": 8}}
    await route(producer, make_request(CODE_PROMPT), [a], routed(a))
    again = await prepare(producer, make_request(CODE_PROMPT), [a])
    assert again == PrefixMatch(total_blocks=2, block_size_tokens=128, matches={"a": 2})


async def test_token_estimates_use_the_learned_ratio_of_the_requests_model(
    create: Any, make_endpoint: Any, make_request: Any, routed: Any
) -> None:
    producer = create("approx-prefix-cache-producer")
    a = make_endpoint("a")
    for _ in range(8):
        await serve(producer, a, routed, make_request, b"x" * 2000, 1000, model="coder")
    coder, other = make_request(b"y" * 1000, target_model="coder"), make_request(b"y" * 1000, target_model="chat")
    assert request_prompt_tokens(coder) == 250  # before the producer ran: the default 4
    await prepare(producer, coder, [a])
    await prepare(producer, other, [a])
    assert (request_chars_per_token(coder), request_prompt_tokens(coder)) == (2.0, 500)
    assert (request_chars_per_token(other), request_prompt_tokens(other)) == (4.0, 250)


async def test_a_ratio_change_keeps_affinity_while_the_prefix_is_recorded_at_the_new_size(
    create: Any, make_endpoint: Any, make_request: Any, routed: Any
) -> None:
    # Entries hashed at 4 chars/token cannot match hashes at 2 (blocks of another length), so
    # for a while the prompt is also matched at the old size: the switch loses no affinity.
    producer = create("approx-prefix-cache-producer")
    now = [0.0]
    producer._clock = lambda: now[0]
    a, b = make_endpoint("a"), make_endpoint("b")
    other = bytes(reversed(PROMPT))
    await route(producer, make_request(PROMPT), [a, b], routed(a))
    await route(producer, make_request(other), [a, b], routed(b))
    for _ in range(8):
        await serve(producer, b, routed, make_request, b"x" * 2000, 1000)
    assert producer.token_ratios.chars_per_token("m") == 2.0
    # 4 old blocks of 64 bytes cover 8 new blocks of 32: counted in the new size.
    assert (await prepare(producer, make_request(PROMPT), [a, b])) == PrefixMatch(8, 16, {"a": 8})
    await route(producer, make_request(PROMPT), [a, b], routed(a))  # recorded at the new size
    assert (await prepare(producer, make_request(PROMPT), [a, b])) == PrefixMatch(8, 16, {"a": 8})
    assert (await prepare(producer, make_request(other), [a, b])).matches == {"b": 8}
    now[0] = 1_000.0  # past the transition: only the new size counts
    assert (await prepare(producer, make_request(other), [a, b])).matches == {}
    assert (await prepare(producer, make_request(PROMPT), [a, b])).matches == {"a": 8}


@pytest.mark.parametrize(
    ("prompt", "prompt_tokens", "completed"),
    [
        pytest.param(PROMPT, None, True, id="no usage in the response"),
        pytest.param(PROMPT, 0, True, id="zero prompt tokens"),
        pytest.param(PROMPT, 100, False, id="the response did not complete"),
        pytest.param(b"", 100, True, id="no prompt text (token ids)"),
        pytest.param(PROMPT, 10_000, True, id="an implausible ratio"),
    ],
)
async def test_responses_that_say_nothing_about_the_tokenizer_are_ignored(
    create: Any, make_endpoint: Any, make_request: Any, routed: Any, prompt: bytes, prompt_tokens: int | None,
    completed: bool,
) -> None:
    producer = create("approx-prefix-cache-producer")
    a = make_endpoint("a")
    request = make_request(prompt)
    await route(producer, request, [a], routed(a))
    request.release_payload()
    responded(producer, request, prompt_tokens, completed)
    assert producer.chars_per_token_snapshot() == {}
    assert request.plugin_state == {CHARS_PER_TOKEN_KEY: 4.0}  # nothing of the producer's own is left behind
    assert producer.debug_sizes()["tokenRatioModels"] == 0


async def test_a_value_agreed_with_another_replica_keeps_affinity_like_one_learned_here(
    create: Any, make_endpoint: Any, make_request: Any, routed: Any
) -> None:
    producer = create("approx-prefix-cache-producer")
    a = make_endpoint("a")
    await route(producer, make_request(PROMPT), [a], routed(a))
    producer.agree_ratio("m", 2.0)
    assert producer.token_ratios.chars_per_token("m") == 2.0
    assert producer.adopted_ratios() == {}  # not re-published: it came from the store
    assert (await prepare(producer, make_request(PROMPT), [a])) == PrefixMatch(8, 16, {"a": 8})
