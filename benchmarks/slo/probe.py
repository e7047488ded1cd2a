"""What the picker says about its predictor: /debug/predictor and the prediction metrics on /metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["PredictorReading", "predictor_reading"]

_PREFIX = "inference_objective_request_"
_SUMS = {  # metric family → field of PredictorReading (sum, count)
    f"{_PREFIX}ttft_prediction_duration_seconds": "cost",
    f"{_PREFIX}predicted_ttft_seconds": "predicted_ttft",
    f"{_PREFIX}ttft_seconds": "actual_ttft",
    f"{_PREFIX}predicted_tpot_seconds": "predicted_tpot",
    f"{_PREFIX}tpot_seconds": "actual_tpot",
}


@dataclass(slots=True)
class PredictorReading:
    """Histogram (sum, count) pairs of the picker's predictions and measurements, and its debug page."""

    sums: dict[str, tuple[float, float]]
    violations: dict[str, float]  # type → inference_objective_request_slo_violation_total
    debug: dict[str, Any]  # the first predictor on /debug/predictor ({} when none)

    def mean(self, name: str) -> float | None:
        total, count = self.sums.get(name, (0.0, 0.0))
        return total / count if count else None

    def predictions(self) -> int:
        return int(self.sums.get("cost", (0.0, 0.0))[1])

    def since(self, earlier: PredictorReading) -> PredictorReading:
        """The histogram sums and counters accumulated after ``earlier`` (the debug page stays this one's)."""
        sums = {k: (v[0] - earlier.sums.get(k, (0.0, 0.0))[0], v[1] - earlier.sums.get(k, (0.0, 0.0))[1])
                for k, v in self.sums.items()}
        violations = {k: v - earlier.violations.get(k, 0.0) for k, v in self.violations.items()}
        return PredictorReading(sums, violations, self.debug)

    def held_out_error(self) -> tuple[float | None, float | None]:
        """Median absolute percentage error (fraction) of TTFT and TPOT on the recent held-out window."""
        error = self.debug.get("heldOutError") or {}
        return error.get("ttftMedianAbsPctError"), error.get("tpotMedianAbsPctError")


async def predictor_reading(admin_url: str) -> PredictorReading:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get(f"{admin_url}/metrics") as response:
            text = await response.text()
        async with session.get(f"{admin_url}/debug/predictor") as response:
            page = await response.json() if response.status == 200 else {}
    sums: dict[str, list[float]] = {}
    violations: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        field = _SUMS.get(family.name)
        for sample in family.samples:
            if field is not None and sample.name in (f"{family.name}_sum", f"{family.name}_count"):
                pair = sums.setdefault(field, [0.0, 0.0])
                pair[0 if sample.name.endswith("_sum") else 1] += sample.value
            elif sample.name == f"{_PREFIX}slo_violation_total":
                kind = sample.labels.get("type", "")
                violations[kind] = violations.get(kind, 0.0) + sample.value
    predictors = page.get("predictors") or {}
    debug: dict[str, Any] = next(iter(predictors.values()), {}) if isinstance(predictors, dict) else {}
    return PredictorReading({k: (v[0], v[1]) for k, v in sums.items()}, violations, debug)
