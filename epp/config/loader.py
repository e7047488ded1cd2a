"""Build a running configuration from an ``EndpointPickerConfig`` document.

Order (as in the Go EPP's loader): decode strictly → instantiate plugins in list order →
create missing data producers → default the scheduling layer (a ``default`` profile with
every filter/scorer/picker when none is given; ``single-profile-handler`` for a single
profile; a picker for every profile lacking one; scorer weight 1) → parser → data layer
→ saturation detector → flow control (its policies: plugins by name, or built from a
registered policy type name, as Go registers its default policies) → sort every plugin
into the per-phase lists it implements.

Every failure is a ``ConfigError`` naming the field, raised before the server starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from epp.config.defaults import DEFAULT_CONFIG
from epp.config.flowcontrol import build_flow_control
from epp.config.schema import ConfigDocument, ProfileSpec, decode_document
from epp.datalayer.collector import SourceBinding
from epp.errors import ConfigError
from epp.flowcontrol.controller import FlowControlSettings
from epp.flowcontrol.types import SaturationDetector
from epp.framework.datalayer import DataSource, Extractor
from epp.framework.parsing import Parser
from epp.framework.plugin import BasePlugin, Handle
from epp.framework.registry import Registry
from epp.framework.requestcontrol import (
    Admitter,
    DataProducer,
    PreRequest,
    ResponseComplete,
    ResponseReceived,
    ResponseStreaming,
)
from epp.framework.scheduling import Filter, Picker, ProfileHandler, Scorer
from epp.scheduling.profile import Observer, SchedulerProfile, WeightedScorer, no_observer
from epp.scheduling.scheduler import Scheduler
from epp.yamlsafe import bounded_repr, shown

__all__ = ["PickerConfig", "load_config"]

log = logging.getLogger(__name__)

DEFAULT_SCORER_WEIGHT = 1.0
DEFAULT_SATURATION_DETECTOR = "utilization-detector"
FLOW_CONTROL_GATE = "flowControl"


@dataclass(frozen=True, slots=True)
class PickerConfig:
    """Everything the director and the collector need, built once at start-up."""

    plugins: dict[str, BasePlugin]
    scheduler: Scheduler
    parser: Parser
    producers: tuple[DataProducer, ...]
    admitters: tuple[Admitter, ...]
    pre_request: tuple[PreRequest, ...]
    response_received: tuple[ResponseReceived, ...]
    response_streaming: tuple[ResponseStreaming, ...]
    response_complete: tuple[ResponseComplete, ...]
    data_bindings: tuple[SourceBinding, ...]
    feature_gates: frozenset[str]
    # None without the flowControl feature gate: the legacy admission rule applies.
    flow_control: FlowControlSettings | None
    saturation_detector: SaturationDetector


class _Builder:
    def __init__(self, doc: ConfigDocument, registry: Registry, handle: Handle, observer: Observer) -> None:
        self.doc = doc
        self.registry = registry
        self.handle = handle
        self.observer = observer
        self.plugins: dict[str, BasePlugin] = handle.plugins

    def add(self, type_name: str, name: str, params: object, where: str) -> BasePlugin:
        if name in self.plugins:
            raise ConfigError(f"{where}.name", f"duplicate plugin name {bounded_repr(name)}")
        try:
            plugin = self.registry.create(type_name, name, params, self.handle, where)  # type: ignore[arg-type]
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin constructor that fails on odd values is still a config error
            log.debug("building plugin %s failed", bounded_repr(name), exc_info=True)
            raise ConfigError(where, f"plugin {bounded_repr(name)} ({bounded_repr(type_name)}) cannot be built from "
                                     f"these parameters: {type(exc).__name__}: {bounded_repr(str(exc))}") from None
        self.plugins[name] = plugin
        return plugin

    def of(self, proto: type) -> list[BasePlugin]:
        return [p for p in self.plugins.values() if isinstance(p, proto)]

    def instantiate(self) -> None:
        for entry in self.doc.plugins:
            self.add(entry.type, entry.name, entry.parameters, entry.where)
        # Producers for data a plugin consumes but no configured plugin produces. Repeated
        # until stable, since an auto-created producer may consume data of its own.
        handled: set[str] = set()
        while pending := sorted({k for p in self.plugins.values() for k in p.CONSUMES} - handled):
            for key in pending:
                handled.add(key)
                self._ensure_producer(key)

    def _ensure_producer(self, key: str) -> None:
        consumers = [p for p in self.plugins.values() if key in p.CONSUMES]
        # A consumer may carry parameters for its producer (legacy prefix-cache-scorer).
        implied = [(p, params) for p in consumers
                   if (params := getattr(p, "default_producer_parameters", lambda: None)()) is not None]
        producers = [p for p in self.plugins.values() if key in p.PRODUCES]
        if producers:
            for consumer, _ in implied:
                log.warning("parameters of %s are ignored: the configured %s produces its data",
                            consumer.typed_name, producers[0].typed_name)
            return
        producer_type = self.registry.default_producer(key)
        if producer_type is None:
            raise ConfigError("plugins", f"plugin {consumers[0].typed_name} needs {bounded_repr(key)} "
                                         "and no plugin produces it")
        params = implied[0][1] if implied else None
        self.add(producer_type, producer_type, params, f"plugins[{producer_type} (auto-created)]")

    def profiles(self) -> dict[str, SchedulerProfile]:
        specs = self.doc.profiles or (ProfileSpec("default", (), "schedulingProfiles[default]"),)
        default_picker: BasePlugin | None = None
        profiles: dict[str, SchedulerProfile] = {}
        for spec in specs:
            if spec.name in profiles:
                raise ConfigError(f"{spec.where}.name", f"duplicate profile name {bounded_repr(spec.name)}")
            filters: list[Filter] = []
            scorers: list[WeightedScorer] = []
            picker: Picker | None = None
            entries = spec.plugins
            members = [(e.plugin_ref, e.weight, e.where) for e in entries] if self.doc.profiles else [
                (p.typed_name.name, None, spec.where) for p in self.plugins.values()
                if isinstance(p, Filter | Scorer | Picker)
            ]
            for ref, weight, where in members:
                plugin = self.plugins.get(ref)
                if plugin is None:
                    raise ConfigError(f"{where}.pluginRef", f"profile {bounded_repr(spec.name)} references "
                                                            f"undefined plugin {bounded_repr(ref)}")
                if isinstance(plugin, Filter):
                    filters.append(plugin)
                if isinstance(plugin, Scorer):
                    scorers.append(WeightedScorer(plugin, DEFAULT_SCORER_WEIGHT if weight is None else weight))
                if isinstance(plugin, Picker):
                    if picker is not None:
                        first = picker.typed_name.name  # type: ignore[attr-defined]
                        raise ConfigError(f"{where}.pluginRef", f"profile {bounded_repr(spec.name)} already has "
                                                                f"picker {bounded_repr(first)}; only one is allowed")
                    picker = plugin
            if picker is None:
                if default_picker is None:
                    pickers = self.of(Picker)
                    default_picker = pickers[0] if pickers else self.add(
                        "max-score-picker", "max-score-picker", None, "plugins[max-score-picker (auto-created)]")
                picker = default_picker  # type: ignore[assignment]
            profiles[spec.name] = SchedulerProfile(spec.name, filters, scorers, picker, self.observer)  # type: ignore[arg-type]
        return profiles

    def profile_handler(self, profiles: dict[str, SchedulerProfile]) -> ProfileHandler:
        handlers = self.of(ProfileHandler)
        if len(handlers) > 1:
            names = ", ".join(bounded_repr(h.typed_name.name) for h in handlers)
            raise ConfigError("plugins", f"multiple profile handlers found ({names}); only one is allowed")
        if not handlers:
            if len(profiles) != 1:
                raise ConfigError("plugins", "no profile handler configured; one is required with several profiles")
            handlers = [self.add("single-profile-handler", "single-profile-handler", None,
                                 "plugins[single-profile-handler (auto-created)]")]
        handler = handlers[0]
        # A handler that routes by profile name checks the names now, not as a 500 per request.
        validate = getattr(handler, "validate_profiles", None)
        if callable(validate):
            index = next((i for i, e in enumerate(self.doc.plugins) if e.name == handler.typed_name.name), None)
            validate(list(profiles), f"plugins[{index}]" if index is not None else "plugins")
        if handler.typed_name.type == "single-profile-handler" and len(profiles) != 1:
            raise ConfigError("schedulingProfiles", "single-profile-handler supports exactly one scheduling profile",
                              shown(sorted(profiles)))
        return handler  # type: ignore[return-value]

    def parser(self) -> Parser:
        ref = self.doc.parser_ref or "openai-parser"
        plugin = self.plugins.get(ref)
        if plugin is None:
            if ref != "openai-parser":
                raise ConfigError("parser.pluginRef", f"references undefined plugin {bounded_repr(ref)}")
            plugin = self.add("openai-parser", "openai-parser", None, "plugins[openai-parser (auto-created)]")
        if not isinstance(plugin, Parser):
            raise ConfigError("parser.pluginRef",
                              f"plugin {bounded_repr(ref)} ({plugin.typed_name.type}) is not a parser")
        return plugin

    def data_layer(self) -> tuple[SourceBinding, ...]:
        specs = self.doc.data_sources
        if specs is None:
            source = next((p for p in self.plugins.values() if p.typed_name.type == "metrics-data-source"), None)
            source = source or self.add("metrics-data-source", "metrics-data-source", None,
                                        "plugins[metrics-data-source (auto-created)]")
            extractor = next((p for p in self.plugins.values() if p.typed_name.type == "core-metrics-extractor"), None)
            extractor = extractor or self.add("core-metrics-extractor", "core-metrics-extractor", None,
                                              "plugins[core-metrics-extractor (auto-created)]")
            wiring = [(source, [extractor], "dataLayer")]
        else:
            wiring = []
            for spec in specs:
                source = self._ref(spec.plugin_ref, f"{spec.where}.pluginRef")
                extractors = [self._ref(ref, f"{spec.where}.extractors[{i}].pluginRef")
                              for i, ref in enumerate(spec.extractors)]
                wiring.append((source, extractors, spec.where))
        bindings = []
        for source, extractors, where in wiring:
            if not isinstance(source, DataSource):
                raise ConfigError(f"{where}.pluginRef",
                                  f"plugin {bounded_repr(source.typed_name.name)} is not a data source")
            for extractor in extractors:
                if not isinstance(extractor, Extractor):
                    raise ConfigError(f"{where}.extractors",
                                      f"plugin {bounded_repr(extractor.typed_name.name)} is not an extractor")
                wants, gives = extractor.input_type(), source.output_type()
                if not issubclass(gives, wants):
                    raise ConfigError(f"{where}.extractors",
                                      f"extractor {bounded_repr(extractor.typed_name.name)} reads "
                                      f"{wants.__name__}, source {bounded_repr(source.typed_name.name)} "
                                      f"produces {gives.__name__}")
            source.bind_extractors(list(extractors))  # type: ignore[arg-type]
            bindings.append(SourceBinding(source, tuple(extractors)))  # type: ignore[arg-type]
        return tuple(bindings)

    def _ref(self, ref: str, where: str) -> BasePlugin:
        plugin = self.plugins.get(ref)
        if plugin is None:
            raise ConfigError(where, f"references undefined plugin {bounded_repr(ref)}")
        return plugin

    def saturation_detector(self) -> SaturationDetector:
        """The configured detector; without one, ``utilization-detector`` (GIE v1.3's inline thresholds apply)."""
        ref = self.doc.saturation_detector_ref or DEFAULT_SATURATION_DETECTOR
        plugin = self.plugins.get(ref)
        if plugin is None:
            if ref != DEFAULT_SATURATION_DETECTOR:
                raise ConfigError("saturationDetector.pluginRef", f"references undefined plugin {bounded_repr(ref)}")
            plugin = self.add(ref, ref, self.doc.saturation_detector_params,
                              "saturationDetector" if self.doc.saturation_detector_params else
                              f"plugins[{ref} (auto-created)]")
        elif self.doc.saturation_detector_params:
            raise ConfigError("saturationDetector", f"inline thresholds and a plugin named {bounded_repr(ref)}: "
                                                    "set the thresholds as that plugin's parameters")
        if not isinstance(plugin, SaturationDetector):
            raise ConfigError("saturationDetector.pluginRef",
                              f"plugin {bounded_repr(ref)} ({plugin.typed_name.type}) is not a saturation detector")
        return plugin

    def policy(self, ref: str, proto: type, where: str) -> BasePlugin:
        """A flow-control policy by plugin name; a registered policy type name builds one with defaults."""
        plugin = self.plugins.get(ref)
        if plugin is None:
            spec = self.registry.get(ref)
            if spec is None or not issubclass(spec.cls, proto):
                raise ConfigError(where, f"references undefined plugin {bounded_repr(ref)}")
            plugin = self.add(ref, ref, None, f"plugins[{ref} (auto-created)]")
        if not isinstance(plugin, proto):
            raise ConfigError(where, f"plugin {bounded_repr(ref)} ({plugin.typed_name.type}) is not a "
                                     f"{proto.__name__}")
        return plugin

    def flow_control(self) -> FlowControlSettings | None:
        if FLOW_CONTROL_GATE not in self.doc.feature_gates:
            if self.doc.flow_control is not None:
                log.warning("flowControl is set but the flowControl feature gate is not: requests are admitted "
                            "without queueing (add featureGates: [flowControl])")
            return None
        return build_flow_control(self.doc.flow_control, self.policy)

    def producers_in_order(self) -> tuple[DataProducer, ...]:
        """Data producers sorted so that a producer runs after those it consumes from."""
        pending = self.of(DataProducer)
        ordered: list[BasePlugin] = []
        produced: set[str] = set()
        while pending:
            ready = [p for p in pending if all(k in produced or not any(k in q.PRODUCES for q in pending if q is not p)
                                               for k in p.CONSUMES)]
            if not ready:
                raise ConfigError("plugins", "data producers depend on each other in a cycle: "
                                  + ", ".join(str(p.typed_name) for p in pending))
            for p in ready:
                ordered.append(p)
                produced |= p.PRODUCES
                pending.remove(p)
        return tuple(ordered)  # type: ignore[arg-type]


def load_config(text: str | None, registry: Registry, handle: Handle, observer: Observer = no_observer) -> PickerConfig:
    """Decode, validate and build; raises ``ConfigError`` naming the offending field."""
    doc = decode_document(text) if text and text.strip() else None
    if doc is None:  # no config, or one that is only comments
        doc = decode_document(DEFAULT_CONFIG)
    assert doc is not None
    builder = _Builder(doc, registry, handle, observer)
    builder.instantiate()
    profiles = builder.profiles()
    handler = builder.profile_handler(profiles)
    parser = builder.parser()
    bindings = builder.data_layer()
    saturation = builder.saturation_detector()
    flow_control = builder.flow_control()
    return PickerConfig(
        plugins=dict(builder.plugins),
        scheduler=Scheduler(handler, profiles),
        parser=parser,
        producers=builder.producers_in_order(),
        admitters=tuple(builder.of(Admitter)),  # type: ignore[arg-type]
        pre_request=tuple(builder.of(PreRequest)),  # type: ignore[arg-type]
        response_received=tuple(builder.of(ResponseReceived)),  # type: ignore[arg-type]
        response_streaming=tuple(builder.of(ResponseStreaming)),  # type: ignore[arg-type]
        response_complete=tuple(builder.of(ResponseComplete)),  # type: ignore[arg-type]
        data_bindings=bindings,
        feature_gates=doc.feature_gates,
        flow_control=flow_control,
        saturation_detector=saturation,
    )
