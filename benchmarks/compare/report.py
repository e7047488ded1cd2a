"""The results as a user reads them: JSON, a Markdown table per workload, PNG plots."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["headline", "markdown", "plot", "write_all"]

# The headline compares the picker with the peers' best policy and the baseline.
HEADLINE = ("picker", "picker-fast", "sglang-cache-aware", "vllm-cache-aware", "round-robin")
PEERS = ("sglang-cache-aware", "sglang-power-of-two", "vllm-cache-aware", "vllm-round-robin")


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _row(r: dict[str, Any]) -> str:
    if r["status"] == "missing":
        return f"| {r['contestant']} | missing: {r['reason'].splitlines()[0]} |" + " |" * 9
    if r["status"] == "failed" and "ttft_ms" not in r:
        return f"| {r['contestant']} | **FAILED**: {r['reason'].splitlines()[0][:120]} |" + " |" * 9
    cpu_req = r["router_cpu_ms_per_request"]
    busy = r.get("router_busy_cpu_ms_per_request")
    flag = " **FAILED**" if r["status"] == "failed" else ""
    return (f"| {r['contestant']}{flag} | {_ms(r['ttft_ms']['p50'])} | {_ms(r['ttft_ms']['p90'])} "
            f"| {_ms(r['ttft_ms']['p99'])} | {_ms(r['itl_ms']['p50'])} | {r['output_tokens_per_s']:,.0f} "
            f"| {r['errors']}/{r['requests']} | {r['prefix_hit_rate']:.2f} | {r['router_cpu_s']:.1f} "
            f"| {'n/a' if cpu_req is None else f'{cpu_req:.2f}'}{'' if busy is None else f' ({busy:.2f})'} "
            f"| {r['requests_per_replica']} |")


_HEAD = ("| contestant | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms | ITL p50 ms | output tok/s | errors "
         "| prefix hit rate | router CPU s | router CPU ms/req (without idle) | requests per replica |\n"
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")


def _measured(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["contestant"]: r for r in rows if "ttft_ms" in r and r["ttft_ms"]["p90"] is not None}


def headline(report: dict[str, Any]) -> str:
    """p90 TTFT by contestant, the picker against the best peer, and router CPU per request."""
    cols = [c for c in HEADLINE if c in report["contestants"]]
    pickers = [c for c in ("picker", "picker-fast") if c in report["contestants"]]
    lines = ["| workload | " + " | ".join(f"{c} p90 TTFT" for c in cols)
             + "".join(f" | {p} / best peer p90 | {p} : best peer tok/s" for p in pickers)
             + " | router CPU ms/req " + " : ".join([*pickers, "sglang-ca"]) + " |",
             "|---|" + "---:|" * (len(cols) + 2 * len(pickers) + 1)]
    for name, workload in report["workloads"].items():
        rows = _measured(workload["rows"])
        cells = [f"{_ms(rows[c]['ttft_ms']['p90'])} ms" if c in rows else "n/a" for c in cols]
        peers = [rows[p] for p in PEERS if p in rows]
        best = min(peers, key=lambda r: r["ttft_ms"]["p90"]) if peers else None
        for p in pickers:
            mine = rows.get(p)
            if mine and best:
                cells.append(f"{mine['ttft_ms']['p90'] / best['ttft_ms']['p90']:.2f}x ({best['contestant']})")
                cells.append(f"{mine['output_tokens_per_s']:,.0f} : {best['output_tokens_per_s']:,.0f}")
            else:
                cells += ["n/a", "n/a"]
        cpu = [rows[c]["router_cpu_ms_per_request"] if c in rows else None
               for c in [*pickers, "sglang-cache-aware"]]
        cells.append(" : ".join("n/a" if v is None else f"{v:.2f}" for v in cpu))
        lines.append(f"| {name} @ {workload['rate']:g}/s | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Side-by-side: {report['replicas']} simulated replicas, seed {report['seed']}, "
             f"{report['seconds']:g} s of arrivals per run", "", "## Headline", "", headline(report), ""]
    for name, workload in report["workloads"].items():
        lines += [f"## {name} @ {workload['rate']:g} req/s: {workload['description']}", "", _HEAD]
        lines += [_row(r) for r in workload["rows"]]
        lines.append("")
    if report.get("sweep"):
        sweep = report["sweep"]
        lines += [f"## Rate sweep ({sweep['workload']}): p90 TTFT ms / output tok/s / errors", ""]
        rates = sweep["rates"]
        lines.append("| contestant | " + " | ".join(f"{r:g}/s" for r in rates) + " | saturates at |")
        lines.append("|---|" + "---:|" * (len(rates) + 1))
        for name, points in sweep["contestants"].items():
            cells = [f"{_ms(p['ttft_ms']['p90'])} / {p['output_tokens_per_s']:,.0f} / {p['errors']}"
                     if p["status"] != "missing" and "ttft_ms" in p else p["status"] for p in points]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {sweep['saturation'].get(name) or 'n/a'} |")
        lines.append("")
    lines += ["Router CPU: every process a user runs to route (Envoy + picker, or the peer router), from /proc, "
              "over the run; in brackets, less what the same processes used idle (scrapes, health checks) over "
              "as long, measured just before the run. Simulators' CPU is in the JSON.", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], out_dir: Path) -> list[Path]:
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError("the plots need matplotlib: pip install -e '.[bench]' (or pass --no-plots)") from exc

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names = list(report["workloads"])
    contestants = sorted({r["contestant"] for w in report["workloads"].values() for r in w["rows"]
                          if "ttft_ms" in r}, key=lambda c: report["contestants"].index(c))
    bars = (
        (lambda r: r["ttft_ms"]["p90"], "p90 TTFT (ms, log scale)", "ttft_p90.png", True),
        (lambda r: r["output_tokens_per_s"], "output tokens/s", "throughput.png", False),
        (lambda r: r["router_cpu_ms_per_request"], "router CPU ms per request", "router_cpu.png", False),
    )
    for metric, title, fname, log in bars if names and contestants else ():
        fig, ax = plt.subplots(figsize=(min(12, 3 + 2 * len(names)), 4))
        width = 0.8 / max(1, len(contestants))
        for i, contestant in enumerate(contestants):
            values = []
            for name in names:
                row = next((r for r in report["workloads"][name]["rows"]
                            if r["contestant"] == contestant and "ttft_ms" in r), None)
                values.append((metric(row) or 0.0) if row else 0.0)
            ax.bar([x + i * width for x in range(len(names))], values, width, label=contestant)
        ax.set_xticks([x + width * (len(contestants) - 1) / 2 for x in range(len(names))], names)
        ax.set_title(title)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    if report.get("sweep"):
        written.append(_plot_sweep(report["sweep"], out_dir, plt))
    return written


def _plot_sweep(sweep: dict[str, Any], out_dir: Path, plt: Any) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, points in sweep["contestants"].items():
        done = [(rate, p) for rate, p in zip(sweep["rates"], points, strict=True) if "ttft_ms" in p]
        if not done:
            continue
        left.plot([r for r, _ in done], [p["ttft_ms"]["p90"] or float("nan") for _, p in done], marker="o", label=name)
        right.plot([r for r, _ in done], [p["output_tokens_per_s"] for _, p in done], marker="o", label=name)
    left.set(xlabel="offered req/s", ylabel="p90 TTFT ms", yscale="log", title=f"{sweep['workload']}: p90 TTFT")
    right.set(xlabel="offered req/s", ylabel="output tokens/s", title="throughput")
    left.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "sweep.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Re-render results.md and the plots from a results.json: ``python -m benchmarks.compare.report FILE``."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    write_all(json.loads(args.results.read_text()), args.results.parent)
    print(markdown(json.loads(args.results.read_text())))
    return 0


def write_all(report: dict[str, Any], out_dir: Path, plots: bool = True) -> Sequence[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2))
    (out_dir / "results.md").write_text(markdown(report))
    written = [out_dir / "results.json", out_dir / "results.md"]
    if plots:
        written += plot(report, out_dir)
    return written


if __name__ == "__main__":
    sys.exit(main())
