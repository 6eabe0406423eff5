from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import torch

from proctor.engine.backends.builtin_models import resolve_model
from proctor.engine.config import (
    Config,
    CriticConfig,
    HttpConfig,
    RewardConfig,
    ServerConfig,
    ServiceLimits,
    TeacherConfig,
)
from proctor.engine.server.lifecycle import ProctorServer
from tests.redis_server import RedisServer

TINY = "builtin:tiny"
# The tiny tokenizer has no chat template of its own: the server's (http.chat_template) stands in.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def tiny_config(**teacher: object) -> Config:
    """The Teacher and the RewardModel (RRM in expected mode, T_MAX 100) sharing the tiny model, and a tiny
    random critic with a fixed cut-off."""
    limits = teacher.pop("limits", ServiceLimits())
    return Config(
        server=ServerConfig(port=0, metrics_port=0, drain_grace_s=10),
        http=HttpConfig(port=0, chat_template=TINY_CHAT_TEMPLATE),
        teacher=dataclasses.replace(TeacherConfig(model=TINY, device="cpu", limits=limits), **teacher),  # type: ignore[arg-type]
        critic=CriticConfig(model="builtin:tiny-critic", device="cpu", cutoff=0.5),
        reward=RewardConfig(model=TINY, device="cpu", total_steps=100),
    )


async def started(config: Config) -> ProctorServer:
    server = ProctorServer(config)
    await server.start()
    await server.wait_until_ready()
    return server


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def tiny_server() -> AsyncIterator[ProctorServer]:
    server = await started(tiny_config(default_max_tokens=8))
    yield server
    await server.drain(grace_s=1)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def target(tiny_server: ProctorServer) -> str:
    return f"127.0.0.1:{tiny_server.port}"


@pytest.fixture(scope="session")
def reference() -> Iterator[Callable[[list[int]], torch.Tensor]]:
    """log_softmax of the tiny model in float64 over one sequence: [positions, vocab] (row p predicts token p + 1)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model(TINY), dtype=torch.float64)

    def of(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return torch.log_softmax(model(torch.tensor([ids])).logits[0], dim=-1)

    yield of


@pytest.fixture(scope="session")
def tiny_server_thread() -> Iterator[str]:
    """The same services in a server on its own thread and loop, for synchronous tests (hypothesis, sync clients)."""
    from proctor.engine.cli import embedded_server

    with embedded_server(tiny_config(default_max_tokens=8)) as target:
        yield target


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    pytest.importorskip("redis", reason="the Redis client: pip install 'proctor[redis]'")
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("PROCTOR_REQUIRE_REDIS") == "1":
            pytest.fail("PROCTOR_REQUIRE_REDIS=1 and no redis-server on PATH")
        pytest.skip("no redis-server on PATH (Debian: apt-get install redis-server); CI sets PROCTOR_REQUIRE_REDIS=1")
    server = RedisServer(binary, tmp_path)
    server.start()
    yield server
    server.kill()
