"""The ``/metrics`` page of an SGLang server (``--engine sglang``).

Names and buckets follow SGLang's ``TokenizerMetricsCollector`` / ``SchedulerMetricsCollector``
(``docs/references/production_metrics.md``); series carry ``model_name``, ``engine_type``,
``tp_rank`` and ``pp_rank``. The scheduler gauges the picker reads are
``sglang:num_queue_reqs``, ``sglang:num_running_reqs`` and ``sglang:token_usage`` (KV usage in
[0, 1]); ``sglang:cache_config_info`` carries ``page_size`` and ``num_pages``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from epp.sim.config import SimConfig
from epp.sim.metrics.process import ProcessFamilies
from epp.sim.metrics.prom import Counter, Family, Gauge, Histogram
from epp.sim.metrics.sink import EngineView
from epp.sim.request import SimRequest
from epp.sim.scheduler import StepPlan

__all__ = ["SglangMetrics"]

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                 10.0, 15.0, 20.0, 25.0, 30.0)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)
_ITL_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
                0.75, 1.0, 2.5)
_QUEUE_BUCKETS = (0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                  70.0, 80.0, 90.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0)

_LABELS = ("model_name", "engine_type", "tp_rank", "pp_rank")

# Window over which sglang:gen_throughput is averaged.
_THROUGHPUT_WINDOW = 1.0


class SglangMetrics:
    """``MetricsSink`` with SGLang's metric names."""

    content_type = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self, config: SimConfig, view: EngineView) -> None:
        created = time.time()
        lv = (config.model_name, "unified", "0", "0")
        self._view = view
        self._lv = lv
        self._capacity = config.num_gpu_blocks * config.block_size
        self._block_size = config.block_size
        self._window: tuple[float, float] = (time.monotonic(), 0.0)
        self._throughput = 0.0

        def gauge(name: str, doc: str, fn: Callable[[], float]) -> Gauge:
            return Gauge(name, doc, _LABELS, lambda: ((lv, fn()),))

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, _LABELS, [lv], created)

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, _LABELS, lv, buckets, created)

        self.prompt_tokens = counter("sglang:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("sglang:generation_tokens", "Number of generation tokens processed.")
        self.cached_tokens = counter("sglang:cached_tokens", "Number of cached prompt tokens.")
        self.num_requests = counter("sglang:num_requests", "Number of requests processed.")
        self.aborted = counter("sglang:num_aborted_requests", "Number of requests aborted.")
        self.ttft = hist("sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                         _TTFT_BUCKETS)
        self.itl = hist("sglang:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                        _ITL_BUCKETS)
        self.e2e = hist("sglang:e2e_request_latency_seconds", "Histogram of End-to-end request latency in "
                        "seconds", _E2E_BUCKETS)
        self.queue = hist("sglang:queue_time_seconds", "Histogram of queueing time in seconds.",
                          _QUEUE_BUCKETS)
        cache_info = Gauge("sglang:cache_config_info", "Information of the cache config",
                           (*_LABELS, "page_size", "num_pages"))
        cache_info.set(1.0, (*lv, str(config.block_size), str(config.num_gpu_blocks)))
        self._families: list[Family] = [
            self.prompt_tokens, self.generation_tokens, self.cached_tokens, self.num_requests, self.aborted,
            self.ttft, self.e2e, self.itl, self.queue,
            gauge("sglang:num_running_reqs", "The number of running requests.", lambda: view.num_running),
            gauge("sglang:num_used_tokens", "The number of used tokens.",
                  lambda: view.kv_used_blocks() * self._block_size),
            gauge("sglang:token_usage", "The token usage.", view.kv_usage),
            gauge("sglang:gen_throughput", "The generation throughput (token/s).", self._gen_throughput),
            gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.",
                  lambda: view.num_waiting),
            gauge("sglang:cache_hit_rate", "The prefix cache hit rate.", self._hit_rate),
            gauge("sglang:max_total_num_tokens", "Maximum total number of tokens in the KV cache pool.",
                  lambda: self._capacity),
            cache_info,
        ]
        self._queries = 0
        self._hits = 0
        self._process = ProcessFamilies(created)

    def _hit_rate(self) -> float:
        return self._hits / self._queries if self._queries else 0.0

    def _gen_throughput(self) -> float:
        now = time.monotonic()
        start, tokens_then = self._window
        if now - start >= _THROUGHPUT_WINDOW:
            tokens = self.generation_tokens.value(self._lv)
            self._throughput = (tokens - tokens_then) / (now - start)
            self._window = (now, tokens)
        return self._throughput

    # --- MetricsSink ------------------------------------------------------------------------
    def on_step(self, plan: StepPlan, now: float) -> None:
        self._queries += plan.prefix_queries
        self._hits += plan.prefix_hits

    def on_token(self, req: SimRequest, now: float) -> None:
        self.generation_tokens.inc()
        if req.first_token == now:
            self.ttft.observe(now - req.arrival)
            self.prompt_tokens.inc(req.num_prompt)
            self.cached_tokens.inc(req.cached_tokens)
            if req.first_scheduled is not None:
                self.queue.observe(req.first_scheduled - req.arrival)
        elif req.last_token is not None:
            self.itl.observe(now - req.last_token)

    def on_finished(self, req: SimRequest, reason: str, now: float) -> None:
        self.num_requests.inc()
        if reason == "abort":
            self.aborted.inc()
            return
        self.e2e.observe(now - req.arrival)

    def on_http(self, handler: str, method: str, status: int, request_bytes: int, response_bytes: int,
                seconds: float) -> None:
        """SGLang has no per-route HTTP metrics."""

    def render(self) -> bytes:
        parts = [self._process.render()]
        parts.extend(f.render() for f in self._families)
        return "".join(parts).encode()
