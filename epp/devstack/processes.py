"""Starting and stopping the stack's processes (simulators, picker, Envoy) on loopback.

Used by ``epp stack``, the end-to-end tests and the benchmarks, so all three start the
parts the same way. Output goes to a log file per process; ``wait_for_line`` and
``wait_for_http`` bound every wait so a broken part fails fast with its log tail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ManagedProcess", "StartupError", "epp_command", "free_port", "wait_for_http"]


class StartupError(RuntimeError):
    """A process did not become ready; the message carries the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral port that was free a moment ago (bind to 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def epp_command(*args: str) -> list[str]:
    """Run ``epp`` from the same interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "epp", *args]


def wait_for_http(url: str, timeout: float, process: ManagedProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise StartupError(f"{process.name} exited with {process.poll()}:\n{process.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.05)
    tail = process.log_tail() if process is not None else ""
    raise StartupError(f"{url} not ready after {timeout:g}s ({last})\n{tail}")


class ManagedProcess:
    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the child for its lifetime
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        log.close()
        return self

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_line(self, needle: str, count: int = 1, timeout: float = 30.0) -> list[str]:
        """Wait until ``needle`` has appeared on ``count`` log lines; returns those lines."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.log_text().splitlines() if needle in line]
            if len(found) >= count:
                return found[:count]
            if self.poll() is not None:
                raise StartupError(f"{self.name} exited with {self.poll()}:\n{self.log_tail()}")
            time.sleep(0.05)
        raise StartupError(f"{self.name}: {needle!r} not seen {count}x after {timeout:g}s:\n{self.log_tail()}")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)  # a stopped (SIGSTOP) process cannot handle SIGTERM
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode
