"""A vLLM-compatible model-server simulator for routing tests and benchmarks (``epp sim``).

Each replica runs a continuous-batching engine with a paged, prefix-cached KV cache and a
step-time model of Llama-3.1-8B on one H100, behind vLLM's OpenAI HTTP API and ``/metrics``
page. See ``docs/simulator.md``.

The public names are imported lazily (PEP 562) so that ``epp --help``, which imports
``epp.sim.cli``, does not pay for aiohttp.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from epp.sim.config import DEFAULT_MODEL, ConfigError, EngineKind, LoraModule, SimConfig
    from epp.sim.faults import FaultMode
    from epp.sim.replicas import readiness_line, serve_replicas
    from epp.sim.server import SimServer
    from epp.sim.stats import SimStats

__all__ = [
    "ConfigError",
    "DEFAULT_MODEL",
    "EngineKind",
    "FaultMode",
    "LoraModule",
    "SimConfig",
    "SimServer",
    "SimStats",
    "readiness_line",
    "serve_replicas",
]

# Where each public name lives.
_EXPORTS: Mapping[str, str] = MappingProxyType({
    "ConfigError": "epp.sim.config",
    "DEFAULT_MODEL": "epp.sim.config",
    "EngineKind": "epp.sim.config",
    "FaultMode": "epp.sim.faults",
    "LoraModule": "epp.sim.config",
    "SimConfig": "epp.sim.config",
    "SimServer": "epp.sim.server",
    "SimStats": "epp.sim.stats",
    "readiness_line": "epp.sim.replicas",
    "serve_replicas": "epp.sim.replicas",
})


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'epp.sim' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
