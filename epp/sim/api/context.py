"""What every HTTP handler of one replica shares: config, engine, tokenizer, fault state, custom gauges."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from epp.sim.config import SimConfig
from epp.sim.engine import Engine
from epp.sim.errors import NotFound
from epp.sim.faults import FaultState
from epp.sim.metrics.custom import CustomGauges
from epp.sim.tokenizer import Tokenizer

if TYPE_CHECKING:
    from epp.tokenization import PromptTokenizer

__all__ = ["ReplicaContext"]


@dataclass(slots=True)
class ReplicaContext:
    """Per-replica state handed to the route classes; the server owns it."""

    config: SimConfig
    engine: Engine
    tokenizer: Tokenizer
    custom: CustomGauges  # --custom-gauge and POST /sim/gauge, rendered after the engine's page
    fault: FaultState = field(default_factory=FaultState)
    created: int = field(default_factory=lambda: int(time.time()))  # model cards' "created"
    failed: int = 0  # requests answered with an injected error
    prompt_tokenizer: PromptTokenizer | None = None  # --tokenizer: replaces ``tokenizer`` for prompts

    def resolve_model(self, name: str | None) -> str | None:
        """The LoRA adapter a ``model`` field names (None: the base model).

        Raises:
            NotFound: the name is neither a served model name nor a registered adapter.
        """
        if name is None or name == "" or name in self.config.served_names:
            return None
        if self.engine.lora.is_registered(name):
            return name
        raise NotFound(f"The model `{name}` does not exist.", param="model")
