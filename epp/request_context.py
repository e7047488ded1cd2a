"""Per-request state carried across one ext_proc stream."""

from __future__ import annotations

import time

from epp.datalayer.endpoint import Endpoint
from epp.framework.requestcontrol import ResponseInfo
from epp.metricfamilies import Value
from epp.requests.model_rewrite import ModelNameRestorer
from epp.requests.types import InferenceRequest
from epp.requests.usage import UsageScanner

__all__ = ["RequestContext"]


class RequestContext:
    __slots__ = ("request_id", "received_at", "request", "endpoint", "response", "usage", "finished", "restorer",
                 "running", "labels")

    def __init__(self, request_id: str, received_at: float | None = None) -> None:
        self.request_id = request_id
        self.received_at = time.monotonic() if received_at is None else received_at
        self.request: InferenceRequest | None = None
        self.endpoint: Endpoint | None = None
        self.response = ResponseInfo()
        self.usage: UsageScanner | None = None
        self.finished = False
        # Gives the client back its model name in the response when it was rewritten.
        self.restorer: ModelNameRestorer | None = None
        # The running-requests gauge this request incremented: the decrement goes to the
        # same child, even if the metric families changed their label sets meanwhile.
        self.running: Value | None = None
        self.labels: tuple[str, str] | None = None  # the (model, target) metric labels it counts under

    def scheduled(self, endpoint: Endpoint) -> None:
        """The request is routed: from now on ``Director.finish`` releases its bookkeeping."""
        self.endpoint = endpoint
        self.response.endpoint = endpoint

    def response_started(self, headers: dict[str, str]) -> None:
        response = self.response
        response.headers = headers
        try:
            response.status = int(headers.get(":status", "0"))
        except ValueError:
            response.status = 0
        response.streaming = "text/event-stream" in headers.get("content-type", "")
        if self.request is not None:  # nothing to attribute usage to for a headers-only request
            self.usage = UsageScanner(response.streaming)

    def chunk_seen(self, chunk: bytes) -> None:
        response = self.response
        if response.first_chunk_at is None:
            response.first_chunk_at = time.monotonic()
        response.body_bytes += len(chunk)
        if self.request is None:
            return
        if self.usage is None:  # response headers were not sent to us (header mode SKIP)
            self.usage = UsageScanner(streaming=chunk.startswith(b"data:"))
        self.usage.feed(chunk)
