"""``SimServer``: one simulated replica (engine task + aiohttp server) in the current event loop.

Usage::

    server = SimServer(SimConfig(port=0, time_scale=0.1))
    await server.start()          # binds host:port (port 0: an ephemeral port)
    print(server.url)             # http://127.0.0.1:<real port>
    ...
    await server.stop()

Resource handling: ``start`` creates the engine task and the listener; ``stop`` cancels the
task, aborts every request and closes the listener and connections. Several servers can run
in one loop, each with its own state; that is how ``--replicas`` works.

KV events (``config.kv_events``): ``start`` opens the replica's ZeroMQ publisher once the HTTP
port is known (the topic may name it) and ``stop`` flushes and closes it; ``kv_events_endpoint``
is the PUB address actually bound. With ``config.tokenizer_path`` prompts are tokenized by
``epp.tokenization.PromptTokenizer``, the picker's function, so both sides agree on token ids.

Error handling: ``start`` raises ``OSError`` if the address (HTTP or ZeroMQ) is taken, and
``ConfigError`` if a custom gauge has the name of a metric the page already has or the
tokenizer file cannot be loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from epp.sim.api.context import ReplicaContext
from epp.sim.api.control import ControlRoutes
from epp.sim.api.inference import InferenceRoutes
from epp.sim.api.info import InfoRoutes
from epp.sim.api.middleware import make_middleware
from epp.sim.config import ConfigError, SimConfig
from epp.sim.engine import Engine
from epp.sim.faults import FaultMode
from epp.sim.kv_publisher import KVEventPublisher
from epp.sim.metrics.custom import CustomGauges, family_names
from epp.sim.stats import SimStats
from epp.sim.tokenizer import Tokenizer

if TYPE_CHECKING:
    from epp.tokenization import PromptTokenizer

__all__ = ["SimServer"]

_LOG = logging.getLogger(__name__)

# Time given to in-flight handlers when the listener closes; hung ones are cancelled after it.
_SHUTDOWN_GRACE = 0.05

# Delay before "down" closes connections, so the /sim/fault answer that asked for it gets out.
_DOWN_DELAY = 0.02


class SimServer:
    """One replica: engine, HTTP routes, fault control."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self._tokenizer = Tokenizer()
        self._ctx: ReplicaContext | None = None
        self._engine_task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._closing: asyncio.Task[None] | None = None
        self._port = config.port
        self._publisher: KVEventPublisher | None = None

    # --- properties --------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The bound port (the real one when the config asked for port 0)."""
        return self._port

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self._port}"

    @property
    def engine(self) -> Engine:
        """The engine, for in-process inspection (tests, benchmarks)."""
        return self._context().engine

    @property
    def fault(self) -> FaultMode:
        return self._context().fault.mode

    @property
    def kv_events_endpoint(self) -> str | None:
        """The PUB endpoint (bound address, or the one connected to); None without events."""
        return self._publisher.endpoint if self._publisher is not None else None

    @property
    def kv_replay_endpoint(self) -> str | None:
        return self._publisher.replay_endpoint if self._publisher is not None else None

    def stats(self) -> SimStats:
        """A frozen snapshot of the replica's counters and gauges."""
        ctx = self._context()
        return ctx.engine.stats(fault=ctx.fault.mode.value, failed=ctx.failed)

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the engine and listen; returns once connections are accepted."""
        if self._ctx is not None:
            raise RuntimeError("SimServer already started")
        engine = Engine(self.config, self._tokenizer)
        prompt_tokenizer = _load_prompt_tokenizer(self.config.tokenizer_path)
        # Built before the engine runs so that a name clash fails start, not a later scrape.
        custom = CustomGauges(self.config.model_name, self.config.custom_gauges,
                              reserved=family_names(engine.metrics.render().decode()))
        self._ctx = ReplicaContext(config=self.config, engine=engine, tokenizer=self._tokenizer, custom=custom,
                                   prompt_tokenizer=prompt_tokenizer)
        name = f"epp-sim-engine-{self.config.replica_index}"
        self._engine_task = asyncio.create_task(engine.run(), name=name)
        self._engine_task.add_done_callback(self._engine_stopped)
        try:
            await self._listen()
            self._open_publisher(engine)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop listening, abort every request, stop the engine. Idempotent."""
        if self._closing is not None:
            self._closing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._closing
            self._closing = None
        await self._close_listener()
        if self._engine_task is not None:
            self._engine_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._engine_task
            self._engine_task = None
        if self._ctx is not None:
            self._ctx.fault.set(FaultMode.OK)  # release hung handlers so they can finish
            self._abort_all()
        if self._publisher is not None:
            publisher, self._publisher = self._publisher, None
            await asyncio.to_thread(publisher.close)

    async def set_fault(self, mode: FaultMode, *, defer_close: bool = False) -> None:
        """Switch the fault mode (see ``faults.py``); ``ok`` after ``down`` listens again."""
        ctx = self._context()
        previous = ctx.fault.mode
        ctx.fault.set(mode)
        if mode is FaultMode.HANG:
            ctx.engine.pause()
        else:
            ctx.engine.resume()
        if mode is FaultMode.DOWN and previous is not FaultMode.DOWN:
            if self._site is not None:
                await self._site.stop()  # refuse new connections at once
            if defer_close:
                self._closing = asyncio.create_task(self._close_later())
            else:
                await self._close_listener()
                self._abort_all()
        elif previous is FaultMode.DOWN and mode is not FaultMode.DOWN:
            if self._closing is not None:
                await self._closing
                self._closing = None
            await self._close_listener()
            await self._listen()

    # --- internals ------------------------------------------------------------------------------
    def _context(self) -> ReplicaContext:
        if self._ctx is None:
            raise RuntimeError("SimServer not started")
        return self._ctx

    def _app(self) -> web.Application:
        ctx = self._context()
        app = web.Application(middlewares=[make_middleware(ctx)], client_max_size=64 * 1024 * 1024)
        inference = InferenceRoutes(ctx)

        async def http_set_fault(mode: FaultMode) -> None:
            await self.set_fault(mode, defer_close=True)

        app.add_routes(inference.routes())
        app.add_routes(InfoRoutes(ctx, inference).routes())
        app.add_routes(ControlRoutes(ctx, http_set_fault).routes())
        return app

    async def _listen(self) -> None:
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.config.host, self._port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        runner = web.AppRunner(self._app(), access_log=None, handle_signals=False, handler_cancellation=True,
                               shutdown_timeout=_SHUTDOWN_GRACE)
        await runner.setup()
        site = web.SockSite(runner, sock, backlog=1024)
        await site.start()
        self._runner, self._site = runner, site

    def _open_publisher(self, engine: Engine) -> None:
        settings = self.config.kv_events
        if settings is None or not settings.active:
            return
        mine = settings.for_replica(self.config.replica_index, host=self.config.host, port=self._port,
                                    model=self.config.model_name)
        self._publisher = KVEventPublisher(mine)
        engine.publish_kv_events(self._publisher)

    def _engine_stopped(self, task: asyncio.Task[None]) -> None:
        """A crashed engine must not leave clients waiting forever: log and abort everything."""
        if task.cancelled() or task.exception() is None:
            return
        _LOG.error("engine of replica %d crashed", self.config.replica_index, exc_info=task.exception())
        self._abort_all()

    async def _close_later(self) -> None:
        await asyncio.sleep(_DOWN_DELAY)
        await self._close_listener()
        self._abort_all()

    async def _close_listener(self) -> None:
        runner, self._runner, self._site = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

    def _abort_all(self) -> None:
        engine = self._context().engine
        for req in [*engine.scheduler.running, *engine.scheduler.waiting]:
            engine.abort(req)


def _load_prompt_tokenizer(path: str | None) -> PromptTokenizer | None:
    """``--tokenizer``: the picker's tokenizer, loaded once per replica."""
    if path is None:
        return None
    from epp.tokenization import PromptTokenizer

    try:
        return PromptTokenizer.from_file(Path(path))
    except Exception as exc:  # the tokenizers library raises plain Exception for a bad file
        raise ConfigError("tokenizer", f"cannot load a tokenizer.json: {exc}", path) from exc
