"""``--kv-events`` / ``--kv-events-config``: where and how a replica publishes KV-cache events.

``KVEventsSettings`` mirrors vLLM's ``KVEventsConfig`` (``vllm/config/kv_events.py``): the same
field names and defaults, parsed from the same JSON. ``--kv-events tcp://HOST:PORT`` is the
simulator's shorthand for a publisher that binds ``HOST:PORT`` (vLLM only binds when the
endpoint holds ``*``, ``::``, ``ipc://`` or ``inproc://``, and connects otherwise; the
shorthand always binds, which is what a subscriber in "connect" mode needs).

Several replicas in one process: replica ``i`` binds its PUB and ROUTER endpoints at the given
port plus ``i``, vLLM's rule for data-parallel ranks (``ZmqEventPublisher.offset_endpoint_port``).
A PUB endpoint that connects (to a subscriber in "bind" mode) is shared by every replica; its
``topic`` may hold ``{host}``, ``{port}``, ``{model}`` and ``{replica}`` so each replica's
batches can be told apart (e.g. llm-d's ``kv@{host}:{port}@{model}``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from typing import Any

from epp.errors import ConfigError

__all__ = ["KVEventsSettings", "offset_port", "parse_kv_events"]

_FIELDS = ("enable_kv_cache_events", "publisher", "endpoint", "replay_endpoint", "buffer_steps", "hwm",
           "max_queue_size", "topic")


@dataclass(frozen=True, slots=True, kw_only=True)
class KVEventsSettings:
    """vLLM's ``KVEventsConfig`` fields and defaults, plus whether the PUB socket binds."""

    enable_kv_cache_events: bool = False
    publisher: str = "null"  # vLLM: "zmq" when enabled and unset
    endpoint: str = "tcp://*:5557"
    replay_endpoint: str | None = None
    buffer_steps: int = 10_000  # batches kept for replay
    hwm: int = 100_000  # ZeroMQ send high-water mark of the PUB socket
    max_queue_size: int = 100_000  # batches waiting for the publisher thread
    topic: str = ""
    bind: bool = True  # derived from the endpoint by vLLM's rule, or forced by --kv-events

    @property
    def active(self) -> bool:
        return self.enable_kv_cache_events and self.publisher == "zmq"

    def for_replica(self, index: int, *, host: str, port: int, model: str) -> KVEventsSettings:
        """This replica's endpoints (bound ones offset by ``index``) and topic."""
        endpoint = offset_port(self.endpoint, index) if self.bind else self.endpoint
        replay = offset_port(self.replay_endpoint, index) if self.replay_endpoint else None
        topic = self.topic.format(host=host, port=port, model=model, replica=index) if "{" in self.topic \
            else self.topic
        return replace(self, endpoint=endpoint, replay_endpoint=replay, topic=topic)


def _binds(endpoint: str) -> bool:
    """vLLM's heuristic: bind a stable wildcard or local address, connect to anything else."""
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


def offset_port(endpoint: str, offset: int) -> str:
    """``tcp://h:5557`` + 2 -> ``tcp://h:5559``; ``ipc``/``inproc`` endpoints get a ``_dpN`` suffix."""
    if offset == 0:
        return endpoint
    if not endpoint.startswith("tcp://"):
        return f"{endpoint}_dp{offset}"
    base, _, port = endpoint.rpartition(":")
    if not port.isdigit():
        raise ConfigError("kv_events", "a tcp endpoint needs a numeric port for --replicas > 1", endpoint)
    return f"{base}:{int(port) + offset}"


def _check_tcp(endpoint: str, name: str) -> None:
    if endpoint.startswith("tcp://"):
        _, _, port = endpoint.rpartition(":")
        if not port.isdigit() and port != "*":
            raise ConfigError(name, "expected tcp://HOST:PORT", endpoint)
    elif not endpoint.startswith(("ipc://", "inproc://")):
        raise ConfigError(name, "expected a tcp://, ipc:// or inproc:// endpoint", endpoint)


def parse_kv_events(shorthand: str | None, config_json: str | None) -> KVEventsSettings | None:
    """Settings from the two flags (None: no events). Both flags together are an error.

    Raises:
        ConfigError: malformed JSON, unknown fields, wrong types or endpoints.
    """
    if shorthand and config_json:
        raise ConfigError("kv_events", "give --kv-events or --kv-events-config, not both", shorthand)
    if shorthand:
        _check_tcp(shorthand, "kv_events")
        return KVEventsSettings(enable_kv_cache_events=True, publisher="zmq", endpoint=shorthand, bind=True)
    if not config_json:
        return None
    try:
        data: Any = json.loads(config_json)
    except ValueError as exc:
        raise ConfigError("kv_events_config", f"not JSON: {exc}", config_json) from exc
    if not isinstance(data, dict):
        raise ConfigError("kv_events_config", "expected a JSON object", config_json)
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConfigError("kv_events_config", f"unknown fields {unknown}; known: {list(_FIELDS)}", config_json)
    defaults = {f.name: f.default for f in fields(KVEventsSettings)}
    for key, value in data.items():
        expected = type(defaults[key]) if defaults[key] is not None else str
        if value is None and key in ("replay_endpoint", "publisher"):
            continue
        if isinstance(value, bool) is not (expected is bool) or not isinstance(value, expected):
            raise ConfigError("kv_events_config", f"{key} must be a {expected.__name__}", value)
    enabled = bool(data.get("enable_kv_cache_events", False))
    publisher = data.get("publisher") or ("zmq" if enabled else "null")
    if publisher not in ("zmq", "null"):
        raise ConfigError("kv_events_config", 'publisher must be "zmq" or "null"', publisher)
    for key in ("buffer_steps", "hwm", "max_queue_size"):
        if data.get(key, 1) < 1:
            raise ConfigError("kv_events_config", f"{key} must be >= 1", data[key])
    endpoint = data.get("endpoint", defaults["endpoint"])
    _check_tcp(endpoint, "kv_events_config")
    if data.get("replay_endpoint"):
        _check_tcp(data["replay_endpoint"], "kv_events_config")
    settings = {k: v for k, v in data.items() if k != "publisher"}
    return KVEventsSettings(**settings, publisher=publisher, bind=_binds(endpoint))
