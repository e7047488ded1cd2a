"""LoRA adapters: which are known, which sit in the ``max_loras`` GPU slots, which are loading.

vLLM keeps registered adapters in CPU memory and swaps them into a fixed number of GPU
slots (``--max-loras``) as batches need them; a batch never holds more distinct adapters
than there are slots. The simulator models the part that changes latency:

* An adapter is *registered* by ``--lora-modules`` or ``/v1/load_lora_adapter``.
* A request for a registered adapter that is not *resident* starts loading it into a free
  slot, or into the slot of the least recently used resident adapter that no running
  request uses. Loading takes ``lora_load_time`` (scaled like every latency); the request
  stays waiting meanwhile and other requests may pass it, as in vLLM's scheduler.
* When every slot holds an adapter in use by a running request, the request waits.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection

from epp.sim.config import LoraModule

__all__ = ["LoraManager"]


class LoraManager:
    """Adapter registry and GPU-slot state of one replica.

    Concurrency: event-loop owned, no locks. Times are loop times (wall seconds).
    """

    __slots__ = ("max_loras", "load_time", "_registered", "_resident", "_loading", "_int_ids", "_next_int_id")

    def __init__(self, modules: tuple[LoraModule, ...], max_loras: int, load_time: float) -> None:
        self.max_loras = max_loras
        self.load_time = load_time  # wall seconds
        self._registered: dict[str, str] = {m.name: m.path for m in modules}
        self._resident: OrderedDict[str, None] = OrderedDict()
        self._loading: dict[str, float] = {}
        # vLLM numbers adapters 1, 2, ... as they are added (lora_int_id); KV events carry it.
        self._int_ids: dict[str, int] = {}
        self._next_int_id = 1
        for m in modules:
            self._assign_int_id(m.name)

    # --- registry (HTTP API) ------------------------------------------------------------------
    def registered(self) -> dict[str, str]:
        """Adapter name to path, in registration order."""
        return dict(self._registered)

    def int_id(self, name: str | None) -> int | None:
        """The adapter's integer id (None for the base model or an unknown name)."""
        return None if name is None else self._int_ids.get(name)

    def _assign_int_id(self, name: str) -> None:
        self._int_ids[name] = self._next_int_id
        self._next_int_id += 1

    def is_registered(self, name: str) -> bool:
        return name in self._registered

    def register(self, name: str, path: str) -> bool:
        """Add an adapter; False if the name is taken."""
        if name in self._registered:
            return False
        self._registered[name] = path
        self._assign_int_id(name)
        return True

    def unregister(self, name: str, in_use: Collection[str]) -> bool:
        """Remove an adapter; False if unknown. A slot in use is freed once its requests end."""
        if self._registered.pop(name, None) is None:
            return False
        self._int_ids.pop(name, None)
        self._loading.pop(name, None)
        if name not in in_use:
            self._resident.pop(name, None)
        return True

    # --- slots (scheduler) ----------------------------------------------------------------------
    def resident(self) -> list[str]:
        return list(self._resident)

    def ready(self, name: str, now: float, in_use: Collection[str]) -> bool:
        """Whether a request for ``name`` may be scheduled now; starts a load if a slot allows."""
        if name in self._resident:
            self._resident.move_to_end(name)
            return True
        done_at = self._loading.get(name)
        if done_at is not None:
            if done_at > now:
                return False
            del self._loading[name]
            self._resident[name] = None
            return True
        if not self._take_slot(in_use):
            return False
        if self.load_time <= 0:
            self._resident[name] = None
            return True
        self._loading[name] = now + self.load_time
        return False

    def next_ready_time(self) -> float | None:
        """Earliest time a loading adapter becomes resident (for the engine's sleep)."""
        return min(self._loading.values(), default=None)

    def _take_slot(self, in_use: Collection[str]) -> bool:
        if len(self._resident) + len(self._loading) < self.max_loras:
            return True
        for victim in self._resident:  # least recently used first
            if victim not in in_use:
                del self._resident[victim]
                return True
        return False
