"""The requests ``epp stack`` sends to show routing, and the table it prints.

Three streaming chat requests share a long system prompt: they land on one replica and
the second and third skip most of the prefill (shorter time to first token). Two
completions and a chat with another system prompt are spread by load, and one request is
malformed JSON (the picker answers 400 through Envoy).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp

__all__ = ["DemoResult", "run_demo", "format_results"]

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
_SYSTEM = ("You are a meticulous assistant for a logistics company. Answer in short sentences, cite the "
           "relevant policy section, and never invent shipment numbers. ") * 40


@dataclass(slots=True)
class DemoResult:
    label: str
    status: int
    upstream: str
    ttft: float | None
    total: float
    detail: str = ""


def _requests() -> list[tuple[str, str, bytes, bool]]:
    def chat(question: str, stream: bool = False) -> bytes:
        import orjson

        return orjson.dumps({"model": MODEL, "max_tokens": 24, "stream": stream, "messages": [
            {"role": "system", "content": _SYSTEM}, {"role": "user", "content": question}]})

    def other_chat(question: str) -> bytes:
        import orjson

        return orjson.dumps({"model": MODEL, "max_tokens": 24, "stream": True, "messages": [
            {"role": "system", "content": "You are a terse poet. " * 60}, {"role": "user", "content": question}]})

    def completion(prompt: str) -> bytes:
        import orjson

        return orjson.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 16})

    return [
        ("chat, shared system prompt (1)", "/v1/chat/completions", chat("Where is order 1234?", True), True),
        ("chat, shared system prompt (2)", "/v1/chat/completions", chat("Can I change the address?", True), True),
        ("chat, shared system prompt (3)", "/v1/chat/completions", chat("What is the refund policy?", True), True),
        ("completion, unrelated prompt", "/v1/completions", completion("Write a haiku about autumn rain."), False),
        ("completion, another prompt", "/v1/completions", completion("List three prime numbers over 100."), False),
        ("chat, different system prompt", "/v1/chat/completions", other_chat("Summarise the policy."), True),
        ("malformed JSON", "/v1/completions", b'{"model": "x", "prompt": ', False),
    ]


async def _send(session: aiohttp.ClientSession, base: str, label: str, path: str, body: bytes,
                stream: bool) -> DemoResult:
    start = time.monotonic()
    ttft = None
    async with session.post(base + path, data=body, headers={"content-type": "application/json"}) as response:
        chunks: list[bytes] = []
        async for chunk in response.content.iter_any():
            if ttft is None:
                ttft = time.monotonic() - start
            chunks.append(chunk)
        text = b"".join(chunks).decode(errors="replace")
        detail = f"{len(chunks)} chunks" if stream and response.status == 200 else ""
        if response.status != 200:
            detail = text[:70]
        return DemoResult(label, response.status, response.headers.get("x-upstream-host", "-"), ttft,
                          time.monotonic() - start, detail)


async def run_demo(base_url: str, rounds: int = 1) -> list[DemoResult]:
    results = []
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(rounds):
            for label, path, body, stream in _requests():
                results.append(await _send(session, base_url, label, path, body, stream))
    return results


def format_results(results: list[DemoResult]) -> str:
    lines = [f"{'#':>3}  {'request':<32} {'served by':<18} {'status':>6} {'TTFT':>8} {'total':>8}  note"]
    for i, r in enumerate(results, 1):
        ttft = f"{r.ttft * 1000:.0f}ms" if r.ttft is not None else "-"
        lines.append(f"{i:>3}  {r.label:<32} {r.upstream:<18} {r.status:>6} {ttft:>8} {r.total * 1000:>6.0f}ms"
                     f"  {r.detail}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - manual use
    import sys

    print(format_results(asyncio.run(run_demo(sys.argv[1]))))
