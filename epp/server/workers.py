"""``epp serve --workers N``: a supervisor process running N picker processes.

Worker ``i`` is a plain ``epp serve`` with every flag the user gave, ext_proc on
``--grpc-port + i`` (Envoy lists them all: config/envoy-workers.yaml; why not
SO_REUSEPORT is in ``epp.server.worker_plan``), an ephemeral gRPC health port and an
admin port of its own. The supervisor holds the picker's public ports:

- ``--metrics-port``: ``/metrics`` is every worker's page with a ``worker`` label
  (``epp.server.worker_metrics``) plus the supervisor's own ``epp_workers_ready`` and
  ``epp_worker_restarts_total``; ``/healthz`` is 200 while the supervisor runs;
  ``/readyz`` is 200 while at least one worker is ready (a probe that restarts or
  unlists the whole pod for one lost worker would turn a partial loss into a full one);
  ``/debug/workers`` lists each worker's pid, ports, readiness and restarts.
  ``--admin-token-file`` guards ``/metrics`` and ``/debug/*`` as in a single picker.
- ``--grpc-health-port``: gRPC health, SERVING while at least one worker is ready.

A worker that exits is restarted after a delay that doubles for crashes in a row
(``RestartBackoff``), and the exit is logged with its code. A worker that exits with
code 2 (a configuration error) before it was ever ready stops everything: every worker
would fail the same way. SIGTERM (or SIGINT) to the supervisor forwards SIGTERM to every
worker, which drains as a single picker does (``--shutdown-delay``,
``--shutdown-grace-period``), and waits for them; a second signal kills them at once.
Workers die with the supervisor (Linux parent-death signal), so none outlives a
SIGKILLed supervisor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from epp.datalayer.endpoint import format_hostport
from epp.server.auth import TokenFile, bearer_auth_middleware
from epp.server.health import EXT_PROC_SERVICE
from epp.server.worker_metrics import merge_worker_pages
from epp.server.worker_plan import RestartBackoff, WorkerSlot, plan_workers, worker_argv

__all__ = ["Supervisor", "WorkerProcess", "run_supervisor"]

log = logging.getLogger("epp.workers")

_CONFIG_ERROR_EXIT = 2
_READINESS_PERIOD = 0.5
_PR_SET_PDEATHSIG = 1
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _detach_from_terminal_group() -> None:
    # Runs in the child between fork and exec. Its own process group: a Ctrl-C on the terminal
    # reaches only the supervisor, which forwards one SIGTERM (a worker takes a second signal
    # as "exit now"). The parent-death signal: a SIGKILLed supervisor takes its workers along.
    os.setpgid(0, 0)
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class WorkerProcess:
    """One worker's slot: its current process, readiness as last probed, restart count."""

    def __init__(self, slot: WorkerSlot) -> None:
        self.slot = slot
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.ready = False
        self.ever_ready = False
        self.restarts = 0
        self.last_exit: int | None = None

    @property
    def admin_url(self) -> str:
        return f"http://{format_hostport(self.slot.admin_host, self.slot.metrics_port)}"

    def describe(self) -> dict[str, Any]:
        return {"index": self.slot.index, "pid": self.process.pid if self.process else None,
                "grpcPort": self.slot.grpc_port, "metricsPort": self.slot.metrics_port, "ready": self.ready,
                "restarts": self.restarts, "lastExitCode": self.last_exit}


Launcher = Callable[[WorkerSlot], Sequence[str]]


class Supervisor:
    """Starts, watches and restarts the workers; ``clock`` and ``sleep`` are injectable for tests."""

    def __init__(self, slots: Sequence[WorkerSlot], command: Launcher, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 backoff: Callable[[], RestartBackoff] = RestartBackoff,
                 admin_token: TokenFile | None = None) -> None:
        self.workers = [WorkerProcess(slot) for slot in slots]
        self.command = command
        self.clock = clock
        self.sleep = sleep
        self._backoff = {w.slot.index: backoff() for w in self.workers}
        self.admin_token = admin_token
        self.stopping = False
        self.exit_code = 0
        self._fatal = asyncio.Event()
        self._watchers: list[asyncio.Task[None]] = []

    @property
    def ready(self) -> bool:
        return any(w.ready for w in self.workers)

    async def _spawn(self, worker: WorkerProcess) -> None:
        argv = list(self.command(worker.slot))
        # preexec_fn rather than process_group=: uvloop accepts only the former.
        worker.process = await asyncio.create_subprocess_exec(*argv, preexec_fn=_detach_from_terminal_group)
        worker.started_at = self.clock()
        log.info("worker %d started (pid %d, ext_proc port %d)", worker.slot.index, worker.process.pid,
                 worker.slot.grpc_port)

    async def _watch(self, worker: WorkerProcess) -> None:
        try:
            await self._keep_running(worker)
        except Exception:
            log.exception("supervising worker %d failed; stopping", worker.slot.index)
            self.exit_code = 1
            self._fatal.set()

    async def _keep_running(self, worker: WorkerProcess) -> None:
        """Restart the worker each time it exits, until the supervisor stops."""
        backoff = self._backoff[worker.slot.index]
        while not self.stopping:
            if worker.process is None:
                await self._spawn(worker)
            assert worker.process is not None
            if self.stopping:  # stop() signalled the others while this one was being started
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGTERM)
            code = await worker.process.wait()
            worker.ready = False
            worker.last_exit = code
            worker.process = None
            if self.stopping:
                return
            if code == _CONFIG_ERROR_EXIT and not worker.ever_ready:
                log.error("worker %d exited with a configuration error (code 2); stopping", worker.slot.index)
                self.exit_code = _CONFIG_ERROR_EXIT
                self._fatal.set()
                return
            delay = backoff.delay(worker.started_at, self.clock())
            worker.restarts += 1
            log.error("worker %d exited with code %d (%d restarts so far); restarting in %gs",
                      worker.slot.index, code, worker.restarts, delay)
            await self.sleep(delay)

    def start(self) -> None:
        self._watchers = [asyncio.create_task(self._watch(w), name=f"worker-{w.slot.index}") for w in self.workers]

    async def wait_fatal(self) -> None:
        await self._fatal.wait()

    async def stop(self, timeout: float) -> None:
        """SIGTERM every worker, wait up to ``timeout`` for them to drain, then SIGKILL what is left."""
        self.stopping = True
        running = [w.process for w in self.workers if w.process is not None and w.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if running:
            _, stuck = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in running], timeout=timeout)
            if stuck:
                log.error("%d workers did not stop within %gs; killing them", len(stuck), timeout)
                self.kill()
                await asyncio.wait(stuck, timeout=5)
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)

    def kill(self) -> None:
        for w in self.workers:
            if w.process is not None and w.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.process.kill()

    async def probe(self, session: aiohttp.ClientSession) -> None:
        """Refresh every worker's readiness from its ``/readyz``."""
        async def one(worker: WorkerProcess) -> None:
            if worker.process is None:
                worker.ready = False
                return
            try:
                async with session.get(worker.admin_url + "/readyz") as response:
                    worker.ready = response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                worker.ready = False
            if worker.ready and not worker.ever_ready:
                worker.ever_ready = True
                log.info("worker %d ready", worker.slot.index)

        await asyncio.gather(*(one(w) for w in self.workers))

    async def metrics_page(self, session: aiohttp.ClientSession) -> str:
        headers = {"Authorization": "Bearer " + self.admin_token.current().decode()} if self.admin_token else {}

        async def page(worker: WorkerProcess) -> tuple[str, str] | None:
            if worker.process is None:
                return None
            try:
                async with session.get(worker.admin_url + "/metrics", headers=headers) as response:
                    return (str(worker.slot.index), await response.text()) if response.status == 200 else None
            except (aiohttp.ClientError, TimeoutError):
                return None  # a worker that died a moment ago: its series are gone until it is back

        pages = [p for p in await asyncio.gather(*(page(w) for w in self.workers)) if p is not None]
        return merge_worker_pages(pages) + self.own_metrics()

    def own_metrics(self) -> str:
        lines = ["# HELP epp_workers_ready Picker worker processes that answer /readyz with 200.",
                 "# TYPE epp_workers_ready gauge", f"epp_workers_ready {sum(w.ready for w in self.workers)}",
                 "# HELP epp_worker_restarts_total Times the supervisor restarted a worker that exited.",
                 "# TYPE epp_worker_restarts_total counter"]
        lines += [f'epp_worker_restarts_total{{worker="{w.slot.index}"}} {w.restarts}' for w in self.workers]
        return "\n".join(lines) + "\n"


def admin_app(supervisor: Supervisor, session: aiohttp.ClientSession) -> web.Application:
    middlewares = [bearer_auth_middleware(supervisor.admin_token)] if supervisor.admin_token else []
    app = web.Application(middlewares=middlewares)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        ready = sum(w.ready for w in supervisor.workers)
        return web.Response(status=200 if ready else 503, text=f"{ready}/{len(supervisor.workers)} workers ready")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=await supervisor.metrics_page(session),
                            content_type="text/plain", charset="utf-8", headers={"X-Content-Type-Options": "nosniff"})

    async def workers(_: web.Request) -> web.Response:
        return web.json_response({"workers": [w.describe() for w in supervisor.workers]})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/debug/workers", workers)
    return app


async def _publish_readiness(supervisor: Supervisor, session: aiohttp.ClientSession,
                             servicer: health_aio.HealthServicer) -> None:
    reported: bool | None = None
    await servicer.set("liveness", _SERVING)
    while True:
        await supervisor.probe(session)
        if supervisor.ready != reported:
            reported = supervisor.ready
            for service in ("", "readiness", EXT_PROC_SERVICE):
                await servicer.set(service, _SERVING if reported else _NOT_SERVING)
        await asyncio.sleep(_READINESS_PERIOD)


async def _supervise(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from epp.server.cli import grpc_health_port

    health_port = grpc_health_port(args)
    slots = plan_workers(args.workers, args.grpc_port, health_port, args.metrics_port, args.admin_bind)
    token = TokenFile(args.admin_token_file) if args.admin_token_file is not None else None
    supervisor = Supervisor(slots, lambda slot: [sys.executable, "-m", "epp", "serve",
                                                 *worker_argv(parser, args, slot)], admin_token=token)
    timeout = aiohttp.ClientTimeout(total=2.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        health_server = grpc.aio.server()
        servicer = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, health_server)
        if health_server.add_insecure_port(f"{args.bind}:{health_port}") == 0:
            raise OSError(f"cannot listen for gRPC health on {args.bind}:{health_port}")
        await health_server.start()
        runner = web.AppRunner(admin_app(supervisor, session), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, args.admin_bind, args.metrics_port).start()
        supervisor.start()
        readiness = asyncio.create_task(_publish_readiness(supervisor, session, servicer))
        log.info("supervising %d workers: ext_proc ports %d-%d, admin http://%s:%d, gRPC health :%d",
                 len(slots), slots[0].grpc_port, slots[-1].grpc_port, args.admin_bind, args.metrics_port,
                 health_port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stop.is_set():
                log.warning("second signal: killing the workers without waiting")
                supervisor.kill()
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        fatal = asyncio.create_task(supervisor.wait_fatal())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([fatal, stopped], return_when=asyncio.FIRST_COMPLETED)
        log.info("stopping %d workers", len(slots))
        for servicer_name in ("", "readiness", EXT_PROC_SERVICE):
            await servicer.set(servicer_name, _NOT_SERVING)
        await supervisor.stop(args.shutdown_delay + args.shutdown_grace_period + 5.0)
        for task in (readiness, fatal, stopped):
            task.cancel()
        await runner.cleanup()
        await health_server.stop(1.0)
    return supervisor.exit_code


def run_supervisor(args: argparse.Namespace, parser: argparse.ArgumentParser,
                   run: Callable[[Any], int]) -> int:
    """Run the supervisor until SIGTERM/SIGINT; ``run`` runs a coroutine (the serve command's event loop)."""
    return run(_supervise(args, parser))
