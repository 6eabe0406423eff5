"""The server process's lifecycle: start (cores, doors, ports), model loading, health, the backends' watch, drain.

Start-up order: the ports open at once with every service NOT_SERVING (so probes and `grpcurl list` answer while
weights load), then each backend loads and its service turns SERVING. Calls to a service that is not ready, or
to any service while draining, are answered UNAVAILABLE (retryable) by the doors' gates.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2
from prometheus_client import start_http_server

from proctor.engine.backends.base import Backend
from proctor.engine.config import Config, ConfigError, ServerConfig
from proctor.engine.cores.context import Lifecycle
from proctor.engine.cores.metrics import Metrics
from proctor.engine.doors.grpc.call_gate import CallLimit
from proctor.engine.doors.grpc.server import bind, build_server, server_credentials
from proctor.engine.doors.http.app import HttpFront
from proctor.engine.doors.http.mount import mount
from proctor.engine.server.cores import Cores, build_cores
from proctor.engine.server.wiring import BackendSet

log = logging.getLogger(__name__)

# Of the drain's grace, what is kept for closing the server, the backends and the endpoints after the calls end.
_CLOSING_S = 1.0

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def load_tokens(config: ServerConfig) -> list[bytes]:
    """The accepted bearer tokens; empty = no authentication."""
    tokens: list[str] = []
    if config.auth_tokens_file:
        try:
            lines = Path(config.auth_tokens_file).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"server.auth_tokens_file: cannot read it ({exc.strerror})") from None
        tokens += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if config.auth_tokens_env:
        tokens += [t.strip() for t in os.environ.get(config.auth_tokens_env, "").split(",") if t.strip()]
    if (config.auth_tokens_file or config.auth_tokens_env) and not tokens:
        raise ConfigError("server: token authentication is configured but no token was found")
    return [t.encode() for t in tokens]


class ProctorServer:
    """One process: the hosted services' cores behind the gRPC door (and the HTTP front when configured), the
    metrics endpoint, model loading, health, and the drain."""

    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.lifecycle = Lifecycle()
        self.calls = CallLimit(config.server.max_concurrent_calls)  # proctor calls only: Health always answers
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.port = 0
        self.metrics_port = 0
        self.backends = BackendSet(self.metrics)
        self.cores = Cores()
        self._metrics_server: Any = None
        self._loading: asyncio.Task[None] | None = None
        self._watching: asyncio.Task[None] | None = None
        self._server: grpc.aio.Server | None = None
        self.http: HttpFront | None = None

    async def start(self) -> None:
        """Open the ports at once with every service NOT_SERVING, then load the models in the background."""
        cfg = self.config.server
        tokens = load_tokens(cfg)
        server_credentials(cfg.tls)  # every file and connection a config names is checked before a port opens
        self.cores = cores = build_cores(self.config, self.backends, self.metrics, self.lifecycle)
        self._start_metrics_endpoint()
        if self.config.http.port >= 0:
            self.http = HttpFront(self.config.http, cfg.tls, tokens, self.lifecycle, self.metrics)
            mount(
                self.http,
                teacher=cores.teacher,
                critic=cores.critic,
                cc=self.config.critic,
                reward=cores.reward,
                rc=self.config.reward,
            )
        server = build_server(
            cfg,
            self.lifecycle,
            tokens,
            self.calls,
            self.metrics,
            self.health,
            teacher=cores.teacher,
            critic=cores.critic,
            reward=cores.reward,
        )
        for name in cores.needs:
            await self._set_health(name, NOT_SERVING)
        await self.health.set("", NOT_SERVING)
        self.port = bind(server, cfg)
        await server.start()
        self._server = server
        if self.http is not None:
            await self.http.start()
        self._watch_gpus()
        self._loading = asyncio.create_task(self._load_all())

    def _start_metrics_endpoint(self) -> None:
        """First of all: a port in use is a config error before anything else is started."""
        cfg = self.config.server
        if cfg.metrics_port < 0:
            return
        try:
            self._metrics_server, _ = start_http_server(cfg.metrics_port, cfg.metrics_host, self.metrics.registry)
        except OSError as exc:
            raise ConfigError(
                f"server.metrics_port: cannot listen on {cfg.metrics_host}:{cfg.metrics_port} ({exc.strerror}); "
                "choose a free port, 0 for any, or -1 for no metrics endpoint"
            ) from None
        self.metrics_port = self._metrics_server.server_port

    def _watch_gpus(self) -> None:
        import torch

        if not torch.cuda.is_available():
            return

        def read(stat: Callable[[int], int], index: int) -> Callable[[], float]:
            return lambda: float(stat(index))

        for index in range(torch.cuda.device_count()):
            device = f"cuda:{index}"
            self.metrics.gpu_memory.labels(device).set_function(read(torch.cuda.memory_allocated, index))
            self.metrics.gpu_memory_peak.labels(device).set_function(read(torch.cuda.max_memory_allocated, index))

    async def _load_all(self) -> None:
        # One backend at a time: transformers' lazy imports are not thread-safe, and loads would fight for memory.
        loaded: dict[int, asyncio.Future[bool]] = {
            id(b): asyncio.get_running_loop().create_future() for b in self.backends.all.values()
        }
        waiting = [
            asyncio.create_task(self._ready_when_loaded(name, [loaded[id(b)] for b in needs]))
            for name, needs in self.cores.needs.items()
        ]
        # Generators first: a built-in critic may train itself on first use, and should not hold the teacher up.
        order = sorted(self.backends.all.values(), key=lambda b: b not in self.backends.generators())
        for backend in order:
            loaded[id(backend)].set_result(await self._load(backend))
        await asyncio.gather(*waiting)
        # What is loaded now (libraries, models: millions of objects) leaves the garbage collector's generations,
        # so a full collection, which stops every thread and the event loop with them, walks only what calls make.
        gc.freeze()
        if self.cores.needs and not self.lifecycle.draining.is_set():
            await self.health.set("", SERVING)
        self._watching = asyncio.create_task(self._watch_backends())

    async def _watch_backends(self, every_s: float = 1.0) -> None:
        """A backend that dies (e.g. vLLM's engine core process) takes its services out: NOT_SERVING, calls
        UNAVAILABLE, so load balancers and the replica client move on. There is no coming back: restart."""
        while not self.lifecycle.draining.is_set():
            await asyncio.sleep(every_s)
            for name, needs in self.cores.needs.items():
                if name in self.lifecycle.ready and not all(b.alive() for b in needs):
                    self.lifecycle.ready.discard(name)
                    await self._set_health(name, NOT_SERVING)
                    await self.health.set("", NOT_SERVING)
                    log.error("%s: its backend has died; NOT_SERVING until the server is restarted", name)

    async def _load(self, backend: Backend) -> bool:
        try:
            await backend.start()
            return True
        except Exception:
            log.exception("a backend failed to load its model; the services using it stay NOT_SERVING")
            return False

    async def _ready_when_loaded(self, name: str, loads: list[asyncio.Future[bool]]) -> None:
        if not all(await asyncio.gather(*loads)) or self.lifecycle.draining.is_set():
            return
        self.lifecycle.ready.add(name)
        await self._set_health(name, SERVING)
        log.info("%s is SERVING", name)

    async def wait_until_ready(self) -> None:
        if self._loading is not None:
            await self._loading

    def failed_services(self) -> list[str]:
        """After wait_until_ready: the services whose model did not load (they stay NOT_SERVING)."""
        return [name for name in self.cores.needs if name not in self.lifecycle.ready]

    async def _set_health(self, name: str, status: Any) -> None:
        await self.health.set(name, status)
        self.metrics.serving.labels(name).set(1 if status == SERVING else 0)

    async def drain(self, grace_s: float | None = None) -> None:
        """Stop taking work: health NOT_SERVING, new calls UNAVAILABLE, in-flight items finish within the grace.

        The port stays open while the calls in flight finish, so a client connecting meanwhile is answered
        (UNAVAILABLE: retry elsewhere) rather than refused; everything, the closing of backends included, is done
        within the grace."""
        grace = self.config.server.drain_grace_s if grace_s is None else grace_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self.lifecycle.draining.set()
        self.lifecycle.ready.clear()
        await self.health.enter_graceful_shutdown()
        for name in self.cores.needs:
            self.metrics.serving.labels(name).set(0)
        calls_end = deadline - min(_CLOSING_S, grace / 2)  # what is left after it is for closing
        while self.calls.active and loop.time() < calls_end:
            await asyncio.sleep(0.02)
        left = max(0.0, calls_end - loop.time())
        await asyncio.gather(
            self._server.stop(left) if self._server is not None else asyncio.sleep(0),
            self.http.stop(left) if self.http is not None else asyncio.sleep(0),
        )
        for task in (self._loading, self._watching):
            if task is not None:
                task.cancel()
        for backend in self.backends.all.values():
            await backend.close()
        await self.cores.close()
        if self._metrics_server is not None:
            # shutdown() waits for serve_forever's next 0.5 s poll; in a thread, so the loop does not wait on it
            await asyncio.to_thread(self._metrics_server.shutdown)
            self._metrics_server.server_close()

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
