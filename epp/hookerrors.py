"""Rate-limited logging of failures that could otherwise log once per request."""

from __future__ import annotations

import logging
import time

__all__ = ["HookErrors", "ThrottledLog"]

log = logging.getLogger("epp.director")

# Distinct keys remembered; past it the oldest is forgotten (keys can come from clients'
# input, e.g. an exception type, so the map must not grow without bound).
_MAX_KEYS = 256


class ThrottledLog:
    """Logs an exception with its traceback at most once per ``interval`` per key.

    A failure that repeats on every request (a plugin bug, a hostile input that trips an
    unexpected code path) would otherwise put a traceback per request on the event loop
    and flood the log. Call ``exception`` from inside the ``except`` block.
    """

    def __init__(self, logger: logging.Logger = log, interval: float = 60.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def exception(self, key: str, message: str) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._quiet[key] = self._quiet.get(key, 0) + 1
            return
        quiet = self._quiet.pop(key, 0)
        self._last.pop(key, None)
        if len(self._last) >= _MAX_KEYS:
            del self._last[next(iter(self._last))]
        self._last[key] = now
        self.logger.exception("%s%s", message,
                              f" ({quiet} more like it not logged in the last {self.interval:g}s)" if quiet else "")


class HookErrors(ThrottledLog):
    """A failing plugin hook, logged at most once a minute per plugin and hook."""

    def report(self, stage: str, plugin: object) -> None:
        name = str(getattr(plugin, "typed_name", plugin))
        self.exception(f"{stage}\0{name}", f"{stage} plugin {name} failed")
