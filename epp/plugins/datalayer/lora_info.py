"""Reading ``vllm:lora_requests_info``: which LoRA adapters run, which wait, how many slots.

The family is a gauge whose value is the time of the engine step that set it and whose
labels are ``max_lora``, ``running_lora_adapters`` and ``waiting_lora_adapters`` (comma
separated). ``prometheus_client`` never removes a label set, so the page holds every
combination seen since start; the newest (largest value) is the current one. vLLM emits
the family only with ``--enable-lora``, and has no sample before its first engine step.

Two label layouts exist, told apart from the page itself:

* **Split** (older vLLM, v0 and early v1): the adapters of running requests and those of
  waiting requests, computed separately from the scheduler's queues.
* **Merged** (vLLM 0.32; ``LoRARequestStates.update_scheduler_stats`` in
  ``vllm/v1/metrics/stats.py``): every adapter with any request gets an entry, with a
  count, in *both* dicts (a count of 0 included), and the logger joins only the dicts'
  keys. Both labels therefore always list the same adapters in the same order, and which
  of them actually run is lost.

The layout is merged when every sample on the page that lists adapters lists the same ones
in both labels; a split page almost always shows some state where they differ.

In the merged layout an adapter is known to run only when the engine has no waiting
request (``vllm:num_requests_waiting`` is 0, set from the same engine step). Otherwise its
state is unknown and it counts as waiting: a queued adapter must not look loaded, and it
holds one slot either way (a listed adapter is never counted twice).
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


def read_lora_info(samples: Sequence[Sample], waiting_requests: int | None) -> LoraState:
    """Interpret the family's samples (at least one); ``waiting_requests`` is from the same page."""
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
        adapters = running | waiting
        if waiting_requests == 0:
            return LoraState(adapters, frozenset(), max_lora, True, bad)
        return LoraState(frozenset(), adapters, max_lora, True, bad)
    # Split layout: an adapter with requests both running and waiting is running.
    return LoraState(running, waiting - running, max_lora, False, bad)
