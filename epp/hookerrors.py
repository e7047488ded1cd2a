"""Rate-limited logging of plugin hook failures."""

from __future__ import annotations

import logging
import time

__all__ = ["HookErrors"]

log = logging.getLogger("epp.director")


class HookErrors:
    """Logs a failing plugin hook with its traceback at most once a minute per plugin and hook.

    A plugin that fails on every request would otherwise log a traceback per request (or
    per streamed chunk) on the event loop. Call ``report`` from inside the ``except`` block.
    """

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._last: dict[tuple[str, str], float] = {}
        self._quiet: dict[tuple[str, str], int] = {}

    def report(self, stage: str, plugin: object) -> None:
        key = (stage, str(getattr(plugin, "typed_name", plugin)))
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._quiet[key] = self._quiet.get(key, 0) + 1
            return
        quiet = self._quiet.pop(key, 0)
        self._last[key] = now
        log.exception("%s plugin %s failed%s", stage, key[1],
                      f" ({quiet} more failures not logged in the last {self.interval:g}s)" if quiet else "")
