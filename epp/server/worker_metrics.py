"""One ``/metrics`` page for all workers: each worker's samples with a ``worker`` label added.

Labelling instead of summing keeps every metric type correct without knowing it
(histograms, gauges such as the running-requests gauge, info metrics) and lets an
operator see an uneven spread; ``sum without (worker) (...)`` gives the picker-wide
figure. The Prometheus text format needs a family's samples together, so the pages are
merged family by family: HELP and TYPE once, then every worker's samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["merge_worker_pages", "with_label"]


@dataclass(slots=True)
class _Family:
    header: list[str] = field(default_factory=list)  # HELP and TYPE lines, from the first page that had them
    samples: list[str] = field(default_factory=list)


def with_label(sample: str, name: str, value: str) -> str:
    """``sample`` (one text-format sample line) with ``name="value"`` as its first label."""
    label = f'{name}="{value}"'
    brace, space = sample.find("{"), sample.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        rest = sample[brace + 1:]
        return f"{sample[:brace]}{{{label}{'' if rest.startswith('}') else ','}{rest}"
    return f"{sample[:space]}{{{label}}}{sample[space:]}"


def merge_worker_pages(pages: Sequence[tuple[str, str]], label: str = "worker") -> str:
    """``pages``: (worker id, that worker's /metrics text). Families keep the order they first appear in."""
    families: dict[str, _Family] = {}
    for worker, text in pages:
        current: _Family | None = None
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    current = families.setdefault(parts[2], _Family())
                    if line not in current.header:  # every worker sends the same HELP and TYPE
                        current.header.append(line)
                continue
            if current is None:  # a sample before any HELP/TYPE: a family of its own
                name = line.split("{", 1)[0].split(" ", 1)[0]
                current = families.setdefault(name, _Family())
            current.samples.append(with_label(line, label, worker))
    out: list[str] = []
    for family in families.values():
        out += family.header
        out += family.samples
    return "\n".join(out) + "\n" if out else ""
