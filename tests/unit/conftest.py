"""Small factories for unit tests: endpoints, requests, handles and plugins built for real.

Each factory is a fixture returning a function (``make_endpoint("a", waiting_queue_size=3)``),
so test modules need no imports from here.

Plugins are always built through the in-tree registry (``Registry.create``), the same
path the config loader uses, so a test exercises the real constructor and parameter
decoding. Randomness comes from a seeded ``random.Random`` on the handle.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import pytest

from epp.datalayer.endpoint import Endpoint, EndpointMetadata, Metrics
from epp.datalayer.pool import EndpointPool
from epp.framework.plugin import BasePlugin, Handle
from epp.framework.registry import Registry
from epp.framework.scheduling import ProfileRunResult, SchedulingResult
from epp.plugins import default_registry
from epp.requests.types import ApiKind, InferenceRequest

SEED = 1


def endpoint(
    name: str,
    *,
    address: str | None = None,
    port: int = 8000,
    labels: Mapping[str, str] | None = None,
    **metrics: Any,
) -> Endpoint:
    """An endpoint named ``name``; ``metrics`` are ``Metrics`` fields (``waiting_queue_size=3``)."""
    meta = EndpointMetadata(name, address or "10.0.0.1", port, port, MappingProxyType(dict(labels or {})))
    ep = Endpoint(meta)
    ep.metrics = Metrics(**metrics)
    return ep


def request(
    prompt: bytes = b"",
    *,
    model: str = "m",
    target_model: str | None = None,
    body: dict[str, Any] | None = None,
    raw_body: bytes | None = None,
    cache_salt: str = "",
    request_id: str = "req-1",
) -> InferenceRequest:
    body = {"model": model, "prompt": prompt.decode()} if body is None else body
    return InferenceRequest(
        request_id=request_id, api=ApiKind.COMPLETIONS, path="/v1/completions", model=model,
        target_model=target_model or model, body=body, raw_body=raw_body if raw_body is not None else b"{}",
        stream=False, headers={}, cache_salt=cache_salt, prompt=prompt,
    )


def routed_to(*endpoints: Endpoint, profile: str = "default", **others: Endpoint) -> SchedulingResult:
    """A scheduling result whose primary profile chose ``endpoints`` (plus one endpoint per extra profile)."""
    results: dict[str, ProfileRunResult | None] = {profile: ProfileRunResult(list(endpoints))}
    results.update({name: ProfileRunResult([ep]) for name, ep in others.items()})
    return SchedulingResult(profile_results=results, primary_profile=profile)


def new_handle(seed: int = SEED, pool: EndpointPool | None = None) -> Handle:
    return Handle(pool=pool or EndpointPool(), rng=random.Random(seed))


PluginFactory = Callable[..., Any]


@pytest.fixture
def make_endpoint() -> Callable[..., Endpoint]:
    return endpoint


@pytest.fixture
def make_request() -> Callable[..., InferenceRequest]:
    return request


@pytest.fixture
def routed() -> Callable[..., SchedulingResult]:
    return routed_to


@pytest.fixture
def registry() -> Registry:
    return default_registry()


@pytest.fixture
def handle() -> Handle:
    return new_handle()


@pytest.fixture
def create(registry: Registry, handle: Handle) -> PluginFactory:
    """``create(type, params=None, name=None)``: a plugin built by the registry on the shared handle."""

    def build(type_name: str, params: Mapping[str, Any] | None = None, name: str | None = None) -> BasePlugin:
        return registry.create(type_name, name or type_name, params, handle, "plugins[0]")

    return build
