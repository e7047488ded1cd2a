"""Real vLLM 0.32 pages through ``core-metrics-extractor`` and ``lora-affinity-scorer``.

The page (tests/fixtures/vllm) follows vLLM 0.32's source: LoRA adapters with any request
are listed in both ``running_lora_adapters`` and ``waiting_lora_adapters``; older vLLM
listed them apart. Prefix-cache counters give the recent hit rate; a new process start
time or counters going backwards mean the server restarted.
"""

from __future__ import annotations

import random
from pathlib import Path
from string import Template
from typing import Any

import pytest

from epp.datalayer.endpoint import Endpoint, EndpointMetadata
from epp.datalayer.pool import EndpointPool
from epp.datalayer.promtext import parse_series
from epp.framework.plugin import Handle
from epp.framework.scheduling import CycleState
from epp.plugins.datalayer.core_metrics import CoreMetricsExtractor
from epp.plugins.datalayer.metrics_source import ScrapedSeries
from epp.plugins.scorers.lora_affinity import LoraAffinityScorer
from epp.testing.clock import TickingClock
from epp.testing.pool import PoolRecorder, RestartAwareRecorder

PAGE = Template((Path(__file__).parents[1] / "fixtures" / "vllm" / "metrics_0_32.txt.tmpl").read_text())
START = 1796030000.52


def lora_line(running: str, waiting: str, at: float, max_lora: int = 2) -> str:
    return (f'vllm:lora_requests_info{{max_lora="{max_lora}",running_lora_adapters="{running}",'
            f'waiting_lora_adapters="{waiting}"}} {at}\n')


def page(*, waiting: int = 0, running: int = 0, lora: str = "", hits: float = 0.0, queries: float = 0.0,
         start: float = START) -> str:
    return PAGE.substitute(waiting=waiting, running=running, kv=0.125, lora=lora, hits=hits, queries=queries,
                           start=start)


class Setup:
    def __init__(self) -> None:
        self.pool = EndpointPool()
        self.pool.replace_all([EndpointMetadata("vllm-0", "127.0.0.1", 8000, 8000)])
        self.endpoint = self.pool.endpoints()[0]
        self.listener = PoolRecorder()
        self.pool.add_listener(self.listener)
        self.extractor = CoreMetricsExtractor("core", None, Handle(pool=self.pool, rng=random.Random(1)),
                                              clock=TickingClock())

    def scrape(self, text: str) -> None:
        wanted = self.extractor.wanted_series(self.endpoint)
        self.extractor.extract(ScrapedSeries(parse_series(text, wanted)), self.endpoint)


@pytest.fixture
def setup() -> Setup:
    return Setup()


def lora_score(endpoint: Endpoint, adapter: str) -> float:
    scorer = LoraAffinityScorer("lora", None, Handle(pool=EndpointPool()))
    request: Any = type("R", (), {"target_model": adapter})()
    return list(scorer.score(CycleState(), request, [endpoint]))[0]


# --- LoRA labels --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("lora", "waiting", "active", "queued", "score_new"),
    [
        pytest.param(lora_line("", "", 10.0), 0, set(), set(), 0.8, id="0 of 2 slots: a new adapter scores 0.8"),
        pytest.param(lora_line("", "", 10.0) + lora_line("ad1", "ad1", 11.0), 0, {"ad1"}, set(), 0.8,
                     id="1 of 2 slots (merged lists, nothing queued): running, and a new adapter scores 0.8"),
        pytest.param(lora_line("ad1", "ad1", 11.0) + lora_line("ad1,ad2", "ad1,ad2", 12.0), 0, {"ad1", "ad2"},
                     set(), 0.0, id="2 of 2 slots: no free slot for a new adapter"),
        pytest.param(lora_line("ad1", "ad1", 11.0) + lora_line("ad1,ad2", "ad1,ad2", 12.0), 3, {"ad1", "ad2"},
                     set(), 0.0, id="2 of 2 with requests queued: both listed adapters were scheduled, so run"),
    ],
)
def test_vllm_0_32_merged_lists(setup: Setup, lora: str, waiting: int, active: set[str], queued: set[str],
                                score_new: float) -> None:
    setup.scrape(page(lora=lora, waiting=waiting, running=1))
    m = setup.endpoint.metrics
    assert (m.active_models, m.waiting_models, m.max_active_models) == (active, queued, 2)
    assert lora_score(setup.endpoint, "ad3") == score_new


def test_an_adapter_only_queued_on_a_0_32_server_is_not_running(setup: Setup) -> None:
    # ad1 runs, ad2's request waits for its first step: 0.32 lists only adapters it has scheduled.
    setup.scrape(page(lora=lora_line("", "", 10.0) + lora_line("ad1", "ad1", 11.0), waiting=1, running=1))
    assert lora_score(setup.endpoint, "ad1") == 1.0
    assert lora_score(setup.endpoint, "ad2") == 0.8  # a free slot, never 1.0
    assert "ad2" not in setup.endpoint.metrics.active_models


def test_the_page_recorded_from_real_vllm_0_32_with_adapters_running_and_queued(setup: Setup) -> None:
    # Two of two slots (ad1, ad2) busy, ad3's two requests queued; recorded from vLLM 0.32.
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "vllm-0.32" / "metrics-lora-waiting-running.txt"
    setup.scrape(fixture.read_text())
    m = setup.endpoint.metrics
    assert (m.active_models, m.waiting_models, m.max_active_models, m.waiting_queue_size) == \
        ({"ad1", "ad2"}, frozenset(), 2, 2)
    assert [lora_score(setup.endpoint, a) for a in ("ad1", "ad2", "ad3")] == [1.0, 1.0, 0.0]


def test_older_vllm_split_lists_are_read_as_they_are(setup: Setup) -> None:
    lines = lora_line("", "", 10.0) + lora_line("ad1", "", 11.0) + lora_line("ad1", "ad2", 12.0)
    setup.scrape(page(lora=lines, waiting=1, running=1))
    m = setup.endpoint.metrics
    assert (m.active_models, m.waiting_models) == ({"ad1"}, {"ad2"})
    assert [lora_score(setup.endpoint, a) for a in ("ad1", "ad2", "ad3")] == [1.0, 0.6, 0.0]


def test_one_of_two_slots_used_on_an_older_server_leaves_a_free_slot(setup: Setup) -> None:
    setup.scrape(page(lora=lora_line("", "", 10.0) + lora_line("ad1", "", 11.0), running=1))
    assert lora_score(setup.endpoint, "ad3") == 0.8


def test_a_family_without_a_sample_yet_means_no_lora_info_and_no_error(setup: Setup) -> None:
    setup.scrape(page(lora=""))  # vLLM before its first engine step; raises on any extraction error
    m = setup.endpoint.metrics
    assert (m.active_models, m.waiting_models, m.max_active_models) == (frozenset(), frozenset(), 0)


def test_no_lora_family_at_all_is_not_an_error(setup: Setup) -> None:
    text = "".join(line + "\n" for line in page().splitlines() if "lora" not in line)
    setup.scrape(text)
    assert setup.endpoint.metrics.max_active_models == 0


# --- prefix-cache counters ----------------------------------------------------------------------

def test_the_hit_rate_is_over_the_recent_window_and_totals_are_kept(setup: Setup) -> None:
    setup.scrape(page(hits=1000, queries=4000))
    m = setup.endpoint.metrics
    assert (m.prefix_cache_hits, m.prefix_cache_queries, m.prefix_cache_hit_rate) == (1000, 4000, None)
    setup.scrape(page(hits=1900, queries=5000))  # 900 of the last 1000 tokens were cached
    assert setup.endpoint.metrics.prefix_cache_hit_rate == pytest.approx(0.9)
    setup.scrape(page(hits=1900, queries=6000))  # then 0 of 1000
    assert setup.endpoint.metrics.prefix_cache_hit_rate == pytest.approx(0.45)


def test_an_idle_window_has_no_hit_rate(setup: Setup) -> None:
    for _ in range(3):
        setup.scrape(page(hits=10, queries=20))
    assert setup.endpoint.metrics.prefix_cache_hit_rate is None


# --- restarts -----------------------------------------------------------------------------------

def test_the_first_scrape_is_not_a_restart(setup: Setup) -> None:
    setup.scrape(page(hits=50, queries=100))
    setup.scrape(page(hits=60, queries=120))
    assert setup.listener.events == []


def test_a_new_process_start_time_is_a_restart_and_listeners_hear_it_once(setup: Setup) -> None:
    setup.scrape(page(lora=lora_line("ad1", "ad1", 11.0), hits=500, queries=1000))
    setup.scrape(page(lora="", hits=900, queries=1200, start=START + 60))  # counters grew past the old ones
    assert setup.listener.events == [("removed", "vllm-0"), ("added", "vllm-0")]
    m = setup.endpoint.metrics
    # Nothing of the old process survives: its adapters are gone until the new one reports.
    assert (m.active_models, m.process_start_time, m.prefix_cache_hit_rate) == (frozenset(), START + 60, None)
    setup.scrape(page(hits=1000, queries=1400, start=START + 60))
    assert len(setup.listener.events) == 2
    assert setup.endpoint.metrics.prefix_cache_hit_rate == pytest.approx(0.5)


def test_counters_going_backwards_are_a_restart(setup: Setup) -> None:
    setup.scrape(page(hits=500, queries=1000))
    setup.scrape(page(hits=30, queries=40))
    assert setup.listener.events == [("removed", "vllm-0"), ("added", "vllm-0")]
    # What the new process counted since it started is the window's traffic.
    assert setup.endpoint.metrics.prefix_cache_hit_rate == pytest.approx(0.75)


def test_a_listener_with_endpoint_restarted_gets_only_that(setup: Setup) -> None:
    listener = RestartAwareRecorder()
    setup.pool.add_listener(listener)
    setup.scrape(page(start=START))
    setup.scrape(page(start=START + 1))
    assert listener.events == [("restarted", "vllm-0")]
    assert setup.listener.events == [("removed", "vllm-0"), ("added", "vllm-0")]
