"""Minimal Prometheus text-format families whose rendered text is cached between changes.

The picker scrapes every replica every 50 ms and a real vLLM page is about 50 KB, so the
page is rendered from pre-formatted pieces: each family keeps its label strings and bucket
line prefixes from construction, and its last rendered text until a value changes. A page
in which nothing changed costs one ``str.join``; a changed histogram costs one f-string per
bucket. The output follows what ``prometheus_client`` writes: counters are announced as
``name_total``; cumulative ``_bucket`` samples carry ``le`` last; and the ``_created``
timestamps of counters, histograms and summaries follow as a separate ``name_created`` gauge
family.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate

__all__ = [
    "Counter",
    "created_header",
    "Family",
    "Gauge",
    "Histogram",
    "Summary",
    "build_1_2_5_buckets",
    "fmt",
    "label_str",
]


# Label strings of live gauges kept between renders (a few series each; the bound only
# matters for label values that keep changing, like the LoRA adapter lists).
_MAX_LIVE_PREFIXES = 64


def fmt(value: float) -> str:
    """A sample value as ``prometheus_client`` writes it (``1.0``, ``+Inf``, ``NaN``)."""
    value = float(value)
    if value == float("inf"):
        return "+Inf"
    if value == float("-inf"):
        return "-Inf"
    if value != value:
        return "NaN"
    return repr(value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def label_str(names: Sequence[str], values: Sequence[object]) -> str:
    """``{a="1",b="2"}`` (empty string for no labels)."""
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{_escape(str(v))}"' for n, v in zip(names, values, strict=True)) + "}"


def created_header(name: str, documentation: str) -> str:
    """The ``# HELP`` / ``# TYPE`` lines of the ``name_created`` gauge family."""
    return f"# HELP {name}_created {documentation}\n# TYPE {name}_created gauge\n"


def build_1_2_5_buckets(max_value: int) -> list[float]:
    """1, 2, 5, 10, 20, 50, ... up to ``max_value`` (vLLM's token-count buckets)."""
    out: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return out
            out.append(float(value))
        exponent += 1


class Family:
    """One metric family; subclasses keep ``_text`` until a change invalidates it."""

    __slots__ = ("name", "documentation", "_header", "_text")

    kind = "untyped"
    suffix = ""  # counters are announced with "_total"

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        announced = name + self.suffix
        self._header = f"# HELP {announced} {documentation}\n# TYPE {announced} {self.kind}\n"
        self._text: str | None = None

    def render(self) -> str:
        text = self._text
        if text is None:
            text = self._text = self._header + self._body()
        return text

    def _body(self) -> str:
        raise NotImplementedError


class Gauge(Family):
    """Gauge series keyed by label values; ``fn`` makes it live (read at every render)."""

    __slots__ = ("_labelnames", "_series", "_fn", "_prefixes")

    kind = "gauge"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 fn: Callable[[], Iterable[tuple[Sequence[object], float]]] | None = None) -> None:
        super().__init__(name, documentation)
        self._labelnames = tuple(labelnames)
        self._series: dict[tuple[object, ...], tuple[str, float]] = {}
        self._fn = fn
        self._prefixes: dict[tuple[object, ...], str] = {}  # live series' "name{labels} "

    def set(self, value: float, labelvalues: Sequence[object] = ()) -> None:
        key = tuple(labelvalues)
        prefix = self._series[key][0] if key in self._series else self.name + label_str(self._labelnames, key)
        self._series[key] = (prefix, value)
        self._text = None

    def remove(self, labelvalues: Sequence[object]) -> None:
        if self._series.pop(tuple(labelvalues), None) is not None:
            self._text = None

    def render(self) -> str:
        if self._fn is None:
            return super().render()
        lines = [self._header]
        prefixes = self._prefixes
        if len(prefixes) > _MAX_LIVE_PREFIXES:
            prefixes.clear()
        for labelvalues, value in self._fn():
            key = tuple(labelvalues)
            prefix = prefixes.get(key)
            if prefix is None:
                prefix = prefixes[key] = f"{self.name}{label_str(self._labelnames, key)} "
            lines.append(f"{prefix}{fmt(value)}\n")
        return "".join(lines)

    def _body(self) -> str:
        return "".join(f"{prefix} {fmt(value)}\n" for prefix, value in self._series.values())


class Counter(Family):
    """Counter series with ``_total`` and ``_created`` samples, all series created up front."""

    __slots__ = ("_totals", "_values", "_created", "_default")

    kind = "counter"
    suffix = "_total"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 series: Sequence[Sequence[object]], created: float) -> None:
        super().__init__(name, documentation)
        self._totals: dict[tuple[object, ...], str] = {}
        created_lines = [created_header(name, documentation)]
        for labelvalues in series:
            labels = label_str(labelnames, labelvalues)
            self._totals[tuple(labelvalues)] = f"{name}_total{labels} "
            created_lines.append(f"{name}_created{labels} {fmt(created)}\n")
        self._values = dict.fromkeys(self._totals, 0.0)
        self._created = "".join(created_lines)
        self._default = next(iter(self._totals), ())

    def inc(self, amount: float = 1.0, labelvalues: Sequence[object] | None = None) -> None:
        """Add ``amount`` to the series ``labelvalues`` (default: the first series)."""
        if amount:
            key = self._default if labelvalues is None else tuple(labelvalues)
            self._values[key] += amount
            self._text = None

    def value(self, labelvalues: Sequence[object] | None = None) -> float:
        return self._values[self._default if labelvalues is None else tuple(labelvalues)]

    def _body(self) -> str:
        values = self._values
        lines = [f"{prefix}{fmt(values[key])}\n" for key, prefix in self._totals.items()]
        lines.append(self._created)
        return "".join(lines)


class Histogram(Family):
    """One histogram series (fixed labels) with cumulative buckets rendered on change."""

    __slots__ = ("_bounds", "_counts", "_prefixes", "_sum", "_sum_prefix", "_count_prefix", "_created")

    kind = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 labelvalues: Sequence[object], buckets: Sequence[float], created: float) -> None:
        super().__init__(name, documentation)
        self._bounds = [float(b) for b in buckets]
        self._counts = [0] * (len(self._bounds) + 1)
        inner = label_str(labelnames, labelvalues)[1:-1]
        sep = "," if inner else ""
        bounds = [*self._bounds, float("inf")]
        self._prefixes = [f'{name}_bucket{{{inner}{sep}le="{fmt(b)}"}} ' for b in bounds]
        labels = label_str(labelnames, labelvalues)
        self._sum = 0.0
        self._sum_prefix = f"{name}_sum{labels} "
        self._count_prefix = f"{name}_count{labels} "
        self._created = created_header(name, documentation) + f"{name}_created{labels} {fmt(created)}\n"

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value
        self._text = None

    @property
    def count(self) -> int:
        return sum(self._counts)

    def samples(self) -> str:
        """Bucket, count and sum lines only (for families of several series)."""
        cumulative = list(accumulate(self._counts))
        lines = [f"{p}{c}.0\n" for p, c in zip(self._prefixes, cumulative, strict=True)]
        lines.append(f"{self._count_prefix}{cumulative[-1]}.0\n{self._sum_prefix}{fmt(self._sum)}\n")
        return "".join(lines)

    def created_sample(self) -> str:
        """The ``_created`` line only."""
        return self._created.split("\n", 2)[2]

    @property
    def sum(self) -> float:
        return self._sum

    def _body(self) -> str:
        return self.samples() + self._created


class Summary(Family):
    """Summary series (``_count`` and ``_sum`` only, like prometheus_client's) keyed by labels."""

    __slots__ = ("_labelnames", "_series", "_created_at")

    kind = "summary"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], created: float) -> None:
        super().__init__(name, documentation)
        self._labelnames = tuple(labelnames)
        self._series: dict[tuple[object, ...], list[float]] = {}
        self._created_at = created

    def observe(self, value: float, labelvalues: Sequence[object] = ()) -> None:
        series = self._series.setdefault(tuple(labelvalues), [0.0, 0.0])
        series[0] += 1
        series[1] += value
        self._text = None

    def _body(self) -> str:
        lines, created = [], [created_header(self.name, self.documentation)]
        for key, (count, total) in self._series.items():
            labels = label_str(self._labelnames, key)
            lines.append(f"{self.name}_count{labels} {fmt(count)}\n{self.name}_sum{labels} {fmt(total)}\n")
            created.append(f"{self.name}_created{labels} {fmt(self._created_at)}\n")
        return "".join(lines + created)
