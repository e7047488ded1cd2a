"""``epp recipe``: an ``EndpointPickerConfig`` for a described setup, from an embedded base plus overlays.

Data (package data, ``epp/ops/recipes/``): ``base.yaml`` and ``overlays/*.yaml``, each
``{description, match, config}``; an overlay's name is its file name. ``config`` is a
partial EndpointPickerConfig; any mapping in it may carry ``why: text`` (the reason for
the values below it, shown by ``--context``, stripped from the output), and an entry of
a keyed list may carry ``remove: true``.

Matching (eidos's asymmetric wildcard): an overlay matches when every field of its
``match`` matches the query. A field the overlay omits, or sets to ``any``, is a wildcard;
a list of values matches any of them; a query field left unset matches only wildcards.

Order: matched overlays are applied least specific first (specificity = the number of
non-wildcard match fields), so the more specific overlay wins a conflicting value; among
equally specific overlays, in file-name order (the later name wins). The shipped data has
no such conflict (a test checks it).

Merge, as eidos merges measurements: mappings key by key, the overlay's scalar wins. A
list of mappings merges entry by entry, by identity: ``pluginRef``, else ``name``, else
``type``, else ``priority`` (plugins by name, profiles by name, profile entries by
pluginRef, priority bands by priority); a new entry is appended. A list of scalars
(``featureGates``) is a union. Every value set records which layer set it and why.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

from epp import __version__

__all__ = [
    "INTENTS",
    "MODEL_SERVERS",
    "QUERY_FIELDS",
    "Choice",
    "Overlay",
    "Query",
    "Recipe",
    "RecipeError",
    "build_recipe",
    "load_overlays",
    "known_accelerators",
    "matching_overlays",
    "merge_layers",
    "query_from_snapshot",
]

MODEL_SERVERS = ("vllm", "sglang", "trtllm")
INTENTS = ("latency", "throughput", "prefix-heavy", "lora")
QUERY_FIELDS = ("modelServer", "accelerator", "intent", "slo", "flowControl")
WILDCARD = "any"
_IDENTITY_KEYS = ("pluginRef", "name", "type", "priority")
_META_KEYS = frozenset({"why", "remove"})


class RecipeError(Exception):
    """The embedded recipe data or a query is wrong; the message names the file or field."""


@dataclass(frozen=True, slots=True)
class Query:
    """A described setup. ``None`` (or ``any``) fields match only overlays that do not care."""

    model_server: str | None = "vllm"
    accelerator: str | None = None
    intent: str | None = None
    slo: bool = False
    flow_control: bool = False

    def __post_init__(self) -> None:
        if self.model_server is not None and self.model_server not in MODEL_SERVERS:
            raise RecipeError(f"modelServer: expected one of {', '.join(MODEL_SERVERS)}, got {self.model_server!r}")
        if self.intent is not None and self.intent not in INTENTS:
            raise RecipeError(f"intent: expected one of {', '.join(INTENTS)}, got {self.intent!r}")
        if self.accelerator is not None:
            object.__setattr__(self, "accelerator", self.accelerator.strip().lower() or None)

    def fields(self) -> dict[str, str | bool | None]:
        return {"modelServer": self.model_server, "accelerator": self.accelerator, "intent": self.intent,
                "slo": self.slo, "flowControl": self.flow_control}

    def describe(self) -> str:
        def show(v: str | bool | None) -> str:
            return ("on" if v else "off") if isinstance(v, bool) else (v or WILDCARD)
        return " ".join(f"{k}={show(v)}" for k, v in self.fields().items())


@dataclass(frozen=True, slots=True)
class Overlay:
    name: str
    description: str
    match: Mapping[str, tuple[Any, ...]]  # field -> accepted values; absent = wildcard
    config: Mapping[str, Any]

    @property
    def specificity(self) -> int:
        return len(self.match)

    def matches(self, query: Query) -> bool:
        wanted = query.fields()
        for key, accepted in self.match.items():
            value = wanted[key]
            if value is None or value == WILDCARD or value not in accepted:
                return False
        return True

    def describe_match(self) -> str:
        return ", ".join(f"{k}={'|'.join(str(v).lower() for v in vs)}" for k, vs in self.match.items()) or "(always)"


@dataclass(frozen=True, slots=True)
class Choice:
    """Why a value is in the recipe: the layer that set it last, its reason, and what it replaced."""

    path: str
    value: Any
    layer: str
    why: str
    replaced: Any = None
    removed: bool = False


@dataclass(slots=True)
class Recipe:
    query: Query
    applied: list[str]
    config: dict[str, Any]
    choices: dict[str, Choice] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_yaml(self, context: bool = False) -> str:
        """The config, under a comment header (query, overlays; with ``context`` why each value)."""
        lines = [f"# epp recipe {__version__}: {self.query.describe()}",
                 f"# overlays applied, least specific first: {', '.join(self.applied)}"]
        lines += [f"# note: {note}" for note in self.notes]
        if context:
            lines.append("# why each value:")
            for choice in self.choices.values():
                shown = "(removed)" if choice.removed else "(added)" if choice.value == "(added)" else json.dumps(
                    choice.value)
                was = "" if choice.replaced is None or choice.removed else f", was {json.dumps(choice.replaced)}"
                lines.append(f"#   {choice.path} = {shown}  [{choice.layer}{was}] {choice.why}".rstrip())
        body = yaml.safe_dump(self.config, sort_keys=False, default_flow_style=False)
        return "\n".join(lines) + "\n" + str(body)


# --- embedded data ---------------------------------------------------------------------------


def _read(resource: Any, where: str) -> Mapping[str, Any]:
    doc = yaml.safe_load(resource.read_text(encoding="utf-8"))
    if not isinstance(doc, Mapping) or not isinstance(doc.get("config"), Mapping):
        raise RecipeError(f"{where}: expected a mapping with a 'config' mapping")
    unknown = set(doc) - {"description", "match", "config"}
    if unknown:
        raise RecipeError(f"{where}: unknown keys {sorted(unknown)}")
    return doc


def _match(raw: Any, where: str) -> dict[str, tuple[Any, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise RecipeError(f"{where}.match: expected a mapping")
    out: dict[str, tuple[Any, ...]] = {}
    for key, value in raw.items():
        if key not in QUERY_FIELDS:
            raise RecipeError(f"{where}.match.{key}: unknown field; allowed: {', '.join(QUERY_FIELDS)}")
        values = tuple(value) if isinstance(value, list) else (value,)
        if WILDCARD in values or not values:
            continue
        allowed: Iterable[Any] = {"modelServer": MODEL_SERVERS, "intent": INTENTS, "slo": (True, False),
                                  "flowControl": (True, False)}.get(key, ())
        if key != "accelerator" and any(v not in allowed for v in values):
            raise RecipeError(f"{where}.match.{key}: {values!r} is not among {tuple(allowed)!r}")
        out[key] = tuple(v.lower() if isinstance(v, str) else v for v in values)
    return out


@cache
def _data() -> tuple[Mapping[str, Any], tuple[Overlay, ...]]:
    root = resources.files("epp.ops") / "recipes"
    base = _read(root / "base.yaml", "recipes/base.yaml")
    overlays = []
    for item in sorted((root / "overlays").iterdir(), key=lambda r: r.name):
        if not item.name.endswith(".yaml"):
            continue
        where = f"recipes/overlays/{item.name}"
        doc = _read(item, where)
        overlays.append(Overlay(item.name.removesuffix(".yaml"), str(doc.get("description", "")),
                                _match(doc.get("match"), where), doc["config"]))
    return base, tuple(overlays)


def load_overlays() -> tuple[Overlay, ...]:
    return _data()[1]


def known_accelerators() -> list[str]:
    """Every accelerator an overlay names: with an unnamed one, these cover every recipe there is."""
    return sorted({str(v) for o in load_overlays() for v in o.match.get("accelerator", ())})


def matching_overlays(query: Query) -> list[Overlay]:
    """The overlays that apply, in the order they are applied (least specific first, then by name)."""
    return sorted((o for o in load_overlays() if o.matches(query)), key=lambda o: (o.specificity, o.name))


# --- the merge -------------------------------------------------------------------------------


def _identity(item: Any) -> Any:
    if isinstance(item, Mapping):
        for key in _IDENTITY_KEYS:
            if key in item:
                return item[key]
    return None


class _Merger:
    def __init__(self) -> None:
        self.choices: dict[str, Choice] = {}

    def mapping(self, target: dict[str, Any], layer_doc: Mapping[str, Any], path: str, layer: str, why: str) -> None:
        why = str(layer_doc.get("why", why))
        for key, value in layer_doc.items():
            if key in _META_KEYS:
                continue
            where = f"{path}.{key}" if path else str(key)
            if isinstance(value, Mapping):
                child = target.get(key)
                if not isinstance(child, dict):
                    child = target[key] = {}
                self.mapping(child, value, where, layer, why)
            elif isinstance(value, list):
                self.sequence(target, key, value, where, layer, why)
            else:
                self.leaf(target, key, value, where, layer, why)

    def leaf(self, target: dict[str, Any], key: str, value: Any, path: str, layer: str, why: str) -> None:
        previous = target.get(key)
        target[key] = value
        # Restating a value (or an entry's identity) leaves the credit with the layer that chose it.
        if key in _IDENTITY_KEYS and path.endswith(f"].{key}"):
            return
        if path in self.choices and previous == value:
            return
        self.choices[path] = Choice(path, value, layer, why, replaced=previous)

    def sequence(self, target: dict[str, Any], key: str, items: list[Any], path: str, layer: str, why: str) -> None:
        existing = target.get(key)
        current: list[Any] = existing if isinstance(existing, list) else []
        if not items:  # adds nothing, replaces nothing
            target[key] = current
            return
        if all(not isinstance(i, Mapping) for i in items):
            merged = current + [i for i in items if i not in current]
            self.leaf(target, key, merged, path, layer, why)
            return
        target[key] = current
        for item in items:
            identity = _identity(item)
            if identity is None:
                raise RecipeError(f"{layer}: an entry of {path} has no {'/'.join(_IDENTITY_KEYS)} to merge by")
            where = f"{path}[{identity}]"
            index = next((i for i, c in enumerate(current) if _identity(c) == identity), None)
            if item.get("remove"):
                if index is not None:
                    del current[index]
                for stale in [p for p in self.choices if p == where or p.startswith(where + ".")]:
                    del self.choices[stale]
                self.choices[where] = Choice(where, None, layer, str(item.get("why", why)), removed=True)
                continue
            if index is None:
                current.append({})
                index = len(current) - 1
                self.choices[where] = Choice(where, "(added)", layer, str(item.get("why", why)))
            self.mapping(current[index], item, where, layer, why)


def merge_layers(layers: Iterable[tuple[str, str, Mapping[str, Any]]]) -> tuple[dict[str, Any], dict[str, Choice]]:
    """Merge ``(name, description, config)`` layers in order; the inputs are not modified."""
    merger = _Merger()
    config: dict[str, Any] = {}
    for name, description, layer in layers:
        merger.mapping(config, layer, "", name, description)
    return config, merger.choices


def build_recipe(query: Query) -> Recipe:
    base, _ = _data()
    overlays = matching_overlays(query)
    layers = [("base", str(base.get("description", "")), base["config"])]
    layers += [(o.name, o.description, o.config) for o in overlays]
    config, choices = merge_layers(layers)
    return Recipe(query, [name for name, _, _ in layers], config, choices)


# --- a setup read from a snapshot ------------------------------------------------------------

_ENGINE_TO_SERVER = {"vllm": "vllm", "sglang": "sglang", "trtllm-serve": "trtllm", "trtllm": "trtllm",
                     "triton-tensorrt-llm": "trtllm"}
_ENGINE_LABEL = "label.inference.networking.k8s.io/engine-type"
_ACCELERATOR_LABELS = ("label.nvidia.com/gpu.product", "label.cloud.google.com/gke-accelerator", "label.accelerator")
_ACCELERATOR_NAMES = ("gb200", "b200", "h200", "h100", "a100", "a10g", "a10", "l40s", "l4", "t4", "mi325x",
                      "mi300x", "cpu")
_SLO_PLUGINS = frozenset({"predicted-latency-producer", "slo-aware-profile-handler"})


def _subtypes(snapshot: Mapping[str, Any], kind: str) -> list[Mapping[str, Any]]:
    out: list[Mapping[str, Any]] = []
    for m in snapshot.get("measurements") or []:
        if isinstance(m, Mapping) and m.get("type") == kind and m.get("status", "ok") == "ok":
            out.extend(s for s in m.get("subtypes") or [] if isinstance(s, Mapping))
    return out


def _values(subtype: Mapping[str, Any]) -> dict[str, Any]:
    data = subtype.get("data") or {}
    return {k: (r.get("value") if isinstance(r, Mapping) else r) for k, r in data.items()}


def query_from_snapshot(snapshot: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Query fields a snapshot shows (engine labels, LoRA in metrics, config, flow control), with how each was read."""
    if snapshot.get("kind") != "Snapshot":
        raise RecipeError("--snapshot: not a snapshot document (kind: Snapshot)")
    found: dict[str, Any] = {}
    notes: list[str] = []
    endpoints = [_values(s) for s in _subtypes(snapshot, "Endpoints")]
    config = {k: v for s in _subtypes(snapshot, "Config") for k, v in _values(s).items()}

    engines = sorted({str(e[_ENGINE_LABEL]) for e in endpoints if e.get(_ENGINE_LABEL)})
    servers = sorted({_ENGINE_TO_SERVER[e] for e in engines if e in _ENGINE_TO_SERVER})
    default_engine = next((str(v) for k, v in config.items() if k.endswith(".parameters.defaultEngine")), None)
    if len(servers) == 1:
        found["modelServer"] = servers[0]
        notes.append(f"modelServer={servers[0]} from the endpoints' engine-type label ({', '.join(engines)})")
    elif len(servers) > 1:
        notes.append(f"endpoints run several engines ({', '.join(engines)}): give --model-server")
    elif default_engine in _ENGINE_TO_SERVER:
        found["modelServer"] = _ENGINE_TO_SERVER[default_engine]
        notes.append(f"modelServer={found['modelServer']} from the config's defaultEngine")

    for e in endpoints:
        label = next((str(e[k]).lower() for k in _ACCELERATOR_LABELS if e.get(k)), None)
        if label:
            found["accelerator"] = next((n for n in _ACCELERATOR_NAMES if n in label), label)
            notes.append(f"accelerator={found['accelerator']} from the endpoint label {label!r}")
            break

    # Adapters loaded or waiting; maxActiveModels alone is only the slot count (vLLM reports 1 without LoRA).
    lora = [s.get("subtype") for s in _subtypes(snapshot, "Metrics")
            if any(k.startswith(("activeModels[", "waitingModels[")) for k in _values(s))]
    if lora:
        found["intent"] = "lora"
        notes.append(f"intent=lora: LoRA adapters in the metrics of {', '.join(map(str, lora))}")

    slo_plugins = sorted({str(v) for k, v in config.items() if k.endswith("type") and v in _SLO_PLUGINS})
    if slo_plugins:
        found["slo"] = True
        notes.append(f"slo=on: the running config has {', '.join(slo_plugins)}")
    flow = [_values(s) for s in _subtypes(snapshot, "FlowControl")]
    if any(v.get("enabled") is True for v in flow):
        found["flowControl"] = True
        notes.append("flowControl=on: flow control is enabled on the running picker")
    return found, notes
