"""The picker's own Prometheus metrics, named and labelled as the Go EPP's.

Names, labels and buckets follow ``pkg/epp/metrics/metrics.go`` so Grafana dashboards
built for the Go EPP work unchanged. Everything lives in one ``CollectorRegistry`` owned
by a ``PickerMetrics`` instance (no global registry). Pool-level gauges are computed
when ``/metrics`` is scraped, never on the request path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from epp import __version__
from epp.datalayer.pool import EndpointPool
from epp.framework.plugin import TypedName
from epp.metricfamilies import MAX_CHILDREN, CounterFamily, GaugeFamily, HistogramFamily

__all__ = ["ModelMetrics", "PickerMetrics"]

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
_SCHEDULER_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)

_MODEL = ("model_name", "target_model_name")


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


class ModelMetrics:
    """The per-request metric children of one (model, target model) pair, looked up once."""

    __slots__ = ("request_sizes", "running", "duration", "response_sizes", "input_tokens", "cached_tokens",
                 "output_tokens", "normalized_tpot")

    def __init__(self, metrics: PickerMetrics, model: str, target: str) -> None:
        pair = (model, target)
        self.request_sizes = metrics.request_sizes.labels(*pair)
        self.running = metrics.running_requests.labels(model)
        self.duration = metrics.request_duration.labels(*pair)
        self.response_sizes = metrics.response_sizes.labels(*pair)
        self.input_tokens = metrics.input_tokens.labels(*pair)
        self.cached_tokens = metrics.prompt_cached_tokens.labels(*pair)
        self.output_tokens = metrics.output_tokens.labels(*pair)
        self.normalized_tpot = metrics.normalized_tpot.labels(*pair)


def _per_model(what: str) -> str:
    return f"Inference objective {what} for each model and target model."


class PickerMetrics:
    def __init__(self, pool: EndpointPool | None = None, registry: CollectorRegistry | None = None) -> None:
        # The Go EPP exposes no *_created series; dashboards and tests written for it expect none.
        disable_created_metrics()
        self.registry = r = registry or CollectorRegistry(auto_describe=True)

        def histogram(name: str, doc: str, buckets: tuple[float, ...],
                      labels: tuple[str, ...] = _MODEL) -> HistogramFamily:
            return HistogramFamily(name, doc, labels, buckets, r)

        self.request_total = CounterFamily(
            "inference_objective_request_total",
            "Counter of inference objective requests broken out for each model and target model.",
            [*_MODEL, "priority"], r)
        self.request_error_total = CounterFamily(
            "inference_objective_request_error_total",
            "Counter of inference objective requests errors broken out for each model and target model.",
            [*_MODEL, "error_code"], r)
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
        self.running_requests = GaugeFamily("inference_objective_running_requests",
                                            "Inference objective number of running requests in each model.",
                                            ["model_name"], r)
        self.scheduler_duration = histogram("inference_extension_scheduler_e2e_duration_seconds",
                                            "End-to-end scheduling latency distribution in seconds.",
                                            _SCHEDULER_BUCKETS, ())
        self.scheduler_attempts = CounterFamily("inference_extension_scheduler_attempts_total",
                                                "Total number of scheduling attempts.",
                                                ["status", "target_model_name", "pod_name", "namespace", "port"], r)
        self.plugin_duration = histogram(
            "inference_extension_plugin_duration_seconds",
            "Plugin processing latency distribution in seconds for each extension point, plugin type and plugin name.",
            _SCHEDULER_BUCKETS, ("extension_point", "plugin_type", "plugin_name"))
        info = GaugeFamily("inference_extension_info",
                           "General information of the current build of Inference Extension.",
                           ["commit", "build_ref"], r)
        info.labels("unknown", f"epp-python-{__version__}").set(1)
        self._per_model: dict[tuple[str, str], ModelMetrics] = {}
        if pool is not None:
            r.register(_PoolCollector(pool))

    def for_model(self, model: str, target: str) -> ModelMetrics:
        """Children for one model pair, cached (bounded like the families' label sets)."""
        key = (model, target)
        cached = self._per_model.get(key)
        if cached is None:
            cached = ModelMetrics(self, model, target)
            if len(self._per_model) < MAX_CHILDREN:
                self._per_model[key] = cached
        return cached

    def plugin_observer(self, extension_point: str, name: TypedName) -> Callable[[float], None]:
        """A pre-bound ``observe`` for one plugin (label lookup done once, not per call)."""
        return self.plugin_duration.labels(extension_point, name.type, name.name).observe
