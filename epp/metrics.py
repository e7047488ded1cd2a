"""The picker's own Prometheus metrics, named and labelled as the Go EPP's.

Names, labels and buckets follow ``pkg/epp/metrics/metrics.go`` so Grafana dashboards
built for the Go EPP work unchanged. Everything lives in one ``CollectorRegistry`` owned
by a ``PickerMetrics`` instance (no global registry). Pool-level gauges are computed
when ``/metrics`` is scraped, never on the request path.

Per-model label sets come from client strings, so they are bounded in length and count by
the families (``epp.metricfamilies``) and expire: a label set unused for ``idle_seconds``
(10 minutes by default) is dropped when ``/metrics`` is collected, except a running-requests
gauge that still has requests in flight. ``for_model`` caches the children of each
(model, target) pair; a cached entry is valid for one collect epoch only, because once the
epoch is over its children may be dropped, and the whole cache is emptied at each collect.
So the request path costs one dict lookup and one integer comparison per ``for_model``,
no clock read, and the cache never updates a child the families no longer export.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from epp import __version__
from epp.datalayer.pool import EndpointPool
from epp.flowcontrol.types import FlowControlRequest, QueueOutcome
from epp.framework.attributes import LatencyPrediction
from epp.framework.plugin import TypedName
from epp.metricfamilies import MAX_CHILDREN, CounterFamily, GaugeFamily, HistogramFamily, Lifecycle, bound_label
from epp.requests.types import InferenceRequest

__all__ = ["FlowControlMetrics", "ModelLabels", "ModelMetrics", "PickerMetrics", "PredictionMetrics"]

_LATENCY_BUCKETS = (
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 45, 60, 120,
    180, 240, 300, 360, 480, 600, 900, 1200, 1800, 2700, 3600,
)
_REQUEST_SIZE_BUCKETS = tuple(float(2**i) for i in range(6, 31))  # 64 B .. 1 GiB
_RESPONSE_SIZE_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536)
_INPUT_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536, 131072,
                        262144, 524288, 1048576)
_OUTPUT_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
_TPOT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_QUEUE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                  120.0, 300.0)
_SCHEDULER_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)

_MODEL = ("model_name", "target_model_name")
_FLOW = ("fairness_id", "priority", "inference_pool", "model_name", "target_model_name")


_POOL_GAUGES = (
    ("inference_pool_average_kv_cache_utilization", "The average kv cache utilization for an inference server pool.",
     lambda m: m.kv_cache_usage_percent),
    ("inference_pool_average_queue_size", "The average number of requests pending in the model server queue.",
     lambda m: m.waiting_queue_size),
    ("inference_pool_average_running_requests",
     "The average number of running requests across model servers in the pool.", lambda m: m.running_requests_size),
)


class _PoolCollector(Collector):
    """Pool averages and readiness, computed at scrape time."""

    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        name = self.pool.name
        endpoints = self.pool.endpoints()
        count = len(endpoints) or 1
        for metric, doc, read in _POOL_GAUGES:
            family = GaugeMetricFamily(metric, doc, labels=["name"])
            family.add_metric([name], sum(read(ep.metrics) for ep in endpoints) / count)
            yield family
        ready = GaugeMetricFamily("inference_pool_ready_pods", "The number of ready pods in the inference server pool.",
                                  labels=["name"])
        ready.add_metric([name], len(self.pool.ready_endpoints()))
        yield ready
        per_pod = GaugeMetricFamily(
            "inference_pool_per_pod_queue_size",
            "The total number of requests pending in the model server queue for each underlying pod.",
            labels=["name", "model_server_pod"])
        for ep in endpoints:
            per_pod.add_metric([name, ep.name], ep.metrics.waiting_queue_size)
        yield per_pod
        # The model server's own prefix-cache hit rate (its counters), which is right even when
        # vLLM leaves prompt_tokens_details out of usage (the default) and the cached-tokens
        # histogram reads 0.
        hit_ratio = GaugeMetricFamily(
            "epp_endpoint_prefix_cache_hit_ratio",
            "Share of prompt tokens the model server found in its prefix cache over the last 30 s (increase of "
            "vllm:prefix_cache_hits_total over vllm:prefix_cache_queries_total); absent without lookups.",
            labels=["pod_name"])
        for ep in endpoints:
            if (rate := ep.metrics.prefix_cache_hit_rate) is not None:
                hit_ratio.add_metric([ep.name], rate)
        yield hit_ratio


class ModelMetrics:
    """The per-request metric children of one (model, target model) pair, looked up once.

    Valid during collect epoch ``epoch`` only (see ``PickerMetrics.for_model``).
    """

    __slots__ = ("request_sizes", "running", "duration", "response_sizes", "input_tokens", "cached_tokens",
                 "output_tokens", "normalized_tpot", "ttft", "tpot", "epoch")

    def __init__(self, metrics: PickerMetrics, model: str, target: str) -> None:
        self.epoch = metrics.lifecycle.epoch
        pair = (model, target)
        self.request_sizes = metrics.request_sizes.labels(*pair)
        self.running = metrics.running_requests.labels(model)
        self.duration = metrics.request_duration.labels(*pair)
        self.response_sizes = metrics.response_sizes.labels(*pair)
        self.input_tokens = metrics.input_tokens.labels(*pair)
        self.cached_tokens = metrics.prompt_cached_tokens.labels(*pair)
        self.output_tokens = metrics.output_tokens.labels(*pair)
        self.normalized_tpot = metrics.normalized_tpot.labels(*pair)
        self.ttft = metrics.request_ttft.labels(*pair)
        self.tpot = metrics.request_tpot.labels(*pair)


def _per_model(what: str) -> str:
    return f"Inference objective {what} for each model and target model."


class _EpochTick(Collector):
    """Starts a new metrics epoch whenever ``/metrics`` is collected: empties
    ``PickerMetrics``' per-model cache and frees idle provisional model slots."""

    def __init__(self, cache: dict[tuple[str, str], ModelMetrics], models: ModelLabels) -> None:
        self.cache = cache
        self.models = models
        # Registered before every family, so it collects first: one epoch per scrape.
        self.lifecycle = models.lifecycle

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        # Entries are stale once any family starts a new epoch; dropping them all keeps the cache
        # from holding children the families have dropped. They are rebuilt on first use.
        self.lifecycle.tick()
        self.cache.clear()
        self.models.expire()
        return iter(())


# A per-model label set unused for this long is dropped from /metrics.
DEFAULT_IDLE_SECONDS = 600.0
# Model pairs no model server has answered yet that may have label sets of their own.
MAX_PROVISIONAL_MODELS = 32
OTHER = "other"


class ModelLabels:
    """Which (model, target model) pairs get label sets of their own.

    Model names come from clients. A pair is *served* once a model server answered it with
    a 2xx; served pairs are kept in least-recently-used order, at most ``MAX_CHILDREN``.
    Any other pair is *provisional*: at most ``MAX_PROVISIONAL_MODELS`` of them are labelled
    by name (each for ``idle_seconds`` after its last use), and the rest count as
    ``other``. So names no server accepts (typos, junk, an attacker's stream of unique
    names) hold a handful of label sets per family and never push served models into
    ``other``; a new real model is labelled by name from its first request unless the
    provisional slots are full, and from its first success in any case.
    """

    __slots__ = ("lifecycle", "_served", "_provisional")

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle
        self._served: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._provisional: dict[tuple[str, str], float] = {}

    def labels(self, model: str, target: str) -> tuple[str, str]:
        pair = (bound_label(model), bound_label(target))
        served = self._served
        if pair in served:
            served.move_to_end(pair)
            return pair
        provisional = self._provisional
        if pair in provisional or len(provisional) < MAX_PROVISIONAL_MODELS:
            provisional[pair] = self.lifecycle.clock()
            return pair
        return (OTHER, OTHER)

    def served(self, model: str, target: str) -> None:
        pair = (bound_label(model), bound_label(target))
        if pair in self._served:
            return  # labels() already moved it to the end when the request started
        self._provisional.pop(pair, None)
        self._served[pair] = None
        if len(self._served) > MAX_CHILDREN:
            self._served.popitem(last=False)

    def debug_sizes(self) -> dict[str, int]:
        return {"servedModels": len(self._served), "provisionalModels": len(self._provisional)}

    def expire(self) -> None:
        """Free provisional slots unused for ``idle_seconds`` (at collect time, like label sets)."""
        idle = self.lifecycle.idle_seconds
        if idle is None:
            return
        cutoff = self.lifecycle.clock() - idle
        for pair in [p for p, seen in self._provisional.items() if seen < cutoff]:
            del self._provisional[pair]


class PickerMetrics:
    """The picker's metrics.

    ``idle_seconds``: per-model label sets (and scheduler attempts per pod) unused for this
    long are dropped at collect time, except a running gauge with requests in flight;
    ``None`` keeps them (still bounded by ``MAX_CHILDREN`` per family). ``clock``: for tests.
    """

    def __init__(self, pool: EndpointPool | None = None, registry: CollectorRegistry | None = None, *,
                 idle_seconds: float | None = DEFAULT_IDLE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # The Go EPP exposes no *_created series; dashboards and tests written for it expect none.
        disable_created_metrics()
        self.registry = r = registry or CollectorRegistry(auto_describe=True)
        self.lifecycle = life = Lifecycle(idle_seconds, clock)
        self._per_model: dict[tuple[str, str], ModelMetrics] = {}
        self._cache_pruned_epoch = -1
        self.models = ModelLabels(life)
        r.register(_EpochTick(self._per_model, self.models))

        def histogram(name: str, doc: str, buckets: tuple[float, ...],
                      labels: tuple[str, ...] = _MODEL, expires: bool = True) -> HistogramFamily:
            return HistogramFamily(name, doc, labels, buckets, r, lifecycle=life, expires=expires)

        self.request_total = CounterFamily(
            "inference_objective_request_total",
            "Counter of inference objective requests broken out for each model and target model.",
            [*_MODEL, "priority"], r, lifecycle=life)
        self.request_error_total = CounterFamily(
            "inference_objective_request_error_total",
            "Counter of inference objective requests errors broken out for each model and target model.",
            [*_MODEL, "error_code"], r, lifecycle=life)
        self.request_duration = histogram("inference_objective_request_duration_seconds",
                                          _per_model("response latency distribution in seconds"), _LATENCY_BUCKETS)
        self.request_sizes = histogram("inference_objective_request_sizes",
                                       _per_model("requests size distribution in bytes"), _REQUEST_SIZE_BUCKETS)
        self.response_sizes = histogram("inference_objective_response_sizes",
                                        _per_model("responses size distribution in bytes"), _RESPONSE_SIZE_BUCKETS)
        self.input_tokens = histogram(
            "inference_objective_input_tokens",
            "Inference objective input token count distribution for requests in each model.", _INPUT_TOKEN_BUCKETS)
        self.output_tokens = histogram(
            "inference_objective_output_tokens",
            "Inference objective output token count distribution for requests in each model.", _OUTPUT_TOKEN_BUCKETS)
        self.prompt_cached_tokens = histogram(
            "inference_objective_prompt_cached_tokens",
            "Inference objective prompt cached token count distribution for requests in each model.",
            _INPUT_TOKEN_BUCKETS)
        self.normalized_tpot = histogram(
            "inference_objective_normalized_time_per_output_token_seconds",
            _per_model("latency divided by number of output tokens in seconds"), _TPOT_BUCKETS)
        # Latency as the client sees it (streamed responses), and the predictor's view (SLO routing).
        self.request_ttft = histogram("inference_objective_request_ttft_seconds",
                                      _per_model("time to first token in seconds"), _LATENCY_BUCKETS)
        self.request_tpot = histogram("inference_objective_request_tpot_seconds",
                                      _per_model("time per output token in seconds"), _TPOT_BUCKETS)
        self.request_predicted_ttft = histogram(
            "inference_objective_request_predicted_ttft_seconds",
            _per_model("predicted time to first token in seconds"), _LATENCY_BUCKETS)
        self.request_predicted_tpot = histogram(
            "inference_objective_request_predicted_tpot_seconds",
            _per_model("predicted time per output token in seconds"), _TPOT_BUCKETS)
        self.request_ttft_prediction_duration = histogram(
            "inference_objective_request_ttft_prediction_duration_seconds",
            _per_model("time spent predicting TTFT in seconds"), _SCHEDULER_BUCKETS)
        self.request_tpot_prediction_duration = histogram(
            "inference_objective_request_tpot_prediction_duration_seconds",
            _per_model("time spent predicting TPOT in seconds"), _SCHEDULER_BUCKETS)
        self.request_slo_violation = CounterFamily(
            "inference_objective_request_slo_violation_total",
            "Counter of requests whose measured TTFT or TPOT exceeded their objective (x-slo-ttft-ms, "
            "x-slo-tpot-ms), by type.", [*_MODEL, "type"], r, lifecycle=life)
        self.running_requests = GaugeFamily("inference_objective_running_requests",
                                            "Inference objective number of running requests in each model.",
                                            ["model_name"], r, lifecycle=life)
        self.scheduler_duration = histogram("inference_extension_scheduler_e2e_duration_seconds",
                                            "End-to-end scheduling latency distribution in seconds.",
                                            _SCHEDULER_BUCKETS, ())
        self.scheduler_attempts = CounterFamily("inference_extension_scheduler_attempts_total",
                                                "Total number of scheduling attempts.",
                                                ["status", "target_model_name", "pod_name", "namespace", "port"], r,
                                                lifecycle=life)
        self.plugin_duration = histogram(
            "inference_extension_plugin_duration_seconds",
            "Plugin processing latency distribution in seconds for each extension point, plugin type and plugin name.",
            _SCHEDULER_BUCKETS, ("extension_point", "plugin_type", "plugin_name"),
            expires=False)  # label values from the config; plugins hold pre-bound observers for good
        info = GaugeFamily("inference_extension_info",
                           "General information of the current build of Inference Extension.",
                           ["commit", "build_ref"], r, lifecycle=life, expires=False)
        info.labels("unknown", f"epp-python-{__version__}").set(1)
        # Beyond the Go EPP: the picker's own protection, named epp_*.
        self.endpoint_ejections = CounterFamily(
            "epp_endpoint_ejections_total",
            "Times an endpoint was taken out of rotation by passive health checking (failing responses).",
            ["pod_name"], r, lifecycle=life)
        self.endpoint_scrape_errors = CounterFamily(
            "epp_endpoint_scrape_errors_total",
            "Failed scrapes of an endpoint: a data source fetch that failed or timed out, or an extractor that "
            "could not use the data.", ["pod_name"], r, lifecycle=life)
        self.request_body_refused = CounterFamily(
            "epp_request_body_refused_total",
            "Request bodies refused while being received: too_large (413, --max-request-body-bytes) or "
            "budget (429, --max-inflight-body-bytes).", ["reason"], r, lifecycle=life, expires=False)
        # Flow control (Go's names and labels); fed by ``FlowControlMetrics``.
        self.flow_queue_size = GaugeFamily("inference_extension_flow_control_queue_size",
                                           "Current number of requests being actively managed by the EPP flow "
                                           "control layer.", _FLOW, r, lifecycle=life)
        self.flow_queue_bytes = GaugeFamily("inference_extension_flow_control_queue_bytes",
                                            "Current size in bytes of all requests being actively managed by the "
                                            "EPP flow control layer.", _FLOW, r, lifecycle=life)
        self.flow_queue_duration = histogram(
            "inference_extension_flow_control_request_queue_duration_seconds",
            "Distribution of the total time requests spend in the EPP flow control layer, measured from the start "
            "of the EnqueueAndWait call until a final outcome is reached.", _QUEUE_BUCKETS,
            ("fairness_id", "priority", "outcome", "inference_pool", "model_name", "target_model_name"))
        self.flow_pool_saturation = GaugeFamily("inference_extension_flow_control_pool_saturation",
                                                "Current saturation level of the inference pool (0 idle, 1.0 or more "
                                                "saturated).", ["inference_pool"], r, lifecycle=life, expires=False)
        if pool is not None:
            r.register(_PoolCollector(pool))

    def for_model(self, model: str, target: str) -> ModelMetrics:
        """Children for one model pair, cached for the current collect epoch."""
        cached = self._per_model.get((model, target))
        if cached is not None and cached.epoch == self.lifecycle.epoch:
            return cached
        return self._cache_model(bound_label(model), bound_label(target))

    def _cache_model(self, model: str, target: str) -> ModelMetrics:
        epoch = self.lifecycle.epoch
        key = (model, target)
        cached = self._per_model.get(key)
        if cached is not None and cached.epoch == epoch:
            return cached  # the name was cut to the label bound: its bounded key is cached
        entry = ModelMetrics(self, model, target)
        cache = self._per_model
        if len(cache) >= MAX_CHILDREN and key not in cache and self._cache_pruned_epoch != epoch:
            # Stale entries would be rebuilt anyway; once per epoch is enough to find them all.
            self._cache_pruned_epoch = epoch
            for stale in [k for k, v in cache.items() if v.epoch != epoch]:
                del cache[stale]
        if len(cache) < MAX_CHILDREN or key in cache:
            cache[key] = entry
        return entry

    def debug_sizes(self) -> dict[str, object]:
        """Label sets per family and the per-model caches, for ``/debug/state``."""
        families = {f.name: len(f) for f in self._families()}
        return {"labelSets": families, "perModelCache": len(self._per_model), **self.models.debug_sizes()}

    def _families(self) -> list[CounterFamily | HistogramFamily]:
        return [v for v in vars(self).values() if isinstance(v, CounterFamily | HistogramFamily)]

    def plugin_observer(self, extension_point: str, name: TypedName) -> Callable[[float], None]:
        """A pre-bound ``observe`` for one plugin (label lookup done once, not per call)."""
        return self.plugin_duration.labels(extension_point, name.type, name.name).observe


class PredictionMetrics:
    """Hooked to ``predicted-latency-producer``: the chosen endpoint's predictions and their cost."""

    def __init__(self, metrics: PickerMetrics) -> None:
        self.metrics = metrics

    def predicted(self, request: InferenceRequest, prediction: LatencyPrediction | None, seconds: float) -> None:
        m = self.metrics
        labels = m.models.labels(request.model, request.target_model)
        # TTFT and TPOT come from one prediction call: each duration series gets its cost.
        m.request_ttft_prediction_duration.labels(*labels).observe(seconds)
        m.request_tpot_prediction_duration.labels(*labels).observe(seconds)
        if prediction is not None:
            m.request_predicted_ttft.labels(*labels).observe(prediction.ttft_ms / 1000.0)
            m.request_predicted_tpot.labels(*labels).observe(prediction.tpot_ms / 1000.0)


class FlowControlMetrics:
    """The flow controller's observer (``epp.flowcontrol.controller.FlowObserver``): queue gauges,
    queue-duration histogram and pool saturation, with the Go EPP's labels.

    A request's labels are fixed when it first enters the queue and kept until it leaves,
    so each gauge decrement hits the child its increment did (a model pair's labels may
    change while it waits, see ``ModelLabels``).
    """

    def __init__(self, metrics: PickerMetrics, pool_name: str) -> None:
        self.metrics = metrics
        self.pool_name = pool_name
        self._saturation = metrics.flow_pool_saturation.labels(pool_name)
        self._labels: dict[FlowControlRequest, tuple[str, str, str, str, str]] = {}

    def _flow_labels(self, request: FlowControlRequest) -> tuple[str, str, str, str, str]:
        model, target = self.metrics.models.labels(request.model, request.target_model)
        return (request.flow.fairness_id, str(request.flow.priority), self.pool_name, model, target)

    def queued(self, request: FlowControlRequest, count_delta: int, bytes_delta: int) -> None:
        labels = self._labels.get(request)
        if labels is None:
            labels = self._labels[request] = self._flow_labels(request)
        self.metrics.flow_queue_size.labels(*labels).inc(count_delta)
        self.metrics.flow_queue_bytes.labels(*labels).inc(bytes_delta)
        if count_delta < 0:
            del self._labels[request]

    def left(self, request: FlowControlRequest, outcome: QueueOutcome, waited: float) -> None:
        fairness, priority, pool, model, target = self._labels.get(request) or self._flow_labels(request)
        self.metrics.flow_queue_duration.labels(fairness, priority, str(outcome), pool, model, target).observe(waited)

    def saturation(self, value: float) -> None:
        self._saturation.set(value)

    def debug_sizes(self) -> dict[str, int]:
        return {"labelledRequests": len(self._labels)}
