"""``json-file-source`` and ``json-metric``: route on numbers a local JSON file reports.

The non-HTTP data source: a node agent, a cron job or an operator writes per-endpoint
numbers to a file, and ``json-metric`` copies one of them into ``Endpoint.custom`` for
``metric-scorer``, as ``prometheus-metric`` does from the scrape.

``json-file-source`` parameters (exactly one of ``path`` and ``pathTemplate``):

- ``path``: one file for the whole pool, a JSON object keyed by endpoint name or, failing
  that, by ``ip:port`` (``[v6]:port``), each entry a flat object of numbers::

      {"10.0.0.1:8000": {"backlog": 3, "temp": 61.5}, "pod-b": {"backlog": 0}}

- ``pathTemplate``: one file per endpoint, the path with ``{name}``, ``{address}`` and
  ``{port}`` replaced; the file is that endpoint's flat object. A substituted value holding
  ``/`` or being ``.``/``..`` is refused, so an endpoint name cannot reach another directory.
- ``maxBytes`` (default 1 MiB): a larger file is refused with an error, not read.
- ``maxAge`` (a duration, default unset): a file not modified for longer is an error, so a
  writer that died shows up as stale values instead of frozen ones being re-stamped fresh.

Reading: every tick stats the file (one ``stat`` per endpoint per tick); it is read and
parsed, off the event loop, only when its inode, size or mtime changed, and one read per
change serves every endpoint of a shared file. Writers should replace the file
atomically (write a temporary file, then rename it over the old one): that changes the
inode, so an edit within the file system's mtime granularity is still seen, and a reader
never sees half a file.

Errors: a missing, oversized, unreadable or malformed file (including NaN, Infinity and
numbers beyond a double, which strict JSON refuses), or no entry for the endpoint, fails
the collect. The collector then keeps the endpoint's values with their old update times
and logs the failure once per transition, as for a failed HTTP scrape. A malformed file
is parsed once per change, not once per tick. Like any failed collect, it counts toward
the collector's ``unready_after``: a file that stays broken (or lacks an endpoint's entry)
takes the endpoints it covers out of rotation. A field missing from an entry that exists
is only an extraction error, which leaves readiness alone.

The output type is ``JsonValues``, which only JSON extractors read: wiring
``core-metrics-extractor`` or ``prometheus-metric`` under this source fails at start.

``json-metric`` parameters: ``key`` (the field in the endpoint's object, required) and
``customKey`` (the key in ``Endpoint.custom``, default ``key``). A missing field or one
that is not a finite number (a string, a boolean, an object) raises ``JsonValueError``
and keeps the old value with its old update time, so scorers see it go stale.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from epp.datalayer.endpoint import CustomValue, Endpoint
from epp.errors import bounded_repr
from epp.framework.datalayer import Extractor
from epp.framework.params import Duration, finite_float, require
from epp.framework.plugin import BasePlugin, Handle

__all__ = [
    "FileSourceError",
    "JsonFileSource",
    "JsonFileSourceParams",
    "JsonMetricExtractor",
    "JsonMetricParams",
    "JsonValueError",
    "JsonValues",
]

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_PLACEHOLDERS = frozenset({"name", "address", "port"})
_MAX_BYTES_LIMIT = 64 << 20
# Template mode keeps one parsed file per endpoint; endpoints that left the pool must not
# pin theirs forever.
_CACHE_LIMIT = 4096


class JsonValues(dict[str, Any]):
    """One endpoint's flat object of values, as read from the file."""


class FileSourceError(Exception):
    """The file could not be read or parsed, or holds no entry for the endpoint."""


class JsonValueError(Exception):
    """The endpoint's object lacks the field, or it is not a finite number."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JsonFileSourceParams:
    path: str = ""
    path_template: str = ""
    max_bytes: int = 1 << 20
    max_age: Duration | None = None

    def __post_init__(self) -> None:
        require(bool(self.path) != bool(self.path_template), "path",
                "give exactly one of path and pathTemplate", self.path or self.path_template)
        if self.path_template:
            names = _PLACEHOLDER.findall(self.path_template)
            require(bool(names), "path_template", "must hold {name}, {address} or {port}; use path for one file",
                    self.path_template)
            unknown = [n for n in names if n not in _PLACEHOLDERS]
            require(not unknown, "path_template", "only {name}, {address} and {port} can be substituted",
                    self.path_template)
        require(0 < self.max_bytes <= _MAX_BYTES_LIMIT, "max_bytes", f"must be between 1 and {_MAX_BYTES_LIMIT}",
                self.max_bytes)
        require(self.max_age is None or self.max_age > 0, "max_age", "must be greater than 0", self.max_age)


@dataclass(frozen=True, slots=True)
class _Snapshot:
    stamp: tuple[int, int, int]  # (inode, size, mtime ns): a change in any means a new file
    document: dict[str, Any] | None
    error: str


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _load(path: str, max_bytes: int) -> _Snapshot:
    """Read and parse ``path`` (in a worker thread); errors are kept so a bad file is parsed once."""
    try:
        with open(path, "rb") as f:
            # The stamp of what is actually read: the file may have been replaced since the stat.
            stamp = _stamp(os.fstat(f.fileno()))
            payload = f.read(max_bytes + 1)
    except OSError as exc:
        return _Snapshot((0, 0, 0), None, f"{path}: {exc.strerror or exc}")
    if len(payload) > max_bytes:
        return _Snapshot(stamp, None, f"{path}: larger than maxBytes ({max_bytes} bytes); not read")
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return _Snapshot(stamp, None, f"{path}: malformed JSON: {exc}")
    if not isinstance(document, dict):
        return _Snapshot(stamp, None, f"{path}: expected a JSON object, got {type(document).__name__}")
    return _Snapshot(stamp, document, "")


class JsonFileSource(BasePlugin):
    """Reads per-endpoint JSON values from a local file, re-reading it only when it changed."""

    TYPE = "json-file-source"
    PARAMS = JsonFileSourceParams
    params: JsonFileSourceParams

    def __init__(self, name: str, params: JsonFileSourceParams | None, handle: Handle,
                 wall_clock: Callable[[], float] = time.time) -> None:
        if params is None:
            raise TypeError("json-file-source needs parameters (path or pathTemplate)")
        super().__init__(name, params, handle)
        self._extractors: list[Extractor] = []
        self._cache: dict[str, _Snapshot] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._wall_clock = wall_clock  # mtimes are wall-clock times

    def output_type(self) -> type:
        return JsonValues

    def bind_extractors(self, extractors: list[Extractor]) -> None:
        self._extractors = list(extractors)

    def path_for(self, endpoint: Endpoint) -> str:
        if self.params.path:
            return self.params.path
        meta = endpoint.metadata
        values = {"name": meta.name, "address": meta.address, "port": str(meta.port)}
        for key, value in values.items():
            if "/" in value or "\0" in value or value in ("", ".", ".."):
                raise FileSourceError(f"endpoint {endpoint.name}: {{{key}}} = {bounded_repr(value)} "
                                      "cannot be part of a file name")
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.params.path_template)

    async def collect(self, endpoint: Endpoint) -> JsonValues:
        path = self.path_for(endpoint)
        document = await self._document(path)
        if self.params.path_template:
            return JsonValues(document)
        entry = document.get(endpoint.name)
        if entry is None:
            entry = document.get(endpoint.metadata.hostport)
        if entry is None:
            raise FileSourceError(f"{path}: no entry for endpoint {bounded_repr(endpoint.name)} "
                                  f"or {bounded_repr(endpoint.metadata.hostport)}")
        if not isinstance(entry, dict):
            raise FileSourceError(f"{path}: entry of {bounded_repr(endpoint.name)} is not an object")
        return JsonValues(entry)

    async def _document(self, path: str) -> dict[str, Any]:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise FileSourceError(f"{path}: {exc.strerror or exc}") from exc
        if st.st_size > self.params.max_bytes:
            raise FileSourceError(f"{path}: larger than maxBytes ({self.params.max_bytes} bytes); not read")
        if self.params.max_age is not None:
            age = self._wall_clock() - st.st_mtime
            if age > self.params.max_age:
                raise FileSourceError(f"{path}: not modified for {age:.1f}s (maxAge {self.params.max_age:g}s)")
        stamp = _stamp(st)
        snapshot = self._cache.get(path)
        if snapshot is None or snapshot.stamp != stamp:
            # One read per change even when every endpoint of a shared file sees it at once.
            lock = self._locks.setdefault(path, asyncio.Lock())
            async with lock:
                snapshot = self._cache.get(path)
                if snapshot is None or snapshot.stamp != stamp:
                    snapshot = await asyncio.to_thread(_load, path, self.params.max_bytes)
                    self._remember(path, snapshot)
        if snapshot.document is None:
            raise FileSourceError(snapshot.error)
        return snapshot.document

    def _remember(self, path: str, snapshot: _Snapshot) -> None:
        self._cache.pop(path, None)  # re-inserted last: the oldest entry is the first evicted
        self._cache[path] = snapshot
        while len(self._cache) > _CACHE_LIMIT:
            oldest = next(iter(self._cache))
            del self._cache[oldest]
            lock = self._locks.get(oldest)
            if lock is not None and not lock.locked():
                del self._locks[oldest]

    async def aclose(self) -> None:
        self._cache.clear()
        self._locks.clear()


@dataclass(frozen=True, slots=True, kw_only=True)
class JsonMetricParams:
    key: str
    custom_key: str = ""  # empty: the key

    def __post_init__(self) -> None:
        require(bool(self.key), "key", "must not be empty", self.key)

    @property
    def target(self) -> str:
        return self.custom_key or self.key


class JsonMetricExtractor(BasePlugin):
    """Copies one numeric field of the endpoint's JSON values into its custom metrics."""

    TYPE = "json-metric"
    PARAMS = JsonMetricParams
    params: JsonMetricParams

    def __init__(self, name: str, params: JsonMetricParams | None, handle: Handle,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if params is None:
            raise TypeError("json-metric needs parameters (key)")
        super().__init__(name, params, handle)
        self._clock = clock

    @property
    def key(self) -> str:
        return self.params.target

    def input_type(self) -> type:
        return JsonValues

    def extract(self, data: Any, endpoint: Endpoint) -> None:
        if self.params.key not in data:
            raise JsonValueError(f"no field {bounded_repr(self.params.key)} in the endpoint's values")
        raw = data[self.params.key]
        value = finite_float(raw)
        if value is None:
            raise JsonValueError(f"field {bounded_repr(self.params.key)} is {bounded_repr(raw)}, "
                                 "not a finite number")
        endpoint.custom[self.key] = CustomValue(value, self._clock())
