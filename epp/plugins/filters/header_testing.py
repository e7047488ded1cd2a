"""``header-based-testing-filter`` (GIE, test only): the client names the endpoints.

The GIE conformance suite configures this filter so a test can tell the picker exactly
which endpoints to choose, then check that the gateway followed. It keeps the endpoints
listed in the request header ``test-epp-endpoint-selection``: a comma-separated list of
``IP`` or ``IP:port`` (IPv6 with or without brackets: ``fd00::1``, ``[fd00::1]:3002``).

- ``IP:port`` keeps the endpoint with exactly that address and port;
- ``IP`` keeps every endpoint on that IP (all data-parallel ranks of one pod);
- the result follows the header's order, each endpoint once; unknown entries are ignored;
- a missing or blank header keeps nothing, so the request gets 429, as in Go.

Two deliberate differences from the Go code (``request_header_based_filter.go``), both
towards its own documented contract (``scheduling/test/consts.go``: an IP "selects all
pods whose IP address matches"): Go de-duplicates by IP, so ``10.0.0.7:3000,10.0.0.7:3002``
keeps only the first, and its IP-only lookup is a map that keeps one endpoint per IP. The
conformance scenarios accept both behaviours.

Never configure this filter in production: any client could steer its own requests. A
gateway in front of a picker that has it must strip the header (``docs/security.md``).
"""

from __future__ import annotations

import ipaddress

from epp.datalayer.endpoint import Endpoint
from epp.framework.plugin import BasePlugin, Handle
from epp.framework.scheduling import CycleState
from epp.requests.types import InferenceRequest

__all__ = ["ENDPOINT_SELECTION_HEADER", "HeaderBasedTestingFilter", "parse_selection"]

ENDPOINT_SELECTION_HEADER = "test-epp-endpoint-selection"


def _canonical_ip(text: str) -> str:
    """One spelling per address, so ``fd00:0::1`` and ``[fd00::1]`` compare equal."""
    text = text.strip().strip("[]")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


def _split(item: str) -> tuple[str, int | None]:
    """``(ip, port)`` of one entry, port ``None`` when absent (Go's ``net.SplitHostPort`` rules)."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif item.count(":") == 1:
        host, _, port_text = item.partition(":")
    else:  # a bare IPv4 or IPv6 address
        host, port_text = item, ""
    if not port_text:
        return _canonical_ip(host), None
    try:
        return _canonical_ip(host), int(port_text)
    except ValueError:
        return _canonical_ip(host), -1  # matches no endpoint, like an unknown address


def parse_selection(header: str) -> list[tuple[str, int | None]]:
    """The header's entries as ``(ip, port or None)``, blanks skipped."""
    return [_split(item.strip()) for item in header.split(",") if item.strip()]


class HeaderBasedTestingFilter(BasePlugin):
    """Keeps only the endpoints named in ``test-epp-endpoint-selection`` (conformance tests)."""

    TYPE = "header-based-testing-filter"

    def __init__(self, name: str, params: None, handle: Handle) -> None:
        super().__init__(name, params, handle)

    def filter(self, cycle: CycleState, request: InferenceRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        selection = parse_selection(request.headers.get(ENDPOINT_SELECTION_HEADER, ""))
        if not selection:
            return []
        by_ip: dict[str, list[Endpoint]] = {}
        for ep in endpoints:
            by_ip.setdefault(_canonical_ip(ep.metadata.address), []).append(ep)
        kept: dict[int, Endpoint] = {}  # by id: one entry per endpoint, in header order
        for ip, port in selection:
            for ep in by_ip.get(ip, ()):
                if port is None or ep.metadata.port == port:
                    kept.setdefault(id(ep), ep)
        return list(kept.values())
