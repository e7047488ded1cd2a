"""Checks of custom gauge names and values, shared by the config, the CLI and ``POST /sim/gauge``.

Kept apart from ``metrics`` so that ``config`` can use them without an import cycle.
"""

from __future__ import annotations

import math
import re

from epp.errors import ConfigError

__all__ = ["check_name", "check_value", "parse_custom_gauge"]

# Prometheus metric name syntax (exposition format).
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def check_name(name: object) -> str:
    """``name`` if it is a valid Prometheus metric name.

    Raises:
        ValueError: not a string, or not the metric name syntax.
    """
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise ValueError(f"not a Prometheus metric name: {name!r}")
    return name


def check_value(value: object) -> float:
    """``value`` as a float if it is a finite number (booleans are not numbers here).

    Raises:
        ValueError: not a finite number.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return float(value)


def parse_custom_gauge(text: str) -> tuple[str, float]:
    """``NAME=VALUE`` of the ``--custom-gauge`` flag.

    Raises:
        ConfigError: no ``=``, a bad name or a value that is not a finite number.
    """
    name, sep, raw = text.partition("=")
    try:
        if not sep:
            raise ValueError("expected NAME=VALUE")
        try:
            number = float(raw)
        except ValueError:
            raise ValueError(f"not a finite number: {raw!r}") from None
        return check_name(name), check_value(number)
    except ValueError as exc:
        raise ConfigError("custom_gauges", str(exc), text) from exc
