"""Per request: what the picker measured (its training samples) against what the client measured.

Runs one slo-aware stack (like ``run.py``) with the predictor's ``statePath`` set, so the
picker saves its training samples (features, TTFT, TPOT, endpoint) at shutdown, and pairs
each sample with the client's measurement of the same request (same endpoint, same
estimated prompt size). Prints the median picker / client ratio of TTFT and TPOT, overall
and per replica, and writes the pairs as JSON for offline replay of the predictor.

    python -m benchmarks.slo.diagnose [--rate 11] [--warmup 8] [--seconds 14] [--out /tmp/pairs.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.slo import run
from benchmarks.slo.probe import predictor_reading
from benchmarks.slo.traffic import Measured, SloMix, plan, send_open_loop
from epp.framework.attributes import prompt_tokens

_TEMPLATE_CHARS = 28


def _config(state_path: Path, base: str) -> str:
    return base.replace("- type: predicted-latency-producer\n",
                        f"- type: predicted-latency-producer\n  parameters:\n    statePath: {state_path}\n", 1)


def _client_tokens(answer: Measured) -> int:
    body = json.loads(answer.request.body)
    # The picker estimates from the flattened chat prompt: the content plus the template's 28 characters.
    return prompt_tokens(len(body["messages"][0]["content"]) + _TEMPLATE_CHARS)


def pair(samples: list[list[Any]], answers: list[Measured], names: dict[str, str]) -> list[dict[str, Any]]:
    """Each sample with the client answer on the same endpoint whose prompt size is nearest (each used once)."""
    free: dict[str, list[Measured]] = {}
    for a in answers:
        if a.status == 200 and a.ttft_ms is not None:
            free.setdefault(names.get(a.upstream, ""), []).append(a)
    pairs = []
    for features, ttft, tpot, endpoint in samples:
        pool = free.get(endpoint, [])
        if not pool:
            continue
        best = min(pool, key=lambda a: abs(_client_tokens(a) - features[3]))
        if abs(_client_tokens(best) - features[3]) > 1:
            continue
        pool.remove(best)
        pairs.append({"endpoint": endpoint, "features": features, "picker_ttft": ttft, "picker_tpot": tpot,
                      "client_ttft": best.ttft_ms, "client_tpot": best.tpot_ms, "klass": best.request.klass,
                      "sent": best.sent})
    return pairs


def _ratios(pairs: list[dict[str, Any]], what: str) -> str:
    values = [p[f"picker_{what}"] / p[f"client_{what}"] for p in pairs
              if p[f"picker_{what}"] is not None and p[f"client_{what}"]]
    if not values:
        return "n/a"
    q = statistics.quantiles(values, n=10)
    return f"median {statistics.median(values):.2f} (p10 {q[0]:.2f}, p90 {q[-1]:.2f}, n={len(values)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=11.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--seconds", type=float, default=14.0)
    parser.add_argument("--speeds", default="1,1,2,4")
    parser.add_argument("--max-num-seqs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--slo-config", type=Path)
    parser.add_argument("--out", type=Path, default=Path("/tmp/slo-pairs.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="epp-slo-diag-") as tmp:
        workdir = Path(tmp)
        state = workdir / "predictor.json"
        base = args.slo_config.read_text() if args.slo_config else run.PICKERS["slo-aware"] or ""
        config_file = workdir / "config.yaml"
        config_file.write_text(_config(state, base))
        args.slo_config = config_file
        requests = plan(args.rate, args.warmup + args.seconds, SloMix(), args.seed)
        stack, sims = run.start_stack("slo-aware", args, workdir)
        try:
            answers = asyncio.run(send_open_loop(stack.url + "/v1/chat/completions", requests,
                                                 args.warmup + args.seconds + 30))
            reading = asyncio.run(predictor_reading(stack.admin_url))
        finally:
            run.stop(stack, sims)  # the picker saves its state on shutdown
        names = {stack.sim_hostport(i): f"sim-{i}" for i in range(len(sims))}
        saved = json.loads(state.read_text()) if state.exists() else {"samples": []}
    pairs = pair(saved["samples"], answers, names)
    print(f"{len(saved['samples'])} picker samples, {len(answers)} client answers, {len(pairs)} paired")
    print("picker's histograms, mean predicted / mean measured: TTFT "
          f"{run._ratio(reading.mean('predicted_ttft'), reading.mean('actual_ttft'))}, TPOT "
          f"{run._ratio(reading.mean('predicted_tpot'), reading.mean('actual_tpot'))}; violations {reading.violations}")
    print(f"picker / client TTFT: {_ratios(pairs, 'ttft')}")
    print(f"picker / client TPOT: {_ratios(pairs, 'tpot')}")
    for endpoint in sorted({p["endpoint"] for p in pairs}):
        mine = [p for p in pairs if p["endpoint"] == endpoint]
        print(f"  {endpoint}: TTFT {_ratios(mine, 'ttft')}; TPOT {_ratios(mine, 'tpot')}")
    args.out.write_text(json.dumps({"pairs": pairs, "coefficients": saved.get("coefficients"),
                                    "endpointFactors": saved.get("endpointFactors")}))
    print(f"pairs written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
