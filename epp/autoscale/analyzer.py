"""The saturation analyzer: WVA's V1 rules as a pure function over one model's per-pod readings.

A replica is *saturated* when its KV-cache usage is at or above ``kv_cache_threshold`` or its
waiting queue at or above ``queue_length_threshold``. Over the replicas that are not
saturated, the spare capacity is the mean of ``kv_cache_threshold - kv`` and of
``queue_length_threshold - waiting``.

- **Up** (one replica more) when the mean spare KV is below ``kv_spare_trigger`` or the mean
  spare queue below ``queue_spare_trigger``, or when every replica is saturated.
- **Down** (one replica fewer) only when the load fits on one replica fewer: the total KV and
  queue load spread over ``N - 1`` replicas still leaves both spares at or above their
  triggers.
- Otherwise **none**: the recommendation stays at the current count.

Because the scale-down test is the scale-up test run at ``N - 1``, a load that does not
change cannot move the recommendation up and then back down: that is the hysteresis.

Where this deviates from WVA (``internal/saturation/analyzer.go``) and why:

1. *The picker's flow-control queue is demand.* With flow control on, requests wait in the
   picker, not in the model servers, so the servers' queues look short while clients wait
   (WVA issue #813). Those requests are spread over the non-saturated replicas' queues when
   computing the spare, and any of them blocks a scale-down.
2. *Scale-down counts every replica.* WVA redistributes only the non-saturated replicas'
   load over ``N_nonsat - 1`` replicas, so a pool with one saturated replica and idle
   others could shrink. Here any saturated replica blocks a scale-down, and the total load
   of all replicas is spread over ``N - 1``.
   The *running* requests move too: WVA spreads only the waiting queues, so a pool whose
   replicas all run at their batch limit with short queues looked removable, and once one
   replica fewer, its running requests queued elsewhere and the next analysis scaled back
   up (the benchmark showed a flap every interval). Here the moved requests beyond the
   largest running count seen (a lower bound of the batch limit) are counted as waiting.
3. *Unknown is not zero.* WVA gives a pod with one missing reading a 0 for it, which reads
   as spare capacity. Here a pod with a missing (NaN) reading still counts as a replica but
   its load is unknown: it can never justify a scale-down. With no pod readable at all the
   analysis is ``stale`` and the caller holds its last recommendation.
4. *Pending recommendations.* WVA keeps the previous desired count whenever it differs from
   the current one, which freezes the recommendation forever when the autoscaler cannot act
   (e.g. HPA at ``maxReplicas``). Here a pending scale-up is kept while the load does not
   allow a scale-down, a pending scale-down is kept unless the load now asks for more, and
   a new step is never stacked on a pending one in the same direction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from epp.errors import ConfigError

__all__ = ["CAUSES", "Analysis", "Direction", "ModelReadings", "PodReading", "Thresholds", "analyze", "recommend"]


# The bounded set of ``Analysis.cause`` values (the ``reason`` label of wva_replica_scaling_total).
CAUSES = ("kv_spare", "queue_spare", "all_saturated", "load_fits", "steady", "no_metrics")


@dataclass(frozen=True)
class Thresholds:
    """WVA's ``saturation-scaling-config`` fields (V1), with its defaults and validation."""

    kv_cache_threshold: float = 0.8
    queue_length_threshold: float = 5.0
    kv_spare_trigger: float = 0.1
    queue_spare_trigger: float = 3.0

    def __post_init__(self) -> None:
        for name, value in (("kvCacheThreshold", self.kv_cache_threshold),
                            ("queueLengthThreshold", self.queue_length_threshold),
                            ("kvSpareTrigger", self.kv_spare_trigger),
                            ("queueSpareTrigger", self.queue_spare_trigger)):
            if not math.isfinite(value) or value < 0:
                raise ConfigError(name, "must be a finite number >= 0", value)
        for name, value in (("kvCacheThreshold", self.kv_cache_threshold),
                            ("kvSpareTrigger", self.kv_spare_trigger)):
            if value > 1:
                raise ConfigError(name, "must be between 0 and 1 (a fraction of the KV cache)", value)
        if self.kv_spare_trigger > self.kv_cache_threshold:
            raise ConfigError("kvSpareTrigger", f"must not exceed kvCacheThreshold ({self.kv_cache_threshold})",
                              self.kv_spare_trigger)


@dataclass(frozen=True)
class PodReading:
    """One replica's readings; NaN means the reading is missing (never zero)."""

    pod: str
    kv_usage: float  # vllm:kv_cache_usage_perc, a fraction 0..1
    waiting: float  # vllm:num_requests_waiting
    running: float = math.nan  # vllm:num_requests_running (used by the scale-down test only; NaN = unknown)

    @property
    def known(self) -> bool:
        return math.isfinite(self.kv_usage) and math.isfinite(self.waiting)


@dataclass(frozen=True)
class ModelReadings:
    """Everything the rules read for one model at one instant."""

    model: str
    pods: Sequence[PodReading]
    flow_control_queue: float = 0.0  # requests waiting in the picker for this model; NaN = unknown
    missing: str = ""  # why the metrics could not be read (then ``pods`` is empty)


class Direction(StrEnum):
    UP = "up"
    DOWN = "down"
    NONE = "none"


@dataclass(frozen=True)
class Analysis:
    """The rules' verdict for one model: what they saw and what they would do at ``current`` replicas."""

    model: str
    current_replicas: int
    direction: Direction
    reason: str  # for people: the numbers behind the verdict
    cause: str  # for metric labels, one of CAUSES
    saturated_replicas: int = 0
    unknown_replicas: int = 0
    avg_spare_kv: float = math.nan
    avg_spare_queue: float = math.nan
    flow_control_queue: float = 0.0
    stale: bool = False  # nothing readable: the caller must hold its last recommendation

    @property
    def target(self) -> int:
        """The replica count the rules ask for, ignoring any pending recommendation."""
        if self.direction is Direction.UP:
            return self.current_replicas + 1
        if self.direction is Direction.DOWN:
            return self.current_replicas - 1
        return self.current_replicas

    def as_dict(self) -> dict[str, object]:
        return {"model": self.model, "currentReplicas": self.current_replicas, "direction": self.direction.value,
                "reason": self.reason, "cause": self.cause, "saturatedReplicas": self.saturated_replicas,
                "unknownReplicas": self.unknown_replicas, "avgSpareKv": self.avg_spare_kv,
                "avgSpareQueue": self.avg_spare_queue, "flowControlQueue": self.flow_control_queue,
                "stale": self.stale}


def _saturated(pod: PodReading, t: Thresholds) -> bool:
    # A single known reading past its threshold is enough, even when the other is missing.
    return (math.isfinite(pod.kv_usage) and pod.kv_usage >= t.kv_cache_threshold) or (
        math.isfinite(pod.waiting) and pod.waiting >= t.queue_length_threshold)


def analyze(readings: ModelReadings, t: Thresholds) -> Analysis:
    """Apply the V1 rules to one model's readings (pure; see the module docstring)."""
    pods = list(readings.pods)
    n = len(pods)
    fc = readings.flow_control_queue
    fc_known = math.isfinite(fc)
    fc_demand = max(fc, 0.0) if fc_known else 0.0
    saturated = [p for p in pods if _saturated(p, t)]
    open_known = [p for p in pods if p.known and not _saturated(p, t)]
    unknown = [p for p in pods if not p.known and not _saturated(p, t)]
    seen = Analysis(model=readings.model, current_replicas=n, direction=Direction.NONE, reason="", cause="steady",
                    saturated_replicas=len(saturated), unknown_replicas=len(unknown),
                    flow_control_queue=fc if fc_known else math.nan)
    if n == 0 or (not saturated and not open_known):
        return replace(seen, reason=readings.missing or "no readable replica metrics", cause="no_metrics",
                       stale=True)
    if not open_known:
        return replace(seen, direction=Direction.UP, reason=f"all {len(saturated)} readable replicas saturated",
                       cause="all_saturated")

    m = len(open_known)
    spare_kv = sum(t.kv_cache_threshold - p.kv_usage for p in open_known) / m
    # Requests queued in the picker would land on the replicas that still have room.
    spare_q = sum(t.queue_length_threshold - p.waiting for p in open_known) / m - fc_demand / m
    seen = replace(seen, avg_spare_kv=spare_kv, avg_spare_queue=spare_q)
    if spare_kv < t.kv_spare_trigger:
        return replace(seen, direction=Direction.UP, reason=f"spare KV {spare_kv:.3f} < trigger {t.kv_spare_trigger}",
                       cause="kv_spare")
    if spare_q < t.queue_spare_trigger:
        why = f"spare queue {spare_q:.2f} < trigger {t.queue_spare_trigger}"
        if fc_demand:
            why += f" (incl. {fc_demand:g} waiting in the picker)"
        return replace(seen, direction=Direction.UP, reason=why, cause="queue_spare")

    blocker = _scale_down_blocker(pods, saturated, unknown, fc, fc_known, t)
    if blocker is not None:
        return replace(seen, reason=blocker)
    return replace(seen, direction=Direction.DOWN, reason=f"load fits on {n - 1} replicas", cause="load_fits")


def _scale_down_blocker(pods: list[PodReading], saturated: list[PodReading], unknown: list[PodReading],
                        fc: float, fc_known: bool, t: Thresholds) -> str | None:
    """Why one replica fewer is not safe, or ``None`` when it is."""
    n = len(pods)
    if n < 2:
        return "a single replica is never removed"
    if saturated:
        return f"{len(saturated)} replica(s) saturated"
    if unknown:
        return f"{len(unknown)} replica(s) without readings: not scaling down on unknown load"
    if not fc_known:
        return "picker queue unknown: not scaling down on unknown load"
    if fc > 0:
        return f"{fc:g} request(s) waiting in the picker"
    kv_after = t.kv_cache_threshold - sum(p.kv_usage for p in pods) / (n - 1)
    q_after = t.queue_length_threshold - _waiting_after_removal(pods)
    if kv_after < t.kv_spare_trigger or q_after < t.queue_spare_trigger:
        return f"load would not fit on {n - 1} replicas (spare KV {kv_after:.3f}, spare queue {q_after:.2f})"
    return None


def _waiting_after_removal(pods: list[PodReading]) -> float:
    """Requests waiting per replica once one replica's requests, running and waiting, move to the others.

    The running requests of the removed replica do not all start at once elsewhere: each
    replica runs at most its batch limit. That limit is not reported, so the largest
    running count seen is used: a lower bound of the true limit, which can only make a
    scale-down less likely. Without running counts, WVA's rule: only the waiting move.
    """
    n = len(pods)
    if not all(math.isfinite(p.running) for p in pods):
        return sum(p.waiting for p in pods) / (n - 1)
    batch = max(p.running for p in pods)
    total = sum(p.running + p.waiting for p in pods)
    return max(0.0, total / (n - 1) - batch)


def recommend(analysis: Analysis, previous: int | None) -> int:
    """The replica count to publish, given the last published one (``None`` at start).

    A stale analysis holds ``previous`` (or the current count when there is none). A
    pending recommendation (``previous != current``) is kept unless the load now points the
    other way, so a step is not repeated while the autoscaler has yet to act on it.
    """
    current = analysis.current_replicas
    if analysis.stale:
        return previous if previous is not None else current
    target = analysis.target
    if previous is None or previous == current:
        return target
    if previous > current:  # a scale-up is pending
        return target if analysis.direction is Direction.DOWN else previous
    # a scale-down is pending: safety first, more load wins at once
    return target if analysis.direction is Direction.UP else previous
