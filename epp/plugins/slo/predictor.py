"""The in-process latency predictor: features → predicted TTFT and TPOT in milliseconds.

Model. Two linear models over engineered terms (``features.TTFT_TERMS``, ``TPOT_TERMS``),
fitted by weighted ridge regression that shrinks toward a prior instead of toward zero.
Why linear: the simulator's (and vLLM's) step cost is linear in prefill tokens, decode
batch and context read, and queueing adds whole prefills; on simulator-shaped data
(``python -m benchmarks.slo.predictor_models``) it had a lower median error than
gradient-boosted trees (TTFT 15.9 % vs 18.6 % for scikit-learn's HistGradientBoosting and
18.8 % for lightgbm; 7.6 % with the per-endpoint factors below) at 0.8 µs per candidate
against 75-110 µs (batched) or 560-860 µs (one call per candidate). Prediction uses plain
Python floats: numpy is not installed in the picker's venv, and at under 1 µs per
candidate there is nothing left for it to speed up.

Fitting. Each sample is weighted 1/actual², so the fit minimises *relative* error (what
the SLO comparison cares about: 20 ms off a 50 ms TTFT matters, 20 ms off 5 s does not).
The normal equations are kept as running sums with exponential forgetting (a sample's
weight halves after about 0.7 × ``max_samples`` newer ones): recent traffic dominates and a
refit only folds in the samples that arrived since the last one, so its work is bounded by
the new samples (a few ms for 500), never by the history. Solving the 6×6 system takes
microseconds. The served coefficients are one immutable tuple pair and the endpoint
factors one dict, both replaced (never mutated) by ``refit``, which runs on the event loop
between requests, so a prediction never sees half a refit.

Prior (milliseconds; from the simulator's defaults, which model vLLM serving an 8B model on
an H100, ``epp/sim/config.py``):

- TTFT = 15 + 45·(uncached prompt, k tokens) + 45·(prefill backlog, k tokens)
  + 25·waiting + 0.5·running. Prefill runs at 4e-5 s/token plus attention (≈45 ms per 1k
  tokens); the base is one 6 ms step plus scheduling and network; a waiting request costs
  about half an average prefill (the backlog term already counts this picker's own).
- TPOT = 7 + 0.08·running + 22·KV usage + 0.3·(prefill backlog, k tokens)
  + 0.3·(prompt tokens routed there recently, k tokens/s). One decode step is 6 ms of weights
  plus 0.03 ms per sequence; reading a full KV cache (27,900 blocks × 16 tokens × 5e-8 s)
  adds 22 ms; a 1k-token prefill chunk adds ≈40 ms to one step, spread over a ~128-token
  answer; prompts arriving at R k tokens/s keep the engine prefilling 4·R % of the time
  (≈0.3 ms per step per k tokens/s). This picker's in-flight requests start at 0: the
  running batch carries the same signal until the data says otherwise.

The prior is worth ``PRIOR_PSEUDO_SAMPLES`` (20) samples: the ridge penalty on each
coefficient's distance from the prior is 20 × the mean weighted energy of its term, so a
few early samples move the coefficients only part of the way, and a term never seen (e.g.
no prefix producer) keeps its prior value exactly.

Endpoint speed. Replicas differ in speed (GPU type, model parallelism, ``epp sim --speed``)
in ways no load feature shows: an idle slow replica looks like an idle fast one. So each
endpoint also has a multiplicative factor per target, the geometric moving average of
actual / predicted-by-the-shared-model (weight 1/n for the endpoint's n-th sample, so the
first ones are averaged plainly and a new replica's speed is learnt from a handful of
requests, then ``FACTOR_ALPHA``: a memory of about 30 requests, so one slow request moves
it by a few percent, not by a tenth of its error), learned at
refit and applied at prediction (1.0 for an endpoint never seen). At most
``MAX_ENDPOINT_FACTORS`` endpoints are remembered (the least recently updated go first).

Margin (the prediction the decision uses). The model predicts a typical latency, but an
objective is missed by the requests slower than predicted, and the endpoint a request is
sent to is the one whose prediction fit its objective (so the chosen predictions err low
more often than not). ``predict_bound`` therefore multiplies the typical prediction by a
per-endpoint margin: the ``quantile`` (0.9 by default, as the Go predictor's
``LATENCY_QUANTILE_ALPHA``) of actual / predicted over the endpoint's last ``MARGIN_WINDOW``
held-out samples (the whole pool's until the endpoint has ``MARGIN_MIN_SAMPLES``), kept in
``MARGIN_RANGE``. ``quantile=None`` turns the margin off (``predict_bound`` = ``predict``).
With it, a request is sent where its objective holds for about 90 % of requests like it,
not for half of them. ``predict`` stays the typical latency: the held-out
error measures it.

Error. Before new samples are folded in, the served model predicts them: they are a
held-out window of the most recent traffic. The median absolute percentage error over the
last ``ERROR_WINDOW`` such predictions is ``debug_snapshot()``'s current error.

Persistence. With ``state_path``, the coefficients and the newest ``SAVED_SAMPLES`` samples
are written as JSON (temp file + rename, so a crash never leaves half a file) after refits
(at most once per ``refit_interval``) and on ``close()``, and loaded at start. A missing
file starts from the prior; an unreadable or corrupt one logs a warning and does the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import statistics
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import mul
from pathlib import Path
from typing import Any

from epp.plugins.slo.features import TPOT_TERMS, TTFT_TERMS, Features, tpot_terms, ttft_terms

__all__ = [
    "ERROR_WINDOW",
    "MARGIN_MIN_SAMPLES",
    "MARGIN_RANGE",
    "MARGIN_WINDOW",
    "PRIOR_PSEUDO_SAMPLES",
    "PRIOR_TPOT",
    "PRIOR_TTFT",
    "SAVED_SAMPLES",
    "Coefficients",
    "LatencyPredictor",
    "Sample",
]

log = logging.getLogger(__name__)

PRIOR_TTFT: tuple[float, ...] = (15.0, 45.0, 45.0, 25.0, 0.5, 0.0)
PRIOR_TPOT: tuple[float, ...] = (7.0, 0.08, 22.0, 0.3, 0.0, 0.0, 0.3)
PRIOR_PSEUDO_SAMPLES = 20.0
TTFT_FLOOR_MS = 1.0
TPOT_FLOOR_MS = 0.1
# Latencies beyond an hour are broken clocks or stuck streams, not training data.
_MAX_LATENCY_MS = 3_600_000.0
ERROR_WINDOW = 500
MARGIN_WINDOW = 200
MARGIN_MIN_SAMPLES = 20
MARGIN_RANGE = (0.5, 4.0)
FACTOR_ALPHA = 0.03
MAX_ENDPOINT_FACTORS = 4096
_FACTOR_RANGE = (0.1, 10.0)
SAVED_SAMPLES = 2000
_STATE_VERSION = 1

# (features, TTFT ms, TPOT ms, endpoint name or "")
Sample = tuple[Features, float | None, float | None, str]


@dataclass(frozen=True, slots=True)
class Coefficients:
    ttft: tuple[float, ...] = PRIOR_TTFT
    tpot: tuple[float, ...] = PRIOR_TPOT


class _NormalEquations:
    """Running Σw·xxᵀ and Σw·x·y with forgetting; solved as ridge toward the prior."""

    __slots__ = ("_decay", "_floor", "_prior", "weight", "xtx", "xty")

    def __init__(self, prior: tuple[float, ...], decay: float, floor: float) -> None:
        d = len(prior)
        self._prior = prior
        self._decay = decay
        self._floor = floor
        self.xtx = [[0.0] * d for _ in range(d)]  # upper triangle used
        self.xty = [0.0] * d
        self.weight = 0.0  # effective number of samples

    def add(self, x: Sequence[float], y: float) -> None:
        decay = self._decay
        w = 1.0 / max(y, self._floor) ** 2
        d = len(x)
        for i in range(d):
            wxi = w * x[i]
            row = self.xtx[i]
            for j in range(i, d):
                row[j] = row[j] * decay + wxi * x[j]
            self.xty[i] = self.xty[i] * decay + wxi * y
        self.weight = self.weight * decay + 1.0

    def solve(self) -> tuple[float, ...]:
        d = len(self._prior)
        n = max(self.weight, 1.0)
        a = [[0.0] * d for _ in range(d)]
        b = [0.0] * d
        for i in range(d):
            for j in range(i, d):
                a[i][j] = a[j][i] = self.xtx[i][j]
            energy = self.xtx[i][i]
            # A term never seen has no energy: any positive penalty pins it to its prior.
            penalty = PRIOR_PSEUDO_SAMPLES * energy / n if energy > 0.0 else 1.0
            a[i][i] += penalty
            b[i] = self.xty[i] + penalty * self._prior[i]
        solution = _solve(a, b)
        if solution is None or not all(math.isfinite(v) for v in solution):
            return self._prior
        return solution


def _solve(a: list[list[float]], b: list[float]) -> tuple[float, ...] | None:
    """Gaussian elimination with partial pivoting; ``None`` when singular."""
    d = len(b)
    for col in range(d):
        pivot = max(range(col, d), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-300:
            return None
        if pivot != col:
            a[col], a[pivot] = a[pivot], a[col]
            b[col], b[pivot] = b[pivot], b[col]
        head = a[col][col]
        for r in range(col + 1, d):
            factor = a[r][col] / head
            if factor:
                row, top = a[r], a[col]
                for k in range(col, d):
                    row[k] -= factor * top[k]
                b[r] -= factor * b[col]
    x = [0.0] * d
    for r in range(d - 1, -1, -1):
        x[r] = (b[r] - sum(a[r][k] * x[k] for k in range(r + 1, d))) / a[r][r]
    return tuple(x)


def _valid_latency(value: float | None) -> float | None:
    if value is None or not math.isfinite(value) or value <= 0.0 or value > _MAX_LATENCY_MS:
        return None
    return float(value)


def _ape(predicted: float, actual: float) -> float:
    return abs(predicted - actual) / actual


class LatencyPredictor:
    """Predicts TTFT and TPOT (ms) per candidate; learns from completed requests off the request path.

    ``predict`` and ``observe`` are cheap and run on the event loop; ``refit`` folds the
    new samples in and swaps the coefficients; ``run`` calls it periodically.
    """

    def __init__(
        self,
        *,
        max_samples: int = 10_000,
        refit_interval: float = 5.0,
        refit_samples: int = 500,
        state_path: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        poll_interval: float = 0.25,
        quantile: float | None = 0.9,
    ) -> None:
        if max_samples < 1:
            raise ValueError("max_samples must be >= 1")
        if quantile is not None and not 0.0 < quantile < 1.0:
            raise ValueError("quantile must be between 0 and 1 (exclusive), or None for no margin")
        self.quantile = quantile
        self._clock = clock
        self._refit_interval = refit_interval
        self._refit_samples = max(1, refit_samples)
        self._poll_interval = max(0.01, min(poll_interval, refit_interval or poll_interval))
        self._state_path = Path(state_path) if state_path else None
        self._samples: deque[Sample] = deque(maxlen=max_samples)
        # Samples not folded into the sums yet; bounded like the buffer so a stalled
        # refit task cannot grow memory.
        self._pending: deque[Sample] = deque(maxlen=max_samples)
        decay = 1.0 - 1.0 / max_samples
        self._ttft = _NormalEquations(PRIOR_TTFT, decay, TTFT_FLOOR_MS)
        self._tpot = _NormalEquations(PRIOR_TPOT, decay, TPOT_FLOOR_MS)
        self.coefficients = Coefficients()
        # endpoint name → (TTFT factor, TPOT factor); only ever replaced whole, on the loop
        self.endpoint_factors: dict[str, tuple[float, float]] = {}
        # endpoint → (TTFT, TPOT) samples its factor has learnt from, for the 1/n start
        self._factor_samples: dict[str, tuple[int, int]] = {}
        # Held-out actual / predicted per endpoint ("" = the whole pool), for the margins.
        self._ratios: dict[str, tuple[deque[float], deque[float]]] = {}
        # endpoint → (TTFT, TPOT) margin; "" is the pool's, for endpoints with few samples
        self.margins: dict[str, tuple[float, float]] = {}
        # endpoint factor × margin, and the pool margin alone: what predict_bound multiplies by
        self._bound_factors: dict[str, tuple[float, float]] = {}
        self._pool_margin = (1.0, 1.0)
        self._ttft_errors: deque[float] = deque(maxlen=ERROR_WINDOW)
        self._tpot_errors: deque[float] = deque(maxlen=ERROR_WINDOW)
        self.refits = 0
        self.last_refit_at: float | None = None
        self._last_save_at = clock()
        if self._state_path is not None:
            self._load(self._state_path)

    # --- the request path ------------------------------------------------------------------

    def predict(self, f: Features, endpoint: str = "") -> tuple[float, float]:
        """(TTFT ms, TPOT ms) for one candidate, from the last fitted coefficients."""
        c = self.coefficients
        ttft = sum(map(mul, c.ttft, ttft_terms(f)))
        tpot = sum(map(mul, c.tpot, tpot_terms(f)))
        factor = self.endpoint_factors.get(endpoint)
        if factor is not None:
            ttft *= factor[0]
            tpot *= factor[1]
        return (ttft if ttft > TTFT_FLOOR_MS else TTFT_FLOOR_MS, tpot if tpot > TPOT_FLOOR_MS else TPOT_FLOOR_MS)

    def predict_bound(self, f: Features, endpoint: str = "") -> tuple[float, float]:
        """(TTFT ms, TPOT ms) that about ``quantile`` of such requests stay under: what objectives are judged by."""
        c = self.coefficients
        ttft = sum(map(mul, c.ttft, ttft_terms(f)))
        tpot = sum(map(mul, c.tpot, tpot_terms(f)))
        factor = self._bound_factors.get(endpoint) or self._pool_margin
        ttft *= factor[0]
        tpot *= factor[1]
        return (ttft if ttft > TTFT_FLOOR_MS else TTFT_FLOOR_MS, tpot if tpot > TPOT_FLOOR_MS else TPOT_FLOOR_MS)

    def observe(self, f: Features, ttft_ms: float | None, tpot_ms: float | None, endpoint: str = "") -> bool:
        """Queue one measured request for the next refit; ``False`` when it measured nothing usable."""
        ttft, tpot = _valid_latency(ttft_ms), _valid_latency(tpot_ms)
        if ttft is None and tpot is None:
            return False
        sample: Sample = (f, ttft, tpot, endpoint)
        self._samples.append(sample)
        self._pending.append(sample)
        return True

    @property
    def sample_count(self) -> int:
        return len(self._samples)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    # --- training --------------------------------------------------------------------------

    def refit_due(self) -> bool:
        if not self._pending:
            return False
        if len(self._pending) >= self._refit_samples:
            return True
        last = self.last_refit_at
        return last is None or self._clock() - last >= self._refit_interval

    def refit(self) -> bool:
        """Score the served model on the new samples, fold them in, swap in the new fit."""
        if not self._pending:
            return False
        new = list(self._pending)
        self._pending.clear()
        for f, ttft, tpot, endpoint in new:
            ttft_pred, tpot_pred = self.predict(f, endpoint)  # the served model: these are held out
            if ttft is not None:
                self._ttft_errors.append(_ape(ttft_pred, ttft))
                self._ttft.add(ttft_terms(f), ttft)
            if tpot is not None:
                self._tpot_errors.append(_ape(tpot_pred, tpot))
                self._tpot.add(tpot_terms(f), tpot)
            self._note_ratios(endpoint, ttft, ttft_pred, tpot, tpot_pred)
        fitted = Coefficients(self._ttft.solve(), self._tpot.solve())
        # Factors are residuals of the shared model, so they are learned against the new fit.
        factors = dict(self.endpoint_factors)
        for f, ttft, tpot, endpoint in new:
            if endpoint:
                shared = (max(TTFT_FLOOR_MS, sum(map(mul, fitted.ttft, ttft_terms(f)))),
                          max(TPOT_FLOOR_MS, sum(map(mul, fitted.tpot, tpot_terms(f)))))
                seen = self._factor_samples.get(endpoint, (0, 0))
                seen = (seen[0] + (ttft is not None), seen[1] + (tpot is not None))
                self._factor_samples[endpoint] = seen
                _update_factor(factors, endpoint, factors.get(endpoint, (1.0, 1.0)), shared, ttft, tpot, seen)
        self._factor_samples = {k: v for k, v in self._factor_samples.items() if k in factors}
        self.coefficients = fitted
        self.endpoint_factors = factors
        self._update_margins({endpoint for *_, endpoint in new})
        self.refits += 1
        self.last_refit_at = self._clock()
        return True

    def _note_ratios(self, endpoint: str, ttft: float | None, ttft_pred: float, tpot: float | None,
                     tpot_pred: float) -> None:
        for key in {"", endpoint}:
            ratios = self._ratios.get(key)
            if ratios is None:
                if len(self._ratios) > MAX_ENDPOINT_FACTORS:
                    del self._ratios[next(k for k in self._ratios if k)]
                ratios = self._ratios[key] = (deque(maxlen=MARGIN_WINDOW), deque(maxlen=MARGIN_WINDOW))
            if ttft is not None:
                ratios[0].append(ttft / ttft_pred)
            if tpot is not None:
                ratios[1].append(tpot / tpot_pred)

    def _update_margins(self, endpoints: set[str]) -> None:
        """Recompute the margins of the pool and the endpoints that got samples; rebuild the bound factors."""
        margins = dict(self.margins)
        # The pool first: an endpoint with few samples borrows the pool's new margin, whatever the set order.
        for endpoint in ["", *sorted(endpoints - {""})]:
            ratios = self._ratios.get(endpoint)
            if ratios is not None:
                margins[endpoint] = (self._margin(ratios[0], margins.get("", (1.0, 1.0))[0]),
                                     self._margin(ratios[1], margins.get("", (1.0, 1.0))[1]))
        margins = {k: v for k, v in margins.items() if k == "" or k in self._ratios}
        pool = margins.get("", (1.0, 1.0))
        self.margins = margins
        self._pool_margin = pool
        bound: dict[str, tuple[float, float]] = {}
        for endpoint in set(self.endpoint_factors) | set(margins):
            if not endpoint:
                continue
            factor = self.endpoint_factors.get(endpoint, (1.0, 1.0))
            margin = margins.get(endpoint, pool)
            bound[endpoint] = (factor[0] * margin[0], factor[1] * margin[1])
        self._bound_factors = bound

    def _margin(self, ratios: deque[float], fallback: float) -> float:
        if self.quantile is None:
            return 1.0
        if len(ratios) < MARGIN_MIN_SAMPLES:
            return fallback
        ordered = sorted(ratios)
        position = self.quantile * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        value = ordered[low] + (ordered[high] - ordered[low]) * (position - low)
        return min(MARGIN_RANGE[1], max(MARGIN_RANGE[0], value))

    async def run(self) -> None:
        """Refit when due, forever (the lead starts this as a background task; cancel to stop)."""
        while True:
            await asyncio.sleep(self._poll_interval)
            if self.refit_due():
                self.refit()
                if self._state_path is not None and self._clock() - self._last_save_at >= self._refit_interval:
                    self._last_save_at = self._clock()
                    state = self.state()
                    await asyncio.to_thread(_write_atomically, self._state_path, state)

    # --- persistence -----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What ``state_path`` holds: coefficients and the newest samples, JSON-ready."""
        newest = list(self._samples)[-SAVED_SAMPLES:]
        return {
            "version": _STATE_VERSION,
            "terms": {"ttft": list(TTFT_TERMS), "tpot": list(TPOT_TERMS)},
            "coefficients": {"ttft": list(self.coefficients.ttft), "tpot": list(self.coefficients.tpot)},
            "refits": self.refits,
            "endpointFactors": {name: list(k) for name, k in self.endpoint_factors.items()},
            "samples": [[list(f), ttft, tpot, endpoint] for f, ttft, tpot, endpoint in newest],
        }

    def save(self) -> None:
        """Write the state now (no-op without a path); failures are logged, never raised."""
        if self._state_path is not None:
            self._last_save_at = self._clock()
            _write_atomically(self._state_path, self.state())

    def close(self) -> None:
        """Fold in what is pending and save: call once at shutdown."""
        self.refit()
        self.save()

    def _load(self, path: Path) -> None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("latency predictor: cannot read %s (%s); starting from the prior", path, exc)
            return
        try:
            coefficients, samples, refits, factors = _parse_state(json.loads(raw))
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("latency predictor: ignoring corrupt state file %s (%s); starting from the prior", path, exc)
            return
        for sample in samples:
            f, ttft, tpot, _ = sample
            self._samples.append(sample)
            if ttft is not None:
                self._ttft.add(ttft_terms(f), ttft)
            if tpot is not None:
                self._tpot.add(tpot_terms(f), tpot)
        self.coefficients = coefficients
        self.endpoint_factors = factors
        # Loaded factors are settled: new samples move them at FACTOR_ALPHA, not 1/n.
        settled = math.ceil(1.0 / FACTOR_ALPHA)
        self._factor_samples = {name: (settled, settled) for name in factors}
        self._update_margins(set())
        self.refits = refits
        log.info("latency predictor: loaded %d samples and coefficients from %s", len(samples), path)

    # --- introspection ---------------------------------------------------------------------

    def debug_snapshot(self) -> dict[str, Any]:
        """For ``/debug/predictor``: samples, refits, held-out error, coefficients."""
        last = self.last_refit_at
        return {
            "samples": len(self._samples),
            "pendingSamples": len(self._pending),
            "refits": self.refits,
            "lastRefitSecondsAgo": None if last is None else round(self._clock() - last, 3),
            "heldOutError": {
                "ttftMedianAbsPctError": _median(self._ttft_errors),
                "tpotMedianAbsPctError": _median(self._tpot_errors),
                "ttftSamples": len(self._ttft_errors),
                "tpotSamples": len(self._tpot_errors),
            },
            "coefficients": {
                "ttft": dict(zip(TTFT_TERMS, self.coefficients.ttft, strict=True)),
                "tpot": dict(zip(TPOT_TERMS, self.coefficients.tpot, strict=True)),
            },
            "endpointFactors": {name: {"ttft": round(k[0], 3), "tpot": round(k[1], 3)}
                                for name, k in list(self.endpoint_factors.items())[-64:]},
            "quantile": self.quantile,
            "margins": {name or "(pool)": {"ttft": round(k[0], 3), "tpot": round(k[1], 3)}
                        for name, k in list(self.margins.items())[-64:]},
            "prior": {"ttft": dict(zip(TTFT_TERMS, PRIOR_TTFT, strict=True)),
                      "tpot": dict(zip(TPOT_TERMS, PRIOR_TPOT, strict=True))},
            "statePath": None if self._state_path is None else str(self._state_path),
        }

    def held_out_error(self) -> tuple[float | None, float | None]:
        """Median absolute percentage error (fraction) of TTFT and TPOT on recent held-out samples."""
        return _median(self._ttft_errors), _median(self._tpot_errors)


def _median(values: Iterable[float]) -> float | None:
    data = list(values)
    return round(statistics.median(data), 4) if data else None


def _floats(value: Any, length: int, what: str) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) != length:
        raise ValueError(f"{what}: expected a list of {length} numbers")
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | float) or not math.isfinite(item):
            raise ValueError(f"{what}: not a finite number: {item!r}")
        out.append(float(item))
    return tuple(out)


def _optional_latency(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what}: not a number")
    latency = _valid_latency(float(value))
    if latency is None:
        raise ValueError(f"{what}: out of range")
    return latency


def _update_factor(factors: dict[str, tuple[float, float]], endpoint: str, factor: tuple[float, float],
                   shared: tuple[float, float], ttft: float | None, tpot: float | None,
                   seen: tuple[int, int]) -> None:
    low, high = _FACTOR_RANGE

    def moved(old: float, actual: float | None, predicted: float, n: int) -> float:
        if actual is None:
            return old
        ratio = min(high, max(low, actual / predicted))
        alpha = max(FACTOR_ALPHA, 1.0 / max(n, 1))
        return math.exp((1.0 - alpha) * math.log(old) + alpha * math.log(ratio))

    factors.pop(endpoint, None)  # re-inserted last: dict order is least recently updated first
    factors[endpoint] = (moved(factor[0], ttft, shared[0], seen[0]), moved(factor[1], tpot, shared[1], seen[1]))
    if len(factors) > MAX_ENDPOINT_FACTORS:
        del factors[next(iter(factors))]


def _parse_factors(raw: Any) -> dict[str, tuple[float, float]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError("endpointFactors: expected a mapping")
    low, high = _FACTOR_RANGE
    factors: dict[str, tuple[float, float]] = {}
    for name, value in list(raw.items())[-MAX_ENDPOINT_FACTORS:]:
        ttft, tpot = _floats(value, 2, f"endpointFactors[{name!r}]")
        if not (low <= ttft <= high and low <= tpot <= high):
            raise ValueError(f"endpointFactors[{name!r}]: out of range")
        factors[str(name)] = (ttft, tpot)
    return factors


def _parse_state(data: Any) -> tuple[Coefficients, list[Sample], int, dict[str, tuple[float, float]]]:
    if not isinstance(data, dict) or data.get("version") != _STATE_VERSION:
        raise ValueError("not a version 1 predictor state")
    if data.get("terms") != {"ttft": list(TTFT_TERMS), "tpot": list(TPOT_TERMS)}:
        raise ValueError("written for other model terms")
    coefficients = Coefficients(_floats(data["coefficients"]["ttft"], len(TTFT_TERMS), "ttft coefficients"),
                                _floats(data["coefficients"]["tpot"], len(TPOT_TERMS), "tpot coefficients"))
    raw_samples = data["samples"]
    if not isinstance(raw_samples, list):
        raise ValueError("samples: expected a list")
    samples: list[Sample] = []
    for i, item in enumerate(raw_samples[-SAVED_SAMPLES:]):
        if not isinstance(item, list) or len(item) != 4 or not isinstance(item[3], str):
            raise ValueError(f"samples[{i}]: expected [features, ttft, tpot, endpoint]")
        features = Features(*_floats(item[0], len(Features._fields), f"samples[{i}] features"))
        samples.append((features, _optional_latency(item[1], f"samples[{i}] ttft"),
                        _optional_latency(item[2], f"samples[{i}] tpot"), item[3]))
    refits = data.get("refits", 0)
    refits = refits if isinstance(refits, int) and not isinstance(refits, bool) else 0
    return coefficients, samples, refits, _parse_factors(data.get("endpointFactors"))


def _write_atomically(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` via a temp file in the same directory and a rename."""
    tmp_name = ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(state, out, separators=(",", ":"))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, path)
        tmp_name = ""
    except OSError as exc:
        log.warning("latency predictor: cannot save state to %s (%s)", path, exc)
    finally:
        if tmp_name:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
