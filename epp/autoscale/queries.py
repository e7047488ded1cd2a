"""The default queries: per-replica KV-cache usage, waiting queue and running requests of a model,
and the requests waiting in the picker's own flow-control queue for it.

Metric names come from the picker's engine table (``epp.plugins.datalayer.engines``), so
``prometheus_queries("sglang")`` reads ``sglang:token_usage`` and so on. Parameters:

* ``model``: the served model name, matched against the ``model_label`` label
  (``model_name`` for vLLM and SGLang);
* ``window`` (Prometheus queries only): the ``max_over_time`` window, so a short peak
  between two analyses is not missed (``DEFAULT_WINDOW``, 1m as in WVA).

``query_params(model)`` builds the map; pass the same map to every source (extra
parameters are ignored).

Per-replica queries keep one series per replica (``max by (pod, pod_name, instance)`` in
PromQL; one series per scraped endpoint directly); read them with
``QueryResult.by_replica()``. ``flow_control_queue_size`` is one series, summed over
fairness ids and priorities, for ``target_model_name`` = the model, or for requests that
were not rewritten (``target_model_name=""``) by ``model_name``, as WVA reads it. An
empty result means the picker exports no such series (no flow control, or nothing
queued since it started): treat it as no demand from the picker, not as an error. From
a ``PodScrapeSource`` pointed at the picker's metrics port (``picker_pod_queries``) the
result has one series per fairness id and priority: sum them.
"""

from __future__ import annotations

from epp.autoscale.templates import QueryList, QueryTemplate, escape_promql_string
from epp.plugins.datalayer.engines import BUILTIN_ENGINES, EngineConfig, parse_spec

__all__ = [
    "DEFAULT_WINDOW",
    "FLOW_CONTROL_QUEUE_SIZE",
    "KV_CACHE_USAGE",
    "QUEUE_LENGTH",
    "RUNNING_REQUESTS",
    "picker_pod_queries",
    "pod_queries",
    "prometheus_queries",
    "query_params",
]

KV_CACHE_USAGE = "kv_cache_usage"
QUEUE_LENGTH = "queue_length"
RUNNING_REQUESTS = "running_requests"
FLOW_CONTROL_QUEUE_SIZE = "flow_control_queue_size"
DEFAULT_WINDOW = "1m"

_FLOW_QUEUE = "inference_extension_flow_control_queue_size"
_PER_REPLICA = (
    (KV_CACHE_USAGE, "kv_usage_spec", "KV-cache usage per replica, 0..1"),
    (QUEUE_LENGTH, "queued_requests_spec", "requests waiting in each replica's queue"),
    (RUNNING_REQUESTS, "running_requests_spec", "requests running on each replica"),
)


def query_params(model: str, window: str = DEFAULT_WINDOW) -> dict[str, str]:
    return {"model": model, "window": window}


def _engine(engine: EngineConfig | str) -> EngineConfig:
    if isinstance(engine, EngineConfig):
        return engine
    try:
        return BUILTIN_ENGINES[engine]
    except KeyError:
        raise ValueError(f"unknown engine {engine!r}; known: {', '.join(BUILTIN_ENGINES)}") from None


def _selector(spec_text: str, where: str, model_label: str) -> str | None:
    spec = parse_spec(spec_text, where)
    if spec is None:
        return None
    fixed = "".join(f'{k}="{escape_promql_string(v)}",' for k, v in spec.labels)
    return f'{spec.series}{{{fixed}{model_label}="{{model}}"}}'


def prometheus_queries(engine: EngineConfig | str = "vllm", model_label: str = "model_name") -> QueryList:
    """PromQL queries for the engine's per-replica fields (those it publishes) and the picker's queue."""
    config = _engine(engine)
    queries = QueryList()
    for name, attr, description in _PER_REPLICA:
        selector = _selector(getattr(config, attr), attr, model_label)
        if selector is not None:
            queries.register(QueryTemplate(
                name, "promql", f"max by (pod, pod_name, instance) (max_over_time({selector}[{{window}}]))",
                ("model", "window"), f"{description} (peak over the window)"))
    queries.register(QueryTemplate(
        FLOW_CONTROL_QUEUE_SIZE, "promql",
        f'sum({_FLOW_QUEUE}{{target_model_name="{{model}}"}}) '
        f'or sum({_FLOW_QUEUE}{{model_name="{{model}}",target_model_name=""}})',
        ("model",), "requests waiting in the picker's flow-control queue for the model"))
    return queries


def pod_queries(engine: EngineConfig | str = "vllm", model_label: str = "model_name") -> QueryList:
    """Metric-selector queries for the engine's per-replica fields, for ``PodScrapeSource``."""
    config = _engine(engine)
    queries = QueryList()
    for name, attr, description in _PER_REPLICA:
        selector = _selector(getattr(config, attr), attr, model_label)
        if selector is not None:
            queries.register(QueryTemplate(name, "metric", selector, ("model",), description))
    return queries


def picker_pod_queries() -> QueryList:
    """The flow-control queue read straight from the picker's ``/metrics`` (one series per fairness id, priority)."""
    return QueryList([QueryTemplate(
        FLOW_CONTROL_QUEUE_SIZE, "metric", f'{_FLOW_QUEUE}{{target_model_name="{{model}}"}}', ("model",),
        "requests waiting in the picker's flow-control queue for the model, per fairness id and priority")])
