"""Parsing YAML an operator writes (config, pool file) without trusting its size or shape.

``yaml.safe_load`` builds aliases as shared objects, so a billion-laughs document loads in
milliseconds, and then whatever walks it (a validator, or an error message's ``repr``)
expands it exponentially: that is how a 1 KB pool file took 8 s and all free memory.
``load`` refuses such a document while composing it, before any object exists:

- the nodes reached through aliases, summed over every alias use, are bounded
  (``MAX_ALIAS_NODES``); a few shared parameter blocks stay far below it;
- an alias that refers to the node it is inside (a cycle) is refused;
- nesting deeper than ``MAX_DEPTH`` is refused (the composer recurses per level).

Scalars are typed as the Go EPP reads them (``sigs.k8s.io/yaml``: go-yaml v2, then JSON):
``1e3``, ``1E3``, ``.5`` and ``1.`` are numbers, where YAML 1.1 makes the first two
strings; a number written as a float that is whole (``1e3``, ``2.0``) is an integer, as
after Go's JSON round-trip; sexagesimal ``1:30``, a date and an integer of more than 4300
digits are strings.

``bounded_repr`` shows a value in an error message in bounded time and length.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, cast

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.error import MarkedYAMLError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from epp.errors import MAX_SHOWN, ConfigError, bounded_repr, clip

__all__ = ["MAX_ALIAS_NODES", "MAX_DEPTH", "MAX_SHOWN", "Shown", "bounded_repr", "load", "shown"]

MAX_ALIAS_NODES = 10_000
MAX_DEPTH = 100

try:  # libyaml's parser is ~5x faster; composing stays in Python so that it can be bounded
    from yaml._yaml import CParser as _Parser
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml.parser import Parser as _PyParser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, _PyParser):  # type: ignore[no-redef]  # same role as CParser
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            _PyParser.__init__(self)


class YamlRefused(MarkedYAMLError):
    """Valid YAML that is refused because expanding or nesting it would be unbounded."""


class _GoResolver(Resolver):
    """YAML 1.1 implicit types with go-yaml v2's numbers (no sexagesimal, exponent without a dot)."""


_GO_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?
                          |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                          |[-+]?\.(?:inf|Inf|INF)
                          |\.(?:nan|NaN|NAN))$""", re.X)
_GO_INT = re.compile(r"""^(?:[-+]?0b[0-1_]+
                        |[-+]?0[0-7_]+
                        |[-+]?(?:0|[1-9][0-9_]*)
                        |[-+]?0x[0-9a-fA-F_]+)$""", re.X)
_FLOAT_TAG = "tag:yaml.org,2002:float"
_INT_TAG = "tag:yaml.org,2002:int"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"

# Replace PyYAML's int and float resolvers on this subclass only (the class attribute is copied first).
# Timestamps go too: go-yaml v2 leaves an untagged date a string.
_GoResolver.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_FLOAT_TAG, _INT_TAG, _TIMESTAMP_TAG)]
    for first, resolvers in Resolver.yaml_implicit_resolvers.items()
}
_GoResolver.add_implicit_resolver(_FLOAT_TAG, _GO_FLOAT, list("-+0123456789."))
_GoResolver.add_implicit_resolver(_INT_TAG, _GO_INT, list("-+0123456789"))

# Go's JSON encoder writes a whole float64 below 1e21 without a fraction or exponent.
_GO_JSON_INTEGER_LIMIT = 1e21


class _GoConstructor(SafeConstructor):
    def construct_go_int(self, node: ScalarNode) -> int | str:
        try:
            return self.construct_yaml_int(node)
        except ValueError:  # over 4300 digits: Python refuses, and go-yaml v2 reads such a number as a string
            return str(node.value)

    def construct_go_float(self, node: ScalarNode) -> float | int:
        value = self.construct_yaml_float(node)
        if value.is_integer() and abs(value) < _GO_JSON_INTEGER_LIMIT:
            return int(value)
        return value


_GoConstructor.add_constructor(_INT_TAG, _GoConstructor.construct_go_int)  # type: ignore[type-var]  # as below
_GoConstructor.add_constructor(_FLOAT_TAG, _GoConstructor.construct_go_float)  # type: ignore[type-var]  # stubs expect a Loader subclass


class _BoundedComposer(Composer):
    """Composes nodes while counting what aliases would expand to and how deep nesting goes."""

    # Provided by the parser this is mixed with.
    check_event: Callable[..., bool]
    peek_event: Callable[[], Any]

    def __init__(self) -> None:
        super().__init__()
        self._alias_nodes = 0
        self._depth = 0
        # Expanded size of every composed node, by id: nodes stay alive in the tree until composing ends.
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None:
                size = self._sizes.get(id(target))
                if size is None:
                    raise YamlRefused(None, None, f"alias *{event.anchor} refers to a node that contains it (a cycle)",
                                      event.start_mark)
                self._alias_nodes += size
                if self._alias_nodes > MAX_ALIAS_NODES:
                    raise YamlRefused(None, None, f"aliases expand to more than {MAX_ALIAS_NODES} nodes "
                                                  "(an alias bomb?); write the values out", event.start_mark)
            return cast(Node, super().compose_node(parent, index))
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise YamlRefused(None, None, f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
        node = cast(Node, super().compose_node(parent, index))
        self._depth -= 1
        self._sizes[id(node)] = 1 + self._children_size(node)
        return node

    def _children_size(self, node: Node) -> int:
        sizes = self._sizes
        if isinstance(node, SequenceNode):
            return sum(sizes[id(child)] for child in node.value)
        if isinstance(node, MappingNode):
            return sum(sizes[id(key)] + sizes[id(value)] for key, value in node.value)
        return 0


class _Loader(_BoundedComposer, _Parser, _GoConstructor, _GoResolver):  # type: ignore[misc, valid-type]  # CParser is untyped
    """The parser's events, composed by ``_BoundedComposer`` (first in the MRO, so libyaml's own composer is unused)."""

    def __init__(self, stream: str) -> None:
        _Parser.__init__(self, stream)
        _BoundedComposer.__init__(self)
        _GoConstructor.__init__(self)
        _GoResolver.__init__(self)


def load(text: str, where: str) -> Any:
    """Parse one YAML document; every failure is a ``ConfigError`` for ``where``."""
    loader = None
    try:
        loader = _Loader(text)  # the reader rejects control characters here
        return loader.get_single_data()
    except YamlRefused as exc:
        raise ConfigError(where, f"refused: {_describe(exc)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(where, f"not valid YAML: {_describe(exc)}") from None
    except RecursionError:  # a safety net: MAX_DEPTH keeps the composer well inside the limit
        raise ConfigError(where, "nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def _describe(exc: yaml.YAMLError) -> str:
    """The problem and where it is, on one line (PyYAML's own text quotes the source line)."""
    if not isinstance(exc, MarkedYAMLError):
        return clip(str(exc), 300)
    text = " ".join(part for part in (exc.context, exc.problem) if part)
    mark = exc.problem_mark or exc.context_mark
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return clip(text or type(exc).__name__, 300) + where


class Shown:
    """A value as a ``ConfigError`` shows it: its ``repr`` is ``bounded_repr`` of the value."""

    __slots__ = ("text",)

    def __init__(self, value: Any) -> None:
        self.text = bounded_repr(value)

    def __repr__(self) -> str:
        return self.text


def shown(value: Any) -> Shown | None:
    """Wrap a value for ``ConfigError(field, reason, shown(value))``; ``None`` stays ``None`` (no value shown)."""
    return None if value is None else Shown(value)

