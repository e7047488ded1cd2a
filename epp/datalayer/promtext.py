"""A Prometheus text-format reader that parses only the series asked for.

Model-server pages are large (a vLLM 0.32 page is about 50 KB, mostly histograms) and
are scraped every 50 ms per endpoint, while the extractors read a handful of gauges.
Instead of tokenising every line, ``parse_series`` finds each wanted series name with
``str.find`` (C speed) at line starts and parses only those lines. Measured in
``benchmarks/scrape``.

Those lines are read with both the Prometheus text format and OpenMetrics in mind:
label values with ``\\\\``, ``\\"`` and ``\\n`` escapes (and any ``}`` or ``,`` inside
quotes), quoted label names, blanks and tabs between tokens, ``+Inf``/``-Inf``/``NaN``,
a timestamp in milliseconds or fractional seconds (checked, not kept) and an
OpenMetrics exemplar (``# {trace_id="x"} 0.5 123``, skipped).

Not found, because the search is for the name at the very start of a line: sample
lines indented by blanks, and Prometheus 3 quoted metric names (``{"my.metric",a="b"}``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Sample", "parse_labels", "parse_series"]


@dataclass(frozen=True, slots=True)
class Sample:
    labels: dict[str, str]
    value: float


_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
_BLANKS = " \t"


def _quoted(line: str, j: int) -> tuple[str, int]:
    """Decode the quoted string whose opening quote is at ``j - 1``; return it and the index after its close."""
    chunks: list[str] = []
    while True:
        end = line.find('"', j)
        if end < 0:
            raise ValueError("unterminated quoted string")
        bs = line.find("\\", j, end)
        if bs < 0:
            chunks.append(line[j:end])
            return "".join(chunks), end + 1
        chunks.append(line[j:bs])
        c = line[bs + 1]
        # Unknown escapes keep their backslash, as prometheus_client does, rather than losing a character.
        chunks.append(_ESCAPES.get(c) or "\\" + c)
        j = bs + 2


def _label_set(line: str, i: int) -> tuple[dict[str, str], int]:
    """Parse labels from just after ``{`` to the matching ``}``; return them and the index after ``}``.

    The scan follows the quoting, so a ``}`` inside a value or in an OpenMetrics exemplar
    (``# {trace_id="x"} 0.5``) after the set never ends it early.
    """
    labels: dict[str, str] = {}
    n = len(line)
    while True:
        while i < n and line[i] in _BLANKS:
            i += 1
        if i >= n:
            raise ValueError("unterminated label set")
        if line[i] == "}":
            return labels, i + 1
        if line[i] == '"':
            # Prometheus 3 quotes label names that are not legacy identifiers.
            name, i = _quoted(line, i + 1)
            while i < n and line[i] in _BLANKS:
                i += 1
            if i >= n or line[i] != "=":
                raise ValueError(f"label {name!r} has no '='")
            eq = i
        else:
            eq = line.find("=", i)
            if eq < 0:
                raise ValueError(f"label set has no '=' after {line[i:i + 20]!r}")
            name = line[i:eq].rstrip(_BLANKS)
            if not name.isidentifier():
                raise ValueError(f"bad label name {name!r}")
        q = eq + 1
        while q < n and line[q] in _BLANKS:
            q += 1
        if q >= n or line[q] != '"':
            raise ValueError(f"label {name!r} has no quoted value")
        labels[name], i = _quoted(line, q + 1)
        while i < n and line[i] in _BLANKS:
            i += 1
        if i < n and line[i] == ",":
            i += 1
        elif i < n and line[i] != "}":
            raise ValueError(f"expected ',' or '}}' after label {name!r}")


def parse_labels(text: str) -> dict[str, str]:
    """Parse the inside of ``{a="1",b="x\\"y"}`` (without the braces)."""
    labels, end = _label_set(text + "}", 0)
    if end != len(text) + 1:
        raise ValueError(f"text after the label set: {text[end - 1:]!r}")
    return labels


def _parse_line(line: str, pos: int) -> Sample:
    """Parse a sample line from ``pos``, just after its name.

    Accepts a value, an optional timestamp (Prometheus milliseconds or OpenMetrics
    seconds; checked, not kept) and an optional OpenMetrics exemplar (``# {...} v [t]``,
    skipped).
    """
    try:
        n = len(line)
        while pos < n and line[pos] in _BLANKS:
            pos += 1
        labels: dict[str, str] = {}
        if pos < n and line[pos] == "{":
            labels, pos = _label_set(line, pos + 1)
        fields = line[pos:].split(None, 2)
        if not fields:
            raise ValueError("no value")
        value = float(fields[0])
        if len(fields) > 1 and fields[1][0] != "#":
            float(fields[1])
            if len(fields) > 2 and fields[2][0] != "#":
                raise ValueError(f"unexpected text {fields[2]!r}")
    except ValueError as exc:
        raise ValueError(f"{exc} in {line!r}") from None
    return Sample(labels, value)


def parse_series(text: str, names: Iterable[str]) -> dict[str, list[Sample]]:
    """Return the samples of each wanted series name present in ``text``.

    A name is matched exactly: ``vllm:num_requests_waiting`` does not match
    ``vllm:num_requests_waiting_by_reason``. Names absent from the page are absent from
    the result. Malformed lines of wanted series raise ``ValueError``.
    """
    found: dict[str, list[Sample]] = {}
    for name in names:
        samples: list[Sample] = []
        needle = "\n" + name
        if text.startswith(name):
            start = 0
        else:
            idx = text.find(needle)
            start = idx + 1 if idx >= 0 else -1
        while start >= 0:
            after = start + len(name)
            if after < len(text) and text[after] in "{ \t":
                end = text.find("\n", after)
                samples.append(_parse_line(text[start : end if end >= 0 else len(text)], len(name)))
            nxt = text.find(needle, after)
            start = nxt + 1 if nxt >= 0 else -1
        if samples:
            found[name] = samples
    return found
