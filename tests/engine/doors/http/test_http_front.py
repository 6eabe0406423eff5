"""The HTTP front's gate, from outside: tokens, TLS, its own bind address, size limits, malformed HTTP, strict
bodies and strict JSON; a rules-only reward server (no model), so each case runs in milliseconds."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from proctor.engine.config import Config, HttpConfig, RewardConfig, ServerConfig, TlsConfig
from proctor.engine.server.lifecycle import ProctorServer
from tests.conftest import started
from tests.engine.doors.grpc.test_reward_service import GOOD, NO_ATOMS
from tests.engine.doors.grpc.test_security import pki  # noqa: F401 (a fixture)

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOKEN = "s3cret-token"
PROMPT = "What is the capital of France?"
BODY = {"query": [PROMPT + GOOD, PROMPT + NO_ATOMS], "prompts": [PROMPT] * 2, "labels": ["Paris"] * 2}


def strict_json(data: bytes) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(data, parse_constant=refuse)


def post(
    url: str, body: Any, headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None
) -> tuple[int, Any, dict[str, str]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, strict_json(response.read()), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as err:
        return err.code, strict_json(err.read()), {k.lower(): v for k, v in err.headers.items()}


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


def raw(port: int, request: bytes) -> bytes:
    """Send bytes as they are; read until the server closes or 2 s pass."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        sock.settimeout(2)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except TimeoutError:
            pass
    return out


def rules(http: HttpConfig, **server: Any) -> Config:
    return Config(
        server=ServerConfig(port=0, metrics_port=-1, **server),
        http=http,
        reward=RewardConfig(model="", mode="rules", total_steps=10),
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def guarded(monkeypatch_module: pytest.MonkeyPatch) -> AsyncIterator[ProctorServer]:
    monkeypatch_module.setenv("PROCTOR_TEST_HTTP_TOKENS", f"{TOKEN},another")
    server = await started(rules(HttpConfig(port=0, max_body_bytes=4096), auth_tokens_env="PROCTOR_TEST_HTTP_TOKENS"))
    yield server
    await server.drain(grace_s=1)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Any:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _url(server: ProctorServer, path: str = "/reward?training_step=1", scheme: str = "http") -> str:
    assert server.http is not None
    return f"{scheme}://127.0.0.1:{server.http.port}{path}"


async def test_tokens_guard_every_route_but_health(guarded: ProctorServer, caplog: pytest.LogCaptureFixture) -> None:
    url = _url(guarded)
    failures = guarded.metrics.auth_failures.labels("http")
    before = failures._value.get()
    with caplog.at_level(logging.WARNING):
        for headers in ({}, {"Authorization": TOKEN}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
            status, out, got = await asyncio.to_thread(post, url, BODY, headers)
            assert status == 401, headers
            assert got["www-authenticate"] == "Bearer" and "bearer token" in out["error"]["message"]
    assert failures._value.get() - before == 4
    assert sum("missing or invalid bearer token" in r.getMessage() for r in caplog.records) == 4
    status, out, _ = await asyncio.to_thread(post, url, BODY, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, out
    assert out["rewards"] == pytest.approx([1.0, 0.4]) and "r_atom" not in out["extra_logs"]  # absent, not NaN
    for probe, status in (("/health", 200), ("/ping", 200), ("/health_generate", 404)):  # no teacher: no route
        assert await asyncio.to_thread(get, _url(guarded, probe)) == status, probe  # probes need no token
    assert await asyncio.to_thread(get, _url(guarded, "/version")) == 401  # the rest do


async def test_strict_types_and_query_numbers(guarded: ProctorServer) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    base = _url(guarded, "/reward")
    for bad in (1.7, True, "3"):
        status, out, _ = await asyncio.to_thread(post, base, {**BODY, "training_step": bad}, auth)
        assert status == 400 and out["error"].startswith("training_step:"), (bad, out)
    for bad in ("1.7", "true", "1e3", ""):
        status, out, _ = await asyncio.to_thread(post, f"{base}?training_step={bad}", BODY, auth)
        assert status == 400 and out["error"].startswith("training_step: must be an integer"), (bad, out)
    status, out, _ = await asyncio.to_thread(post, f"{base}?training_step=2", {**BODY, "labels": [1, 2]}, auth)
    assert status == 400 and out["error"].startswith("labels[0]:"), out


async def test_size_limits_and_malformed_http(guarded: ProctorServer, caplog: pytest.LogCaptureFixture) -> None:
    assert guarded.http is not None
    port = guarded.http.port
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    head = b"POST /reward?training_step=1 HTTP/1.1\r\nHost: x\r\n" + auth
    with caplog.at_level(logging.DEBUG):
        for length in (b"abc", b"-1", b"1 2"):
            reply = await asyncio.to_thread(raw, port, head + b"Content-Length: " + length + b"\r\n\r\n{}")
            assert reply.startswith(b"HTTP/1.1 400"), (length, reply)
        # Too large: refused from the header alone, before a byte of the body is sent.
        reply = await asyncio.to_thread(raw, port, head + b"Content-Length: 999999999\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 413") and b"http.max_body_bytes" in reply
        reply = await asyncio.to_thread(raw, port, head + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 411")
        status, _, _ = await asyncio.to_thread(post, _url(guarded), b"{" * 5000, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 413
    assert not [r for r in caplog.records if r.exc_info], "malformed requests must not log tracebacks"
    assert await asyncio.to_thread(get, _url(guarded, "/health")) == 200


async def test_tls_and_its_own_bind_address(pki: dict[str, tuple[str, str]]) -> None:  # noqa: F811
    key, cert = pki["server"]
    server = await started(
        rules(HttpConfig(host="127.0.0.2", port=0), host="127.0.0.1", tls=TlsConfig(cert_file=cert, key_file=key))
    )
    try:
        assert server.http is not None
        port = server.http.port
        context = ssl.create_default_context(cafile=pki["ca"][1])
        context.check_hostname = False
        url = f"https://127.0.0.2:{port}/reward?training_step=1"
        status, out, _ = await asyncio.to_thread(post, url, BODY, None, context)
        assert status == 200 and out["rewards"] == pytest.approx([1.0, 0.4])
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP to a TLS port
            await asyncio.to_thread(post, url.replace("https", "http"), BODY)
        with pytest.raises(urllib.error.URLError):  # the gRPC host is not the HTTP one
            await asyncio.to_thread(post, url.replace("127.0.0.2", "127.0.0.1"), BODY, None, context)
    finally:
        await server.drain(grace_s=1)


async def test_off_by_default() -> None:
    assert Config().http.port == -1
    server = await started(rules(HttpConfig()))
    try:
        assert server.http is None
    finally:
        await server.drain(grace_s=1)
