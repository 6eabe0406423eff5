"""The engine's own gRPC callers go through the client library, so they reach a server with TLS and bearer tokens:
`proctor distill --server` (its CLI flags), and GenerateTriples' critic at another server (`teacher.remote_critic`)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from proctor.clients.teacher import TeacherClient
from proctor.engine.config import Config, CriticConfig, RemoteCriticConfig, ServerConfig, TeacherConfig, TlsConfig
from proctor.engine.server.lifecycle import ProctorServer
from proctor.v1 import common_pb2, teacher_pb2
from tests.conftest import TINY, started
from tests.engine.doors.grpc.test_security import pki  # noqa: F401 (a fixture)

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOKEN = "distill-s3cret"


def _secure(files: dict[str, tuple[str, str]], tokens: Path, **services: object) -> Config:
    key, cert = files["server"]
    tokens.write_text(TOKEN + "\n")
    server = ServerConfig(
        port=0, metrics_port=-1, auth_tokens_file=str(tokens), tls=TlsConfig(cert_file=cert, key_file=key)
    )
    return Config(server=server, **services)  # type: ignore[arg-type]


def _critic() -> CriticConfig:
    return CriticConfig(model="builtin:tiny-critic", device="cpu", cutoff=0.5)


async def test_distill_reaches_a_tls_and_token_server(
    pki: dict[str, tuple[str, str]],  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    config = _secure(pki, tmp_path / "tokens", teacher=TeacherConfig(model=TINY, device="cpu"), critic=_critic())
    server = await started(config)
    events = tmp_path / "events.txt"
    events.write_text("PersonX bakes bread\nPersonX calls PersonY\n")
    args = [
        sys.executable, "-m", "proctor.engine.cli", "distill", "--server", f"localhost:{server.port}",
        "--events", str(events), "--relations", "xWant", "--chunk-events", "2", "--inference-n", "2",
        "--cutoffs", "high=0.6,medium=0.5", "--ca-file", pki["ca"][1],
    ]  # fmt: skip
    try:
        env = {**os.environ, "DISTILL_TOKEN": TOKEN}
        done = await asyncio.create_subprocess_exec(
            *args, "--output", str(tmp_path / "ok"), "--token-env", "DISTILL_TOKEN", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await done.communicate()
        assert done.returncode == 0, out.decode()
        rows = [json.loads(line) for line in (tmp_path / "ok" / "corpus.jsonl").read_text().splitlines()]
        assert rows and {r["head"] for r in rows} <= {"PersonX bakes bread", "PersonX calls PersonY"}

        refused = await asyncio.create_subprocess_exec(
            *args, "--output", str(tmp_path / "refused"), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await refused.communicate()
        assert refused.returncode != 0 and "UNAUTHENTICATED" in out.decode(), out.decode()
    finally:
        await server.drain(grace_s=1)


async def test_generate_triples_scores_with_a_critic_behind_tls_and_a_token(
    pki: dict[str, tuple[str, str]],  # noqa: F811 (the fixture)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    critic_server = await started(_secure(pki, tmp_path / "tokens", critic=_critic()))
    monkeypatch.setenv("CRITIC_TOKEN", TOKEN)
    remote = RemoteCriticConfig(ca_file=pki["ca"][1], token_env="CRITIC_TOKEN")
    teacher = TeacherConfig(model=TINY, device="cpu", critic=f"localhost:{critic_server.port}", remote_critic=remote)
    teacher_server: ProctorServer = await started(Config(server=ServerConfig(port=0, metrics_port=-1), teacher=teacher))
    request = teacher_pb2.TriplesRequest(
        events=["PersonX bakes bread"], relations=[common_pb2.X_WANT], seed=1,
        inference_params=teacher_pb2.SamplingParams(n=2),
    )  # fmt: skip
    try:
        with TeacherClient(f"127.0.0.1:{teacher_server.port}", timeout_s=120) as client:
            results = await asyncio.to_thread(lambda: list(client.generate_triples(request)))
        assert results and not any(r.HasField("error") for r in results), results
        assert all(0.0 <= r.critic_score <= 1.0 for r in results)
        served = critic_server.metrics.items.labels("proctor.v1.Critic", "Classify", "OK")._value.get()
        assert served >= len(results)  # scored by the server behind TLS, not locally

        monkeypatch.setenv("CRITIC_TOKEN", "wrong")
        wrong = TeacherConfig(model=TINY, device="cpu", critic=teacher.critic, remote_critic=remote)
        refused_server = await started(Config(server=ServerConfig(port=0, metrics_port=-1), teacher=wrong))
        try:
            with TeacherClient(f"127.0.0.1:{refused_server.port}", timeout_s=120) as client:
                failed = await asyncio.to_thread(lambda: list(client.generate_triples(request)))
            assert failed and all(r.HasField("error") for r in failed)
            assert "UNAUTHENTICATED" in failed[0].error.message
        finally:
            await refused_server.drain(grace_s=1)
    finally:
        await teacher_server.drain(grace_s=1)
        await critic_server.drain(grace_s=1)
