"""Reading ``vllm:lora_requests_info``: which LoRA adapters run, which wait, how many slots.

The family is a gauge whose value is the time of the engine step that set it and whose
labels are ``max_lora``, ``running_lora_adapters`` and ``waiting_lora_adapters`` (comma
separated). ``prometheus_client`` never removes a label set, so the page holds every
combination seen since start; the newest (largest value) is the current one. vLLM emits
the family only with ``--enable-lora``, and has no sample before its first engine step.

Two label layouts exist, told apart from the page itself:

* **Split** (older vLLM, v0 and early v1): the adapters of running requests and those of
  waiting requests, computed separately from the scheduler's queues.
* **Merged** (vLLM 0.32; ``LoRARequestStates`` in ``vllm/v1/metrics/stats.py``): vLLM
  tracks, per adapter, the requests it has *scheduled* and not finished (running, or
  preempted back to waiting), and the logger joins only the adapter names into both
  labels. Both labels therefore list the same adapters; an adapter whose requests are all
  still queued is in neither (observed on real vLLM 0.32 with three adapters, ad3's
  requests only queued: ``running="ad1,ad2" waiting="ad1,ad2"``;
  tests/fixtures/vllm-0.32/metrics-lora-waiting-running.txt).

The layout is merged when every sample on the page that lists adapters lists the same ones
in both labels; a split page almost always shows some state where they differ.

In the merged layout every listed adapter has been scheduled, so it holds (or held, if
preempted) an adapter slot: it counts as running, once. Adapters only queued are not
visible; they take a free slot when scheduled, which is what the scorer's free-slot tier
says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from epp.datalayer.promtext import Sample

__all__ = ["LoraState", "read_lora_info"]

RUNNING_LABEL = "running_lora_adapters"
WAITING_LABEL = "waiting_lora_adapters"
MAX_LORA_LABEL = "max_lora"


@dataclass(frozen=True, slots=True)
class LoraState:
    """What one page says about adapters. ``running`` and ``waiting`` are disjoint."""

    running: frozenset[str]
    waiting: frozenset[str]
    max_lora: int | None  # None: the label is absent or not a number
    merged_layout: bool
    bad_max_lora: str = ""  # the label's text when it is not a number


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _merged(samples: Sequence[Sample]) -> bool:
    listing = False
    for sample in samples:
        running = _names(sample.labels.get(RUNNING_LABEL, ""))
        waiting = _names(sample.labels.get(WAITING_LABEL, ""))
        if running or waiting:
            listing = True
            if frozenset(running) != frozenset(waiting):
                return False
    return listing


def read_lora_info(samples: Sequence[Sample]) -> LoraState:
    """Interpret the family's samples (at least one)."""
    newest = max(samples, key=lambda s: s.value)
    running = frozenset(_names(newest.labels.get(RUNNING_LABEL, "")))
    waiting = frozenset(_names(newest.labels.get(WAITING_LABEL, "")))
    raw_max = newest.labels.get(MAX_LORA_LABEL, "").strip()
    bad = ""
    try:
        max_lora: int | None = int(float(raw_max)) if raw_max else None
    except (ValueError, OverflowError):
        max_lora, bad = None, raw_max
    if _merged(samples):
        return LoraState(running | waiting, frozenset(), max_lora, True, bad)
    # Split layout: an adapter with requests both running and waiting is running.
    return LoraState(running, waiting - running, max_lora, False, bad)
