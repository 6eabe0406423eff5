"""A real Prometheus scrapes a running proctor: the series exist and move (CI installs Debian's prometheus)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from proctor.clients.reward import AsyncRewardClient, reward_request
from proctor.clients.teacher import AsyncTeacherClient, generate_request
from proctor.engine.server.lifecycle import ProctorServer
from tests.engine.doors.grpc.test_reward_service import GOOD

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.skipif(
        shutil.which("prometheus") is None, reason="Debian's prometheus is not installed (.ci/run does)"
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _query(port: int, expr: str) -> list[dict]:  # type: ignore[type-arg]
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]["result"]  # type: ignore[no-any-return]


async def _ready(port: int, timeout_s: float = 60) -> None:
    for _ in range(int(timeout_s * 4)):
        try:
            await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{port}/-/ready", None, 2)
            return
        except OSError:  # not listening yet, or 503 while its storage starts
            await asyncio.sleep(0.25)
    raise AssertionError("prometheus did not become ready")


async def _value(port: int, expr: str, above: float, timeout_s: float = 60) -> float:
    """Wait until `expr` has a sample above `above`; return it."""
    for _ in range(int(timeout_s * 2)):
        result = await asyncio.to_thread(_query, port, expr)
        if result and float(result[0]["value"][1]) > above:
            return float(result[0]["value"][1])
        await asyncio.sleep(0.5)
    raise AssertionError(f"{expr} never went above {above}")


async def test_prometheus_scrapes_proctor(tiny_server: ProctorServer, tmp_path: Path) -> None:
    web = _free_port()
    config = tmp_path / "prometheus.yml"
    scrape = f"127.0.0.1:{tiny_server.metrics_port}"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs: [{{job_name: proctor, static_configs: [{{targets: ['{scrape}']}}]}}]\n"
    )
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{web}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    target = f"127.0.0.1:{tiny_server.port}"
    try:
        await _ready(web)
        async with AsyncTeacherClient(target) as teacher, AsyncRewardClient(target) as rewards:
            await teacher.generate([generate_request(f"g{i}", "Hi", max_tokens=3) for i in range(4)])
            await rewards.reward(
                [reward_request(f"r{i}", "q", GOOD, "Paris", 1, mode="rules") for i in range(10)], batch_size=0
            )  # Reward; the call below goes through RewardBatched
            items = 'sum(proctor_items_total{rpc=~"Reward|RewardBatched", code="OK"})'
            first = await _value(web, items, 0)
            await _value(web, 'sum(proctor_tokens_total{kind="generated"})', 0)
            await _value(web, 'sum(proctor_item_seconds_count{rpc="Generate"})', 0)
            assert await asyncio.to_thread(_query, web, 'proctor_serving{service="proctor.v1.Teacher"} == 1')
            await rewards.reward([reward_request(f"s{i}", "q", GOOD, "Paris", 1, mode="rules") for i in range(10)])
            assert await _value(web, items, first) >= first + 10, "the series moves"
            quantile = 'histogram_quantile(0.5, sum by (le) (rate(proctor_item_seconds_bucket{rpc=~"Reward.*"}[1m])))'
            assert await asyncio.to_thread(_query, web, quantile)
    finally:
        prometheus.terminate()
        prometheus.wait(10)
