"""The saturation analyzer's decisions, alone and over recorded metric sequences through the service."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.autoscale.analyzer import (
    Direction,
    ModelReadings,
    PodReading,
    Thresholds,
    analyze,
    recommend,
)
from epp.autoscale.metrics import AutoscaleMetrics, Variant
from epp.autoscale.overrides import OverridesFile
from epp.autoscale.service import AutoscaleService, ModelTarget
from epp.errors import ConfigError

MODEL = "llama"
T = Thresholds()
NAN = math.nan


def model(*pods: tuple[float, float], fc: float = 0.0) -> ModelReadings:
    """Readings from (kv usage, waiting) pairs, pods named p0, p1, ..."""
    return ModelReadings(MODEL, tuple(PodReading(f"p{i}", kv, q) for i, (kv, q) in enumerate(pods)),
                         flow_control_queue=fc)


# --- the rules on one reading ------------------------------------------------------------------

def test_idle_pool_of_two_scales_down() -> None:
    a = analyze(model((0.1, 0), (0.1, 0)), T)
    assert (a.direction, a.target, a.cause) == (Direction.DOWN, 1, "load_fits")


def test_single_replica_is_never_removed() -> None:
    a = analyze(model((0.0, 0)), T)
    assert a.direction is Direction.NONE
    assert a.target == 1
    assert "single replica" in a.reason


def test_kv_spare_below_trigger_scales_up() -> None:
    # spare KV = 0.8 - 0.75 = 0.05 < 0.1
    a = analyze(model((0.75, 0), (0.75, 0)), T)
    assert (a.direction, a.target, a.cause) == (Direction.UP, 3, "kv_spare")
    assert a.avg_spare_kv == pytest.approx(0.05)


def test_queue_spare_below_trigger_scales_up() -> None:
    # spare queue = 5 - 3 = 2 < 3
    a = analyze(model((0.2, 3), (0.2, 3)), T)
    assert (a.direction, a.cause) == (Direction.UP, "queue_spare")


def test_every_replica_saturated_scales_up() -> None:
    a = analyze(model((0.9, 0), (0.1, 7)), T)
    assert (a.direction, a.saturated_replicas, a.cause) == (Direction.UP, 2, "all_saturated")


def test_spare_is_averaged_over_non_saturated_replicas_only() -> None:
    # p0 is saturated and ignored in the average: p1 and p2 have plenty of room -> no scale-up,
    # but the saturated replica blocks a scale-down (deviation 2).
    a = analyze(model((0.95, 0), (0.1, 0), (0.1, 0)), T)
    assert a.direction is Direction.NONE
    assert a.avg_spare_kv == pytest.approx(0.7)
    assert "saturated" in a.reason


def test_load_that_would_not_fit_on_fewer_replicas_holds() -> None:
    # 3 pods at 0.5 KV: at 2 pods each would be at 0.75 -> spare 0.05 < 0.1
    a = analyze(model((0.5, 0), (0.5, 0), (0.5, 0)), T)
    assert a.direction is Direction.NONE
    assert "would not fit on 2" in a.reason


def test_flow_control_queue_counts_as_demand() -> None:
    servers_look_fine = model((0.3, 0), (0.3, 0))
    assert analyze(servers_look_fine, T).direction is Direction.DOWN
    # 8 requests wait in the picker: spread over 2 replicas, spare queue = 5 - 4 = 1 < 3
    queued = model((0.3, 0), (0.3, 0), fc=8)
    a = analyze(queued, T)
    assert (a.direction, a.cause) == (Direction.UP, "queue_spare")
    assert "waiting in the picker" in a.reason
    # a couple queued: no scale-up, but no scale-down either
    a = analyze(model((0.3, 0), (0.3, 0), fc=2), T)
    assert a.direction is Direction.NONE
    assert "waiting in the picker" in a.reason


def test_unknown_picker_queue_blocks_scale_down_only() -> None:
    a = analyze(model((0.1, 0), (0.1, 0), fc=NAN), T)
    assert a.direction is Direction.NONE
    assert math.isnan(a.flow_control_queue)
    assert analyze(model((0.79, 0), (0.79, 0), fc=NAN), T).direction is Direction.UP


def test_a_pod_without_readings_counts_but_never_justifies_scale_down() -> None:
    a = analyze(model((0.1, 0), (NAN, NAN), (0.1, 0)), T)
    assert (a.direction, a.current_replicas, a.unknown_replicas) == (Direction.NONE, 3, 1)
    assert "without readings" in a.reason


def test_one_known_reading_past_its_threshold_saturates_the_pod() -> None:
    a = analyze(model((NAN, 9), (NAN, 9)), T)
    assert a.direction is Direction.UP


def test_no_readable_pod_is_stale() -> None:
    for readings in (model(), model((NAN, NAN), (NAN, 1))):
        a = analyze(readings, T)
        assert a.stale and a.cause == "no_metrics"


def test_thresholds_are_validated_with_wva_names() -> None:
    with pytest.raises(ConfigError, match="kvSpareTrigger"):
        Thresholds(kv_cache_threshold=0.05, kv_spare_trigger=0.1)
    with pytest.raises(ConfigError, match="queueLengthThreshold"):
        Thresholds(queue_length_threshold=-1)
    with pytest.raises(ConfigError, match="kvCacheThreshold"):
        Thresholds(kv_cache_threshold=1.2)


# --- pending recommendations -------------------------------------------------------------------

def test_a_pending_scale_up_is_not_stacked_and_is_kept_while_load_stays() -> None:
    hot = analyze(model((0.78, 0), (0.78, 0)), T)
    assert recommend(hot, None) == 3
    assert recommend(hot, 3) == 3  # still 2 replicas running: no 4
    warm = analyze(model((0.5, 0), (0.5, 0)), T)
    assert warm.direction is Direction.NONE
    assert recommend(warm, 3) == 3  # not back to 2 before the autoscaler acted


def test_a_pending_scale_up_gives_way_when_load_falls_away() -> None:
    idle = analyze(model((0.05, 0), (0.05, 0)), T)
    assert recommend(idle, 3) == 1


def test_more_load_overrides_a_pending_scale_down() -> None:
    hot = analyze(model((0.78, 0), (0.78, 0), (0.78, 0)), T)
    assert recommend(hot, 2) == 4
    steady = analyze(model((0.5, 0), (0.5, 0), (0.5, 0)), T)
    assert recommend(steady, 2) == 2


def test_stale_holds_previous_or_current() -> None:
    stale = analyze(model((NAN, NAN), (NAN, NAN)), T)
    assert recommend(stale, 4) == 4
    assert recommend(stale, None) == 2


def test_running_requests_of_the_removed_replica_count_when_batches_are_full() -> None:
    # 4 replicas each running their batch of 4, 1 waiting: WVA would spread only the 4 waiting
    # over 3 replicas (spare 3.67) and scale down; the 4 running of the removed one would wait.
    full = ModelReadings(MODEL, tuple(PodReading(f"p{i}", 0.1, 1, running=4) for i in range(4)))
    a = analyze(full, T)
    assert a.direction is Direction.NONE
    assert "would not fit on 3" in a.reason
    # the same waiting counts without running counts: WVA's rule, which scales down
    blind = ModelReadings(MODEL, tuple(PodReading(f"p{i}", 0.1, 1) for i in range(4)))
    assert analyze(blind, T).direction is Direction.DOWN


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.integers(0, 10), st.integers(0, 8)), min_size=2, max_size=8),
       st.floats(0.05, 1), st.integers(1, 10), st.floats(0, 0.05), st.integers(0, 5))
def test_a_scale_down_never_leads_to_a_scale_up_on_the_same_load(
        pods: list[tuple[float, int, int]], kv_t: float, q_t: int, kv_trig: float, q_trig: int) -> None:
    t = Thresholds(kv_cache_threshold=kv_t, queue_length_threshold=q_t, kv_spare_trigger=min(kv_trig, kv_t),
                   queue_spare_trigger=q_trig)
    before = analyze(ModelReadings(MODEL, tuple(PodReading(f"p{i}", kv, q, r) for i, (kv, q, r) in enumerate(pods))),
                     t)
    if before.direction is not Direction.DOWN:
        return
    n = len(pods) - 1
    batch = max(r for _, _, r in pods)
    total = sum(q + r for _, q, r in pods)
    running = min(batch, total / n)
    kv = sum(p[0] for p in pods) / n
    after = analyze(ModelReadings(MODEL, tuple(PodReading(f"p{i}", kv, total / n - running, running)
                                               for i in range(n))), t)
    assert after.direction is not Direction.UP


# --- recorded sequences through the service ----------------------------------------------------

class Replay:
    """A reader that answers the recorded readings one analysis at a time (None = the read failed)."""

    def __init__(self, frames: Sequence[ModelReadings | None]) -> None:
        self.frames = list(frames)
        self.calls = 0

    async def __call__(self, models: Sequence[str]) -> Mapping[str, ModelReadings]:
        frame = self.frames[self.calls]
        self.calls += 1
        if frame is None:
            raise ConnectionError("prometheus unreachable")
        return {frame.model: frame}


VARIANT = Variant(MODEL, "ns", "H100")


async def replay(frames: Sequence[ModelReadings | None],
                 scale_down_after: int = 1) -> tuple[list[int | None], AutoscaleMetrics]:
    metrics = AutoscaleMetrics()
    clock = iter(range(1000))
    service = AutoscaleService(Replay(frames), [ModelTarget(MODEL, VARIANT)], OverridesFile(None), metrics,
                               interval=30, clock=lambda: float(next(clock)), scale_down_after=scale_down_after)
    desired: list[int | None] = []
    for _ in frames:
        (rec,) = await service.analyze_once()
        desired.append(rec.desired)
    return desired, metrics


def sample(metrics: AutoscaleMetrics, name: str, **labels: str) -> float | None:
    base = {"variant_name": MODEL, "namespace": "ns"}
    return metrics.registry.get_sample_value(name, {**base, **labels})


def pods(n: int, kv: float, q: float) -> ModelReadings:
    return model(*[(kv, q)] * n)


async def test_saturation_raises_the_recommendation_at_the_first_analysis() -> None:
    frames = [pods(2, 0.4, 0), pods(2, 0.45, 1), pods(2, 0.85, 6), pods(2, 0.9, 8)]
    desired, metrics = await replay(frames)
    assert desired == [2, 2, 3, 3]
    assert sample(metrics, "wva_replica_scaling_total", direction="up", reason="all_saturated") == 1
    assert sample(metrics, "wva_desired_replicas", accelerator_type="H100") == 3
    assert sample(metrics, "wva_current_replicas", accelerator_type="H100") == 2
    assert sample(metrics, "wva_desired_ratio", accelerator_type="H100") == 1.5


async def test_steady_load_never_flaps() -> None:
    # A noisy but steady load on 3 replicas, below the triggers and too big for 2.
    noise = [0.0, 0.03, -0.02, 0.01, -0.03, 0.02, 0.0, -0.01, 0.03, -0.02]
    frames = [model((0.5 + d, 1), (0.48 - d, 1), (0.52, 0)) for d in noise]
    desired, metrics = await replay(frames)
    assert set(desired) == {3}
    assert sample(metrics, "wva_replica_scaling_total", direction="up", reason="kv_spare") is None


async def test_the_recommendation_drops_only_after_the_load_fell() -> None:
    # After a scale-up was acted on (3 replicas), the load stays high a while, then falls.
    high = [pods(3, 0.6, 1)] * 4
    falling = [pods(3, 0.55, 1), pods(3, 0.5, 0)]
    low = [pods(3, 0.2, 0)] * 4
    desired, _ = await replay(high + falling + low, scale_down_after=3)
    assert desired[:6] == [3] * 6  # 3 x 0.5 would be 0.75 on 2 replicas: does not fit
    # 3 x 0.2 = 0.3 on 2 replicas fits: published once three analyses in a row said so
    assert desired[6:] == [3, 3, 2, 2]


async def test_one_noisy_reading_does_not_drop_the_recommendation() -> None:
    busy, lull = pods(3, 0.5, 0), pods(3, 0.1, 0)  # a lull: one instant where clients were between requests
    desired, metrics = await replay([busy, lull, busy, lull, lull, busy, lull, lull, lull], scale_down_after=3)
    assert desired == [3, 3, 3, 3, 3, 3, 3, 3, 2]
    assert sample(metrics, "wva_replica_scaling_total", direction="down", reason="load_fits") == 1


async def test_a_drop_at_start_also_waits() -> None:
    desired, _ = await replay([pods(2, 0.1, 0)] * 3, scale_down_after=3)
    assert desired == [2, 2, 1]


async def test_a_stale_analysis_restarts_the_count() -> None:
    idle = pods(3, 0.1, 0)
    desired, _ = await replay([idle, idle, None, idle, idle, idle], scale_down_after=3)
    assert desired == [3, 3, 3, 3, 3, 2]


async def test_the_picker_queue_raises_the_recommendation_when_servers_look_idle() -> None:
    frames = [model((0.3, 0), (0.3, 0), fc=0), model((0.3, 0), (0.3, 0), fc=12)]
    desired, metrics = await replay(frames)
    # idle: down to 1; then queued in the picker: more than the 2 still running
    assert desired == [1, 3]
    assert sample(metrics, "wva_replica_scaling_total", direction="up", reason="queue_spare") == 1


async def test_missing_metrics_hold_the_last_recommendation(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="epp.autoscale.service")
    frames = [pods(2, 0.85, 6), None, None, pods(2, NAN, NAN), pods(2, 0.85, 6)]
    desired, metrics = await replay(frames)
    assert desired == [3, 3, 3, 3, 3]
    assert sample(metrics, "wva_recommendation_stale", accelerator_type="H100") == 0
    stale_lines = [r.getMessage() for r in caplog.records if "wva_recommendation_stale=1" in r.getMessage()]
    assert len(stale_lines) == 1  # logged when it went stale, not on every analysis
    assert "prometheus unreachable" in stale_lines[0] and "holding 3 replicas" in stale_lines[0]
    assert any("metrics back" in r.getMessage() for r in caplog.records)
    assert sample(metrics, "wva_analysis_total", outcome="stale") == 3


async def test_stale_from_the_start_publishes_no_desired_count() -> None:
    desired, metrics = await replay([None, pods(2, 0.1, 0)])
    assert desired == [None, 1]
    assert sample(metrics, "wva_recommendation_stale", accelerator_type="H100") == 0


async def test_stale_metric_is_one_while_holding() -> None:
    _, metrics = await replay([pods(2, 0.5, 0), None])
    assert sample(metrics, "wva_recommendation_stale", accelerator_type="H100") == 1
    assert sample(metrics, "wva_desired_replicas", accelerator_type="H100") == 2
