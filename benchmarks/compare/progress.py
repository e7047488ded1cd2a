"""A plain-text progress bar on stderr (redrawn in place on a terminal, a line per quarter otherwise)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    def __init__(self, label: str, total: int, out: TextIO | None = None, width: int = 30) -> None:
        self.label = label
        self.total = max(1, total)
        self.out = out or sys.stderr
        self.width = width
        self.done = 0
        self.errors = 0
        self._start = time.monotonic()
        self._drawn_at = 0.0
        self._quarter = -1
        self._tty = self.out.isatty()

    def advance(self, ok: bool) -> None:
        self.done += 1
        self.errors += 0 if ok else 1
        now = time.monotonic()
        quarter = min(4, self.done * 4 // self.total)
        if self._tty and now - self._drawn_at >= 0.2:
            self._drawn_at = now
            self.out.write("\r" + self.line())
        elif not self._tty and quarter > self._quarter:
            self._quarter = quarter
            self.out.write(self.line() + "\n")
        self.out.flush()

    def line(self) -> str:
        filled = min(self.width, self.done * self.width // self.total)
        return (f"{self.label:<40} [{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total}"
                f"  errors {self.errors}  {time.monotonic() - self._start:5.1f}s")

    def close(self) -> None:
        if self._tty:
            self.out.write("\r" + self.line() + "\n")
            self.out.flush()
