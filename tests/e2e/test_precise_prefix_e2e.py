"""Precise prefix routing end to end: simulators publish KV-cache events, the picker indexes them.

The scene where the approximate index is wrong: a prefix is served by replica X through the
gateway (both indexes now say "X holds it"); then traffic the picker never sees (another
gateway, a batch job: here, requests sent to the replicas directly) makes X evict that
prefix under memory pressure and makes Y cache it. A repeat of the prefix should go to Y,
the only replica that really holds it. The approximate scorer, which remembers only its own
routing, sends it to X (a cold prefill); the precise scorer, fed by the replicas' own
``BlockStored``/``BlockRemoved`` events, sends it to Y (a cache hit).

Both sides tokenize with one tokenizer trained in the test, so their block keys agree.
"""

from __future__ import annotations

import json
import random
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from e2e_support import MODEL, post, wait_until  # type: ignore[import-not-found]

from epp.devstack.processes import free_port
from epp.devstack.stack import Stack
from epp.testing.tokenizers import write_tiny_tokenizer

pytestmark = pytest.mark.timeout(60)

BLOCK = 16
# 64 blocks x 16 tokens: room for the shared prefix (20 blocks) and one flood prompt, not more.
SIM_ARGS = ["--num-gpu-blocks", "64", "--block-size", str(BLOCK), "--max-model-len", "1024",
            "--max-num-seqs", "4", "--time-scale", "0.2"]
WORDS = [f"word{i}" for i in range(200)]
PREFIX_WORDS = 320  # + BOS: 321 tokens, 20 full blocks
FLOOD_WORDS = 600  # 37 blocks each; four of them evict everything else from a 64-block cache
CONFIG = Path(__file__).resolve().parents[2] / "config" / "precise-prefix.yaml"


class KVEventsStack(Stack):
    """A stack whose simulators each publish KV events on their own port, named in the pool file."""

    def __init__(self, workdir: Path, replicas: int, **kwargs: Any) -> None:
        super().__init__(workdir, replicas, **kwargs)
        self.kv_ports = [free_port() for _ in range(replicas)]

    def replica_args(self, index: int) -> list[str]:
        return ["--kv-events", f"tcp://127.0.0.1:{self.kv_ports[index]}"]

    def replica_labels(self, index: int) -> dict[str, str]:
        return {"kv-events-endpoint": f"tcp://127.0.0.1:{self.kv_ports[index]}"}



def precise_config(tokenizer: Path) -> str:
    """config/precise-prefix.yaml with this test's tokenizer, and the precise scorer as the only
    prefix signal: the test is about what it knows that the approximate scorer cannot."""
    doc = yaml.safe_load(CONFIG.read_text())
    doc["plugins"] = [p for p in doc["plugins"] if p["type"] != "prefix-cache-scorer"]
    for profile in doc["schedulingProfiles"]:
        profile["plugins"] = [e for e in profile["plugins"] if e["pluginRef"] != "prefix-cache-scorer"]
    scorer = next(p for p in doc["plugins"] if p["type"] == "precise-prefix-cache-scorer")
    params = scorer["parameters"]
    params["indexerConfig"]["tokenizersPoolConfig"]["local"] = {"modelTokenizerMap": {MODEL: str(tokenizer)}}
    params["indexerConfig"]["tokenizersPoolConfig"]["remoteTokenize"] = False
    # The simulator's --kv-events publishes with vLLM's default topic, "": a "kv@" filter would drop it all.
    params["kvEventsConfig"]["topicFilter"] = ""
    return yaml.safe_dump(doc)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(7)
    corpus = [" ".join(rng.sample(WORDS, 40)) for _ in range(20)] + [" ".join(WORDS)]
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"), corpus=corpus)


def _prompt(seed: int, words: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _body(prompt: str) -> bytes:
    return orjson.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 2})


def _endpoints(stack: Stack) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(f"{stack.admin_url}/debug/endpoints", timeout=5) as response:
        return {ep["address"]: ep for ep in json.loads(response.read())["endpoints"]}


def _idle(stack: Stack) -> bool:
    return all(ep["metrics"]["runningRequestsSize"] == 0 and ep["metrics"]["waitingQueueSize"] == 0
               and not ep["metrics"]["kvCacheUsagePercent"] for ep in _endpoints(stack).values())


async def _repeat(stack: Stack, prefix: str, times: int) -> list[Any]:
    """The prefix through the gateway, each time once the picker has scraped every replica idle:
    the load scorers (min-max normalised queue, KV usage) then tie and only prefix affinity decides."""
    replies = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        for _ in range(times):
            wait_until(lambda: _idle(stack), timeout=10)
            replies.append(await post(session, stack.url, _body(prefix)))
    return replies


def _cached(reply: Any) -> int:
    return int(orjson.loads(reply.body)["usage"]["prompt_tokens_details"]["cached_tokens"])


async def _evict_from_x_and_move_to_y(stack: Stack, prefix: str) -> tuple[str, str, Any]:
    """Serve the prefix through the gateway (-> X), then behind the picker's back evict it from X
    and cache it on Y. Returns X, Y and the first reply."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        first = await post(session, stack.url, _body(prefix))
        assert first.status == 200
        x = first.upstream
        y = next(stack.sim_hostport(i) for i in range(stack.replicas) if stack.sim_hostport(i) != x)
        for n in range(4):
            flood = await post(session, f"http://{x}", _body(_prompt(100 + n, FLOOD_WORDS)))
            assert flood.status == 200
        on_y = await post(session, f"http://{y}", _body(prefix))
        assert on_y.status == 200
        assert _cached(on_y) == 0  # Y had never seen it
    return x, y, first


async def test_precise_scorer_follows_the_replica_that_really_holds_the_prefix(
        tmp_path: Path, tokenizer: Path) -> None:
    stack = KVEventsStack(tmp_path, 2, sim_args=[*SIM_ARGS, "--tokenizer", str(tokenizer)],
                          config_text=precise_config(tokenizer),
                          picker_args=["--refresh-metrics-interval", "20ms"])
    prefix = _prompt(1, PREFIX_WORDS)
    with stack:
        x, y, _ = await _evict_from_x_and_move_to_y(stack, prefix)

        def index_caught_up() -> bool:
            endpoints = _endpoints(stack)
            return endpoints[y]["kvEvents"]["blocks"] >= PREFIX_WORDS // BLOCK \
                and endpoints[x]["kvEvents"]["events"] > 0
        wait_until(index_caught_up, timeout=10)
        repeats = await _repeat(stack, prefix, 3)
        endpoints = _endpoints(stack)
    assert [r.upstream for r in repeats] == [y, y, y]
    assert all(_cached(r) >= (PREFIX_WORDS // BLOCK) * BLOCK for r in repeats)
    assert endpoints[x]["kvEvents"]["blocks"] > 0 and endpoints[y]["kvEvents"]["blocks"] > 0
    assert endpoints[x]["kvEvents"]["gaps"] == 0 and endpoints[y]["kvEvents"]["gaps"] == 0


async def test_approximate_scorer_sends_the_repeat_to_the_replica_that_evicted_it(
        tmp_path: Path, tokenizer: Path) -> None:
    # The same scene under the built-in default profile (approximate prefix-cache-scorer).
    stack = Stack(tmp_path, 2, sim_args=[*SIM_ARGS, "--tokenizer", str(tokenizer)],
                  picker_args=["--refresh-metrics-interval", "20ms"])
    prefix = _prompt(1, PREFIX_WORDS)
    with stack:
        x, _, _ = await _evict_from_x_and_move_to_y(stack, prefix)
        [repeat] = await _repeat(stack, prefix, 1)
    assert repeat.upstream == x
    assert _cached(repeat) == 0  # a full prefill: the index believed a prefix X no longer had
