"""TLS, mutual TLS and bearer tokens: the right credentials pass, wrong ones fail; health stays open."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proctor.clients.reward import AsyncRewardClient, reward_request
from proctor.clients.streaming import Credentials
from proctor.engine.config import Config, ConfigError, RewardConfig, ServerConfig, TlsConfig
from proctor.v1 import common_pb2, reward_pb2_grpc
from tests.conftest import started
from tests.engine.doors.grpc.test_reward_service import GOOD

pytestmark = pytest.mark.asyncio(loop_scope="session")
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED.value[0]


def _cert(name: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, ca: bool = False):  # type: ignore[no-untyped-def]
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return key, builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, name: str, key, cert) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    key_file, cert_file = folder / f"{name}.key", folder / f"{name}.pem"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(key_file), str(cert_file)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _cert("proctor test CA", None, ca=True)
    other_key, other_cert = _cert("another CA", None, ca=True)
    files = {"ca": _write(folder, "ca", ca_key, ca_cert), "other_ca": _write(folder, "other", other_key, other_cert)}
    for name, issuer in (("server", (ca_cert.subject, ca_key)), ("client", (ca_cert.subject, ca_key)),
                         ("stranger", (other_cert.subject, other_key))):  # fmt: skip
        files[name] = _write(folder, name, *_cert(name, issuer))
    return files


def _rules(server: ServerConfig) -> Config:
    return Config(server=server, reward=RewardConfig(model="", mode="rules", total_steps=10))


async def _reward_error(port: int, credentials: Credentials) -> tuple[int, str]:
    async with AsyncRewardClient(f"localhost:{port}", credentials=credentials, timeout_s=10) as client:
        result = (await client.reward([reward_request("x", "q", GOOD, "Paris", 1)]))["x"]
    return (result.error.code, result.error.message) if result.HasField("error") else (0, "")


async def _reward_code(port: int, credentials: Credentials) -> int:
    return (await _reward_error(port, credentials))[0]


async def test_a_refused_token_reads_unauthenticated_however_much_is_being_sent(tmp_path: Path) -> None:
    """grpc.aio loses the server's status when a call ends while the client is still sending (grpc/grpc#36066):
    most of these large streams would read INTERNAL (UNAVAILABLE to our callers, retryable) without the client's
    second, empty call."""
    (tmp_path / "tokens").write_text("s3cret-one\n")
    server = await started(_rules(ServerConfig(port=0, metrics_port=-1, auth_tokens_file=str(tmp_path / "tokens"))))
    big = [reward_request(f"r{i}", "q", GOOD + " pad" * 25_000, "Paris", 1) for i in range(64)]
    try:
        async with AsyncRewardClient(
            f"localhost:{server.port}", credentials=Credentials(token="wrong"), timeout_s=30
        ) as client:
            for _ in range(5):
                results = await client.reward(big, batch_size=2)
                assert {r.error.code for r in results.values()} == {UNAUTHENTICATED}, next(iter(results.values()))
    finally:
        await server.drain(grace_s=1)


async def test_bearer_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "tokens").write_text("# trainers\ns3cret-one\n")
    monkeypatch.setenv("PROCTOR_TOKENS", "s3cret-two, s3cret-three")
    server = await started(
        _rules(
            ServerConfig(
                port=0, metrics_port=-1, auth_tokens_file=str(tmp_path / "tokens"), auth_tokens_env="PROCTOR_TOKENS"
            )
        )
    )
    failures = server.metrics.auth_failures.labels("grpc")
    before = failures._value.get()
    try:
        assert await _reward_code(server.port, Credentials(token="s3cret-one")) == 0
        assert await _reward_code(server.port, Credentials(token="s3cret-three")) == 0
        with caplog.at_level(logging.WARNING):
            for wrong in (Credentials(token="s3cret"), Credentials()):
                code, message = await _reward_error(server.port, wrong)
                assert code == UNAUTHENTICATED and "s3cret" not in message, message
            async with grpc.aio.insecure_channel(f"localhost:{server.port}") as channel:
                info = reward_pb2_grpc.RewardModelStub(channel).Info
                # As the HTTP front: `Bearer <token>` exactly (the scheme in any case); a bare token is refused.
                for header in ("s3cret-one", "Basic s3cret-one", "Bearer", "Bearer s3cret-one x"):
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await info(common_pb2.InfoRequest(), metadata=(("authorization", header),), timeout=10)
                    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, header
                    assert "s3cret" not in (refused.value.details() or "")
                    assert "authorization: Bearer <token>" in (refused.value.details() or "")
                for header in ("Bearer s3cret-two", "bearer s3cret-two"):
                    await info(common_pb2.InfoRequest(), metadata=(("authorization", header),), timeout=10)
                # probes need no token
                reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # Each refusal counted once, as transport="grpc": 6, and one more for each stream the aio client asks again
        # because grpc.aio lost its status (clients/streaming.py, status_behind).
        refusals = [r.getMessage() for r in caplog.records if "missing or invalid bearer token" in r.getMessage()]
        assert failures._value.get() - before == len(refusals) >= 6
        assert len(refusals) <= 8 and all("grpc" in m for m in refusals), refusals
        assert not any("s3cret" in r.getMessage() for r in caplog.records), "a token reached the log"
    finally:
        await server.drain(grace_s=1)


async def test_tls_and_mutual_tls(pki: dict[str, tuple[str, str]]) -> None:
    ca = pki["ca"][1]
    key, cert = pki["server"]
    tls = await started(_rules(ServerConfig(port=0, metrics_port=-1, tls=TlsConfig(cert_file=cert, key_file=key))))
    mtls = await started(
        _rules(ServerConfig(port=0, metrics_port=-1, tls=TlsConfig(cert_file=cert, key_file=key, client_ca_file=ca)))
    )
    try:
        assert await _reward_code(tls.port, Credentials(ca_file=ca)) == 0
        # a client that trusts another CA cannot complete the handshake
        assert (
            await _reward_code(tls.port, Credentials(ca_file=pki["other_ca"][1]))
            == grpc.StatusCode.UNAVAILABLE.value[0]
        )
        assert await _reward_code(tls.port, Credentials()) == grpc.StatusCode.UNAVAILABLE.value[0]  # plaintext
        client_key, client_cert = pki["client"]
        assert await _reward_code(mtls.port, Credentials(ca_file=ca, cert_file=client_cert, key_file=client_key)) == 0
        assert await _reward_code(mtls.port, Credentials(ca_file=ca)) != 0, "no client certificate"
        stranger_key, stranger_cert = pki["stranger"]
        assert (
            await _reward_code(mtls.port, Credentials(ca_file=ca, cert_file=stranger_cert, key_file=stranger_key)) != 0
        )
    finally:
        await tls.drain(grace_s=1)
        await mtls.drain(grace_s=1)


async def test_bad_security_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both cert_file and key_file"):
        TlsConfig(cert_file="x.pem")
    with pytest.raises(ConfigError, match="no token was found"):
        (tmp_path / "empty").write_text("\n")
        from proctor.engine.server.lifecycle import load_tokens

        load_tokens(ServerConfig(auth_tokens_file=str(tmp_path / "empty")))


# (authorization fields as sent, whether they pass): one rule on both doors (engine/services/bearer.py).
BEARER_CASES = [
    (["Bearer s3cret-one"], True),
    (["bearer s3cret-one"], True),  # the scheme in any case
    (["BEARER s3cret-one"], True),
    (["Bearer s3cret-one "], True),  # spaces around the value are not part of it (HTTP strips them itself)
    (["Bearer S3CRET-ONE"], False),  # the token exactly
    (["Bearer  s3cret-one"], False),  # one space after the scheme
    (["Bearer s3cret-one x"], False),
    (["s3cret-one"], False),
    (["Basic s3cret-one"], False),
    (["Bearer"], False),
    ([], False),
    (["Bearer s3cret-one", "Bearer s3cret-one"], False),  # exactly one field
    (["Bearer wrong", "Bearer s3cret-one"], False),
    (["Bearer s3cret-one", "Bearer wrong"], False),
]


async def test_one_bearer_rule_on_both_doors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each case passes or fails alike over gRPC and HTTP, and every refusal counts once on its door's counter."""
    import asyncio

    from proctor.engine.config import HttpConfig
    from tests.engine.doors.http.test_http_front import raw

    monkeypatch.setenv("PROCTOR_TOKENS", "s3cret-one")
    server = await started(
        Config(
            server=ServerConfig(port=0, metrics_port=-1, auth_tokens_env="PROCTOR_TOKENS"),
            http=HttpConfig(port=0),
            reward=RewardConfig(model="", mode="rules", total_steps=10),
        )
    )
    assert server.http is not None
    counters = {door: server.metrics.auth_failures.labels(door) for door in ("grpc", "http")}
    before = {door: c._value.get() for door, c in counters.items()}
    body = b'{"query": ["q<answer>x</answer>"], "prompts": ["q"], "labels": ["x"]}'
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            info = reward_pb2_grpc.RewardModelStub(channel).Info
            for fields, passes in BEARER_CASES:
                try:
                    await info(common_pb2.InfoRequest(), metadata=[("authorization", f) for f in fields], timeout=10)
                    grpc_passed = True
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc
                    grpc_passed = False
                head = "".join(f"Authorization: {f}\r\n" for f in fields).encode()
                request = (
                    b"POST /reward?training_step=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                    + head
                    + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                    + body
                )
                reply = await asyncio.to_thread(raw, server.http.port, request)
                assert reply.startswith((b"HTTP/1.1 200", b"HTTP/1.1 401")), reply[:200]
                http_passed = reply.startswith(b"HTTP/1.1 200")
                assert (grpc_passed, http_passed) == (passes, passes), fields
    finally:
        await server.drain(grace_s=1)
    refused = sum(1 for _, passes in BEARER_CASES if not passes)
    assert {door: c._value.get() - before[door] for door, c in counters.items()} == {"grpc": refused, "http": refused}
