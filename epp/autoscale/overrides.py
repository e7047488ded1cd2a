"""Per-model thresholds from a YAML file (``--overrides``), reloaded when the file changes.

The file mirrors WVA's ``saturation-scaling-config`` ConfigMap: a ``default`` entry and
per-model entries that are partial merges onto it::

    default:                  # optional; WVA's defaults otherwise
      kvCacheThreshold: 0.8
      queueLengthThreshold: 5
      kvSpareTrigger: 0.1
      queueSpareTrigger: 3
    models:
    - modelID: meta-llama/Llama-3.1-8B-Instruct
      queueLengthThreshold: 8  # the fields not given come from `default`

Parsing is strict: an unknown key, a wrong type, a duplicate ``modelID`` or a threshold out
of range is an error naming the field (``models[1].kvSpareTrigger: ...``). WVA skips an
invalid entry and goes on; here the whole file is refused and, on a reload, the last good
file stays in force (``FileWatcher``), so a typo never silently reverts one model to defaults.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epp import yamlsafe
from epp.autoscale.analyzer import Thresholds
from epp.datalayer.filewatch import FileWatcher
from epp.errors import ConfigError
from epp.framework.params import decode_params, field_key

__all__ = ["Overrides", "OverridesFile", "parse_overrides"]

log = logging.getLogger(__name__)

_TOP_LEVEL = ("default", "models")
_MODEL_KEY = "modelID"


@dataclass(frozen=True)
class Overrides:
    """The thresholds in force: ``default`` plus complete per-model ``Thresholds``."""

    default: Thresholds = field(default_factory=Thresholds)
    models: Mapping[str, Thresholds] = field(default_factory=dict)

    def for_model(self, model: str) -> Thresholds:
        return self.models.get(model, self.default)

    def describe(self) -> str:
        names = ", ".join(sorted(self.models)) or "none"
        return f"default thresholds and overrides for {len(self.models)} model(s) ({names})"


def _as_raw(thresholds: Thresholds) -> dict[str, Any]:
    return {field_key(f): getattr(thresholds, f.name) for f in dataclasses.fields(thresholds)}


def parse_overrides(text: str, where: str = "--overrides") -> Overrides:
    """Parse the file's text; every error is a ``ConfigError`` naming the field."""
    doc = yamlsafe.load(text, where)
    if doc is None:
        return Overrides()
    if not isinstance(doc, Mapping):
        raise ConfigError(where, "expected a mapping with 'default' and/or 'models'", yamlsafe.shown(doc))
    unknown = [k for k in doc if k not in _TOP_LEVEL]
    if unknown:
        raise ConfigError(str(unknown[0]), f"unknown field (allowed: {', '.join(_TOP_LEVEL)})")
    default = decode_params(Thresholds, doc.get("default"), "default")
    entries = doc.get("models")
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise ConfigError("models", "expected a list of entries with a modelID", yamlsafe.shown(entries))
    models: dict[str, Thresholds] = {}
    for i, entry in enumerate(entries):
        at = f"models[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(at, "expected a mapping", yamlsafe.shown(entry))
        model = entry.get(_MODEL_KEY)
        if not isinstance(model, str) or not model:
            raise ConfigError(f"{at}.{_MODEL_KEY}", "is required: a non-empty model name", yamlsafe.shown(model))
        if model in models:
            raise ConfigError(f"{at}.{_MODEL_KEY}", "duplicate model (one entry per model)", model)
        fields = {k: v for k, v in entry.items() if k != _MODEL_KEY}
        models[model] = decode_params(Thresholds, {**_as_raw(default), **fields}, at)
    return Overrides(default=default, models=models)


class OverridesFile:
    """The current ``Overrides``: the file's content, replaced when a changed file parses."""

    def __init__(self, path: Path | None, poll_interval: float = 1.0) -> None:
        self.current = Overrides()
        self._watcher: FileWatcher[Overrides] | None = None
        if path is not None:
            self._watcher = FileWatcher(path, "--overrides", lambda text: parse_overrides(text, str(path)),
                                        self._apply, self.current_description, poll_interval=poll_interval)

    def _apply(self, overrides: Overrides) -> None:
        self.current = overrides

    def current_description(self) -> str:
        return self.current.describe()

    def load(self) -> None:
        """Read the file now; raises ``ConfigError`` when it is missing or invalid (a start-up error)."""
        if self._watcher is not None:
            self._watcher.load()

    async def poll(self) -> bool:
        """Apply a settled change; ``True`` when it was applied. A bad file is logged and ignored."""
        return await self._watcher.poll() if self._watcher is not None else False

    async def watch(self) -> None:
        if self._watcher is not None:
            await self._watcher.watch()

    def for_model(self, model: str) -> Thresholds:
        return self.current.for_model(model)
