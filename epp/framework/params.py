"""Decoding a plugin's ``parameters`` mapping into its frozen parameters dataclass.

Rules (the same for every plugin, so configs behave predictably):

- YAML keys are the camelCase form of the dataclass field names
  (``lru_capacity_per_server`` ↔ ``lruCapacityPerServer``), or the explicit
  ``field(metadata={"key": ...})`` where GIE spells a name differently.
- Unknown keys are errors, never ignored. Missing keys take the field default.
- Values are type-checked (an int is accepted for a float; a bool is never an int).
  ``Duration`` fields take Go duration strings (``"200ms"``, ``"1m30s"``) or seconds.
- Range checks live in the dataclass's ``__post_init__``, raising
  ``ConfigError(<field name>, reason, value)``; the decoder prefixes the full path.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from epp.errors import ConfigError

__all__ = ["Duration", "decode_params", "field_key", "finite_float", "parse_duration", "require"]

T = TypeVar("T")


class Duration(float):
    """Seconds, written in config as a Go duration string (``"50ms"``) or a number."""


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def finite_float(value: Any) -> float | None:
    """``value`` as a float when it is a number (not a bool) a float can hold finitely, else None.

    YAML and JSON numbers can be NaN, infinite or integers with hundreds of digits (which
    ``float()`` refuses with OverflowError); a Go config can hold none of them.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def parse_duration(value: Any, where: str) -> Duration:
    if isinstance(value, bool):
        raise ConfigError(where, "expected a duration such as '200ms' or '5s'", value)
    if isinstance(value, int | float):
        number = finite_float(value)
        if number is None:
            raise ConfigError(where, "duration must be finite", value)
        seconds = number
    elif isinstance(value, str):
        text = value.strip()
        if text == "0":
            return Duration(0.0)
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise ConfigError(where, "expected a duration such as '200ms' or '5s'", value)
    else:
        raise ConfigError(where, "expected a duration such as '200ms' or '5s'", value)
    if not math.isfinite(seconds):
        raise ConfigError(where, "duration must be finite", value)
    if seconds < 0:
        raise ConfigError(where, "duration must not be negative", value)
    return Duration(seconds)


def require(condition: bool, field_name: str, reason: str, value: Any = None) -> None:
    """Raise ``ConfigError`` for ``field_name`` unless ``condition``; for ``__post_init__``."""
    if not condition:
        raise ConfigError(field_name, reason, value)


def field_key(f: dataclasses.Field[Any]) -> str:
    key = f.metadata.get("key")
    if key:
        return str(key)
    head, *rest = f.name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        if value is None and len(options) < len(get_args(tp)):
            return None
        return _convert(value, options[0], where)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(where, f"must be one of {list(allowed)}", value)
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(where, "expected a list", value)
        item_type = get_args(tp)[0] if get_args(tp) else Any
        items = [_convert(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(where, "expected a mapping", value)
        return dict(value)
    if tp is Any:
        return value
    if tp is Duration:
        return parse_duration(value, where)
    if dataclasses.is_dataclass(tp):
        return decode_params(tp, value, where)  # type: ignore[arg-type]
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(where, "expected a number", value)
        number = finite_float(value)
        if number is None:
            raise ConfigError(where, "expected a finite number", value)
        return number
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, "expected an integer", value)
        return value
    if tp in (bool, str):
        if not isinstance(value, tp):
            raise ConfigError(where, f"expected {_type_name(tp)}", value)
        return value
    raise TypeError(f"unsupported parameter type {tp!r} at {where}")


def decode_params(cls: type[T], raw: Mapping[str, Any] | None, where: str) -> T:
    """Build ``cls`` from ``raw``; every error is a ``ConfigError`` naming its field path."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(where, "expected a mapping of parameters", raw)
    hints = get_type_hints(cls)
    fields = {field_key(f): f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = [k for k in raw if k not in fields]
    if unknown:
        allowed = ", ".join(sorted(fields)) or "none"
        raise ConfigError(f"{where}.{unknown[0]}", f"unknown parameter (allowed: {allowed})")
    for key, f in fields.items():
        if key not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}.{key}", "is required")
    kwargs = {f.name: _convert(raw[key], hints[f.name], f"{where}.{key}") for key, f in fields.items() if key in raw}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        keys = {f.name: key for key, f in fields.items()}
        raise ConfigError(f"{where}.{keys.get(exc.field, exc.field)}", exc.reason, exc.value) from None
