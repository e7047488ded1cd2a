"""A real Redis for shared-state tests: a ``redis-server`` on a free loopback port, no persistence.

``redis`` yields a ``RedisProcess`` that tests may ``kill`` (SIGKILL, as a crash) and
``start`` again on the same port; skipped with a reason when redis-server is not installed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from epp.devstack.processes import free_port

_STARTUP_TIMEOUT = 10.0


class RedisProcess:
    def __init__(self, binary: str, port: int) -> None:
        self.binary, self.port = binary, port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self._process is None, "already running"
        self._process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=_STARTUP_TIMEOUT)
            self._process = None


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    binary = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/sbin")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server); shared-state tests need it")
    server = RedisProcess(binary, free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()
