"""Speculative indexing: blocks a routed request will create match before the replica reports them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from epp.datalayer.endpoint import Endpoint
from epp.framework.attributes import PREFIX_MATCH_KEY, PrefixMatch, prefix_match, request_prompt_tokens
from epp.framework.params import decode_params
from epp.framework.plugin import Handle
from epp.framework.scheduling import CycleState, SchedulingResult
from epp.plugins.kvcache.events import AllBlocksCleared, BlockRemoved, BlockStored
from epp.plugins.kvcache.index import KVBlockIndex
from epp.plugins.kvcache.keys import block_keys
from epp.plugins.kvcache.scorer import PrecisePrefixCacheScorer, PrecisePrefixParams
from epp.requests.types import InferenceRequest
from epp.testing.tokenizers import write_tiny_tokenizer

BS = 4
PROMPT = list(range(1000, 1016))  # 4 blocks of 4
KEYS = block_keys(PROMPT, BS)
TTL = 2.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def stored(hashes: list[int], parent: int | None, first_block: int) -> BlockStored:
    chunk = PROMPT[first_block * BS:(first_block + len(hashes)) * BS]
    return BlockStored(tuple(hashes), parent, tuple(chunk), BS, None, "GPU")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def index(clock: Clock) -> KVBlockIndex:
    return KVBlockIndex(clock=clock)


def test_speculative_blocks_match_only_on_their_endpoint(index: KVBlockIndex) -> None:
    assert index.speculate("a", KEYS, TTL) == 4
    assert index.match(KEYS, ["a", "b"]) == {"a": 4, "b": 0}
    assert index.stats("a")["speculative"] == 4
    assert index.stats("a")["blocks"] == 0  # not claimed as stored


def test_speculative_blocks_extend_a_stored_prefix(index: KVBlockIndex) -> None:
    index.apply("a", stored([11, 12], None, 0))
    assert index.speculate("a", KEYS, TTL) == 2  # the two stored blocks are not speculated
    assert index.match(KEYS, ["a"]) == {"a": 4}


def test_expired_speculation_no_longer_matches(index: KVBlockIndex, clock: Clock) -> None:
    index.speculate("a", KEYS, TTL)
    clock.now += TTL - 0.1
    assert index.match(KEYS, ["a"]) == {"a": 4}
    clock.now += 0.2
    assert index.match(KEYS, ["a"]) == {"a": 0}
    assert index.stats("a")["speculative"] == 0
    assert index.stats("a")["speculativeExpired"] == 4


def test_renewal_restarts_the_ttl(index: KVBlockIndex, clock: Clock) -> None:
    index.speculate("a", KEYS, TTL)
    clock.now += 1.5
    index.speculate("a", KEYS[:1], TTL)
    clock.now += 1.0
    assert index.match(KEYS, ["a"]) == {"a": 1}  # the first block renewed, the rest expired


def test_confirmation_by_block_stored_outlives_the_ttl(index: KVBlockIndex, clock: Clock) -> None:
    index.speculate("a", KEYS, TTL)
    index.apply("a", stored([11, 12, 13], None, 0))
    stats = index.stats("a")
    assert (stats["speculative"], stats["speculativeConfirmed"], stats["blocks"]) == (1, 3, 3)
    clock.now += TTL + 1
    assert index.match(KEYS, ["a"]) == {"a": 3}  # the unconfirmed fourth expired


def test_removal_wins_over_speculation(index: KVBlockIndex) -> None:
    index.apply("a", stored([11, 12], None, 0))
    index.speculate("a", KEYS, TTL)
    index.apply("a", stored([13], 12, 2))  # confirms the third block
    index.apply("a", BlockRemoved((13,)))
    assert index.match(KEYS, ["a"]) == {"a": 2}


def test_removal_of_a_stored_copy_drops_a_renewed_guess(index: KVBlockIndex) -> None:
    index.apply("a", stored([11, 12, 13, 14], None, 0))
    index.apply("a", BlockRemoved((13, 14)))
    index.speculate("a", KEYS, TTL)  # routed again: the evicted tail is expected back
    assert index.match(KEYS, ["a"]) == {"a": 4}
    index.apply("a", BlockRemoved((12,)))  # the replica evicts the second block before re-storing
    assert index.match(KEYS, ["a"]) == {"a": 1}


@pytest.mark.parametrize("loss", ["cleared", "gap", "purge"])
def test_a_lost_or_cleared_endpoint_loses_its_speculation(index: KVBlockIndex, loss: str) -> None:
    index.speculate("a", KEYS, TTL)
    if loss == "cleared":
        index.apply("a", AllBlocksCleared())
    elif loss == "gap":
        index.clear("a", gap=True)
    else:
        index.purge("a")
    assert index.match(KEYS, ["a"]) == {"a": 0}


def test_speculation_is_bounded_oldest_first(clock: Clock) -> None:
    index = KVBlockIndex(3, clock=clock)
    index.speculate("a", KEYS, TTL)
    assert index.stats("a")["speculative"] == 3
    assert index.match(KEYS, ["a"]) == {"a": 0}  # the first block was dropped: no leading run
    assert index.match(KEYS[1:], ["a"]) == {"a": 3}


def test_zero_ttl_adds_nothing(index: KVBlockIndex) -> None:
    assert index.speculate("a", KEYS, 0.0) == 0
    assert index.match(KEYS, ["a"]) == {"a": 0}


# Through the scorer: PrepareData computes the keys, PreRequest speculates on the chosen endpoint.

VOCAB = {"[UNK]": 0, "<s>": 1, "a": 2, "b": 3, "c": 4, "d": 5, "e": 6, "f": 7}
TEXT = "a b c d e f"  # <s> a b c d e f: three full blocks of 2


def build(tmp_path: Path, handle: Handle, clock: Clock, speculative: bool) -> PrecisePrefixCacheScorer:
    tokenizer = write_tiny_tokenizer(tmp_path, vocab=VOCAB, special_tokens=["<s>"], chat_template=None)
    raw = {"tokenProcessorConfig": {"blockSize": 2}, "speculativeIndexing": speculative, "speculativeTTL": "3s",
           "indexerConfig": {"tokenizersPoolConfig": {"remoteTokenize": False,
                                                      "local": {"modelTokenizerMap": {"m": str(tokenizer)}}}}}
    plugin = PrecisePrefixCacheScorer("precise", decode_params(PrecisePrefixParams, raw, "plugins[0]"), handle)
    plugin.index = KVBlockIndex(clock=clock)
    return plugin


@pytest.fixture
def scorers(tmp_path: Path, handle: Handle, clock: Clock) -> Iterator[Callable[[bool], PrecisePrefixCacheScorer]]:
    made: list[PrecisePrefixCacheScorer] = []

    def make(speculative: bool) -> PrecisePrefixCacheScorer:
        made.append(build(tmp_path / str(len(made)), handle, clock, speculative))
        return made[-1]

    yield make
    for plugin in made:
        plugin.close()


async def route(scorer: PrecisePrefixCacheScorer, request: InferenceRequest, endpoints: list[Endpoint],
                result: SchedulingResult) -> list[float]:
    cycle = CycleState()
    await scorer.prepare_data(cycle, request, endpoints)
    scores = list(scorer.score(cycle, request, endpoints))
    scorer.pre_request(cycle, request, result)
    return scores


async def test_the_second_request_of_a_new_prefix_follows_the_first(
        scorers: Callable[[bool], PrecisePrefixCacheScorer], clock: Clock, make_endpoint: Callable[..., Endpoint],
        make_request: Callable[..., InferenceRequest], routed: Callable[..., SchedulingResult]) -> None:
    scorer = scorers(True)
    x, y = make_endpoint("x"), make_endpoint("y")
    assert await route(scorer, make_request(TEXT.encode(), model="m"), [x, y], routed(y)) == [0.0, 0.0]
    # No BlockStored yet: the blind window. The speculative blocks point at y.
    assert await route(scorer, make_request(TEXT.encode(), model="m"), [x, y], routed(y)) == [0.0, 1.0]
    clock.now += 3.5  # never confirmed: the guess expires
    assert await route(scorer, make_request(TEXT.encode(), model="m"), [x, y], routed(x)) == [0.0, 0.0]


async def test_prefill_endpoint_is_speculated_too(
        scorers: Callable[[bool], PrecisePrefixCacheScorer], make_endpoint: Callable[..., Endpoint],
        make_request: Callable[..., InferenceRequest], routed: Callable[..., SchedulingResult]) -> None:
    scorer = scorers(True)
    d, p, other = make_endpoint("d"), make_endpoint("p"), make_endpoint("o")
    await route(scorer, make_request(TEXT.encode(), model="m"), [d, p, other], routed(d, prefill=p))
    assert await route(scorer, make_request(TEXT.encode(), model="m"), [d, p, other], routed(d)) == [1.0, 1.0, 0.0]


async def test_without_speculative_indexing_nothing_is_guessed(
        scorers: Callable[[bool], PrecisePrefixCacheScorer], make_endpoint: Callable[..., Endpoint],
        make_request: Callable[..., InferenceRequest], routed: Callable[..., SchedulingResult]) -> None:
    scorer = scorers(False)
    x, y = make_endpoint("x"), make_endpoint("y")
    await route(scorer, make_request(TEXT.encode(), model="m"), [x, y], routed(y))
    assert await route(scorer, make_request(TEXT.encode(), model="m"), [x, y], routed(y)) == [0.0, 0.0]
    assert scorer.index.debug_sizes()["speculative"] == 0


async def test_prefix_match_is_published_for_load_scorers_when_no_approximate_producer_ran(
        scorers: Callable[[bool], PrecisePrefixCacheScorer], make_endpoint: Callable[..., Endpoint],
        make_request: Callable[..., InferenceRequest], routed: Callable[..., SchedulingResult]) -> None:
    scorer = scorers(True)
    x, y = make_endpoint("x"), make_endpoint("y")
    request = make_request(TEXT.encode(), model="m")
    await route(scorer, make_request(TEXT.encode(), model="m"), [x, y], routed(y))
    cycle = CycleState()
    await scorer.prepare_data(cycle, request, [x, y])
    match = prefix_match(cycle)
    assert (match.ratio("x"), match.ratio("y")) == (0.0, 1.0)
    assert match.uncached_tokens("y", request_prompt_tokens(request)) == 1
    # An approximate producer's data is left alone.
    theirs = PrefixMatch(4, 16, {"x": 4})
    cycle = CycleState()
    cycle[PREFIX_MATCH_KEY] = theirs
    await scorer.prepare_data(cycle, request, [x, y])
    assert cycle.get(PREFIX_MATCH_KEY) is theirs
