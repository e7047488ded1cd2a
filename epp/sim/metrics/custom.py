"""Operator-defined gauges on a replica's ``/metrics`` page (``--custom-gauge``, ``POST /sim/gauge``).

They stand for signals the built-in pages do not have (a vendor's queue gauge, a custom
backlog), so routing on custom metrics can be tested end to end. Each gauge is one series
labelled ``model_name``, appended after the engine's own families.
"""

from __future__ import annotations

from collections.abc import Iterable

from epp.errors import ConfigError
from epp.sim.gauge_values import check_name, check_value
from epp.sim.metrics.prom import Gauge

__all__ = ["CustomGauges", "family_names"]

_DOC = "Custom gauge of the simulator (--custom-gauge, POST /sim/gauge)."


def family_names(page: str) -> set[str]:
    """Names announced by ``# TYPE`` lines, and the sample names they imply, so a custom gauge
    cannot duplicate a family and make the page invalid."""
    names: set[str] = set()
    for line in page.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split(" ")
            if len(parts) >= 4:
                name = parts[2]
                names.add(name)
                if name.endswith("_total"):
                    names.add(name.removesuffix("_total"))
                names.update(name + s for s in ("_bucket", "_count", "_sum", "_created"))
    return names


class CustomGauges:
    """Named gauges of one replica; a set value shows on the next render."""

    def __init__(self, model_name: str, initial: Iterable[tuple[str, float]] = (),
                 reserved: Iterable[str] = ()) -> None:
        """``reserved``: names the page already has (see ``family_names``).

        Raises:
            ConfigError: an initial gauge is invalid or reserved.
        """
        self._model = model_name
        self._reserved = frozenset(reserved)
        self._gauges: dict[str, Gauge] = {}
        self._values: dict[str, float] = {}
        for name, value in initial:
            try:
                self.set(name, value)
            except ValueError as exc:
                raise ConfigError("custom_gauges", str(exc), name) from exc

    def set(self, name: str, value: float) -> None:
        """Create or change gauge ``name``.

        Raises:
            ValueError: bad name or value, or the name of a family the page already has.
        """
        check_name(name)
        number = check_value(value)
        gauge = self._gauges.get(name)
        if gauge is None:
            if name in self._reserved:
                raise ValueError(f"{name!r} is already a metric of the page")
            gauge = self._gauges[name] = Gauge(name, _DOC, ("model_name",))
        gauge.set(number, (self._model,))
        self._values[name] = number

    def values(self) -> dict[str, float]:
        return dict(self._values)

    def render(self) -> str:
        return "".join(g.render() for g in self._gauges.values())
