"""The ``/metrics`` page of a vLLM V1 server, with vLLM's names, types, labels and buckets.

Families and buckets follow ``vllm/v1/metrics/loggers.py`` (``PrometheusStatLogger``); every
``vllm:*`` series has the labels ``model_name`` and ``engine="0"``. Gauges are read live from
the engine at render time; counters and histograms are updated by engine events. As in vLLM:

* ``vllm:prefix_cache_queries`` / ``hits`` count prompt tokens looked up / found, once per
  admission into the running batch (again after a preemption).
* ``vllm:kv_cache_usage_perc`` counts blocks held by requests; cached blocks nobody holds are
  free.
* ``vllm:lora_requests_info`` is a gauge whose value is the time of the last engine step.
  As in vLLM 0.32 (``LoRARequestStates.update_scheduler_stats`` in
  ``vllm/v1/metrics/stats.py``, joined by ``loggers.py``), *both* ``running_lora_adapters``
  and ``waiting_lora_adapters`` list every adapter with a request that has been scheduled
  and not finished (running, or preempted back to waiting), in the order they got one: the
  lists are always equal. An adapter whose requests are all still queued is in neither
  (observed on real vLLM 0.32: three adapters with requests, ad3's only queued, listed
  ``ad1,ad2`` in both labels; see tests/fixtures/vllm-0.32/). The family is on the page
  only when LoRA is enabled (``--enable-lora`` or ``--lora-modules``) and has no sample
  before the first engine step. ``disjoint_lora_lists=True`` gives older vLLM's labels instead (the adapters
  of running requests, and those of waiting requests). Every combination seen stays on the
  page (vLLM never removes a label set); readers take the newest value. The simulator
  keeps the last ``_LORA_INFO_SERIES`` combinations, and stamps a combination that just
  appeared with the current time so that it is the newest even while no step runs
  (waiting for an adapter to load).

All times are wall-clock seconds as a client would measure them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from epp.sim.config import SimConfig
from epp.sim.metrics.http import HttpFamilies
from epp.sim.metrics.process import ProcessFamilies
from epp.sim.metrics.prom import Counter, Family, Gauge, Histogram, build_1_2_5_buckets
from epp.sim.metrics.sink import EngineView
from epp.sim.request import SimRequest
from epp.sim.scheduler import StepPlan

__all__ = ["VllmMetrics"]

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0)
_REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                            60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
_ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
_FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")
_PROMPT_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")

# Label sets of vllm:lora_requests_info kept on the page (vLLM keeps all of them forever).
_LORA_INFO_SERIES = 16

_LABELS = ("model_name", "engine")


class VllmMetrics:
    """``MetricsSink`` with vLLM's metric names."""

    content_type = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self, config: SimConfig, view: EngineView, *, disjoint_lora_lists: bool = False) -> None:
        created = time.time()
        model = config.model_name
        lv = (model, "0")
        self._view = view
        self._max_lora = str(config.max_loras)
        self._disjoint_lora_lists = disjoint_lora_lists
        self._lora_series: dict[tuple[str, str], float] = {}
        self._lora_current: tuple[str, str] | None = None
        # Adapters with a request, in the order they got one (vLLM's dict insertion order).
        self._lora_order: dict[str, None] = {}
        self._last_step_wall = created
        self._stepped = False

        self._lv = lv

        def live(value_fn: Callable[[], float]) -> Callable[[], tuple[tuple[tuple[str, str], float]]]:
            return lambda: ((lv, value_fn()),)

        def h(name: str, doc: str, buckets: Sequence[float], created: float) -> Histogram:
            return Histogram(name, doc, _LABELS, lv, buckets, created)

        self.running = Gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                             _LABELS, live(lambda: view.num_running))
        self.waiting = Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                             _LABELS, live(lambda: view.num_waiting))
        sleep = Gauge("vllm:engine_sleep_state", "Engine sleep state; awake = 0 means engine is sleeping; "
                      "awake = 1 means engine is awake; weights_offloaded = 1 means sleep level 1; "
                      "discard_all = 1 means sleep level 2.", (*_LABELS, "sleep_state"))
        for state, value in (("awake", 1.0), ("weights_offloaded", 0.0), ("discard_all", 0.0)):
            sleep.set(value, (*lv, state))
        self.kv_usage = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                              _LABELS, live(view.kv_usage))
        self.lora_info = Gauge("vllm:lora_requests_info", "Running stats on lora requests.",
                               ("max_lora", "waiting_lora_adapters", "running_lora_adapters"),
                               self._lora_samples)
        cache_info = Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                           tuple(self._cache_labels(config)))
        cache_info.set(1.0, tuple(self._cache_labels(config).values()))

        def counter(name: str, doc: str, extra: str | None = None, values: tuple[str, ...] = ()) -> Counter:
            if extra is None:
                return Counter(name, doc, _LABELS, [lv], created)
            return Counter(name, doc, (*_LABELS, extra), [(*lv, v) for v in values], created)

        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.prompt_by_source = counter("vllm:prompt_tokens_by_source", "Number of prompt tokens by source.",
                                        "source", _PROMPT_SOURCES)
        self.prompt_cached = counter("vllm:prompt_tokens_cached", "Number of cached prompt tokens "
                                     "(local + external).")
        self.prompt_recomputed = counter("vllm:prompt_tokens_recomputed", "Number of cached tokens "
                                         "recomputed for forward pass.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        self.success = counter("vllm:request_success", "Count of successfully processed requests.",
                               "finished_reason", _FINISH_REASONS)
        self.prefix_queries = counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number "
                                      "of queried tokens.")
        self.prefix_hits = counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of "
                                   "cached tokens.")
        max_len = config.max_model_len
        self.prompt_hist = h("vllm:request_prompt_tokens", "Number of prefill tokens processed.",
                             build_1_2_5_buckets(max_len), created)
        self.generation_hist = h("vllm:request_generation_tokens", "Number of generation tokens processed.",
                                 build_1_2_5_buckets(max_len), created)
        self.iteration_tokens = h("vllm:iteration_tokens_total", "Histogram of number of tokens per "
                                  "engine_step.", _ITERATION_TOKEN_BUCKETS, created)
        self.max_gen_hist = h("vllm:request_max_num_generation_tokens", "Histogram of maximum number of "
                              "requested generation tokens.", build_1_2_5_buckets(max_len), created)
        self.n_hist = h("vllm:request_params_n", "Histogram of the n request parameter.", (1, 2, 5, 10, 20),
                        created)
        self.max_tokens_hist = h("vllm:request_params_max_tokens", "Histogram of the max_tokens request "
                                 "parameter.", build_1_2_5_buckets(max_len), created)
        self.ttft = h("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                      _TTFT_BUCKETS, created)
        self.itl = h("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                     _ITL_BUCKETS, created)
        self.tpot = h("vllm:request_time_per_output_token_seconds", "Histogram of time_per_output_token_"
                      "seconds per request.", _ITL_BUCKETS, created)
        self.e2e = h("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                     _REQUEST_LATENCY_BUCKETS, created)
        self.queue = h("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for "
                       "request.", _REQUEST_LATENCY_BUCKETS, created)
        self.inference = h("vllm:request_inference_time_seconds", "Histogram of time spent in RUNNING phase "
                           "for request.", _REQUEST_LATENCY_BUCKETS, created)
        self.prefill = h("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for "
                         "request.", _REQUEST_LATENCY_BUCKETS, created)
        self.decode = h("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for "
                        "request.", _REQUEST_LATENCY_BUCKETS, created)
        self.kv_computed = h("vllm:request_prefill_kv_computed_tokens", "Histogram of new KV tokens computed "
                             "during prefill (excluding cached tokens).", build_1_2_5_buckets(max_len),
                             created)
        self._families: list[Family] = [
            self.running, self.waiting, sleep, self.kv_usage, self.preemptions, self.prompt_tokens,
            self.prompt_by_source, self.prompt_cached, self.prompt_recomputed, self.generation_tokens,
            self.success, self.prefix_queries, self.prefix_hits, self.prompt_hist, self.generation_hist,
            self.iteration_tokens, self.max_gen_hist, self.n_hist, self.max_tokens_hist, self.ttft, self.itl,
            self.tpot, self.e2e, self.queue, self.inference, self.prefill, self.decode, self.kv_computed,
            cache_info,
        ]
        # vLLM registers the family only with --enable-lora (loggers.py: ``if lora_config``).
        if config.lora_modules or config.enable_lora:
            self._families.insert(len(self._families) - 1, self.lora_info)
        self._process = ProcessFamilies(created)
        self._http = HttpFamilies(created)

    @staticmethod
    def _cache_labels(config: SimConfig) -> dict[str, str]:
        return {
            "block_size": str(config.block_size),
            "cache_dtype": "auto",
            "calculate_kv_scales": "False",
            "cpu_offload_gb": "0",
            "enable_prefix_caching": str(config.enable_prefix_caching),
            "engine": "0",
            "gpu_memory_utilization": "0.9",
            "is_attention_free": "False",
            "kv_cache_memory_bytes": "None",
            "kv_sharing_fast_prefill": "False",
            "mamba_cache_dtype": "auto",
            "mamba_page_size_padded": "None",
            "mamba_ssm_cache_dtype": "auto",
            "num_cpu_blocks": "None",
            "num_gpu_blocks": str(config.num_gpu_blocks),
            "num_gpu_blocks_override": "None",
            "prefix_caching_hash_algo": "sha256",
            "sliding_window": "None",
            "swap_space": "4",
            "swap_space_bytes": "4294967296",
        }

    def _lora_labels(self) -> tuple[str, str]:
        """(waiting, running) label values."""
        if self._disjoint_lora_lists:
            return ",".join(self._view.waiting_loras()), ",".join(self._view.running_loras())
        present = set(self._view.scheduled_loras())
        order = self._lora_order
        for gone in [name for name in order if name not in present]:
            del order[gone]
        for name in sorted(present):
            order.setdefault(name)
        both = ",".join(order)
        return both, both

    def _lora_samples(self) -> list[tuple[tuple[str, str, str], float]]:
        if not self._stepped:
            return []  # vLLM sets the gauge from an engine step's stats: none yet, no sample
        key = self._lora_labels()
        series = self._lora_series
        if key != self._lora_current:
            # A new state must be the newest series even if no step ran since (a LoRA load).
            series.pop(key, None)
            series[key] = time.time()
            self._lora_current = key
        else:
            series[key] = max(series[key], self._last_step_wall)
        while len(series) > _LORA_INFO_SERIES:
            del series[next(iter(series))]
        return [((self._max_lora, w, r), ts) for (w, r), ts in series.items()]

    # --- MetricsSink ------------------------------------------------------------------------
    def on_step(self, plan: StepPlan, now: float) -> None:
        self._last_step_wall = time.time()
        self._stepped = True
        self.iteration_tokens.observe(plan.work.tokens)
        if plan.prefix_queries:
            self.prefix_queries.inc(plan.prefix_queries)
            self.prefix_hits.inc(plan.prefix_hits)
        if plan.preempted:
            self.preemptions.inc(plan.preempted)

    def on_token(self, req: SimRequest, now: float) -> None:
        self.generation_tokens.inc()
        if req.first_token == now:
            self.ttft.observe(now - req.arrival)
            cached = req.cached_tokens
            self.prompt_tokens.inc(req.num_prompt)
            self.prompt_by_source.inc(req.num_prompt - cached, (*self._lv, "local_compute"))
            self.prompt_by_source.inc(cached, (*self._lv, "local_cache_hit"))
            self.prompt_cached.inc(cached)
        elif req.last_token is not None:
            self.itl.observe(now - req.last_token)

    def on_finished(self, req: SimRequest, reason: str, now: float) -> None:
        self.success.inc(1, (*self._lv, reason))
        if reason == "abort":
            return
        arrival = req.arrival
        scheduled = req.first_scheduled if req.first_scheduled is not None else now
        first = req.first_token if req.first_token is not None else now
        outputs = req.num_output
        self.e2e.observe(now - arrival)
        self.queue.observe(scheduled - arrival)
        self.inference.observe(now - scheduled)
        self.prefill.observe(first - scheduled)
        self.decode.observe(now - first)
        if outputs > 1:
            self.tpot.observe((now - first) / (outputs - 1))
        self.prompt_hist.observe(req.num_prompt)
        self.generation_hist.observe(outputs)
        self.max_gen_hist.observe(req.max_tokens)
        self.max_tokens_hist.observe(req.max_tokens)
        self.n_hist.observe(1)
        self.kv_computed.observe(req.num_prompt - req.cached_tokens)

    def on_http(self, handler: str, method: str, status: int, request_bytes: int, response_bytes: int,
                seconds: float) -> None:
        self._http.observe(handler, method, status, request_bytes, response_bytes, seconds)

    def render(self) -> bytes:
        parts = [self._process.render()]
        parts.extend(f.render() for f in self._families)
        parts.append(self._http.render())
        return "".join(parts).encode()
