"""The picker configurations the benchmark compares, all derived from ``config/flow-control.yaml``.

- ``flow_control``: the shipped file with ``defaultRequestTTL`` scaled to the run (a 30 s TTL
  never expires in a 10 s run), and optionally the ``concurrency-detector`` (in-flight
  requests against the simulators' ``--max-num-seqs``) in place of the utilization detector.
- ``gate_off``: the same file without the ``flowControl`` feature gate: identical plugins,
  scorers and saturation detector, so the picker applies the legacy rule (priority < 0 and
  pool saturated: 429) and everything else passes straight through. Comparing the two
  isolates what the queue does and what it costs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

__all__ = ["OBJECTIVES_FILE", "flow_control", "gate_off", "load_shipped"]

_CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
SHIPPED = _CONFIG_DIR / "flow-control.yaml"
OBJECTIVES_FILE = _CONFIG_DIR / "objectives.yaml"


def load_shipped(path: Path = SHIPPED) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or "flowControl" not in doc:
        raise ValueError(f"{path} is not an EndpointPickerConfig with a flowControl section")
    return doc


def _use_concurrency_detector(doc: dict[str, Any], max_concurrency: int) -> None:
    ref = doc["saturationDetector"]["pluginRef"]
    plugins = [p for p in doc["plugins"] if (p.get("name") or p["type"]) != ref]
    plugins.append({"type": "concurrency-detector", "parameters": {"maxConcurrency": max_concurrency}})
    doc["plugins"] = plugins
    doc["saturationDetector"] = {"pluginRef": "concurrency-detector"}


def flow_control(base: dict[str, Any], ttl_seconds: float, max_concurrency: int | None = None) -> str:
    """The flow-control config; ``max_concurrency`` set: gate on in-flight requests per endpoint."""
    doc = copy.deepcopy(base)
    doc["flowControl"]["defaultRequestTTL"] = f"{ttl_seconds:g}s"
    if max_concurrency is not None:
        _use_concurrency_detector(doc, max_concurrency)
    return yaml.safe_dump(doc, sort_keys=False)


def gate_off(base: dict[str, Any], max_concurrency: int | None = None) -> str:
    doc = copy.deepcopy(base)
    doc["featureGates"] = [gate for gate in doc.get("featureGates", []) if gate != "flowControl"]
    if not doc["featureGates"]:
        del doc["featureGates"]
    del doc["flowControl"]
    if max_concurrency is not None:
        _use_concurrency_detector(doc, max_concurrency)
    return yaml.safe_dump(doc, sort_keys=False)
