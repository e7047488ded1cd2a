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

The file is polled (``stat`` every ``poll_interval``). Replace it by writing a new file
and renaming it over the old one (``mv pool.yaml.tmp pool.yaml``): a rename is atomic, so
the watcher never sees a half-written file. Written in place, a change is applied only
once the file has been seen unchanged (same mtime, size, inode and content hash) on two
consecutive polls, and never if it fails to parse: the pool keeps its last good members.
Reading and parsing run in a worker thread, so a large or slow file never stalls streams.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from epp.datalayer.endpoint import EndpointMetadata, format_hostport
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


class PoolFileWatcher:
    """Keeps the pool equal to the pool file's contents.

    Replace the file by write-then-rename; a file written in place is applied only after
    two consecutive polls saw the same signature and content hash, and a file that fails
    to parse is never applied (see the module docstring).
    """

    def __init__(self, path: Path, pool: EndpointPool, poll_interval: float = 0.25) -> None:
        self.path = path
        self.pool = pool
        self.poll_interval = poll_interval
        # Signature of the content last applied, or last refused: nothing to do until it changes.
        self._settled: _Signature | None = None
        self._applied_digest: bytes | None = None
        # What the previous poll saw of a changed file; applied when the next poll sees the same.
        self._pending: tuple[_Signature | None, bytes] | None = None

    def _signature(self) -> _Signature | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise ConfigError("--pool-file", f"cannot read {self.path}: {exc.strerror}") from exc

    def _parse(self, data: bytes) -> list[EndpointMetadata]:
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            raise ConfigError(str(self.path), f"not UTF-8 at byte {exc.start}") from None
        return parse_pool_file(text, str(self.path))

    def load(self) -> None:
        """Read the file now and apply it; raises ``ConfigError`` when it is missing or invalid."""
        signature = self._signature()
        data = self._read()
        self.pool.replace_all(self._parse(data))
        self._settled, self._applied_digest, self._pending = signature, hashlib.sha256(data).digest(), None

    def _check(self) -> list[EndpointMetadata] | None:
        """One poll, off the event loop: the members to apply now, or ``None``.

        Raises ``ConfigError`` for a changed file that settled but cannot be read or parsed.
        """
        signature = self._signature()
        if signature == self._settled:
            return None
        try:
            data = self._read()
        except ConfigError:
            self._settled = signature  # report a missing file once, not every poll
            raise
        digest = hashlib.sha256(data).digest()
        if digest == self._applied_digest:  # touched, or rewritten with the same bytes
            self._settled, self._pending = signature, None
            return None
        if self._pending != (signature, digest):
            self._pending = (signature, digest)  # maybe still being written: wait for the next poll
            return None
        self._settled, self._pending = signature, None
        members = self._parse(data)
        self._applied_digest = digest
        return members

    async def poll(self) -> bool:
        """Check the file once and apply a settled change; ``True`` when the pool was replaced."""
        try:
            members = await asyncio.to_thread(self._check)
        except ConfigError as exc:
            log.error("pool file change ignored, keeping %d endpoints: %s", len(self.pool.endpoints()), exc)
            return False
        if members is None:
            return False
        self.pool.replace_all(members)
        log.info("pool file reloaded: %d endpoints", len(self.pool.endpoints()))
        return True

    async def watch(self) -> None:
        """Poll for changes until cancelled; a failed reload keeps the current pool."""
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.poll()
            except Exception:  # noqa: BLE001 - e.g. a permission error; keep watching
                log.exception("pool file %s: reload failed, keeping %d endpoints", self.path,
                              len(self.pool.endpoints()))
