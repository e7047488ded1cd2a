"""The ``precise`` router: the picker's precise prefix-cache scorer fed by the simulators' KV events.

What it needs beyond a config, set up per run in the work directory:

* a tokenizer both sides share (``epp.testing.tokenizers.write_tiny_tokenizer``, trained on
  the workloads' vocabulary), given to the simulators with ``--tokenizer`` and to the
  picker through ``modelTokenizerMap``. Runs that include ``precise`` give the same
  tokenizer to every router's simulators, so all routers see the same token counts;
* KV events: the picker binds one SUB socket (``discoverPods: false``) and every simulator
  connects its PUB socket to it (vLLM's ``--kv-events-config`` shape), naming itself in
  the llm-d topic ``kv@<host:port>@<model>``, which the ``"kv@"`` topic filter accepts.

``PickerProbe`` reads what the run cost the picker: CPU seconds (``/proc/<pid>/stat``), RSS,
KV events received, blocks indexed and the precise scorer's PrepareData time per request
(``/debug/endpoints``, ``/debug/state``).
"""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks.routing.workloads import _WORDS, LORA_ADAPTERS, MODEL
from epp.devstack.stack import Stack
from epp.testing.tokenizers import write_tiny_tokenizer

__all__ = ["KV_EVENT_ROUTERS", "PickerProbe", "precise_config", "precise_sim_args", "write_tokenizer"]

_CONFIG = Path(__file__).resolve().parents[2] / "config" / "precise-prefix.yaml"
# precise: the shipped config (the precise scorer alone); precise-only: the same, kept for older
# command lines; precise+approx: with the approximate prefix-cache-scorer beside it (weight 2).
# precise-wholeprompt: chunk caching off (chunkCacheBytes 0), every prompt encoded whole.
KV_EVENT_ROUTERS = frozenset({"precise", "precise-only", "precise+approx", "precise-wholeprompt"})
# Words the workload generators write besides _WORDS (numbers are words of their own).
_EXTRA = ("Customer", "policy", "handbook", "Question", "Request", "Summarise", "Task", "Answer", "briefly",
          "system", "user", "assistant")


def write_tokenizer(directory: Path) -> Path:
    corpus = [" ".join(_WORDS), " ".join(_EXTRA), " ".join(str(i) for i in range(10_000)), ". : , !"]
    return write_tiny_tokenizer(directory, corpus=corpus)


def precise_sim_args(picker_events_port: int) -> list[str]:
    settings = {"enable_kv_cache_events": True, "publisher": "zmq",
                "endpoint": f"tcp://127.0.0.1:{picker_events_port}", "topic": "kv@{host}:{port}@{model}"}
    return ["--kv-events-config", json.dumps(settings)]


def precise_config(tokenizer: Path, picker_events_port: int, approximate: bool = False,
                   chunk_cache: bool = True) -> str:
    """config/precise-prefix.yaml with this run's tokenizer and the picker binding the events socket;
    ``approximate``: with the approximate prefix-cache-scorer beside the precise one (weight 2);
    ``chunk_cache`` False: every prompt encoded whole (``chunkCacheBytes: 0``)."""
    doc = yaml.safe_load(_CONFIG.read_text())
    has_approximate = any(p["type"] == "prefix-cache-scorer" for p in doc["plugins"])
    if not approximate:
        doc["plugins"] = [p for p in doc["plugins"] if p["type"] != "prefix-cache-scorer"]
        for profile in doc["schedulingProfiles"]:
            profile["plugins"] = [e for e in profile["plugins"] if e["pluginRef"] != "prefix-cache-scorer"]
    elif not has_approximate:
        doc["plugins"].append({"type": "prefix-cache-scorer"})
        for profile in doc["schedulingProfiles"]:
            profile["plugins"].append({"pluginRef": "prefix-cache-scorer", "weight": 2})
    params = next(p for p in doc["plugins"] if p["type"] == "precise-prefix-cache-scorer")["parameters"]
    pool = params["indexerConfig"]["tokenizersPoolConfig"]
    pool["local"] = {"modelTokenizerMap": {m: str(tokenizer) for m in (MODEL, *LORA_ADAPTERS)}}
    pool["remoteTokenize"] = False
    if not chunk_cache:
        pool["chunkCacheBytes"] = 0
    params["kvEventsConfig"].update({"discoverPods": False, "zmqEndpoint": f"tcp://127.0.0.1:{picker_events_port}",
                                     "topicFilter": "kv@"})
    return yaml.safe_dump(doc)


@dataclass(slots=True)
class PickerUsage:
    cpu_seconds: float
    rss_bytes: int
    kv_events: int
    kv_blocks: int
    prepare_us_per_request: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"cpuSeconds": self.cpu_seconds, "rssBytes": self.rss_bytes, "kvEvents": self.kv_events,
                "kvBlocks": self.kv_blocks, "prepareMicrosPerRequest": self.prepare_us_per_request}


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


class PickerProbe:
    """Reads the picker's CPU, RSS and KV-event counters just before the stack stops."""

    def __init__(self) -> None:
        self.usage: PickerUsage | None = None

    def __call__(self, stack: Stack) -> None:
        if stack.picker is None:
            return
        # Several pickers (pickers.MultiPickerStack): CPU and RSS summed, events and blocks per picker.
        processes = getattr(stack, "pickers", None) or [stack.picker]
        cpu = rss = 0.0
        for process in processes:
            fields = Path(f"/proc/{process.pid}/stat").read_text().rpartition(")")[2].split()
            cpu += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
            rss += int(Path(f"/proc/{process.pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        endpoints = _get(f"{stack.admin_url}/debug/endpoints")["endpoints"]
        events = sum(ep.get("kvEvents", {}).get("events", 0) for ep in endpoints)
        blocks = sum(ep.get("kvEvents", {}).get("blocks", 0) for ep in endpoints)
        self.usage = PickerUsage(cpu, int(rss), events, blocks, _prepare_us(stack.admin_url))


def _prepare_us(admin_url: str) -> float | None:
    """Mean wall time the precise scorer's PrepareData held a request (first picker only)."""
    plugins = _get(f"{admin_url}/debug/state").get("plugins", {})
    sizes = [v for k, v in plugins.items() if k.endswith("/precise-prefix-cache-scorer")]
    requests = sum(s.get("preparedRequests", 0) for s in sizes)
    return sum(s.get("prepareMicrosTotal", 0) for s in sizes) / requests if requests else None
