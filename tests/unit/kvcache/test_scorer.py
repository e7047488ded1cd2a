"""precise-prefix-cache-scorer: scores from an index fed synthetic KV events."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from epp.datalayer.endpoint import Endpoint
from epp.errors import ConfigError
from epp.framework.params import decode_params
from epp.framework.plugin import BackgroundWork, Handle
from epp.framework.requestcontrol import DataProducer
from epp.framework.scheduling import CycleState, ScorerCategory
from epp.plugins.kvcache.events import AllBlocksCleared, BlockRemoved, BlockStored
from epp.plugins.kvcache.scorer import PrecisePrefixCacheScorer, PrecisePrefixParams
from epp.requests.types import ApiKind, InferenceRequest
from epp.testing.tokenizers import write_tiny_tokenizer

VOCAB = {"[UNK]": 0, "<s>": 1, "a": 2, "b": 3, "c": 4, "d": 5, "e": 6, "f": 7, "x": 8}
PROMPT = "a b c d e f"  # <s> a b c d e f: 7 tokens, three full blocks of 2
TOKENS = (1, 2, 3, 4, 5, 6, 7)


@pytest.fixture
def tokenizer_file(tmp_path: Path) -> Path:
    return write_tiny_tokenizer(tmp_path, vocab=VOCAB, special_tokens=["<s>"], chat_template=None)


@pytest.fixture
def scorer(tokenizer_file: Path, handle: Handle) -> Iterator[PrecisePrefixCacheScorer]:
    raw = {
        "tokenProcessorConfig": {"blockSize": 2, "hashSeed": "42"},
        "indexerConfig": {"tokenizersPoolConfig": {
            "remoteTokenize": False,
            "local": {"modelTokenizerMap": {"m": str(tokenizer_file), "adapter": str(tokenizer_file)}}}},
        "kvEventsConfig": {"topicFilter": "kv@", "podDiscoveryConfig": {"socketPort": 5557}},
        "loraIds": {"adapter": 7},
    }
    plugin = PrecisePrefixCacheScorer("precise", decode_params(PrecisePrefixParams, raw, "plugins[0]"), handle)
    yield plugin
    plugin.close()


def stored(hashes: tuple[int, ...], tokens: tuple[int, ...], parent: int | None = None, size: int = 2,
           lora_id: int | None = None) -> BlockStored:
    return BlockStored(block_hashes=hashes, parent_block_hash=parent, token_ids=tokens, block_size=size,
                       lora_id=lora_id)


def completion(make_request: Callable[..., InferenceRequest], prompt: str = PROMPT,
               model: str = "m") -> InferenceRequest:
    return make_request(prompt.encode(), model=model)


async def scores(scorer: PrecisePrefixCacheScorer, request: InferenceRequest,
                 endpoints: list[Endpoint]) -> list[float]:
    cycle = CycleState()
    await scorer.prepare_data(cycle, request, endpoints)
    return list(scorer.score(cycle, request, endpoints))


async def test_full_partial_none_and_unknown(scorer: PrecisePrefixCacheScorer, make_endpoint: Callable[..., Endpoint],
                                            make_request: Callable[..., InferenceRequest]) -> None:
    full, partial, other, unknown = (make_endpoint(n) for n in ("full", "partial", "other", "unknown"))
    scorer.index.apply("full", stored((11, 12, 13), TOKENS[:6]))
    scorer.index.apply("partial", stored((21,), TOKENS[:2]))
    scorer.index.apply("partial", stored((23,), TOKENS[4:6], parent=None))  # third block alone: not a prefix
    scorer.index.apply("other", stored((31, 32), (1, 8, 8, 8)))
    result = await scores(scorer, completion(make_request), [full, partial, other, unknown])
    assert result == [1.0, pytest.approx(1 / 3), 0.0, 0.0]


async def test_chained_store_events_match_across_batches(scorer: PrecisePrefixCacheScorer,
                                                        make_endpoint: Callable[..., Endpoint],
                                                        make_request: Callable[..., InferenceRequest]) -> None:
    ep = make_endpoint("e")
    scorer.index.apply("e", stored((1,), TOKENS[:2]))
    scorer.index.apply("e", stored((2,), TOKENS[2:4], parent=1))
    assert await scores(scorer, completion(make_request), [ep]) == [pytest.approx(2 / 3)]


async def test_removal_and_clear_lower_the_score(scorer: PrecisePrefixCacheScorer,
                                                make_endpoint: Callable[..., Endpoint],
                                                make_request: Callable[..., InferenceRequest]) -> None:
    ep = make_endpoint("e")
    scorer.index.apply("e", stored((1, 2, 3), TOKENS[:6]))
    scorer.index.apply("e", BlockRemoved(block_hashes=(2,)))
    assert await scores(scorer, completion(make_request), [ep]) == [pytest.approx(1 / 3)]
    scorer.index.apply("e", AllBlocksCleared())
    assert await scores(scorer, completion(make_request), [ep]) == [0.0]


async def test_lora_blocks_match_only_their_adapter(scorer: PrecisePrefixCacheScorer,
                                                   make_endpoint: Callable[..., Endpoint],
                                                   make_request: Callable[..., InferenceRequest]) -> None:
    base, lora = make_endpoint("base"), make_endpoint("lora")
    scorer.index.apply("base", stored((1, 2, 3), TOKENS[:6]))
    scorer.index.apply("lora", stored((1, 2, 3), TOKENS[:6], lora_id=7))
    assert await scores(scorer, completion(make_request), [base, lora]) == [1.0, 0.0]
    assert await scores(scorer, completion(make_request, model="adapter"), [base, lora]) == [0.0, 1.0]


async def test_each_endpoint_uses_its_learnt_block_size(scorer: PrecisePrefixCacheScorer,
                                                       make_endpoint: Callable[..., Endpoint],
                                                       make_request: Callable[..., InferenceRequest]) -> None:
    threes, twos = make_endpoint("threes"), make_endpoint("twos")
    scorer.index.apply("threes", stored((1, 2), TOKENS[:6], size=3))
    scorer.index.apply("twos", stored((1,), TOKENS[:2]))
    assert await scores(scorer, completion(make_request), [threes, twos]) == [1.0, pytest.approx(1 / 3)]


async def test_untokenizable_requests_score_zero_everywhere(scorer: PrecisePrefixCacheScorer,
                                                           make_endpoint: Callable[..., Endpoint],
                                                           make_request: Callable[..., InferenceRequest]) -> None:
    ep = make_endpoint("e")
    scorer.index.apply("e", stored((1, 2, 3), TOKENS[:6]))
    no_tokenizer = completion(make_request, model="unknown-model")
    malformed = make_request(b"", body={"model": "m", "prompt": 12})
    short = completion(make_request, prompt="")  # <s> alone: no full block
    chat = InferenceRequest(request_id="r", api=ApiKind.CHAT_COMPLETIONS, path="/v1/chat/completions", model="m",
                            target_model="m", body={"messages": "oops"}, raw_body=b"{}", stream=False, headers={})
    for request in (no_tokenizer, malformed, short, chat):
        assert await scores(scorer, request, [ep]) == [0.0]


async def test_score_without_prepare_data_is_neutral(scorer: PrecisePrefixCacheScorer,
                                                    make_endpoint: Callable[..., Endpoint],
                                                    make_request: Callable[..., InferenceRequest]) -> None:
    assert list(scorer.score(CycleState(), completion(make_request), [make_endpoint("e")])) == [0.0]


async def test_token_id_prompts_need_no_tokenizer(scorer: PrecisePrefixCacheScorer,
                                                 make_endpoint: Callable[..., Endpoint],
                                                 make_request: Callable[..., InferenceRequest]) -> None:
    ep = make_endpoint("e")
    scorer.index.apply("e", stored((1, 2), TOKENS[:4]))
    request = make_request(b"", model="no-tokenizer", body={"model": "no-tokenizer", "prompt": list(TOKENS[:4])})
    assert await scores(scorer, request, [ep]) == [1.0]


def test_plugin_roles_and_debug_views(scorer: PrecisePrefixCacheScorer) -> None:
    assert isinstance(scorer, BackgroundWork) and isinstance(scorer, DataProducer)
    assert scorer.category() is ScorerCategory.AFFINITY
    scorer.index.apply("e", stored((1, 2), TOKENS[:4]))
    assert scorer.endpoint_stats("e")["blocks"] == 2
    assert scorer.endpoint_stats("nobody")["blocks"] == 0
    assert scorer.debug_sizes()["blocks"] == 2


@pytest.mark.parametrize(("raw", "field"), [
    ({"tokenProcessorConfig": {"blockSize": 0}}, "plugins[0].tokenProcessorConfig.blockSize"),
    ({"kvEventsConfig": {"zmqEndpointt": "x"}}, "plugins[0].kvEventsConfig.zmqEndpointt"),
    ({"loraIds": {"a": 0}}, "plugins[0].loraIds.a"),
    ({"speculativeTTL": "0s"}, "plugins[0].speculativeTTL"),
    ({"indexerConfig": {"tokenizersPoolConfig": {"workersCount": 0}}},
     "plugins[0].indexerConfig.tokenizersPoolConfig.workersCount"),
])
def test_bad_parameters_name_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        decode_params(PrecisePrefixParams, raw, "plugins[0]")
    assert str(info.value).startswith(field)


def test_llm_d_example_parameters_load() -> None:
    raw = {
        "tokenProcessorConfig": {"blockSize": 16, "hashSeed": "12345"},
        "kvEventsConfig": {"topicFilter": "kv@", "concurrency": 4, "discoverPods": True,
                           "podDiscoveryConfig": {"socketPort": 5556}},
        "indexerConfig": {
            "prefixStoreConfig": {"cacheSize": 500000, "blockSize": 256},
            "kvBlockIndexConfig": {"inMemoryConfig": {"size": 100000000, "podCacheSize": 10}, "enableMetrics": True},
            "tokenizersPoolConfig": {"modelName": "hf-repo/model-name", "workersCount": 8,
                                     "hf": {"huggingFaceToken": "t", "tokenizersCacheDir": "/tmp/tokenizers"}},
        },
    }
    params = decode_params(PrecisePrefixParams, raw, "plugins[0]")
    assert params.kv_events_config.connect_template() == "tcp://{address}:5556"
    assert params.blocks_per_endpoint() == 1_000_000


def test_shipped_config_parameters_decode() -> None:
    config = yaml.safe_load((Path(__file__).parents[3] / "config" / "precise-prefix.yaml").read_text())
    [entry] = [p for p in config["plugins"] if p["type"] == "precise-prefix-cache-scorer"]
    params = decode_params(PrecisePrefixParams, entry["parameters"], "plugins[3]")
    assert params.kv_events_config.discover_pods
    assert params.kv_events_config.connect_template() == "tcp://{address}:5557"
    assert params.indexer_config.tokenizers_pool_config.remote_timeout == 0.5
    assert params.speculative_indexing
    assert params.speculative_ttl == 2.0
