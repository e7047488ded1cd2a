"""The HTTP families vLLM's ``prometheus-fastapi-instrumentator`` adds to its page.

vLLM instruments every route except ``/metrics``, ``/health``, ``/load``, ``/ping``,
``/version`` and ``/server_info``; status codes are grouped (``2xx``, ``4xx``). These families
are a large part of a real page (about 1.6 KB per route used), so a scraper's cost depends
on them.
"""

from __future__ import annotations

from epp.sim.metrics.prom import Family, Histogram, Summary, created_header, fmt, label_str

__all__ = ["EXCLUDED_HANDLERS", "HttpFamilies"]

# Routes vLLM leaves out of its HTTP metrics, plus the simulator's own and SGLang's info routes,
# which a real vLLM page would not show.
EXCLUDED_HANDLERS = frozenset({"/metrics", "/health", "/load", "/ping", "/version", "/server_info",
                               "/get_server_info", "/model_info", "/get_model_info", "/sim/fault",
                               "/sim/stats"})

# prometheus-fastapi-instrumentator's default high-resolution latency buckets.
_HIGHR_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0,
                  4.5, 5.0, 7.5, 10.0, 30.0, 60.0)

# Its default per-handler latency buckets.
_LOW_BUCKETS = (0.1, 0.5, 1.0)


class _Requests(Family):
    """``http_requests_total{handler,method,status}``, series appear as routes are used."""

    __slots__ = ("_values", "_created")

    kind = "counter"
    suffix = "_total"

    def __init__(self, created: float) -> None:
        super().__init__("http_requests", "Total number of requests by method, status and handler.")
        self._values: dict[tuple[str, str, str], float] = {}
        self._created = fmt(created)

    def inc(self, handler: str, method: str, status: str) -> None:
        key = (handler, method, status)
        self._values[key] = self._values.get(key, 0.0) + 1
        self._text = None

    def _body(self) -> str:
        names = ("handler", "method", "status")
        lines, created = [], [created_header(self.name, self.documentation)]
        for key, value in self._values.items():
            labels = label_str(names, key)
            lines.append(f"http_requests_total{labels} {fmt(value)}\n")
            created.append(f"http_requests_created{labels} {self._created}\n")
        return "".join(lines + created)


class _Durations(Family):
    """``http_request_duration_seconds{handler,method}``: one small histogram per route."""

    __slots__ = ("_series", "_created")

    kind = "histogram"

    def __init__(self, created: float) -> None:
        super().__init__("http_request_duration_seconds", "Latency with only few buckets by handler. "
                         "Made to be only used if aggregation by handler is important.")
        self._series: dict[tuple[str, str], Histogram] = {}
        self._created = created

    def observe(self, handler: str, method: str, seconds: float) -> None:
        series = self._series.get((handler, method))
        if series is None:
            series = self._series[(handler, method)] = Histogram(
                self.name, "", ("handler", "method"), (handler, method), _LOW_BUCKETS, self._created)
        series.observe(seconds)
        self._text = None

    def _body(self) -> str:
        series = self._series.values()
        created = [created_header(self.name, self.documentation), *(s.created_sample() for s in series)]
        return "".join([*(s.samples() for s in series), *created])


class HttpFamilies:
    """All instrumentator families of one replica."""

    __slots__ = ("_requests", "_req_size", "_resp_size", "_highr", "_durations")

    def __init__(self, created: float) -> None:
        self._requests = _Requests(created)
        self._req_size = Summary("http_request_size_bytes", "Content length of incoming requests by handler. "
                                 "Only value of header is respected. Otherwise ignored. No percentile "
                                 "calculated. ", ("handler",), created)
        self._resp_size = Summary("http_response_size_bytes", "Content length of outgoing responses by "
                                  "handler. Only value of header is respected. Otherwise ignored. No "
                                  "percentile calculated. ", ("handler",), created)
        self._highr = Histogram("http_request_duration_highr_seconds", "Latency with many buckets but no "
                                "API specific labels. Made for more accurate percentile calculations. ",
                                (), (), _HIGHR_BUCKETS, created)
        self._durations = _Durations(created)

    def observe(self, handler: str, method: str, status: int, request_bytes: int, response_bytes: int,
                seconds: float) -> None:
        if handler in EXCLUDED_HANDLERS:
            return
        self._requests.inc(handler, method, f"{status // 100}xx")
        self._req_size.observe(request_bytes, (handler,))
        self._resp_size.observe(response_bytes, (handler,))
        self._highr.observe(seconds)
        self._durations.observe(handler, method, seconds)

    def render(self) -> str:
        return "".join(f.render() for f in (self._requests, self._req_size, self._resp_size, self._highr,
                                            self._durations))
