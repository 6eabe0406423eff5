"""`proctor serve` processes for the gpu-check phases: configured from the built models, started side by side,
and stopped with the phase."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proctor.bench.gpu_check.context import PhaseContext
from proctor.bench.server import Served, scrape, serve
from proctor.v1 import critic_pb2, reward_pb2, teacher_pb2

T = TypeVar("T")
# Large enough for a Score result with top-20 at every one of 16k tokens.
MAX_MESSAGE = 256 << 20
SERVICES = {
    "teacher": teacher_pb2.DESCRIPTOR.services_by_name["Teacher"].full_name,
    "critic": critic_pb2.DESCRIPTOR.services_by_name["Critic"].full_name,
    "reward": reward_pb2.DESCRIPTOR.services_by_name["RewardModel"].full_name,
}


def section(**fields: object) -> str:
    """A YAML flow mapping (JSON is YAML)."""
    return json.dumps(fields)


def config(**sections: dict[str, object]) -> str:
    server = section(port=0, metrics_port=0, max_message_bytes=MAX_MESSAGE, drain_grace_s=2.0)
    return "\n".join([f"server: {server}"] + [f"{name}: {section(**body)}" for name, body in sections.items()]) + "\n"


def teacher_section(ctx: PhaseContext, dtype: str, **overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "model": str(ctx.models / "teacher"),
        "backend": "torch",
        "device": ctx.scale.device,
        "dtype": dtype,
        "max_score_tokens": ctx.scale.max_score_tokens,
    }
    return {**fields, **overrides}


@contextlib.contextmanager
def running(
    ctx: PhaseContext, configs: dict[str, str], alongside: Callable[[], T]
) -> Iterator[tuple[dict[str, Served], T]]:
    """The servers of `configs` (name -> config text), started at once and stopped on the way out, and what
    `alongside` returns: it runs here while they start (loading the in-process references, say)."""
    folders = {name: ctx.workdir / f"server-{ctx.log.record.phase}-{name}" for name in configs}
    for folder in folders.values():
        folder.mkdir(exist_ok=True)

    def start(name: str) -> Served:
        return serve(folders[name], configs[name])

    started: dict[str, Served] = {}
    try:
        with ThreadPoolExecutor(len(configs)) as pool:
            futures = {name: pool.submit(start, name) for name in configs}
            extra = alongside()
            for name, future in futures.items():
                started[name] = future.result()
        yield started, extra
    finally:
        for served in started.values():
            served.proc.terminate()
        for served in started.values():
            try:
                served.proc.wait(timeout=20)
            except Exception:
                served.proc.kill()


def health(target: str, services: list[str]) -> dict[str, str]:
    """grpc.health.v1's answer for the server ("") and each service."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return {
            name or "(server)": health_pb2.HealthCheckResponse.ServingStatus.Name(
                stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
            )
            for name in ["", *services]
        }


def gauge(metrics_url: str, name: str) -> float | None:
    """The largest value of a gauge over its label sets; None when the server does not export it."""
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in scrape(metrics_url).splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    ]
    return max(values) if values else None


def weights_bytes(folder: Path, dtype_bytes: int, saved_bytes: int) -> float:
    """The bytes a model saved with `saved_bytes` per parameter takes once loaded with `dtype_bytes`."""
    return sum(f.stat().st_size for f in folder.glob("*.safetensors")) / saved_bytes * dtype_bytes
