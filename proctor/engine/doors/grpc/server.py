"""The gRPC server of the three services: TLS, the gate every proctor call passes (bearer token, loading and
draining, the call limit, tolerant decoding), the servicers over their cores, health and reflection.

Health and reflection pass the gate untouched, so probes and `grpcurl list` answer while weights load and while the
server drains; a call to a service that is not ready, or to any while draining, is answered UNAVAILABLE.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from proctor.engine.config import ConfigError, ServerConfig, TlsConfig
from proctor.engine.cores.bearer import authorization_values, bearer_authorized
from proctor.engine.cores.context import CRITIC, REWARD, TEACHER, Lifecycle
from proctor.engine.cores.critic import CriticCore
from proctor.engine.cores.metrics import Metrics
from proctor.engine.cores.reward import RewardCore
from proctor.engine.cores.teacher import TeacherCore
from proctor.engine.doors.grpc.call_gate import CallLimit, guarded
from proctor.engine.doors.grpc.critic import CriticService
from proctor.engine.doors.grpc.reward import RewardService
from proctor.engine.doors.grpc.teacher import TeacherService
from proctor.v1 import critic_pb2_grpc, reward_pb2_grpc, teacher_pb2_grpc

log = logging.getLogger(__name__)
_GRPC_LOG = logging.getLogger("grpc._cython.cygrpc")
_WRITE_FAILED = "ExecuteBatchError raised in core by servicer method"


class _CallerGone(logging.Filter):
    """gRPC logs a traceback at ERROR when a reply's write fails because the caller cancelled or went away, if the
    write lost the race with the cancellation's own event: a trainer stopped mid-stream did it on most stops. Such a
    record becomes one INFO line; every other gRPC record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(_WRITE_FAILED):
            return True
        log.info("a caller went away while its replies were being sent %s", message.removeprefix(_WRITE_FAILED).strip())
        return False


def build_server(
    cfg: ServerConfig,
    lifecycle: Lifecycle,
    tokens: list[bytes],
    calls: CallLimit,
    metrics: Metrics,
    health_servicer: Any,
    *,
    teacher: TeacherCore | None,
    critic: CriticCore | None,
    reward: RewardCore | None,
) -> grpc.aio.Server:
    """The server with its gate and a servicer per hosted core; not yet bound."""
    if not any(isinstance(f, _CallerGone) for f in _GRPC_LOG.filters):
        _GRPC_LOG.addFilter(_CallerGone())
    server = grpc.aio.server(
        interceptors=[_Gate(lifecycle, tokens, calls, metrics)],
        options=[
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            # gRPC's default SO_REUSEPORT lets a second server share a port in use and take half its callers.
            ("grpc.so_reuseport", 0),
        ],
    )
    names = [reflection.SERVICE_NAME, health.SERVICE_NAME]
    if critic is not None:
        critic_pb2_grpc.add_CriticServicer_to_server(CriticService(critic), server)
        names.append(CRITIC)
    if teacher is not None:
        teacher_pb2_grpc.add_TeacherServicer_to_server(TeacherService(teacher), server)
        names.append(TEACHER)
    if reward is not None:
        reward_pb2_grpc.add_RewardModelServicer_to_server(RewardService(reward), server)
        names.append(REWARD)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(names, server)
    return server


def bind(server: grpc.aio.Server, cfg: ServerConfig) -> int:
    """Open the server's port (TLS when configured); the port it got."""
    credentials = server_credentials(cfg.tls)
    address = f"{cfg.host}:{cfg.port}"
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:  # grpcio raises this where older versions returned 0
        port = 0
    if port == 0:
        raise ConfigError(
            f"server.port: cannot listen on {address} (in use, or not an address of this machine); "
            "choose a free port, or 0 for any"
        )
    return port


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
        return bearer_authorized(authorization_values(details.invocation_metadata or ()), self.tokens)

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
