"""Process-level behaviour: SIGTERM drains in-flight streams; `make run`'s stack works."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from e2e_support import SIM_ARGS, completion  # type: ignore[import-not-found]

from epp.devstack.stack import Stack


def test_sigterm_lets_in_flight_streams_finish(tmp_path: Path) -> None:
    with Stack(tmp_path, replicas=2, sim_args=SIM_ARGS) as stack:
        async def scenario() -> tuple[int, bytes]:
            body = completion("slow", max_tokens=300, stream=True)
            async with aiohttp.ClientSession() as session, session.post(
                    stack.url + "/v1/completions", data=body, headers={"content-type": "application/json"}) as response:
                first = await response.content.readany()  # the stream is under way: SIGTERM comes mid-response
                stack.picker.signal(signal.SIGTERM)  # type: ignore[union-attr]
                return response.status, first + await response.read()

        status, body = asyncio.run(scenario())
        assert status == 200
        assert body.rstrip().endswith(b"data: [DONE]")
        assert body.count(b"data: ") >= 301
        assert stack.picker.proc.wait(15) == 0  # type: ignore[union-attr]
        assert "draining in-flight requests" in stack.picker.log_text()  # type: ignore[union-attr]


def test_epp_stack_demo_routes_and_exits(tmp_path: Path) -> None:
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "epp", "stack", "--free-ports", "--exit-after-demo", "--time-scale", "0.2",
         "--workdir", str(tmp_path / "stack")],
        capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    served = [line for line in lines if " 200 " in line]
    assert len(served) == 6
    assert any("malformed JSON" in line and " 400 " in line for line in lines)
    shared = [line.split()[6] for line in lines if "shared system prompt" in line]
    assert len(set(shared)) == 1, shared  # prefix affinity: one replica serves all three
    assert time.monotonic() - start < 180
