"""A watched file whose parsed content is applied only once a change has settled.

Used for ``--pool-file`` and ``--objectives-file``. The file is polled (``stat`` every
``poll_interval``). Replacing it by write-then-rename is atomic; a file written in place
is applied only once it has been seen unchanged (same mtime, size, inode and content
hash) on two consecutive polls, and never if it fails to parse: the last good content
stays. A touch or an identical rewrite is not a change. Reading and parsing run in a
worker thread, so a large or slow file never stalls streams.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from epp.errors import ConfigError

__all__ = ["FileWatcher", "SettledFile"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_Signature = tuple[int, int, int]  # (mtime_ns, size, inode)


class SettledFile(Generic[T]):
    """The change detection: ``take`` reads now; ``settled_change`` is one poll.

    ``settled_change`` returns the parsed new content when the file's signature and
    content hash are the same as at the previous poll and differ from what was last taken.
    A change that fails to read or parse raises ``ConfigError`` once and is not retried
    until the file changes again. Blocking: run it in a worker thread.
    """

    def __init__(self, path: Path, flag: str, parse: Callable[[str], T]) -> None:
        self.path = path
        self._flag = flag
        self._parse = parse
        self._seen: _Signature | None = None  # signature last taken or refused
        self._taken: bytes | None = None  # digest of the content last taken
        self._candidate: tuple[_Signature | None, bytes] | None = None  # a change waiting for a second look

    def _stat(self) -> _Signature | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def _content(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise ConfigError(self._flag, f"cannot read {self.path}: {exc.strerror}") from exc

    def _decode(self, data: bytes) -> T:
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            raise ConfigError(str(self.path), f"not UTF-8 at byte {exc.start}") from None
        return self._parse(text)

    def take(self) -> T:
        """Read and parse the file now, whatever its state; raises ``ConfigError``."""
        signature = self._stat()
        data = self._content()
        value = self._decode(data)
        self._seen, self._taken, self._candidate = signature, hashlib.sha256(data).digest(), None
        return value

    def settled_change(self) -> T | None:
        signature = self._stat()
        if signature == self._seen:
            return None
        try:
            data = self._content()
        except ConfigError:
            self._seen = signature  # a missing file is reported once
            raise
        digest = hashlib.sha256(data).digest()
        if digest == self._taken:
            self._seen, self._candidate = signature, None
            return None
        if self._candidate != (signature, digest):
            self._candidate = (signature, digest)  # perhaps half-written: look again next poll
            return None
        self._seen, self._candidate = signature, None
        value = self._decode(data)
        self._taken = digest
        return value


class FileWatcher(Generic[T]):
    """Applies a ``SettledFile``'s changes with ``apply``; ``describe`` words what is kept on failure."""

    def __init__(self, path: Path, flag: str, parse: Callable[[str], T], apply: Callable[[T], Any],
                 describe: Callable[[], str], poll_interval: float = 0.25) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self._file: SettledFile[T] = SettledFile(path, flag, parse)
        self._what = flag.removeprefix("--").replace("-", " ")
        self._apply = apply
        self._describe = describe

    def load(self) -> None:
        """Read the file now and apply it; raises ``ConfigError`` when it is missing or invalid."""
        self._apply(self._file.take())

    async def poll(self) -> bool:
        """Check the file once and apply a settled change; ``True`` when it was applied."""
        try:
            value = await asyncio.to_thread(self._file.settled_change)
        except ConfigError as exc:
            log.error("%s change ignored, keeping %s: %s", self._what, self._describe(), exc)
            return False
        if value is None:
            return False
        self._apply(value)
        log.info("%s reloaded: %s", self._what, self._describe())
        return True

    async def watch(self) -> None:
        """Poll until cancelled; a failed reload keeps the current content."""
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.poll()
            except Exception:  # noqa: BLE001 - e.g. a permission error; keep watching
                log.exception("%s %s: reload failed, keeping %s", self._what, self.path, self._describe())
