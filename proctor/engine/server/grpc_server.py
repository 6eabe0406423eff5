"""The gRPC server: hosts the configured services, health, reflection and the metrics endpoint; drains on SIGTERM.

Start-up order: the port opens at once with every service NOT_SERVING (so probes and `grpcurl list` answer while
weights load), then each backend loads and its service turns SERVING. Calls to a service that is not ready, or
to any service while draining, are answered UNAVAILABLE (retryable) by an interceptor.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from proctor.engine.backends.base import Backend, Generator
from proctor.engine.backends.builtin_models import resolve_model
from proctor.engine.config import (
    Config,
    ConfigError,
    ServerConfig,
    ServiceLimits,
    TlsConfig,
)
from proctor.engine.rewards.pipeline import RewardScorer
from proctor.engine.rewards.steps import StepTracker
from proctor.engine.server.wiring import BackendSet
from proctor.engine.services import critic, reward, teacher
from proctor.engine.services.bearer import bearer_authorized
from proctor.engine.services.call_gate import CallLimit, guarded
from proctor.engine.services.http import openrlhf, teacher_front
from proctor.engine.services.http.app import HttpFront
from proctor.engine.services.metrics import Metrics
from proctor.engine.services.remote_critic import RemoteCritic
from proctor.engine.services.streams import Admission, Lifecycle, ServiceContext
from proctor.engine.skd.critic_scoring import CriticScorer
from proctor.engine.skd.triples import Critic
from proctor.v1 import critic_pb2_grpc, reward_pb2_grpc, teacher_pb2_grpc

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


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials | None:
    if not tls.cert_file:
        return None
    try:
        pair = (Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())
        ca = Path(tls.client_ca_file).read_bytes() if tls.client_ca_file else None
    except OSError as exc:
        raise ConfigError(f"server.tls: cannot read {exc.filename} ({exc.strerror})") from None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


class _Gate(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """In front of the proctor services (health and reflection pass): a bearer token when tokens are configured
    (UNAUTHENTICATED), then UNAVAILABLE while loading or draining, then the call limit and tolerant decoding."""

    def __init__(self, lifecycle: Lifecycle, tokens: list[bytes], calls: CallLimit, metrics: Metrics) -> None:
        self.lifecycle = lifecycle
        self.tokens = tokens
        self.calls = calls
        self.metrics = metrics

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        header = b""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                header = value.encode() if isinstance(value, str) else value
        return bearer_authorized(header, self.tokens)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        service = details.method.split("/")[1] if details.method.count("/") == 2 else ""
        if handler is None or not service.startswith("proctor."):
            return handler
        if self.tokens and not self._authorized(details):
            log.warning("grpc: refused %s: missing or invalid bearer token", details.method)  # never the token
            self.metrics.auth_failures.labels("grpc").inc()
            return _refuse(
                handler,
                "missing or invalid bearer token (metadata authorization: Bearer <token>)",
                grpc.StatusCode.UNAUTHENTICATED,
            )
        if self.lifecycle.draining.is_set():
            return _refuse(handler, "server is draining (shutting down); retry on another replica")
        if service not in self.lifecycle.ready:
            return _refuse(handler, f"{service} is loading its model; retry when health reports SERVING")
        return guarded(handler, self.calls)


def _refuse(
    handler: grpc.RpcMethodHandler[Any, Any], message: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
) -> grpc.RpcMethodHandler[Any, Any]:
    async def abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, message)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(
        abort, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


class ProctorServer:
    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.lifecycle = Lifecycle()
        self.calls = CallLimit(config.server.max_concurrent_calls)  # proctor calls only: Health always answers
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.port = 0
        self.metrics_port = 0
        self.backends = BackendSet(self.metrics)
        self._needs: dict[str, list[Backend]] = {}  # service -> the backends it waits for
        self.critic_scorer: CriticScorer | None = None
        self._metrics_server: Any = None
        self._loading: asyncio.Task[None] | None = None
        self._watching: asyncio.Task[None] | None = None
        self._server: grpc.aio.Server | None = None
        self.http: HttpFront | None = None
        self.steps: StepTracker | None = None
        self.remote_critic: RemoteCritic | None = None

    async def start(self) -> None:
        cfg = self.config.server
        tokens = load_tokens(cfg)
        credentials = server_credentials(cfg.tls)
        if cfg.metrics_port >= 0:  # first: a port in use is a config error before anything else is started
            try:
                self._metrics_server, _ = start_http_server(cfg.metrics_port, cfg.metrics_host, self.metrics.registry)
            except OSError as exc:
                raise ConfigError(
                    f"server.metrics_port: cannot listen on {cfg.metrics_host}:{cfg.metrics_port} ({exc.strerror}); "
                    "choose a free port, 0 for any, or -1 for no metrics endpoint"
                ) from None
            self.metrics_port = self._metrics_server.server_port
        if self.config.http.port >= 0:
            self.http = HttpFront(self.config.http, cfg.tls, tokens, self.lifecycle, self.metrics)
        server = grpc.aio.server(
            interceptors=[_Gate(self.lifecycle, tokens, self.calls, self.metrics)],
            options=[
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", cfg.max_message_bytes),
            ],
        )
        names = [reflection.SERVICE_NAME, health.SERVICE_NAME]
        if self.config.critic is not None:
            cc = self.config.critic
            classifier = self.backends.classifier(cc)
            self._needs[critic.SERVICE] = [classifier]
            self.critic_scorer = CriticScorer(classifier, cc, lambda: Path(resolve_model(cc.model)))
            svc = self._service_context(critic.SERVICE, cc.limits)
            self.metrics.watch_queue(critic.SERVICE, classifier.queue_depth)
            critic_pb2_grpc.add_CriticServicer_to_server(critic.CriticService(self.critic_scorer, svc), server)
            names.append(critic.SERVICE)
        if self.config.teacher is not None:
            tc = self.config.teacher
            backend, needs = self.backends.generator("teacher", tc)
            self._needs[teacher.SERVICE] = needs
            svc = self._service_context(teacher.SERVICE, tc.limits)
            self.metrics.watch_queue(teacher.SERVICE, backend.queue_depth)
            triples_critic: Critic | None = None
            if tc.critic == "local":
                triples_critic = self.critic_scorer
            elif tc.critic:
                self.remote_critic = triples_critic = RemoteCritic(tc.critic)
            service = teacher.TeacherService(backend, tc, svc, triples_critic)
            if self.http is not None:
                teacher_front.mount(self.http, backend, tc, svc)
            teacher_pb2_grpc.add_TeacherServicer_to_server(service, server)
            names.append(teacher.SERVICE)
        if self.config.reward is not None:
            rc = self.config.reward
            judge: Generator | None = None
            self._needs[reward.SERVICE] = []
            if rc.model:
                judge, self._needs[reward.SERVICE] = self.backends.generator("reward", rc)
            # the judge's queue; a rules-only service has none, and says so with a 0 rather than no series
            self.metrics.watch_queue(reward.SERVICE, judge.queue_depth if judge is not None else lambda: 0)
            svc = self._service_context(reward.SERVICE, rc.limits)
            steps = rc.steps
            self.steps = StepTracker(steps.rollouts_per_step, steps.state_dir, steps.max_runs)
            scorer = RewardScorer(rc, judge, self.steps)
            if self.http is not None:
                on_error, fallback = rc.openrlhf.on_error, rc.openrlhf.fallback_reward
                self.http.include(openrlhf.router(self.http, scorer, svc, on_error, fallback), svc)
            reward_pb2_grpc.add_RewardModelServicer_to_server(reward.RewardService(scorer, judge, svc), server)
            names.append(reward.SERVICE)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(names, server)
        for name in self._needs:
            await self._set_health(name, NOT_SERVING)
        await self.health.set("", NOT_SERVING)
        address = f"{cfg.host}:{cfg.port}"
        self.port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind {cfg.host}:{cfg.port}")
        await server.start()
        self._server = server
        if self.http is not None:
            await self.http.start()
        self._watch_gpus()
        self._loading = asyncio.create_task(self._load_all())

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

    def _service_context(self, name: str, limits: ServiceLimits) -> ServiceContext:
        return ServiceContext(
            name=name,
            metrics=self.metrics,
            lifecycle=self.lifecycle,
            admission=Admission(limits.max_queued_items),
            stream_window=limits.stream_window,
            max_items_per_stream=limits.max_items_per_stream,
            stream_window_bytes=limits.stream_window_bytes,
            max_message_bytes=self.config.server.max_message_bytes,
        )

    async def _load_all(self) -> None:
        # One backend at a time: transformers' lazy imports are not thread-safe, and loads would fight for memory.
        loaded: dict[int, asyncio.Future[bool]] = {
            id(b): asyncio.get_running_loop().create_future() for b in self.backends.all.values()
        }
        waiting = [
            asyncio.create_task(self._ready_when_loaded(name, [loaded[id(b)] for b in needs]))
            for name, needs in self._needs.items()
        ]
        # Generators first: a built-in critic may train itself on first use, and should not hold the teacher up.
        order = sorted(self.backends.all.values(), key=lambda b: b not in self.backends.generators())
        for backend in order:
            loaded[id(backend)].set_result(await self._load(backend))
        await asyncio.gather(*waiting)
        # What is loaded now (libraries, models: millions of objects) leaves the garbage collector's generations,
        # so a full collection, which stops every thread and the event loop with them, walks only what calls make.
        gc.freeze()
        if self._needs and not self.lifecycle.draining.is_set():
            await self.health.set("", SERVING)
        self._watching = asyncio.create_task(self._watch_backends())

    async def _watch_backends(self, every_s: float = 1.0) -> None:
        """A backend that dies (e.g. vLLM's engine core process) takes its services out: NOT_SERVING, calls
        UNAVAILABLE, so load balancers and the replica client move on. There is no coming back: restart."""
        while not self.lifecycle.draining.is_set():
            await asyncio.sleep(every_s)
            for name, needs in self._needs.items():
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
        return [name for name in self._needs if name not in self.lifecycle.ready]

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
        for name in self._needs:
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
        if self.remote_critic is not None:
            await self.remote_critic.close()
        if self.steps is not None:
            self.steps.close()
        if self._metrics_server is not None:
            # shutdown() waits for serve_forever's next 0.5 s poll; in a thread, so the loop does not wait on it
            await asyncio.to_thread(self._metrics_server.shutdown)
            self._metrics_server.server_close()

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
