"""Characters per token, learned per model from the usage model servers report.

The picker has no tokenizer. It used to assume 4 bytes of prompt per token everywhere, but
real tokenizers differ (about 2.2 on code with vLLM 0.32's tokenizer), and with CPU vLLM's
128-token blocks a 4-byte guess makes the prefix index's blocks 512 bytes, so shorter
prompts get no affinity at all. Each completed response whose usage carries
``prompt_tokens`` is one sample: the prompt bytes the picker saw (the text the prefix
hasher hashes) against the tokens the server counted.

Robustness:

- Samples are pooled as a ratio of decayed sums (bytes / tokens, each sum decayed by
  ``1 - 1/horizon`` per sample), not an average of per-request ratios: a long prompt
  weighs more than a short one whose chat-template tokens dominate its count.
- Samples without usage, without prompt bytes, with 0 tokens, or whose own ratio is
  outside ``[MIN_SAMPLE_RATIO, MAX_SAMPLE_RATIO]`` are ignored.
- The estimate is clamped to ``[MIN_CHARS_PER_TOKEN, MAX_CHARS_PER_TOKEN]``, and the
  default (4) stands until ``min_samples`` samples have been seen.

Stability: the value in use for a model (``chars_per_token``) is the prefix block size's
multiplier, and entries already in the index were hashed with it. It therefore changes only
when the learned value has moved more than ``adopt_change`` (15 %) away from it (adopted
at once), or more than ``settle_change`` (5 %) and stayed there for ``horizon`` samples
since the last change (so the value in use cannot stay stuck up to 15 % off after a
gradual shift, e.g. a redeployed model caught mid-way). Each time the learned value is
adopted whole. Old entries then simply stop matching (a block's hash covers its bytes, so
blocks of another length never collide) and age out of the index's LRU; noise under 5 %
never reshuffles the index, and a slow drift changes it at most once per ``horizon``
samples.

Memory: at most ``max_models`` models, least recently updated evicted first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = [
    "DEFAULT_CHARS_PER_TOKEN",
    "MAX_CHARS_PER_TOKEN",
    "MIN_CHARS_PER_TOKEN",
    "TokenRatios",
]

DEFAULT_CHARS_PER_TOKEN = 4.0
MIN_CHARS_PER_TOKEN = 1.0
MAX_CHARS_PER_TOKEN = 8.0
# Per-sample sanity bounds, wider than the clamp: a short chat prompt legitimately reads
# below 1 (template tokens), but 100 bytes per token or 1 byte per 10 tokens is a
# mismatched usage record, not a tokenizer.
MIN_SAMPLE_RATIO = 0.25
MAX_SAMPLE_RATIO = 32.0


@dataclass(slots=True)
class _ModelRatio:
    chars: float = 0.0
    tokens: float = 0.0
    samples: int = 0
    since_change: int = 0
    in_use: float = DEFAULT_CHARS_PER_TOKEN

    def learned(self) -> float:
        return min(MAX_CHARS_PER_TOKEN, max(MIN_CHARS_PER_TOKEN, self.chars / self.tokens))


class TokenRatios:
    """Per model: the characters per token in use, learned from (prompt bytes, prompt tokens) samples."""

    def __init__(self, *, min_samples: int = 8, horizon: int = 200, adopt_change: float = 0.15,
                 settle_change: float = 0.05, max_models: int = 1000) -> None:
        if min_samples < 1 or horizon < 1 or max_models < 1 or not 0 <= settle_change <= adopt_change:
            raise ValueError("min_samples, horizon and max_models must be >= 1, 0 <= settle_change <= adopt_change")
        self._min_samples = min_samples
        self._horizon = horizon
        self._keep = 1.0 - 1.0 / horizon
        self._adopt_change = adopt_change
        self._settle_change = settle_change
        self._max_models = max_models
        self._models: OrderedDict[str, _ModelRatio] = OrderedDict()
        # Models whose value in use this instance changed itself, not yet taken by
        # ``take_adopted`` (picker replicas sharing state publish them so all hash alike).
        self._adopted: set[str] = set()

    def chars_per_token(self, model: str) -> float:
        """The value in use for ``model`` (the default until it has enough samples). Request path: one dict lookup."""
        entry = self._models.get(model)
        return DEFAULT_CHARS_PER_TOKEN if entry is None else entry.in_use

    def observe(self, model: str, prompt_chars: int, prompt_tokens: int) -> bool:
        """Fold in one response's sample; returns whether it was used (garbage is ignored)."""
        if prompt_chars <= 0 or prompt_tokens <= 0:
            return False
        if not MIN_SAMPLE_RATIO <= prompt_chars / prompt_tokens <= MAX_SAMPLE_RATIO:
            return False
        entry = self._entry(model)
        entry.chars = entry.chars * self._keep + prompt_chars
        entry.tokens = entry.tokens * self._keep + prompt_tokens
        entry.samples += 1
        entry.since_change += 1
        if entry.samples >= self._min_samples:
            learned = entry.learned()
            moved = abs(learned - entry.in_use) / entry.in_use
            if moved > self._adopt_change or (moved > self._settle_change and entry.since_change >= self._horizon):
                entry.in_use = learned
                entry.since_change = 0
                self._adopted.add(model)
        return True

    def _entry(self, model: str) -> _ModelRatio:
        """``model``'s entry, made the most recently used; created (evicting the least) if new."""
        entry = self._models.get(model)
        if entry is None:
            entry = self._models[model] = _ModelRatio()
            if len(self._models) > self._max_models:
                self._models.popitem(last=False)
        else:
            self._models.move_to_end(model)
        return entry

    def take_adopted(self) -> dict[str, float]:
        """Values this instance adopted since the last call (model -> characters per token)."""
        taken = {model: self._models[model].in_use for model in self._adopted if model in self._models}
        self._adopted.clear()
        return taken

    def agree(self, model: str, chars_per_token: float) -> bool:
        """Use a value another replica adopted, so every replica hashes ``model``'s prompts with
        the same block size (learning goes on; the hysteresis restarts from it). Values outside
        the clamp are refused; returns whether the value in use changed."""
        if not MIN_CHARS_PER_TOKEN <= chars_per_token <= MAX_CHARS_PER_TOKEN:
            return False
        entry = self._entry(model)
        if entry.in_use == chars_per_token:
            return False
        entry.in_use = chars_per_token
        entry.since_change = 0
        self._adopted.discard(model)
        return True

    def __len__(self) -> int:
        return len(self._models)

    def snapshot(self) -> dict[str, dict[str, float | int]]:
        """Per model: ``charsPerToken`` in use, ``learned`` (current estimate) and ``samples``."""
        return {model: {"charsPerToken": round(e.in_use, 3), "learned": round(e.learned(), 3), "samples": e.samples}
                for model, e in self._models.items()}
