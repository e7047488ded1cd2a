"""Which latency model: accuracy and prediction cost of candidate model types on simulator-shaped data.

Run: ``.venv/bin/python -m benchmarks.slo.predictor_models [--samples 6000] [--seed 1]``

Data: endpoint states drawn at random (running batch, waiting queue, KV usage, prompt
length, prefix hit, prefill backlog) and latencies from the simulator's step-cost model
(``epp/sim/cost.py`` with the defaults of ``epp/sim/config.py``), with 10 % lognormal noise
and one replica of three 1.5× slower (like ``epp sim --speed``): no load feature shows that,
so only the last line, which gives the chosen model the endpoint name, can learn it. The
first 2/3 train, the rest test. Prints, per candidate, the median absolute percentage
error (MdAPE) of TTFT and TPOT and the prediction cost per candidate endpoint in µs
(one request scored against 8 candidates). Optional libraries (numpy, scikit-learn,
lightgbm) are measured only when installed in the venv.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from epp.datalayer.endpoint import Endpoint, EndpointMetadata, Metrics
from epp.framework.plugin import Handle
from epp.framework.scheduling import CycleState
from epp.plugins.slo.features import Features, tpot_terms, ttft_terms
from epp.plugins.slo.predictor import PRIOR_TPOT, PRIOR_TTFT, LatencyPredictor, _solve
from epp.plugins.slo.producer import PredictedLatencyProducer
from epp.requests.types import ApiKind, InferenceRequest

Row = tuple[Features, float, float, str]  # features, TTFT ms, TPOT ms, endpoint
Model = Callable[[Features], tuple[float, float]]

# Simulator defaults (seconds → ms).
STEP_MS, PREFILL_MS, ATTN_MS, SEQ_MS, CTX_MS = 6.0, 0.04, 1.3e-6, 0.03, 5e-5
KV_TOKENS, CHUNK = 27_900 * 16, 8192


def draw(rng: random.Random) -> Row:
    running = rng.randint(0, 64)
    waiting = rng.choice((0, 0, 0, 1, 2, 4, 8))
    prompt = min(32_000.0, rng.lognormvariate(math.log(800), 1.0))
    prefix = rng.choice((0.0, 0.0, 0.5, 0.9))
    backlog = rng.choice((0.0, 0.0, rng.uniform(0, 8000)))
    context = running * rng.uniform(300, 3000)
    kv = min(1.0, context / KV_TOKENS)
    endpoint = rng.choice(("e0", "e1", "e2"))
    speed = 1.5 if endpoint == "e2" else 1.0
    uncached = max(1.0, prompt * (1 - prefix))
    decode_step = STEP_MS + SEQ_MS * running + CTX_MS * context
    own_prefill = PREFILL_MS * uncached + ATTN_MS * uncached * (prompt * prefix + uncached / 2)
    queue = waiting * (PREFILL_MS * 800 + decode_step) + PREFILL_MS * backlog
    ttft = (own_prefill + queue + decode_step * math.ceil((uncached + backlog) / CHUNK)) * speed
    tpot = (decode_step + PREFILL_MS * backlog / 128) * speed
    f = Features(kv, float(waiting), float(running), prompt, prefix, backlog, 0.0, 0.0)
    return f, ttft * rng.lognormvariate(0, 0.1), tpot * rng.lognormvariate(0, 0.1), endpoint


def fit_linear(rows: Sequence[Row], weight: Callable[[float], float], log_target: bool) -> Model:
    def one(terms: Callable[[Features], tuple[float, ...]], idx: int, prior: tuple[float, ...]) -> tuple[float, ...]:
        d = len(prior)
        a = [[1e-9 if i == j else 0.0 for j in range(d)] for i in range(d)]
        b = [0.0] * d
        for row in rows:
            x, y = terms(row[0]), cast(float, row[idx])
            target = math.log(y) if log_target else y
            w = weight(y)
            for i in range(d):
                for j in range(d):
                    a[i][j] += w * x[i] * x[j]
                b[i] += w * x[i] * target
        return _solve(a, b) or prior

    ct, cp = one(ttft_terms, 1, PRIOR_TTFT), one(tpot_terms, 2, PRIOR_TPOT)

    def predict(f: Features) -> tuple[float, float]:
        t = sum(c * x for c, x in zip(ct, ttft_terms(f), strict=True))
        p = sum(c * x for c, x in zip(cp, tpot_terms(f), strict=True))
        return (math.exp(t), math.exp(p)) if log_target else (max(1.0, t), max(0.1, p))

    return predict


def ours(rows: Sequence[Row], per_endpoint: bool) -> LatencyPredictor:
    predictor = LatencyPredictor(max_samples=10_000, refit_samples=10**9)
    for f, ttft, tpot, endpoint in rows:
        predictor.observe(f, ttft, tpot, endpoint if per_endpoint else "")
    predictor.refit()
    return predictor


def mdape_by_endpoint(predictor: LatencyPredictor, rows: Sequence[Row]) -> tuple[float, float]:
    preds = [predictor.predict(r[0], r[3]) for r in rows]
    return (statistics.median(abs(p[0] - r[1]) / r[1] for p, r in zip(preds, rows, strict=True)),
            statistics.median(abs(p[1] - r[2]) / r[2] for p, r in zip(preds, rows, strict=True)))


def mdape(model: Model, rows: Sequence[Row]) -> tuple[float, float]:
    preds = [model(r[0]) for r in rows]
    return (statistics.median(abs(p[0] - r[1]) / r[1] for p, r in zip(preds, rows, strict=True)),
            statistics.median(abs(p[1] - r[2]) / r[2] for p, r in zip(preds, rows, strict=True)))


def cost_us(model: Model, rows: Sequence[Row], candidates: int = 8, loops: int = 2000) -> float:
    """Per candidate, scoring one request against ``candidates`` endpoints; at most ~1 s of measuring."""
    batch = [r[0] for r in rows[:candidates]]
    start = time.perf_counter()
    done = 0
    while done < loops and (done < 10 or time.perf_counter() - start < 1.0):
        for f in batch:
            model(f)
        done += 1
    return (time.perf_counter() - start) / (done * candidates) * 1e6


def producer_cost_us(candidates: int, loops: int = 2000) -> float:
    """The whole PrepareData of the producer (features, predictions, headroom) per candidate."""
    from epp.datalayer.pool import EndpointPool

    producer = PredictedLatencyProducer("p", None, Handle(pool=EndpointPool()))
    endpoints = []
    for i in range(candidates):
        ep = Endpoint(EndpointMetadata(f"e{i}", "10.0.0.1", 8000 + i, 8000 + i))
        ep.metrics = Metrics(waiting_queue_size=i % 3, running_requests_size=10 + i, kv_cache_usage_percent=0.3)
        endpoints.append(ep)
    request = InferenceRequest(request_id="r", api=ApiKind.COMPLETIONS, path="/v1/completions", model="m",
                               target_model="m", body={}, raw_body=b"{}", stream=True, headers={},
                               prompt=b"x" * 4000, slo_ttft_ms=200.0, slo_tpot_ms=30.0)
    loop = asyncio.new_event_loop()
    try:
        start = time.perf_counter()
        for _ in range(loops):
            loop.run_until_complete(producer.prepare_data(CycleState(), request, endpoints))
        total = time.perf_counter() - start
        bare = time.perf_counter()
        for _ in range(loops):
            loop.run_until_complete(asyncio.sleep(0))
        total -= time.perf_counter() - bare  # the event loop's own per-call cost
    finally:
        loop.close()
    return total / (loops * candidates) * 1e6


def optional_candidates(train: Sequence[Row]) -> dict[str, Model | str]:
    """Gradient-boosted trees on log latency; each also measured batched (one call for all candidates)."""
    out: dict[str, Model | str] = {}
    raw = [list(r[0]) + [r[0].uncached_tokens] for r in train]
    for name, build in (("sklearn HistGradientBoosting", _sklearn), ("lightgbm", _lightgbm)):
        try:
            single, batched = build(train, raw)
            out[name] = single
            out[f"{name}, 8 candidates per call"] = batched
        except ImportError:
            out[name] = "not installed in the venv: not measured"
    return out


def _batched(predict_rows: Callable[[list[list[float]]], Any]) -> Model:
    """Predicts the 8-candidate batch in one library call, then serves the batch's other candidates from it."""
    cache: list[tuple[float, float]] = []

    def model(f: Features) -> tuple[float, float]:
        if not cache:
            cache.extend([(0.0, 0.0)] * 8)
            predict_rows([[*f, f.uncached_tokens]] * 8)
        return cache.pop()

    return model


def _sklearn(train: Sequence[Row], raw: list[list[float]]) -> tuple[Model, Model]:
    from sklearn.ensemble import HistGradientBoostingRegressor  # type: ignore[import-not-found]

    t = HistGradientBoostingRegressor().fit(raw, [math.log(r[1]) for r in train])
    p = HistGradientBoostingRegressor().fit(raw, [math.log(r[2]) for r in train])
    return (lambda f: (math.exp(t.predict([[*f, f.uncached_tokens]])[0]),
                       math.exp(p.predict([[*f, f.uncached_tokens]])[0])),
            _batched(lambda rows: (t.predict(rows), p.predict(rows))))


def _lightgbm(train: Sequence[Row], raw: list[list[float]]) -> tuple[Model, Model]:
    import lightgbm  # type: ignore[import-not-found]

    t = lightgbm.LGBMRegressor(verbose=-1).fit(raw, [math.log(r[1]) for r in train])
    p = lightgbm.LGBMRegressor(verbose=-1).fit(raw, [math.log(r[2]) for r in train])
    return (lambda f: (math.exp(t.predict([[*f, f.uncached_tokens]])[0]),
                       math.exp(p.predict([[*f, f.uncached_tokens]])[0])),
            _batched(lambda rows: (t.predict(rows), p.predict(rows))))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    rows = [draw(rng) for _ in range(args.samples)]
    cut = len(rows) * 2 // 3
    train, test = rows[:cut], rows[cut:]
    prior = LatencyPredictor()
    fit_started = time.perf_counter()
    chosen = ours(train, per_endpoint=False).predict
    fit_ms = (time.perf_counter() - fit_started) * 1000
    candidates: dict[str, Any] = {
        "prior only (no samples)": prior.predict,
        "ridge, relative weights, toward prior": chosen,
        "least squares on raw ms": fit_linear(train, lambda y: 1.0, log_target=False),
        "least squares on log(ms)": fit_linear(train, lambda y: 1.0, log_target=True),
    }
    candidates.update(optional_candidates(train))
    print(f"{len(train)} training, {len(test)} test samples; chosen model's fit took {fit_ms:.1f} ms "
          f"({fit_ms / len(train) * 1000:.1f} µs per sample folded in)")
    print(f"{'model':50} {'TTFT MdAPE':>10} {'TPOT MdAPE':>10} {'µs/cand':>8}")
    for name, model in candidates.items():
        if isinstance(model, str):
            print(f"{name:50} {model}")
            continue
        if name.endswith("per call"):  # same model as the line above: only the cost differs
            print(f"{name:50} {'':>10} {'':>10} {cost_us(model, test):>8.2f}")
            continue
        ttft_err, tpot_err = mdape(model, test)
        print(f"{name:50} {ttft_err:>10.1%} {tpot_err:>10.1%} {cost_us(model, test):>8.2f}")
    with_factors = ours(train, per_endpoint=True)
    ttft_err, tpot_err = mdape_by_endpoint(with_factors, test)
    print(f"{'same + per-endpoint speed factors (chosen)':50} {ttft_err:>10.1%} {tpot_err:>10.1%} "
          f"{cost_us(lambda f: with_factors.predict(f, 'e2'), test):>8.2f}")
    for n in (4, 8, 16):
        print(f"producer PrepareData (features + predict + headroom), {n:2} candidates: "
              f"{producer_cost_us(n):.2f} µs per candidate")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
