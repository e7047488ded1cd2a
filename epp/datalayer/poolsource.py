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

The file is polled (``stat`` every ``poll_interval``); when it changes it is re-read and
the pool is replaced. A file that fails to parse after start-up is logged and ignored:
the pool keeps its last good members rather than dropping to nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from epp.datalayer.endpoint import EndpointMetadata, format_hostport
from epp.datalayer.pool import EndpointPool
from epp.errors import ConfigError

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
        raise ConfigError(where, "expected ADDRESS:PORT", text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(where, "address must be an IP address (Envoy connects to it directly)", text) from None
    return host, _port(port_text, where)


def _port(value: Any, where: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigError(where, "port must be an integer", value) from None
    if isinstance(value, bool) or not 0 < port < 65536:
        raise ConfigError(where, "port must be in 1..65535", value)
    return port


def parse_endpoint_list(text: str) -> list[EndpointMetadata]:
    """Parse ``--endpoints`` (comma-separated ``ip:port``)."""
    members: dict[str, EndpointMetadata] = {}
    for i, item in enumerate(part for part in text.split(",") if part.strip()):
        address, port = parse_hostport(item, f"--endpoints[{i}]")
        name = format_hostport(address, port)
        if name in members:
            raise ConfigError(f"--endpoints[{i}]", "endpoint listed twice", item)
        members[name] = EndpointMetadata(name=name, address=address, port=port, metrics_port=port)
    return list(members.values())


def _entry(raw: Any, where: str) -> EndpointMetadata:
    if isinstance(raw, str):
        address, port = parse_hostport(raw, where)
        return EndpointMetadata(name=format_hostport(address, port), address=address, port=port, metrics_port=port)
    if not isinstance(raw, Mapping):
        raise ConfigError(where, "expected ADDRESS:PORT or a mapping with address and port", raw)
    unknown = set(raw) - _POOL_ENTRY_KEYS
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}", f"unknown field; allowed: {sorted(_POOL_ENTRY_KEYS)}")
    if "address" not in raw or "port" not in raw:
        raise ConfigError(where, "address and port are required")
    address = str(raw["address"]).strip().strip("[]")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ConfigError(f"{where}.address", "must be an IP address (Envoy connects to it directly)",
                          raw["address"]) from None
    port = _port(raw["port"], f"{where}.port")
    metrics_port = _port(raw.get("metricsPort", port), f"{where}.metricsPort")
    labels = raw.get("labels") or {}
    if not isinstance(labels, Mapping) or not all(isinstance(v, str) for v in labels.values()):
        raise ConfigError(f"{where}.labels", "labels must map strings to strings", labels)
    name = raw.get("name") or format_hostport(address, port)
    if not isinstance(name, str):
        raise ConfigError(f"{where}.name", "name must be a string", name)
    return EndpointMetadata(
        name=name, address=address, port=port, metrics_port=metrics_port,
        labels=MappingProxyType({str(k): v for k, v in labels.items()}),
    )


def parse_pool_file(text: str, source: str = "pool file") -> list[EndpointMetadata]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, f"not valid YAML: {exc}") from exc
    if doc is None:
        return []
    if not isinstance(doc, Mapping) or set(doc) - {"endpoints"}:
        raise ConfigError(source, "expected a mapping with one key, 'endpoints'")
    entries = doc.get("endpoints") or []
    if not isinstance(entries, list):
        raise ConfigError(f"{source}.endpoints", "expected a list")
    members = [_entry(raw, f"{source}.endpoints[{i}]") for i, raw in enumerate(entries)]
    names = [m.name for m in members]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{source}.endpoints", f"duplicate endpoint name {duplicates[0]!r}")
    return members


class PoolFileWatcher:
    """Keeps the pool equal to the pool file's contents."""

    def __init__(self, path: Path, pool: EndpointPool, poll_interval: float = 0.25) -> None:
        self.path = path
        self.pool = pool
        self.poll_interval = poll_interval
        self._seen: tuple[int, int, int] | None = None

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def load(self) -> None:
        """Read the file now; raises ``ConfigError`` when it is missing or invalid."""
        self._seen = self._signature()
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise ConfigError("--pool-file", f"cannot read {self.path}: {exc.strerror}") from exc
        self.pool.replace_all(parse_pool_file(text, str(self.path)))

    async def watch(self) -> None:
        """Poll for changes until cancelled; a failed reload keeps the current pool."""
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                if self._signature() == self._seen:
                    continue
                self.load()
            except ConfigError as exc:
                log.error("pool file change ignored, keeping %d endpoints: %s", len(self.pool.endpoints()), exc)
            except Exception:  # noqa: BLE001 - e.g. a permission error; keep watching
                log.exception("pool file %s: reload failed, keeping %d endpoints", self.path,
                              len(self.pool.endpoints()))
            else:
                log.info("pool file reloaded: %d endpoints", len(self.pool.endpoints()))
