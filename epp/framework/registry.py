"""The plugin registry: a value mapping config type names to plugin classes.

There is no global registry and no import-time self-registration:
``epp.plugins.default_registry()`` builds the in-tree one, tests build their own, and an
out-of-tree distribution can ``register`` more before the config is loaded.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from epp.errors import ConfigError, bounded_repr
from epp.flowcontrol.types import FairnessPolicy, OrderingPolicy, SaturationDetector, UsageLimitPolicy
from epp.framework.datalayer import DataSource, Extractor
from epp.framework.params import decode_params, field_key
from epp.framework.parsing import Parser
from epp.framework.plugin import BasePlugin, Handle
from epp.framework.requestcontrol import (
    Admitter,
    DataProducer,
    PreRequest,
    ResponseComplete,
    ResponseReceived,
    ResponseStreaming,
)
from epp.framework.scheduling import Filter, Picker, ProfileHandler, Scorer

__all__ = ["EXTENSION_POINTS", "ParamDoc", "PluginSpec", "Registry", "extension_points"]

# Extension point name → protocol, in lifecycle order. Names follow the Go EPP.
EXTENSION_POINTS: Mapping[str, type] = {
    "ProfileHandler": ProfileHandler,
    "Filter": Filter,
    "Scorer": Scorer,
    "Picker": Picker,
    "DataProducer": DataProducer,
    "Admitter": Admitter,
    "PreRequest": PreRequest,
    "ResponseReceived": ResponseReceived,
    "ResponseStreaming": ResponseStreaming,
    "ResponseComplete": ResponseComplete,
    "DataSource": DataSource,
    "Extractor": Extractor,
    "Parser": Parser,
    "SaturationDetector": SaturationDetector,
    "FairnessPolicy": FairnessPolicy,
    "OrderingPolicy": OrderingPolicy,
    "UsageLimitPolicy": UsageLimitPolicy,
}


def extension_points(cls: type) -> list[str]:
    return [name for name, proto in EXTENSION_POINTS.items() if issubclass(cls, proto)]


@dataclass(frozen=True, slots=True)
class ParamDoc:
    key: str
    type: str
    default: Any


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """A registered plugin type."""

    type_name: str
    cls: type[BasePlugin]

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.cls) or ""
        return doc.splitlines()[0] if doc else ""

    @property
    def extension_points(self) -> list[str]:
        return extension_points(self.cls)

    def parameters(self) -> list[ParamDoc]:
        params_cls = self.cls.PARAMS
        if params_cls is None:
            return []
        docs = []
        for f in dataclasses.fields(params_cls):
            if f.metadata.get("hidden"):  # accepted but not advertised (benchmark switches)
                continue
            default: Any = f.default
            if f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            elif f.default is dataclasses.MISSING:
                default = "(required)"
            type_text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            docs.append(ParamDoc(field_key(f), str(type_text), default))
        return docs


class Registry:
    def __init__(self) -> None:
        self._specs: dict[str, PluginSpec] = {}
        # data key → plugin type that produces it by default (auto-created when consumed)
        self._default_producers: dict[str, str] = {}

    def register(self, cls: type[BasePlugin], *, default_producer_for: tuple[str, ...] = ()) -> None:
        type_name = cls.TYPE
        if type_name in self._specs:
            raise ValueError(f"plugin type {type_name!r} is already registered")
        if not extension_points(cls):
            raise TypeError(f"{cls.__name__} implements no extension point")
        self._specs[type_name] = PluginSpec(type_name, cls)
        for key in default_producer_for:
            if key not in cls.PRODUCES:
                raise ValueError(f"{type_name} does not produce {key!r}")
            self._default_producers[key] = type_name

    def __contains__(self, type_name: object) -> bool:
        return type_name in self._specs

    def __iter__(self) -> Iterator[PluginSpec]:
        return iter(sorted(self._specs.values(), key=lambda s: s.type_name))

    def get(self, type_name: str) -> PluginSpec | None:
        return self._specs.get(type_name)

    def default_producer(self, data_key: str) -> str | None:
        return self._default_producers.get(data_key)

    def create(
        self, type_name: str, name: str, raw_params: Mapping[str, Any] | None, handle: Handle, where: str
    ) -> BasePlugin:
        """Build a plugin; raises ``ConfigError`` for an unknown type or bad parameters."""
        spec = self._specs.get(type_name)
        if spec is None:
            known = ", ".join(sorted(self._specs))
            raise ConfigError(f"{where}.type", f"unknown plugin type {bounded_repr(type_name)} (registered: {known})")
        params_cls = spec.cls.PARAMS
        params: object | None
        if params_cls is None:
            if raw_params:
                raise ConfigError(f"{where}.parameters", f"{type_name} takes no parameters", dict(raw_params))
            params = None
        else:
            params = decode_params(params_cls, raw_params, f"{where}.parameters")
        return spec.cls(name, params, handle)
