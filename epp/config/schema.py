"""Strict decoding of the ``EndpointPickerConfig`` document into typed sections.

Mirrors the Go EPP's strict decoder: unknown fields, a wrong ``apiVersion`` or ``kind``
and wrongly typed values fail with a ``ConfigError`` naming the field. Nothing here
instantiates plugins; ``epp.config.loader`` does that.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from epp.errors import ConfigError
from epp.framework.params import Duration, finite_float, parse_duration
from epp.yamlsafe import bounded_repr, shown
from epp.yamlsafe import load as load_yaml

__all__ = [
    "API_VERSION",
    "FEATURE_GATES",
    "KIND",
    "ConfigDocument",
    "DataSourceSpec",
    "FlowControlSpec",
    "PluginEntry",
    "PriorityBandSpec",
    "ProfileEntry",
    "ProfileSpec",
    "decode_document",
    "parse_quantity",
]

API_VERSION = "inference.networking.x-k8s.io/v1alpha1"
KIND = "EndpointPickerConfig"
# Feature gates the Go EPP registers; any other name is an error, as there.
FEATURE_GATES = frozenset({"dataLayer", "enableLegacyMetrics", "flowControl"})

_TOP_LEVEL = frozenset({"apiVersion", "kind", "featureGates", "plugins", "schedulingProfiles", "dataLayer", "data",
                        "saturationDetector", "flowControl", "parser"})


@dataclass(frozen=True, slots=True)
class PluginEntry:
    name: str
    type: str
    parameters: Mapping[str, Any] | None
    where: str


@dataclass(frozen=True, slots=True)
class ProfileEntry:
    plugin_ref: str
    weight: float | None
    where: str


@dataclass(frozen=True, slots=True)
class ProfileSpec:
    name: str
    plugins: tuple[ProfileEntry, ...]
    where: str


@dataclass(frozen=True, slots=True)
class DataSourceSpec:
    plugin_ref: str
    extractors: tuple[str, ...]
    where: str


@dataclass(frozen=True, slots=True)
class PriorityBandSpec:
    priority: int
    max_bytes: int | None = None
    max_requests: int | None = None
    fairness_policy_ref: str | None = None
    ordering_policy_ref: str | None = None


@dataclass(frozen=True, slots=True)
class FlowControlSpec:
    max_bytes: int | None = None
    max_requests: int | None = None
    default_request_ttl: Duration | None = None
    usage_limit_policy_plugin_ref: str | None = None
    default_priority_band: PriorityBandSpec | None = None
    priority_bands: tuple[PriorityBandSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class ConfigDocument:
    feature_gates: frozenset[str] = frozenset()
    plugins: tuple[PluginEntry, ...] = ()
    profiles: tuple[ProfileSpec, ...] = ()
    data_sources: tuple[DataSourceSpec, ...] | None = None  # None: not given (defaults apply)
    saturation_detector_ref: str | None = None
    # GIE v1.3-v1.4 wrote the default detector's thresholds inline; they become its parameters.
    saturation_detector_params: Mapping[str, Any] | None = None
    flow_control: FlowControlSpec | None = None
    parser_ref: str | None = None


_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?\s*$")
_QUANTITY_SUFFIX = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
                    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def parse_quantity(value: Any, where: str) -> int:
    """A Kubernetes resource quantity (``10Gi``, ``500M``, ``1024``) as an integer."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _QUANTITY.match(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(where, "expected a non-negative quantity such as '10Gi' or '5000'", shown(value))
    # Exact arithmetic: float() turns a long digit string into inf, which int() cannot take.
    return int(Fraction(match.group(1)) * _QUANTITY_SUFFIX[match.group(2) or ""])


def _key(key: Any) -> str:
    """A mapping key as a segment of a field path: short strings as written, anything else bounded."""
    return key if isinstance(key, str) and 0 < len(key) <= 100 else bounded_repr(key)


def _mapping(value: Any, where: str, allowed: frozenset[str], required: tuple[str, ...] = ()) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(where or "config", "expected a mapping", shown(value))
    for key in value:
        if key not in allowed:
            raise ConfigError(f"{where}.{_key(key)}" if where else _key(key),
                              f"unknown field (allowed: {', '.join(sorted(allowed))})")
    for key in required:
        if value.get(key) in (None, ""):
            raise ConfigError(f"{where}.{key}" if where else key, "is required")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(where, "expected a list", shown(value))
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(where, "expected a non-empty string", shown(value))
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(where, "expected an integer", shown(value))
    return value


def _count(value: Any, where: str) -> int:
    number = _int(value, where)
    if number < 0:
        raise ConfigError(where, "expected a non-negative integer (0 means no limit)", shown(value))
    return number


def _ref(value: Any, where: str) -> str:
    return _str(_mapping(value, where, frozenset({"pluginRef"}), ("pluginRef",))["pluginRef"], f"{where}.pluginRef")


def _plugins(raw: Any) -> tuple[PluginEntry, ...]:
    entries = []
    for i, item in enumerate(_list(raw, "plugins")):
        where = f"plugins[{i}]"
        item = _mapping(item, where, frozenset({"name", "type", "parameters"}))
        if not item.get("type"):
            raise ConfigError(f"{where}.type", f"plugin {bounded_repr(item.get('name'))} is missing a type"
                              if item.get("name") else "is required")
        type_name = _str(item["type"], f"{where}.type")
        name = _str(item.get("name") or type_name, f"{where}.name")
        params = item.get("parameters")
        if params is not None and not isinstance(params, Mapping):
            raise ConfigError(f"{where}.parameters", "expected a mapping", shown(params))
        entries.append(PluginEntry(name, type_name, params, where))
    return tuple(entries)


def _profiles(raw: Any) -> tuple[ProfileSpec, ...]:
    profiles = []
    for i, item in enumerate(_list(raw, "schedulingProfiles")):
        where = f"schedulingProfiles[{i}]"
        item = _mapping(item, where, frozenset({"name", "plugins"}), ("name",))
        name = _str(item["name"], f"{where}.name")
        refs = []
        for j, ref in enumerate(_list(item.get("plugins"), f"{where}.plugins")):
            ref_where = f"{where}.plugins[{j}]"
            ref = _mapping(ref, ref_where, frozenset({"pluginRef", "weight"}), ("pluginRef",))
            weight = ref.get("weight")
            number = None if weight is None else finite_float(weight)
            if weight is not None and number is None:
                raise ConfigError(f"{ref_where}.weight", "expected a finite number", shown(weight))
            refs.append(ProfileEntry(_str(ref["pluginRef"], f"{ref_where}.pluginRef"), number, ref_where))
        profiles.append(ProfileSpec(name, tuple(refs), where))
    return tuple(profiles)


def _data_sources(raw: Any, key: str) -> tuple[DataSourceSpec, ...]:
    section = _mapping(raw or {}, key, frozenset({"sources"}))
    sources = []
    for i, item in enumerate(_list(section.get("sources"), f"{key}.sources")):
        where = f"{key}.sources[{i}]"
        item = _mapping(item, where, frozenset({"pluginRef", "extractors"}), ("pluginRef",))
        extractors = tuple(_ref(e, f"{where}.extractors[{j}]") for j, e in enumerate(_list(item.get("extractors"),
                                                                                              f"{where}.extractors")))
        sources.append(DataSourceSpec(_str(item["pluginRef"], f"{where}.pluginRef"), extractors, where))
    return tuple(sources)


_BAND_KEYS = frozenset({"priority", "maxBytes", "maxRequests", "fairnessPolicyRef", "orderingPolicyRef"})


def _band(raw: Any, where: str, needs_priority: bool) -> PriorityBandSpec:
    band = _mapping(raw, where, _BAND_KEYS, ("priority",) if needs_priority else ())
    return PriorityBandSpec(
        priority=_int(band["priority"], f"{where}.priority") if "priority" in band else 0,
        max_bytes=parse_quantity(band["maxBytes"], f"{where}.maxBytes") if "maxBytes" in band else None,
        max_requests=_count(band["maxRequests"], f"{where}.maxRequests") if "maxRequests" in band else None,
        fairness_policy_ref=_str(band["fairnessPolicyRef"], f"{where}.fairnessPolicyRef")
        if "fairnessPolicyRef" in band else None,
        ordering_policy_ref=_str(band["orderingPolicyRef"], f"{where}.orderingPolicyRef")
        if "orderingPolicyRef" in band else None,
    )


def _duration(value: Any, where: str) -> Duration:
    duration = parse_duration(value, where)
    if not math.isfinite(duration):
        raise ConfigError(where, "expected a finite duration such as '200ms' or '5s'", shown(value))
    return duration


_LEGACY_SATURATION = frozenset({"queueDepthThreshold", "kvCacheUtilThreshold", "metricsStalenessThreshold"})


def _saturation_detector(raw: Any) -> tuple[str | None, Mapping[str, Any] | None]:
    """``{pluginRef: name}``, or GIE v1.3-v1.4's inline thresholds (the default detector's parameters)."""
    if raw is None:
        return None, None
    if isinstance(raw, Mapping) and "pluginRef" not in raw:
        section = _mapping(raw, "saturationDetector", _LEGACY_SATURATION)
        for key in ("queueDepthThreshold", "kvCacheUtilThreshold"):
            value = section.get(key)
            number = None if value is None else finite_float(value)
            if value is not None and (number is None or number < 0):
                raise ConfigError(f"saturationDetector.{key}", "expected a non-negative number", shown(value))
        if "metricsStalenessThreshold" in section:
            _duration(section["metricsStalenessThreshold"], "saturationDetector.metricsStalenessThreshold")
        return "utilization-detector", dict(section)
    return _ref(raw, "saturationDetector"), None


def _flow_control(raw: Any) -> FlowControlSpec:
    where = "flowControl"
    fc = _mapping(raw, where, frozenset({"maxBytes", "maxRequests", "defaultRequestTTL", "usageLimitPolicyPluginRef",
                                         "defaultPriorityBand", "priorityBands"}))
    bands = tuple(_band(b, f"{where}.priorityBands[{i}]", True) for i, b in enumerate(_list(fc.get("priorityBands"),
                                                                                             f"{where}.priorityBands")))
    priorities = [b.priority for b in bands]
    if len(priorities) != len(set(priorities)):
        raise ConfigError(f"{where}.priorityBands", "priorities must be unique", shown(priorities))
    return FlowControlSpec(
        max_bytes=parse_quantity(fc["maxBytes"], f"{where}.maxBytes") if "maxBytes" in fc else None,
        max_requests=_count(fc["maxRequests"], f"{where}.maxRequests") if "maxRequests" in fc else None,
        default_request_ttl=_duration(fc["defaultRequestTTL"], f"{where}.defaultRequestTTL")
        if "defaultRequestTTL" in fc else None,
        usage_limit_policy_plugin_ref=_str(fc["usageLimitPolicyPluginRef"], f"{where}.usageLimitPolicyPluginRef")
        if "usageLimitPolicyPluginRef" in fc else None,
        default_priority_band=_band(fc["defaultPriorityBand"], f"{where}.defaultPriorityBand", False)
        if "defaultPriorityBand" in fc else None,
        priority_bands=bands,
    )


def decode_document(text: str) -> ConfigDocument | None:
    """Parse and strictly validate the YAML text (no plugin is built here).

    Returns ``None`` for a document with nothing in it (only comments).
    """
    doc = load_yaml(text, "config")
    if doc is None:
        return None
    doc = _mapping(doc, "", _TOP_LEVEL)
    if doc.get("apiVersion") != API_VERSION:
        raise ConfigError("apiVersion", f"must be {API_VERSION!r}", shown(doc.get("apiVersion")))
    if doc.get("kind") != KIND:
        raise ConfigError("kind", f"must be {KIND!r}", shown(doc.get("kind")))
    gates = [_str(g, f"featureGates[{i}]") for i, g in enumerate(_list(doc.get("featureGates"), "featureGates"))]
    for i, gate in enumerate(gates):
        if gate not in FEATURE_GATES:
            raise ConfigError(f"featureGates[{i}]", f"feature gate {bounded_repr(gate)} is unknown or unregistered "
                                                    f"(known: {', '.join(sorted(FEATURE_GATES))})")
    if "dataLayer" in doc and "data" in doc:
        raise ConfigError("data", "give either dataLayer or its older name data, not both")
    data_key = "dataLayer" if "dataLayer" in doc else "data"
    saturation_ref, saturation_params = _saturation_detector(doc.get("saturationDetector"))
    return ConfigDocument(
        feature_gates=frozenset(gates),
        plugins=_plugins(doc.get("plugins")),
        profiles=_profiles(doc.get("schedulingProfiles")),
        data_sources=_data_sources(doc[data_key], data_key) if data_key in doc else None,
        saturation_detector_ref=saturation_ref,
        saturation_detector_params=saturation_params,
        flow_control=_flow_control(doc["flowControl"]) if doc.get("flowControl") is not None else None,
        parser_ref=_ref(doc["parser"], "parser") if doc.get("parser") is not None else None,
    )
