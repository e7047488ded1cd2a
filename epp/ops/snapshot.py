"""``epp snapshot``: the live state of a picker (admin API) or of a pool file, as one versioned document.

The document (``apiVersion: epp.dev/v1alpha1``, ``kind: Snapshot``)::

    metadata:     snapshot-timestamp (RFC 3339 UTC), snapshot-version, host, source, epp-version
    partial:      true when any collector failed
    measurements: one per collector, in a fixed order:
      - type: Endpoints | Metrics | Config | Versions | FlowControl
        status: ok | failed
        error: why it failed (only when failed)
        source: what was read (GET /debug/endpoints, a file, ...)
        subtypes:
          - subtype: an endpoint name, "picker", "effective", ...
            data: {key: {value: ..., type: int|float|bool|string|null, unit: ...}}

Collectors run concurrently, each under its own timeout. A collector that fails (an
HTTP error, a timeout, an unreadable file) is recorded as a failed measurement; the
command then exits non-zero unless ``--allow-partial`` is given, so a snapshot never
passes for complete when it is not.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from epp import __version__

__all__ = [
    "API_VERSION",
    "KIND",
    "AdminClient",
    "CollectError",
    "Collector",
    "Measurement",
    "Reading",
    "Snapshot",
    "Subtype",
    "admin_collectors",
    "collect",
    "flatten",
    "pool_file_collectors",
    "reading",
    "render",
    "take_snapshot",
]

API_VERSION = "epp.dev/v1alpha1"
KIND = "Snapshot"
# Each flattened subtype is bounded: a snapshot is for reading, not a dump of unbounded state.
MAX_READINGS_PER_SUBTYPE = 5000

Scalar = str | int | float | bool | None


class CollectError(Exception):
    """A collector could not read its source; the message is what the snapshot records."""


@dataclass(frozen=True, slots=True)
class Reading:
    """One typed value: ``type`` is int, float, bool, string or null; ``unit`` when it has one."""

    value: Scalar
    type: str
    unit: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "type": self.type}
        if self.unit:
            out["unit"] = self.unit
        return out


def reading(value: Any, unit: str | None = None) -> Reading:
    """A reading with its type taken from the value; anything not a scalar is written as a string."""
    if value is None:
        return Reading(None, "null", unit)
    if isinstance(value, bool):
        return Reading(value, "bool", unit)
    if isinstance(value, int):
        return Reading(value, "int", unit)
    if isinstance(value, float):
        # NaN and infinities are not JSON: kept visible as strings rather than dropped.
        return Reading(value, "float", unit) if math.isfinite(value) else Reading(str(value), "string", unit)
    return Reading(str(value), "string", unit)


def flatten(value: Any, prefix: str = "", units: Mapping[str, str] | None = None) -> dict[str, Reading]:
    """Nested mappings and lists as dotted keys (``a.b``, ``a[0].c``), each with a typed reading."""
    out: dict[str, Reading] = {}
    units = units or {}

    def walk(node: Any, key: str) -> None:
        if len(out) >= MAX_READINGS_PER_SUBTYPE:
            return
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, list | tuple):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]")
        else:
            out[key or "value"] = reading(node, units.get(key.rsplit(".", 1)[-1]))

    walk(value, prefix)
    return out


@dataclass(slots=True)
class Subtype:
    name: str
    data: dict[str, Reading]

    def as_dict(self) -> dict[str, Any]:
        return {"subtype": self.name, "data": {k: r.as_dict() for k, r in self.data.items()}}


@dataclass(slots=True)
class Measurement:
    type: str
    source: str
    subtypes: list[Subtype] = field(default_factory=list)
    error: str | None = None
    duration_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "status": "ok" if self.ok else "failed", "source": self.source}
        if self.error is not None:
            out["error"] = self.error
        out["durationSeconds"] = round(self.duration_seconds, 3)
        out["subtypes"] = [s.as_dict() for s in self.subtypes]
        return out


@dataclass(slots=True)
class Snapshot:
    metadata: dict[str, str]
    measurements: list[Measurement]

    @property
    def failed(self) -> list[Measurement]:
        return [m for m in self.measurements if not m.ok]

    @property
    def partial(self) -> bool:
        return bool(self.failed)

    def as_dict(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": KIND, "metadata": dict(self.metadata), "partial": self.partial,
                "measurements": [m.as_dict() for m in self.measurements]}


@dataclass(frozen=True, slots=True)
class Collector:
    """One measurement type, read from ``source`` by ``run``."""

    type: str
    source: str
    run: Callable[[], Awaitable[list[Subtype]]]


async def collect(collectors: Sequence[Collector], timeout: float,
                  clock: Callable[[], float] = time.monotonic) -> list[Measurement]:
    """Run every collector concurrently, each under ``timeout`` seconds; failures become failed measurements."""

    async def one(collector: Collector) -> Measurement:
        started = clock()
        measurement = Measurement(collector.type, collector.source)
        try:
            measurement.subtypes = await asyncio.wait_for(collector.run(), timeout)
        except TimeoutError:
            measurement.error = f"timed out after {timeout:g}s"
        except CollectError as exc:
            measurement.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - any collector bug is a failed measurement, never a crash
            measurement.error = f"{type(exc).__name__}: {exc}"
        measurement.duration_seconds = max(0.0, clock() - started)
        return measurement

    return list(await asyncio.gather(*(one(c) for c in collectors)))


async def take_snapshot(source: str, collectors: Sequence[Collector], timeout: float = 10.0,
                        now: Callable[[], datetime] | None = None, host: str | None = None) -> Snapshot:
    measurements = await collect(collectors, timeout)
    stamp = (now or (lambda: datetime.now(UTC)))().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    metadata = {"snapshot-timestamp": stamp, "snapshot-version": API_VERSION.rsplit("/", 1)[-1],
                "host": host if host is not None else socket.gethostname(), "source": source,
                "epp-version": __version__}
    return Snapshot(metadata, measurements)


# --- the admin API ---------------------------------------------------------------------------


class AdminClient:
    """GETs against a picker's admin server; each path is fetched at most once per snapshot."""

    def __init__(self, base_url: str, token: str | None = None, request_timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._request_timeout = request_timeout
        self._session: Any = None
        self._fetches: dict[str, asyncio.Task[tuple[str, str]]] = {}

    async def __aenter__(self) -> AdminClient:
        import aiohttp

        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._request_timeout))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._fetches.values():
            task.cancel()
        await asyncio.gather(*self._fetches.values(), return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def text(self, path: str) -> tuple[str, str]:
        """The body and content type of ``GET path``; any answer but 200 is a ``CollectError``."""
        task = self._fetches.get(path)
        if task is None:
            task = self._fetches[path] = asyncio.create_task(self._get(path))
        # Shielded: one collector timing out must not cancel a fetch another collector shares.
        return await asyncio.shield(task)

    async def json(self, path: str) -> Any:
        body, _ = await self.text(path)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise CollectError(f"GET {path}: not JSON ({exc})") from None

    async def _get(self, path: str) -> tuple[str, str]:
        import aiohttp

        assert self._session is not None, "use AdminClient as an async context manager"
        try:
            async with self._session.get(self.base_url + path, headers=self._headers) as response:
                body = await response.text()
                if response.status == 401:
                    raise CollectError(f"GET {path}: 401 unauthorized (give the admin token with --token-file)")
                if response.status == 404:
                    raise CollectError(f"GET {path}: 404 not found (this picker does not serve it)")
                if response.status != 200:
                    raise CollectError(f"GET {path}: HTTP {response.status}: {body[:200].strip()}")
                return body, response.headers.get("Content-Type", "")
        except aiohttp.ClientError as exc:
            raise CollectError(f"GET {path}: {type(exc).__name__}: {exc}") from None


_METRIC_UNITS = {"waitingQueueSize": "requests", "runningRequestsSize": "requests", "kvCacheUsagePercent": "ratio",
                 "maxActiveModels": "adapters", "cacheBlockSize": "tokens", "cacheNumBlocks": "blocks",
                 "ageSeconds": "seconds"}


def _endpoint_list(doc: Any) -> list[Mapping[str, Any]]:
    endpoints = doc.get("endpoints") if isinstance(doc, Mapping) else None
    if not isinstance(endpoints, list):
        raise CollectError("GET /debug/endpoints: no 'endpoints' list in the answer")
    return [e for e in endpoints if isinstance(e, Mapping)]


def admin_collectors(client: AdminClient) -> list[Collector]:
    """Endpoints, Metrics, Config, Versions and FlowControl from a running picker."""

    async def endpoints() -> list[Subtype]:
        out = []
        for ep in _endpoint_list(await client.json("/debug/endpoints")):
            data = {"address": reading(ep.get("address")), "ready": reading(ep.get("ready"))}
            for key, value in sorted((ep.get("labels") or {}).items()):
                data[f"label.{key}"] = reading(value)
            data.update(flatten(ep.get("scrape") or {}, "scrape"))
            data.update(flatten(ep.get("passiveHealth") or {}, "passiveHealth"))
            out.append(Subtype(str(ep.get("name")), data))
        return out

    async def metrics() -> list[Subtype]:
        out = []
        for ep in _endpoint_list(await client.json("/debug/endpoints")):
            data = flatten(ep.get("metrics") or {}, "", _METRIC_UNITS)
            for key, custom in sorted((ep.get("custom") or {}).items()):
                data.update(flatten(custom, f"custom.{key}", _METRIC_UNITS))
            out.append(Subtype(str(ep.get("name")), data))
        return out

    async def config() -> list[Subtype]:
        body, content_type = await client.text("/debug/config")
        return config_subtypes(body, content_type)

    async def versions() -> list[Subtype]:
        body, _ = await client.text("/metrics")
        return [Subtype("picker", picker_versions(body)), local_versions()]

    async def flow_control() -> list[Subtype]:
        return [Subtype("state", flatten(await client.json("/debug/flowcontrol")))]

    base = client.base_url
    return [
        Collector("Endpoints", f"GET {base}/debug/endpoints", endpoints),
        Collector("Metrics", f"GET {base}/debug/endpoints", metrics),
        Collector("Config", f"GET {base}/debug/config", config),
        Collector("Versions", f"GET {base}/metrics", versions),
        Collector("FlowControl", f"GET {base}/debug/flowcontrol", flow_control),
    ]


def config_subtypes(body: str, content_type: str) -> list[Subtype]:
    """``/debug/config``: an EndpointPickerConfig is one ``effective`` subtype; else one subtype per top-level key."""
    from epp.errors import ConfigError
    from epp.yamlsafe import load as load_yaml

    try:
        doc = json.loads(body) if "json" in content_type else load_yaml(body, "/debug/config")
    except (ValueError, ConfigError) as exc:
        raise CollectError(f"GET /debug/config: unreadable answer ({exc})") from None
    if not isinstance(doc, Mapping):
        raise CollectError("GET /debug/config: expected a mapping")
    if "plugins" in doc or "kind" in doc:
        return [Subtype("effective", flatten(doc))]
    subtypes = []
    scalars = {k: v for k, v in doc.items() if not isinstance(v, Mapping | list)}
    if scalars:
        subtypes.append(Subtype("effective", flatten(scalars)))
    for key, value in doc.items():
        if isinstance(value, Mapping | list):
            subtypes.append(Subtype(str(key), flatten(value)))
    return subtypes


def picker_versions(metrics_page: str) -> dict[str, Reading]:
    """The labels of ``inference_extension_info`` on the picker's ``/metrics`` page."""
    from epp.datalayer.promtext import parse_series

    samples = parse_series(metrics_page, ["inference_extension_info"]).get("inference_extension_info", [])
    if not samples:
        raise CollectError("GET /metrics: no inference_extension_info series")
    return {key: reading(value) for key, value in sorted(samples[0].labels.items())}


def local_versions() -> Subtype:
    import platform

    return Subtype("cli", {"eppVersion": reading(__version__), "python": reading(platform.python_version())})


# --- a pool file -----------------------------------------------------------------------------


def pool_file_collectors(path: Path) -> list[Collector]:
    """The endpoints a pool file declares (as ``epp serve --pool-file`` would read them), and versions."""

    async def endpoints() -> list[Subtype]:
        from epp.datalayer.poolsource import parse_pool_file
        from epp.errors import ConfigError

        try:
            text = path.read_text()
        except OSError as exc:
            raise CollectError(f"cannot read {path}: {exc.strerror}") from None
        try:
            members = parse_pool_file(text, str(path))
        except ConfigError as exc:
            raise CollectError(str(exc)) from None
        out = []
        for m in members:
            data = {"address": reading(m.hostport), "metricsAddress": reading(m.metrics_hostport)}
            for key, value in sorted(m.labels.items()):
                data[f"label.{key}"] = reading(value)
            out.append(Subtype(m.name, data))
        return out

    async def versions() -> list[Subtype]:
        return [local_versions()]

    return [Collector("Endpoints", f"file {path}", endpoints), Collector("Versions", "epp package", versions)]


# --- output ----------------------------------------------------------------------------------


def render(snapshot: Snapshot, fmt: str) -> str:
    """``yaml`` (default), ``json`` or ``table``."""
    doc = snapshot.as_dict()
    if fmt == "json":
        return json.dumps(doc, indent=2, allow_nan=False) + "\n"
    if fmt == "table":
        return _table(snapshot)
    return str(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


def _table(snapshot: Snapshot) -> str:
    rows = [("TYPE", "SUBTYPE", "KEY", "VALUE", "UNIT")]
    for m in snapshot.measurements:
        if not m.ok:
            rows.append((m.type, "-", "FAILED", m.error or "", ""))
        for s in m.subtypes:
            for key, r in s.data.items():
                rows.append((m.type, s.name, key, "null" if r.value is None else str(r.value), r.unit or ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row)).rstrip()
             for row in rows]
    header = [f"# {k}: {v}" for k, v in snapshot.metadata.items()]
    if snapshot.partial:
        header.append(f"# PARTIAL: {len(snapshot.failed)} collector(s) failed")
    return "\n".join(header + lines) + "\n"
