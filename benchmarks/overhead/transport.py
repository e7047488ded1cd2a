"""ext_proc CPU per request without Envoy: a gRPC client plays Envoy's part, the server's CPU is counted.

Envoy and the load generator take most of the machine in ``benchmarks.overhead``, and
their noise hides differences of tens of microseconds. Here one client process sends what
Envoy sends for a small non-streamed request in FULL_DUPLEX_STREAMED mode (request
headers, the body, response headers, the response body), one stream per request,
arriving at a fixed rate, and reads the answers; only the server's CPU (/proc) is counted. The servers, in
one run, interleaved round by round:

- noop-generator: benchmarks/overhead/noop_extproc.py, reading and writing through async
  generators (the baseline of ``benchmarks.overhead``);
- noop-readwrite: the same answers, read and written on the call;
- picker:         ``epp serve`` with the default profile, over simulators.

With ``--chunks N`` each round also streams SSE responses of N chunks (each answered, as
in the standard config) and prints the marginal CPU per chunk.

    python -m benchmarks.overhead.transport [--rounds 5] [--seconds 5] [--rate 300] [--chunks 16]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from benchmarks.overhead.__main__ import MODEL, process_cpu
from epp.devstack.processes import ManagedProcess, free_port
from epp.devstack.stack import Stack
from epp.server.extproc import RESPONSE_PATH_METADATA
from epp.testing.envoy_stream import body_message, request_headers_message, response_headers_message

_RESPONSE = b'{"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":"ok","finish_reason":"stop"}],' \
            b'"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}'


def _sse_event(index: int) -> bytes:
    return (b'data: {"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":"tok%d",'
            b'"finish_reason":null}],"usage":null}\n\n' % index)


def envoy_messages(body: bytes, chunks: int = 0, request_id: bytes = b"0f3f8a7e-1d2c-4b5a-9e8f-123456789abc"
                   ) -> list[tuple[pb.ProcessingRequest, int]]:
    """What Envoy sends for one request, each with the number of answers to wait for.

    ``chunks`` 0: a JSON response in one body message; N: an SSE stream of N events, one
    body message each, and an empty last message ending the stream."""
    headers = [(":authority", b"127.0.0.1:10000"), (":path", b"/v1/completions"), (":method", b"POST"),
               (":scheme", b"http"), ("user-agent", b"wrk"), ("content-type", b"application/json"),
               ("content-length", str(len(body)).encode()), ("x-forwarded-proto", b"http"),
               ("x-request-id", request_id),
               ("x-envoy-expected-rq-timeout-ms", b"60000")]
    script = [
        (request_headers_message(headers), 0),
        (body_message(body, end_of_stream=True), 2),  # the destination, then the body sent on
    ]
    if chunks == 0:
        script += [(response_headers_message({":status": "200", "content-type": "application/json",
                                              "content-length": str(len(_RESPONSE))}), 1),
                   (body_message(_RESPONSE, end_of_stream=True, request=False), 1)]
    else:
        script += [(response_headers_message({":status": "200", "content-type": "text/event-stream"}), 1),
                   *((body_message(_sse_event(i), end_of_stream=False, request=False), 1) for i in range(chunks)),
                   (body_message(b"data: [DONE]\n\n", end_of_stream=True, request=False), 1)]
    return script


async def observed_request(stub: pb_grpc.ExternalProcessorStub, body: bytes, chunks: int, request_id: bytes) -> None:
    """The fast config's two streams: routing (ends once routed), then the response observed, never answered."""
    script = envoy_messages(body, chunks, request_id)
    call = stub.Process(metadata=(RESPONSE_PATH_METADATA,))
    for message, answers in script[:2]:
        await call.write(message)
        for _ in range(answers):
            await call.read()
    await call.code()  # the picker ends the routing stream with the destination
    observation = stub.Process()
    for message, _ in [script[0], *script[2:]]:
        observed = pb.ProcessingRequest()
        observed.CopyFrom(message)
        observed.observability_mode = True
        await observation.write(observed)
    await observation.done_writing()
    await observation.code()


async def drive(address: str, body: bytes, rate: float, seconds: float, chunks: int = 0,
                observed: bool = False) -> int:
    """Requests completed when started at ``rate`` per second (open loop) for ``seconds``.

    A fixed rate, not a closed loop: CPU per request depends on how many messages each
    wake-up of the server finds, so servers are compared at the same arrival rate.
    ``observed``: as with the fast Envoy config (the picker only)."""
    script = envoy_messages(body, chunks)
    done = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)
        serial = itertools.count()

        async def one() -> None:
            nonlocal done
            if observed:
                await observed_request(stub, body, chunks, b"observed-%d" % next(serial))
                done += 1
                return
            call = stub.Process()
            for message, answers in script:
                await call.write(message)
                for _ in range(answers):
                    await call.read()
            await call.done_writing()
            await call.code()  # the server ends the call once the response is complete
            done += 1

        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for i in range(int(rate * seconds)):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second, open loop")
    parser.add_argument("--chunks", type=int, default=0,
                        help="also stream SSE responses of this many chunks: the marginal CPU per chunk")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--picker-arg", action="append", default=[], metavar="ARG",
                        help="an extra epp serve argument (repeat): --picker-arg=--refresh-metrics-interval=1s")
    args = parser.parse_args(argv)
    body = json.dumps({"model": MODEL, "prompt": "Benchmark the gateway overhead, please.", "max_tokens": 4}).encode()
    workdir = Path(tempfile.mkdtemp(prefix="epp-transport-"))
    stack = Stack(workdir, args.replicas, picker_args=["--log-level", "warning", *args.picker_arg])
    processes: list[ManagedProcess] = []
    try:
        stack.start_sims()
        stack.start_picker()
        endpoints = ",".join(stack.sim_hostport(i) for i in range(args.replicas))
        servers: dict[str, tuple[str, int]] = {}
        for api in ("generator", "readwrite"):
            port = free_port()
            noop = ManagedProcess(f"noop-{api}", [sys.executable, "-m", "benchmarks.overhead.noop_extproc", "--port",
                                                  str(port), "--endpoints", endpoints, "--api", api],
                                  workdir / f"noop-{api}.log").start()
            processes.append(noop)
            noop.wait_for_line("noop ext_proc ready")
            servers[f"noop-{api}"] = (f"127.0.0.1:{port}", noop.pid)  # type: ignore[assignment]
        servers["picker"] = (f"127.0.0.1:{stack.ports.grpc}", stack.picker.pid)  # type: ignore[union-attr]
        for address, _ in servers.values():  # warm-up
            asyncio.run(drive(address, body, 100.0, 1.0))
        # CPU with no requests at all (the picker scrapes its endpoints' metrics meanwhile):
        # a fixed cost per second, which a request rate spreads over its requests.
        idle_before = {name: process_cpu(pid) for name, (_, pid) in servers.items()}
        time.sleep(args.seconds)
        idle = {name: (process_cpu(pid) - idle_before[name]) / args.seconds for name, (_, pid) in servers.items()}
        print("idle CPU: " + "  ".join(f"{name} {ms * 1e3:.1f} ms/s" for name, ms in idle.items()), flush=True)
        cpu_us: dict[str, list[float]] = {name: [] for name in servers}
        # Per chunk: (CPU per streamed request - CPU per one-body request) / chunks; for the
        # picker also with the fast config's observed response ("picker-observed").
        if args.chunks:
            cpu_us["picker-observed"] = []
        chunk_us: dict[str, list[float]] = {name: [] for name in cpu_us}
        for round_no in range(args.rounds):
            for name, (address, pid) in servers.items():
                before = process_cpu(pid)
                requests = asyncio.run(drive(address, body, args.rate, args.seconds))
                cpu_us[name].append((process_cpu(pid) - before) / max(requests, 1) * 1e6)
                line = f"round {round_no + 1} {name:>14}: {requests / args.seconds:7.0f} req/s" \
                       f"  server CPU {cpu_us[name][-1]:6.0f} us/req"
                if args.chunks:
                    before = process_cpu(pid)
                    streamed = asyncio.run(drive(address, body, args.rate, args.seconds, args.chunks))
                    per_stream = (process_cpu(pid) - before) / max(streamed, 1) * 1e6
                    chunk_us[name].append((per_stream - cpu_us[name][-1]) / args.chunks)
                    line += f"  streamed {per_stream:6.0f} us/req, {chunk_us[name][-1]:5.1f} us/chunk"
                print(line, flush=True)
            if args.chunks:
                address, pid = servers["picker"]
                before = process_cpu(pid)
                requests = asyncio.run(drive(address, body, args.rate, args.seconds, 0, observed=True))
                cpu_us["picker-observed"].append((process_cpu(pid) - before) / max(requests, 1) * 1e6)
                before = process_cpu(pid)
                streamed = asyncio.run(drive(address, body, args.rate, args.seconds, args.chunks, observed=True))
                per_stream = (process_cpu(pid) - before) / max(streamed, 1) * 1e6
                chunk_us["picker-observed"].append((per_stream - cpu_us["picker-observed"][-1]) / args.chunks)
                print(f"round {round_no + 1} picker-observed: server CPU {cpu_us['picker-observed'][-1]:6.0f} us/req"
                      f"  streamed {per_stream:6.0f} us/req, {chunk_us['picker-observed'][-1]:5.1f} us/chunk",
                      flush=True)
        med = {name: statistics.median(values) for name, values in cpu_us.items()}
        # Net of the idle cost, what the requests themselves add.
        net = {name: med[name] - idle[name.split("-observed")[0]] / args.rate * 1e6 for name in med}
        ratios = {
            "picker/noop-generator": med["picker"] / med["noop-generator"],
            "picker/noop-readwrite": med["picker"] / med["noop-readwrite"],
            "noop-readwrite/noop-generator": med["noop-readwrite"] / med["noop-generator"],
            "picker/noop-generator net of idle": net["picker"] / net["noop-generator"],
            "picker/noop-generator per round": [p / n for p, n in zip(cpu_us["picker"], cpu_us["noop-generator"],
                                                                       strict=True)],
        }
        print("\nserver CPU per request, medians: " + "  ".join(f"{k} {v:.0f} us" for k, v in med.items()))
        print("net of idle CPU:                 " + "  ".join(f"{k} {v:.0f} us" for k, v in net.items()))
        per_chunk = {name: statistics.median(values) for name, values in chunk_us.items() if values}
        if per_chunk:
            print("CPU per streamed chunk, medians: " + "  ".join(f"{k} {v:.1f} us" for k, v in per_chunk.items()))
        for key, value in ratios.items():
            shown = ", ".join(f"{v:.2f}" for v in value) if isinstance(value, list) else f"{value:.3f}"
            print(f"{key:>32}: {shown}")
        if args.json:
            args.json.write_text(json.dumps({"cpu_us": cpu_us, "medians": med, "idle_cpu_s_per_s": idle,
                                             "chunk_us": chunk_us, "net_of_idle": net, "ratios": ratios}, indent=2))
        return 0
    finally:
        for process in processes:
            process.stop()
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
