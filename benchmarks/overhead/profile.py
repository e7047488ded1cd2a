"""Where an ext_proc process spends its CPU: py-spy samples under load, by self time.

``record`` samples a running process (py-spy, non-blocking, so the process is not paused,
unless native frames are asked for);
``self_time`` reads py-spy's collapsed stacks (``--format raw``) and counts each sample
against its innermost frame; ``group`` folds frames into the parts of the request path
(gRPC machinery, protobuf, the director, plugins, metrics...). Only samples that hold the
GIL are taken (``--gil``): the question is Python CPU, not time spent waiting.

    python -m benchmarks.overhead.profile STACKS.txt [STACKS.txt ...]   # print the tables
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

__all__ = ["COMPONENTS", "GROUPS", "by_component", "group", "perf_by_library", "record", "record_perf", "report",
           "self_time"]

# (group, substrings of "function (file:line)"), first match wins: the order puts the
# specific before the general.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Self time in the loop's run or a handler's own lines is Cython and C below them.
    ("native (grpc Cython, uvloop, kernel)", ("Runner.run (",)),
    ("grpc.aio read/write", ("Servicer.Process (", "Processor.Process (", "Servicer._observe (")),
    ("metrics", ("epp/metrics", "metricfamilies", "prometheus_client")),
    ("logging", ("logging/", "hookerrors")),
    ("scheduling", ("epp/scheduling", "epp/framework/scheduling")),
    ("plugins", ("epp/plugins",)),
    ("flow control", ("epp/flowcontrol",)),
    ("datalayer", ("epp/datalayer",)),
    ("request parsing", ("epp/requests", "orjson")),
    ("director", ("epp/director",)),
    ("request context", ("epp/request_context",)),
    ("ext_proc state machine", ("epp/server/extproc",)),
    ("message building", ("epp/server/messages",)),
    ("protobuf", ("protobuf", "_pb2", "upb")),
    ("uuid", ("uuid",)),
    ("grpc.aio", ("grpc/", "grpc\\", "_cython", "cygrpc", ".pyx", ".pxi")),
    ("event loop", ("asyncio/", "uvloop", "selectors")),
)


def record(pid: int, seconds: float, output: Path, rate: int = 200, native: bool = False) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` for ``seconds``; the caller waits on the returned process."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    command = [spy, "record", "--pid", str(pid), "--rate", str(rate), "--duration", str(max(1, round(seconds))),
               "--format", "raw", "--output", str(output), "--gil"]
    # py-spy reads native stacks only from a paused process: --native costs the process more.
    command.append("--native" if native else "--nonblocking")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def record_perf(pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    """Sample ``pid`` with Linux perf (every thread, native code included), for the split by library."""
    command = ["perf", "record", "-F", "499", "-p", str(pid), "-o", str(output), "--", "sleep", str(seconds)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def perf_by_library(data: Path) -> str:
    """Self samples per shared object (libpython, cygrpc, upb, uvloop, libc, kernel), as perf prints them."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--sort", "dso", "--stdio", "--percent-limit", "0.5"],
                         capture_output=True, text=True, timeout=120, check=False).stdout
    rows = [line.strip() for line in out.splitlines() if line.strip() and not line.startswith("#")]
    return "| self % | library |\n|---:|---|\n" + "\n".join(
        f"| {row.split(None, 1)[0]} | `{row.split(None, 1)[1]}` |" for row in rows if " " in row) + "\n"


def collapsed(stacks: str) -> Iterator[tuple[str, int]]:
    """(stack, samples) for each line of py-spy's collapsed output ("frame;frame;... N")."""
    for line in stacks.splitlines():
        stack, _, number = line.rpartition(" ")
        if stack and number.isdigit():
            yield stack, int(number)


def self_time(stacks: str) -> tuple[Counter[str], int]:
    """Samples per innermost frame, and the total, from py-spy's collapsed stacks."""
    counts: Counter[str] = Counter()
    total = 0
    for stack, samples in collapsed(stacks):
        counts[stack.rsplit(";", 1)[-1]] += samples
        total += samples
    return counts, total


# Whole stacks, for "which part of the request path": a sample goes to the first component
# any of whose frames is on its stack (so a scorer's time counts as scheduling).
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("metrics scrape (collector, aiohttp, promtext)", ("Collector.", "aiohttp", "promtext", "metrics_source")),
    ("scheduling (filters, scorers, picker, trace)", ("Director._schedule",)),
    ("parse, admission, producers, pre-request, request metrics", ("Director.handle_request",)),
    ("response hooks (usage, plugins, metrics)", ("Director.response_", "Director.finish")),
    ("answer building (protobuf)", ("epp/server/messages.py",)),
    ("header decoding", ("_headers (epp/server/extproc",)),
    ("ext_proc state machine, rest", ("_Stream.", "_Observation.", "_observes_responses", "claim_waiting")),
)


def by_component(stacks: str) -> tuple[Counter[str], int]:
    """Samples per component of the request path; the rest by innermost frame's function.

    A sample whose innermost frame is the event loop's ``run`` is native code with no
    Python frame (grpc's Cython, uvloop, the kernel); one in a handler's own lines
    (``Process``) is grpc.aio reading or writing a message from Cython."""
    counts: Counter[str] = Counter()
    total = 0
    for stack, samples in collapsed(stacks):
        total += samples
        name = next((component for component, needles in COMPONENTS if any(n in stack for n in needles)), None)
        if name is None:
            leaf = stack.rsplit(";", 1)[-1].split(" (")[0]
            name = {"Runner.run": "native only (Cython grpc, uvloop, kernel)"}.get(leaf, leaf)
            if leaf.endswith((".Process", "._observe")):
                name = "grpc.aio read/write (handler's own lines)"
        counts[name] += samples
    return counts, total


def group(frame: str) -> str:
    for name, needles in GROUPS:
        if any(needle in frame for needle in needles):
            return name
    return "other"


def report(stacks: str, top: int = 15) -> str:
    """Markdown: the top frames by self time, and self time by group."""
    counts, total = self_time(stacks)
    if not total:
        return "(no samples)\n"
    lines = [f"{total} samples holding the GIL\n", "| self % | group | frame |", "|---:|---|---|"]
    for frame, n in counts.most_common(top):
        lines.append(f"| {100 * n / total:.1f} | {group(frame)} | `{frame}` |")
    groups: Counter[str] = Counter()
    for frame, n in counts.items():
        groups[group(frame)] += n
    lines += ["", "| self % | group |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} | {name} |" for name, n in groups.most_common()]
    components, _ = by_component(stacks)
    lines += ["", "| inclusive % | part of the request path |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} | {name} |" for name, n in components.most_common(top)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stacks", type=Path, nargs="+", help="py-spy --format raw output")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--within", help="keep only stacks through this frame (e.g. one_request: no start-up)")
    args = parser.parse_args(argv)
    for path in args.stacks:
        lines = path.read_text().splitlines()
        if args.within:
            lines = [line for line in lines if args.within in line]
        print(f"## {path.name}\n\n{report(chr(10).join(lines), args.top)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
