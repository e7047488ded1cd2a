"""Helpers for the end-to-end tests: request bodies, an HTTP client that records chunk timing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from epp.devstack.envoy import envoy_binary, render_bootstrap, repo_bootstrap_path
from epp.devstack.processes import ManagedProcess, free_port, wait_for_http

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
# Small batches make queues form quickly; 5x faster than real time keeps the suite short.
SIM_ARGS = ["--max-num-seqs", "4", "--time-scale", "0.2"]


def completion(prompt: str = "Say something", max_tokens: int = 8, **extra: Any) -> bytes:
    return orjson.dumps({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, **extra})


def chat(system: str, question: str, max_tokens: int = 8, **extra: Any) -> bytes:
    return orjson.dumps({"model": MODEL, "max_tokens": max_tokens, **extra, "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": question}]})


class Reply:
    def __init__(self, status: int, headers: dict[str, str], chunks: list[tuple[float, bytes]]) -> None:
        self.status = status
        self.headers = headers
        self.chunks = chunks

    @property
    def body(self) -> bytes:
        return b"".join(c for _, c in self.chunks)

    @property
    def upstream(self) -> str:
        return self.headers.get("x-upstream-host", "")


async def post(session: aiohttp.ClientSession, url: str, body: bytes, path: str = "/v1/completions",
               headers: dict[str, str] | None = None) -> Reply:
    start = time.monotonic()
    async with session.post(url + path, data=body,
                            headers={"content-type": "application/json", **(headers or {})}) as response:
        chunks = [(time.monotonic() - start, chunk) async for chunk in response.content.iter_any()]
        return Reply(response.status, {k.lower(): v for k, v in response.headers.items()}, chunks)


async def post_many(url: str, bodies: list[bytes], path: str = "/v1/completions", concurrent: bool = True
                    ) -> list[Reply]:
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        if concurrent:
            return list(await asyncio.gather(*(post(session, url, b, path) for b in bodies)))
        return [await post(session, url, b, path) for b in bodies]


def wait_until(check: Any, timeout: float = 10.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def log_of(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def start_envoy(workdir: Path, extproc_port: int, name: str, **options: object) -> tuple[ManagedProcess, str]:
    """A second Envoy in front of the same picker, rendered with other options."""
    port, admin = free_port(), free_port()
    bootstrap = workdir / f"envoy-{name}.yaml"
    bootstrap.write_text(render_bootstrap(repo_bootstrap_path(), port, admin, extproc_port, **options))  # type: ignore[arg-type]  # options are render_bootstrap's keywords
    envoy = ManagedProcess(f"envoy-{name}", [envoy_binary(), "-c", str(bootstrap), "--concurrency", "1",
                                             "--base-id", str(admin), "--log-level", "warning"],
                           workdir / f"envoy-{name}.log").start()
    wait_for_http(f"http://127.0.0.1:{admin}/ready", 30, envoy)
    return envoy, f"http://127.0.0.1:{port}"
