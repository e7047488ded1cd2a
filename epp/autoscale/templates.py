"""Named query templates with ``{param}`` placeholders, rendered safely into PromQL.

A ``QueryTemplate`` is a PromQL expression (``type="promql"``) or a metric selector
(``type="metric"``: a metric name with optional label matchers, e.g.
``vllm:kv_cache_usage_perc{model_name="{model}"}``) whose placeholders are ``{name}``
with ``name`` a Python-style identifier. ``{model_name="..."}`` is never a placeholder
(the ``=`` makes it a label matcher), nor is a regex quantifier such as ``{2,3}``.

Where a placeholder sits decides how its value is made safe. The position is found once,
when the template is built, by scanning the template the way PromQL's lexer does
(double-quoted, single-quoted and backtick strings with their escapes, ``[...]`` brackets,
``#`` comments, the ``offset`` keyword):

* inside a double-quoted string: the value is escaped for a PromQL double-quoted string
  (backslash, double quote, newline, carriage return, tab, and every other control
  character as ``\\xNN``), so it can never close the string;
* inside a double-quoted string that is the right side of ``=~`` or ``!~``: the value is
  also regex-quoted first, so it matches itself literally;
* inside ``[...]`` (a range or subquery) or right after ``offset``: the value must be a
  positive Prometheus duration (``5m``, ``1h30m``, ``500ms``), anything else is refused;
* anywhere else: the value must be a single number or a single name
  (``[a-zA-Z_:][a-zA-Z0-9_:]*``), so it can never add operators or selectors;
* inside single-quoted or backtick strings, in a comment, or after a backslash:
  refused when the template is built (backtick strings have no escapes at all).

``render`` substitutes every placeholder in one ``re.sub`` pass, so a value containing
``{other}`` is inserted as text and never expanded again. Every placeholder must be a
declared parameter and every declared parameter must be used (checked when the template
is built); a declared parameter missing at render time raises ``TemplateError`` naming
it. Extra parameters are ignored, so one parameter map (``{"model": ..., ...}``) can be
passed to every query of a list.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "MetricSelector",
    "QueryList",
    "QueryTemplate",
    "QueryType",
    "ResolvedSelector",
    "TemplateError",
    "check_duration",
    "escape_promql_string",
    "render",
]

QueryType = Literal["metric", "promql"]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
# Prometheus's duration syntax (model.ParseDuration): units in this order, each at most once.
_DURATION = re.compile(r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?")
_REGEX_SPECIAL = frozenset("\\.+*?()|[]{}^$")


class TemplateError(ValueError):
    """A template or a parameter value that cannot make a safe query; the message names it."""


class _Slot(enum.Enum):
    STRING = "string"
    REGEX = "regex"
    DURATION = "duration"
    BARE = "bare"


def escape_promql_string(value: str) -> str:
    """``value`` escaped for the inside of a PromQL double-quoted string."""
    out: list[str] = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            raise TemplateError(f"value {value!r} holds a lone surrogate, which is not valid UTF-8")
        else:
            out.append(ch)
    return "".join(out)


def _quote_regex(value: str) -> str:
    """``value`` as an RE2 pattern that matches exactly itself."""
    return "".join("\\" + ch if ch in _REGEX_SPECIAL else ch for ch in value)


def check_duration(value: str) -> str:
    """``value`` if it is a positive Prometheus duration (``30s``, ``1h30m``, ``500ms``).

    Raises:
        TemplateError: anything else, including ``0s``, ``1.5m``, ``-1m`` and blanks.
    """
    match = _DURATION.fullmatch(value)
    if not value or match is None:
        raise TemplateError(f"{value!r} is not a Prometheus duration (like 30s, 5m, 1h30m, 500ms)")
    if not any(int(g) for g in match.groups() if g):
        raise TemplateError(f"duration {value!r} must be positive")
    return value


def _check_bare(value: str) -> str:
    if _NAME.fullmatch(value) or _NUMBER.fullmatch(value):
        return value
    raise TemplateError(f"{value!r} is neither a number nor a name; only those may stand outside quotes")


def _preceded_by_regex_op(text: str, quote: int) -> bool:
    head = text[:quote].rstrip()
    return head.endswith(("=~", "!~"))


def _preceded_by_offset(text: str, start: int) -> bool:
    head = text[:start].rstrip()
    return re.search(r"(?<![A-Za-z0-9_:])offset$", head, re.IGNORECASE) is not None


def _classify(text: str) -> dict[int, tuple[str, _Slot]]:
    """Map the start of every placeholder in ``text`` to its name and position kind.

    Raises:
        TemplateError: a placeholder in a position no value can be made safe for.
    """
    starts = {m.start(): m for m in _PLACEHOLDER.finditer(text)}
    slots: dict[int, tuple[str, _Slot]] = {}
    quote = ""  # the open string's quote character, or "" outside strings
    regex_string = False
    brackets = 0
    i = 0
    n = len(text)
    while i < n:
        match = starts.get(i)
        if match is not None:
            name = match.group(1)
            if quote == '"':
                slots[i] = (name, _Slot.REGEX if regex_string else _Slot.STRING)
            elif quote:
                what = "a backtick string" if quote == "`" else "a single-quoted string"
                raise TemplateError(f"placeholder {{{name}}} is inside {what}; use a double-quoted string")
            elif brackets > 0 or _preceded_by_offset(text, i):
                slots[i] = (name, _Slot.DURATION)
            else:
                slots[i] = (name, _Slot.BARE)
            i = match.end()
            continue
        ch = text[i]
        if quote:
            if ch == "\\" and quote != "`":
                if i + 1 in starts:
                    raise TemplateError(f"placeholder {starts[i + 1].group(0)} follows a backslash")
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch in "\"'`":
            quote = ch
            regex_string = ch == '"' and _preceded_by_regex_op(text, i)
        elif ch == "[":
            brackets += 1
        elif ch == "]":
            brackets = max(0, brackets - 1)
        elif ch == "#":
            end = text.find("\n", i)
            end = n if end < 0 else end
            inside = [m for s, m in starts.items() if i < s < end]
            if inside:
                raise TemplateError(f"placeholder {inside[0].group(0)} is inside a comment")
            i = end
            continue
        i += 1
    if quote:
        raise TemplateError(f"unterminated {quote} string in template {text!r}")
    unclassified = [m.group(0) for s, m in starts.items() if s not in slots]
    if unclassified:
        raise TemplateError(f"placeholder {unclassified[0]} is in a position that cannot be made safe")
    return slots


_SELECTOR = re.compile(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{(.*)\})?\s*", re.DOTALL)
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(,|$)', re.DOTALL)
_UNESCAPE = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}


@dataclass(frozen=True, slots=True)
class MetricSelector:
    """A ``type: metric`` template taken apart: the metric name and its label matchers.

    Matcher values keep their placeholders; ``resolve`` fills them with raw values (no
    PromQL escaping, since nothing is parsed afterwards; values of ``=~``/``!~`` matchers
    are regex-quoted so they match themselves).
    """

    name: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, op, value with placeholders)

    @classmethod
    def parse(cls, template: str) -> MetricSelector:
        match = _SELECTOR.fullmatch(template)
        if match is None:
            raise TemplateError(f"{template!r} is not a metric selector like name or name{{label=\"value\"}}")
        matchers: list[tuple[str, str, str]] = []
        body = (match.group(2) or "").strip()
        pos = 0
        while pos < len(body):
            m = _MATCHER.match(body, pos)
            if m is None:
                raise TemplateError(f"bad label matcher at {body[pos:pos + 30]!r} in {template!r}")
            raw = re.sub(r"\\(.)", lambda e: _UNESCAPE.get(e.group(1), e.group(0)), m.group(3))
            matchers.append((m.group(1), m.group(2), raw))
            pos = m.end()
        return cls(match.group(1), tuple(matchers))

    def resolve(self, params: Mapping[str, str]) -> ResolvedSelector:
        resolved: list[tuple[str, str, re.Pattern[str] | str]] = []
        for label, op, value in self.matchers:
            if op in ("=~", "!~"):
                pattern = _substitute(value, params, _quote_regex)
                try:
                    resolved.append((label, op, re.compile(pattern, re.DOTALL)))
                except re.error as exc:
                    raise TemplateError(f"label matcher {label}{op}{pattern!r}: {exc}") from None
            else:
                resolved.append((label, op, _substitute(value, params, lambda v: v)))
        return ResolvedSelector(self.name, tuple(resolved))


@dataclass(frozen=True, slots=True)
class ResolvedSelector:
    name: str
    matchers: tuple[tuple[str, str, re.Pattern[str] | str], ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        """PromQL semantics: an absent label is the empty string; regexes match the whole value."""
        for label, op, want in self.matchers:
            have = labels.get(label, "")
            if isinstance(want, re.Pattern):
                if (want.fullmatch(have) is not None) != (op == "=~"):
                    return False
            elif (have == want) != (op == "="):
                return False
        return True


def _substitute(text: str, params: Mapping[str, str], convert: Callable[[str], str]) -> str:
    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in params:
            raise TemplateError(f"missing required parameter {name!r}")
        return convert(params[name])

    return _PLACEHOLDER.sub(fill, text)


@dataclass(frozen=True, slots=True)
class QueryTemplate:
    """One named query. ``params`` are the required parameters; every one must appear in ``template``.

    Raises:
        TemplateError: an empty name or template, an unknown ``type``, a placeholder that is
            not declared, a declared parameter that is not used, a placeholder in a position
            that cannot be made safe, or a ``type: metric`` template that is not a selector.
    """

    name: str
    type: QueryType
    template: str
    params: tuple[str, ...] = ()
    description: str = ""
    _slots: dict[int, tuple[str, _Slot]] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise TemplateError("query name must not be empty")
        if self.type not in ("metric", "promql"):
            raise TemplateError(f"query {self.name!r}: type must be 'metric' or 'promql', not {self.type!r}")
        if not self.template.strip():
            raise TemplateError(f"query {self.name!r}: template must not be empty")
        object.__setattr__(self, "params", tuple(self.params))
        try:
            slots = _classify(self.template)
        except TemplateError as exc:
            raise TemplateError(f"query {self.name!r}: {exc}") from None
        used = {name for name, _ in slots.values()}
        unknown = sorted(used - set(self.params))
        if unknown:
            raise TemplateError(f"query {self.name!r}: unknown placeholder {{{unknown[0]}}} (declare it in params)")
        unused = [p for p in self.params if p not in used]
        if unused:
            raise TemplateError(f"query {self.name!r}: parameter {unused[0]!r} is declared but not in the template")
        if self.type == "metric":
            bare = [name for name, slot in slots.values() if slot not in (_Slot.STRING, _Slot.REGEX)]
            if bare:
                raise TemplateError(f"query {self.name!r}: a metric template takes placeholders only in label "
                                    f"values, not {{{bare[0]}}}")
            MetricSelector.parse(self.template)
        object.__setattr__(self, "_slots", slots)

    def selector(self) -> MetricSelector:
        """The metric name and matchers of a ``type: metric`` template."""
        if self.type != "metric":
            raise TemplateError(f"query {self.name!r} is {self.type}, not a metric selector")
        return MetricSelector.parse(self.template)


def render(template: QueryTemplate | str, params: Mapping[str, str]) -> str:
    """The query text of ``template`` with every placeholder replaced, in one pass.

    A plain string is treated as a promql template whose placeholders are all required.

    Raises:
        TemplateError: a missing parameter, or a value that is not allowed where it goes.
    """
    if isinstance(template, str):
        names = tuple(dict.fromkeys(m.group(1) for m in _PLACEHOLDER.finditer(template)))
        template = QueryTemplate("inline", "promql", template, names)
    missing = [p for p in template.params if p not in params]
    if missing:
        raise TemplateError(f"query {template.name!r}: missing required parameter {missing[0]!r}")
    slots = template._slots

    def fill(m: re.Match[str]) -> str:
        name, slot = slots[m.start()]
        value = params[name]
        if not isinstance(value, str):
            raise TemplateError(f"query {template.name!r}: parameter {name!r} must be a string, "
                                f"not {type(value).__name__}")
        try:
            if slot is _Slot.STRING:
                return escape_promql_string(value)
            if slot is _Slot.REGEX:
                return escape_promql_string(_quote_regex(value))
            if slot is _Slot.DURATION:
                return check_duration(value)
            return _check_bare(value)
        except TemplateError as exc:
            raise TemplateError(f"query {template.name!r}, parameter {name!r}: {exc}") from None

    return _PLACEHOLDER.sub(fill, template.template)


class QueryList:
    """The ordered, uniquely named queries of one source."""

    def __init__(self, templates: tuple[QueryTemplate, ...] | list[QueryTemplate] = ()) -> None:
        self._templates: dict[str, QueryTemplate] = {}
        for template in templates:
            self.register(template)

    def register(self, template: QueryTemplate) -> None:
        """Add ``template`` at the end.

        Raises:
            TemplateError: a query of that name is already registered.
        """
        if template.name in self._templates:
            raise TemplateError(f"query {template.name!r} is already registered")
        self._templates[template.name] = template

    def get(self, name: str) -> QueryTemplate:
        """The query called ``name``.

        Raises:
            KeyError: no such query (the message lists the known names).
        """
        try:
            return self._templates[name]
        except KeyError:
            raise KeyError(f"unknown query {name!r}; known: {', '.join(self._templates) or 'none'}") from None

    def names(self) -> list[str]:
        return list(self._templates)

    def __contains__(self, name: object) -> bool:
        return name in self._templates

    def __iter__(self) -> Iterator[QueryTemplate]:
        return iter(list(self._templates.values()))

    def __len__(self) -> int:
        return len(self._templates)
