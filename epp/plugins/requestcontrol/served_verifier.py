"""``destination-endpoint-served-verifier`` (GIE, test only): tell the client who served it.

The GIE conformance suite checks that the gateway sent each request where the picker
said. The data plane reports the endpoint that actually served the request as
``x-gateway-destination-endpoint-served`` (``ip:port``); this plugin copies it into the
response header ``x-conformance-test-served-endpoint`` for the test client to compare.

Where the value comes from: the GIE protocol puts it in the ext_proc ``metadata_context``
(namespace ``envoy.lb``) of the response; stock Envoy has no built-in way to fill that,
so the project's Envoy adds it as a *response header* with ``%UPSTREAM_HOST%``
(``epp/devstack/envoy.py``, ``report_served_endpoint``) and this plugin reads the header.
When it is absent the client gets Go's failure text instead, so a gateway that does not
report the served endpoint fails the conformance check visibly rather than silently.
"""

from __future__ import annotations

from epp.framework.plugin import BasePlugin, Handle
from epp.framework.requestcontrol import ResponseInfo
from epp.requests.types import InferenceRequest

__all__ = ["SERVED_ENDPOINT_KEY", "SERVED_RESULT_HEADER", "DestinationEndpointServedVerifier"]

SERVED_ENDPOINT_KEY = "x-gateway-destination-endpoint-served"
SERVED_RESULT_HEADER = "x-conformance-test-served-endpoint"
MISSING = "fail: missing destination endpoint served metadata"


class DestinationEndpointServedVerifier(BasePlugin):
    """Echoes the served endpoint reported by the data plane to the client."""

    TYPE = "destination-endpoint-served-verifier"

    def __init__(self, name: str, params: None, handle: Handle) -> None:
        super().__init__(name, params, handle)

    def response_received(self, request: InferenceRequest, response: ResponseInfo) -> None:
        served = response.headers.get(SERVED_ENDPOINT_KEY, "").strip()
        response.set_headers.append((SERVED_RESULT_HEADER, served or MISSING))
