"""Standalone pool sources: an ``--endpoints`` list or a watched ``--pool-file``.

Pool file format (YAML)::

    endpoints:
      - 127.0.0.1:8001                      # shorthand: address:port
      - address: 127.0.0.1
        port: 8002
        name: sim-1                         # optional, defaults to address:port
        metricsPort: 8002                   # optional, defaults to port
        labels:                             # optional
          inference.networking.k8s.io/engine-type: sglang

The file is watched by ``epp.datalayer.filewatch``: replace it by writing a new file and
renaming it over the old one (``mv pool.yaml.tmp pool.yaml``); a change written in place
is applied once it has settled, and never if it fails to parse: the pool keeps its last
good members.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from epp.datalayer.endpoint import EndpointMetadata, format_hostport
from epp.datalayer.filewatch import FileWatcher
from epp.datalayer.pool import EndpointPool
from epp.errors import ConfigError
from epp.yamlsafe import bounded_repr, shown
from epp.yamlsafe import load as load_yaml

__all__ = ["PoolFileWatcher", "parse_endpoint_list", "parse_hostport", "parse_pool_file"]

log = logging.getLogger(__name__)

_POOL_ENTRY_KEYS = frozenset({"address", "port", "name", "metricsPort", "labels"})


def parse_hostport(text: str, where: str) -> tuple[str, int]:
    """Split ``ip:port`` or ``[ipv6]:port``; the address must be an IP literal."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(where, "expected ADDRESS:PORT", shown(text))
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(where, "address must be an IP address (Envoy connects to it directly)", shown(text)) from None
    return host, _port(port_text, where)


def _port(value: Any, where: str) -> int:
    """A port from a pool entry: an integer (or its digits) in 1..65535; never a bool, NaN or infinity."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(where, "port must be an integer", shown(value))
    try:
        port = int(value)
    except ValueError:
        raise ConfigError(where, "port must be an integer", shown(value)) from None
    if not 0 < port < 65536:
        raise ConfigError(where, "port must be in 1..65535", shown(value))
    return port


def parse_endpoint_list(text: str) -> list[EndpointMetadata]:
    """Parse ``--endpoints`` (comma-separated ``ip:port``)."""
    members: dict[str, EndpointMetadata] = {}
    for i, item in enumerate(part for part in text.split(",") if part.strip()):
        address, port = parse_hostport(item, f"--endpoints[{i}]")
        name = format_hostport(address, port)
        if name in members:
            raise ConfigError(f"--endpoints[{i}]", "endpoint listed twice", shown(item))
        members[name] = EndpointMetadata(name=name, address=address, port=port, metrics_port=port)
    return list(members.values())


def _entry(raw: Any, where: str) -> EndpointMetadata:
    if isinstance(raw, str):
        address, port = parse_hostport(raw, where)
        return EndpointMetadata(name=format_hostport(address, port), address=address, port=port, metrics_port=port)
    if not isinstance(raw, Mapping):
        raise ConfigError(where, "expected ADDRESS:PORT or a mapping with address and port", shown(raw))
    unknown = [key for key in raw if key not in _POOL_ENTRY_KEYS]
    if unknown:
        key = unknown[0] if isinstance(unknown[0], str) and 0 < len(unknown[0]) <= 100 else bounded_repr(unknown[0])
        raise ConfigError(f"{where}.{key}", f"unknown field; allowed: {sorted(_POOL_ENTRY_KEYS)}")
    if "address" not in raw or "port" not in raw:
        raise ConfigError(where, "address and port are required")
    if not isinstance(raw["address"], str):
        raise ConfigError(f"{where}.address", "must be an IP address (Envoy connects to it directly)",
                          shown(raw["address"]))
    address = raw["address"].strip().strip("[]")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ConfigError(f"{where}.address", "must be an IP address (Envoy connects to it directly)",
                          shown(raw["address"])) from None
    port = _port(raw["port"], f"{where}.port")
    metrics_port = _port(raw.get("metricsPort", port), f"{where}.metricsPort")
    labels = raw.get("labels") or {}
    if not isinstance(labels, Mapping) or not all(isinstance(v, str) for v in labels.values()):
        raise ConfigError(f"{where}.labels", "labels must map strings to strings", shown(labels))
    name = raw.get("name") or format_hostport(address, port)
    if not isinstance(name, str):
        raise ConfigError(f"{where}.name", "name must be a string", shown(name))
    return EndpointMetadata(
        name=name, address=address, port=port, metrics_port=metrics_port,
        labels=MappingProxyType({str(k): v for k, v in labels.items()}),
    )


def parse_pool_file(text: str, source: str = "pool file") -> list[EndpointMetadata]:
    """Parse and validate pool file text; every failure is a ``ConfigError`` naming the entry and field."""
    doc = load_yaml(text, source)
    if doc is None:
        return []
    if not isinstance(doc, Mapping) or any(key != "endpoints" for key in doc):
        raise ConfigError(source, "expected a mapping with one key, 'endpoints'")
    entries = doc.get("endpoints") or []
    if not isinstance(entries, list):
        raise ConfigError(f"{source}.endpoints", "expected a list", shown(entries))
    members: list[EndpointMetadata] = []
    first_index: dict[str, int] = {}  # a dict, not list.count: 20,000 entries took 4.7 s quadratically
    for i, raw in enumerate(entries):
        where = f"{source}.endpoints[{i}]"
        member = _entry(raw, where)
        if member.name in first_index:
            raise ConfigError(where, f"duplicate endpoint name {bounded_repr(member.name)} "
                                     f"(first at endpoints[{first_index[member.name]}])")
        first_index[member.name] = i
        members.append(member)
    return members


_Signature = tuple[int, int, int]  # (mtime_ns, size, inode)


class PoolFileWatcher(FileWatcher[list[EndpointMetadata]]):
    """Keeps the pool equal to the pool file's contents (see ``epp.datalayer.filewatch``)."""

    def __init__(self, path: Path, pool: EndpointPool, poll_interval: float = 0.25) -> None:
        self.pool = pool
        super().__init__(path, "--pool-file", lambda text: parse_pool_file(text, str(path)), pool.replace_all,
                         lambda: f"{len(pool.endpoints())} endpoints", poll_interval)
