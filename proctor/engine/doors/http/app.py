"""The HTTP front: one FastAPI app served by uvicorn in the gRPC server's process and event loop (`http:` config).

Every request passes one gate (pure ASGI, before any body is read): a size limit (413; a body without a length
gets 411), the server's bearer tokens (401; `Authorization: Bearer <token>` exactly), then 503 with Retry-After
while the server drains or the route's service loads. Handlers take admission slots from their service's queue
(429 with Retry-After when full), run under the request deadline (504) and are cancelled when the client leaves.
Every route is counted in `proctor_requests{service, rpc=<route>, code=<HTTP status>}`, and every 4xx on them is
also logged at INFO with its reason (the error body's message) and counted in
`proctor_http_refusals_total{route, status}`: a trainer that shows only "400 Bad Request" (OpenRLHF, slime) leaves
the server's log as the one place the reason can be read. Malformed HTTP (a bad Content-Length, garbage) is
answered 400 by uvicorn's h11 parser; no thread is held by a slow or silent client.

Beside the services' routes, vLLM's small ones: `/health` and `/ping` (200 = up, empty body), `/version`
(proctor's) and `/load` (`{"server_load": requests in flight on the services' routes}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from importlib.metadata import version
from typing import Any, TypeVar

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proctor.engine.config import HttpConfig, TlsConfig
from proctor.engine.cores.bearer import authorization_values, bearer_authorized
from proctor.engine.cores.context import Lifecycle, ServiceContext
from proctor.engine.cores.metrics import Metrics
from proctor.engine.doors.http.errors import ApiError, error_response, http_error, json_response, validation_error
from proctor.engine.errors import ItemError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Routes open without a token, as gRPC health is: load balancers and trainers probe them (SGLang's
# /health_generate is open there too).
OPEN_ROUTES = frozenset({"/health", "/health/", "/ping", "/health_generate"})
_REASON_BYTES = 4096  # of a 4xx body, kept to log its reason


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # SIGTERM is the proctor server's: it drains gRPC and HTTP together


class HttpFront:
    def __init__(
        self, config: HttpConfig, tls: TlsConfig, tokens: list[bytes], lifecycle: Lifecycle, metrics: Metrics
    ) -> None:
        self.config = config
        self.tls = tls
        self.tokens = tokens
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.port = 0
        self.services: dict[str, str] = {}  # route path -> the service whose readiness and queue it uses
        self.in_flight = 0  # requests on the services' routes (vLLM's /load)
        self.contexts: dict[str, ServiceContext] = {}  # service name -> its context (queue, metrics)
        self.app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        self.app.add_exception_handler(ApiError, self._api_error)
        self.app.add_exception_handler(RequestValidationError, self._invalid)
        self._server: _Uvicorn | None = None
        self._serving: asyncio.Task[None] | None = None
        # vLLM's /health (TRL, prime-rl) and /ping (SageMaker), ms-swift's /health/: 200 = up, empty body
        for path in ("/health", "/health/", "/ping"):
            self.app.add_api_route(path, self._health, methods=["GET", "POST"] if path == "/ping" else ["GET"])
        self.app.add_api_route("/version", self._version, methods=["GET"])
        self.app.add_api_route("/load", self._load, methods=["GET"])

    async def _health(self) -> Response:
        return Response(status_code=200 if self.healthy() else 503)

    async def _version(self) -> Response:
        return json_response({"version": version("proctor")})

    async def _load(self) -> Response:
        return json_response({"server_load": self.in_flight})

    def include(self, router: APIRouter, svc: ServiceContext) -> None:
        """Serve a router's routes; they need the service ready and use its admission."""
        self.contexts[svc.name] = svc
        for route in router.routes:
            self.services[str(getattr(route, "path", ""))] = svc.name
        self.app.include_router(router)

    # ---- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        sock = _bind(cfg.host, cfg.port)
        self.port = sock.getsockname()[1]
        tls = self.tls
        config = uvicorn.Config(
            _Gate(self.app, self),
            log_config=None,
            access_log=False,
            lifespan="off",
            http="h11",
            ws="none",
            ssl_certfile=tls.cert_file or None,
            ssl_keyfile=tls.key_file or None,
            ssl_ca_certs=tls.client_ca_file or None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls.client_ca_file else ssl.CERT_NONE,
            h11_max_incomplete_event_size=64 * 1024,  # headers: a client cannot make us buffer more
            timeout_keep_alive=5,
            server_header=False,
        )
        self._server = _Uvicorn(config)
        self._serving = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._serving.done():
                self._serving.result()
                raise OSError(f"http: the server on {cfg.host}:{self.port} did not start")
            await asyncio.sleep(0.01)

    async def stop(self, grace_s: float) -> None:
        """After the lifecycle is draining (new requests get 503): wait up to `grace_s` for the requests in flight,
        then close."""
        if self._server is None or self._serving is None:
            return
        self._server.config.timeout_graceful_shutdown = max(0.1, grace_s)  # type: ignore[assignment]  # float works
        self._server.should_exit = True
        await self._serving

    # ---- what handlers call ----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def admitted(self, svc: ServiceContext, items: int) -> AsyncIterator[None]:
        """The service's queue slots for the request (its core's rule), refusals as HTTP: 429 with Retry-After when
        full, 400 when the request could never fit."""
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(svc.admitted(items))
            except ItemError as exc:  # only the admission's own refusal: the request's work raises as it is
                raise http_error(exc) from None
            yield

    async def run(self, request: Request, work: Awaitable[T]) -> T:
        """`work` under the request deadline, cancelled if the client disconnects first."""
        task = asyncio.ensure_future(work)
        left = asyncio.ensure_future(_disconnected(request.receive))
        timeout = self.config.request_timeout_s or None
        try:
            done, _ = await asyncio.wait({task, left}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            left.cancel()
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if left in done:
            raise ApiError(499, "client disconnected")
        raise ApiError(504, f"not finished within {timeout:g} s (http.request_timeout_s)")

    # ---- gate ------------------------------------------------------------------------------------------------

    def refusal(self, scope: Scope) -> ApiError | None:
        path = scope["path"]
        headers = dict(scope["headers"])
        if scope["method"] in ("POST", "PUT", "PATCH"):
            length = headers.get(b"content-length")
            if length is None:
                return ApiError(411, "a request body needs a Content-Length header")
            if int(length) > self.config.max_body_bytes:  # h11 has already refused a non-numeric length
                return ApiError(413, f"body of {int(length)} bytes > http.max_body_bytes {self.config.max_body_bytes}")
        if (
            self.tokens
            and path not in OPEN_ROUTES
            and not bearer_authorized(authorization_values(scope["headers"]), self.tokens)
        ):
            client = scope.get("client") or ("?", 0)
            log.warning(
                "http: refused %s %s from %s: missing or invalid bearer token", scope["method"], path, client[0]
            )
            self.metrics.auth_failures.labels("http").inc()
            return ApiError(401, "missing or invalid bearer token (Authorization: Bearer <token>)")
        if self.lifecycle.draining.is_set():
            return ApiError(503, "server is draining (shutting down); retry on another replica", retry_after_s=1)
        service = self.services.get(path)
        if service is not None and service not in self.lifecycle.ready:
            return ApiError(503, f"{service} is loading its model; retry when /health answers 200", retry_after_s=5)
        return None

    def healthy(self) -> bool:
        """Every service with a route here is ready, and the server is not draining."""
        return not self.lifecycle.draining.is_set() and set(self.services.values()) <= self.lifecycle.ready

    async def _api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def _invalid(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc))


class _Gate:
    """Pure ASGI in front of the app: refusals before any body is read, and one count per request."""

    def __init__(self, app: ASGIApp, front: HttpFront) -> None:
        self.app = app
        self.front = front

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        path = scope["path"]
        service = self.front.services.get(path)  # None for unknown paths: a scanner must not grow the registry
        body = bytearray()  # the start of a 4xx answer on a service's route: its reason

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and service is not None and 400 <= status < 500:
                body.extend(message.get("body", b"")[: _REASON_BYTES - len(body)])
            await send(message)

        if service is not None:
            self.front.in_flight += 1
        try:
            refusal = self.front.refusal(scope)
            if refusal is not None:
                await error_response(refusal)(scope, receive, sending)
            else:
                await self.app(scope, receive, sending)
        finally:
            if service is not None:
                self.front.in_flight -= 1
                m = self.front.metrics
                m.requests.labels(service, path, str(status)).inc()
                m.item_seconds.labels(service, path).observe(time.perf_counter() - started)
                if 400 <= status < 500:
                    m.http_refusals.labels(path, str(status)).inc()
                    log.info("http: %s %s answered %d: %s", scope["method"], path, status, _reason(bytes(body)))


def _reason(body: bytes) -> str:
    """The message of an error body in any of the front's shapes (vLLM's, SGLang's, the reward routes',
    FastAPI's), else its text."""
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        return body.decode(errors="replace") or "(no body)"
    if isinstance(parsed, dict):
        error = parsed.get("error", parsed.get("detail"))
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if error is not None:
            return str(error)
    return body.decode(errors="replace")


async def _disconnected(receive: Callable[[], Awaitable[Message]]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OSError(f"http: cannot bind {host}:{port} ({exc.strerror})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise OSError(f"http: cannot bind {host}:{port} ({exc.strerror})") from None
    sock.setblocking(False)
    return sock
