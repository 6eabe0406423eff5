"""slime's remote reward model (`--rm-type remote_rm --rm-url`) against proctor's /slime/reward. slime is not a
package on the index: its request and its reading of the answer are reproduced from its v0.3.1 source."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from proctor.engine.server.lifecycle import ProctorServer
from tests.engine.doors.grpc.test_reward_service import GOOD, MALFORMED, NO_ATOMS
from tests.engine.doors.http.test_http_openai import base, call

pytestmark = pytest.mark.asyncio(loop_scope="session")

QUESTION = "What is the capital of France?"


def remote_rm_payload(prompt: Any, response: str, label: Any) -> dict[str, Any]:
    """slime v0.3.1 slime/rollout/rm_hub/__init__.py lines 35-39 (`remote_rm`): the JSON it POSTs to --rm-url."""
    return {"prompt": prompt, "response": response, "label": label}


def reward_value(reward: Any, reward_key: str | None) -> float:
    """slime v0.3.1 slime/utils/types.py lines 246-247 (`Sample.get_reward_value`): --reward-key reads a dict."""
    return float(reward if not reward_key else reward[reward_key])


async def post(url: str, body: Any) -> tuple[int, Any]:
    status, payload, _ = await asyncio.to_thread(call, url, body)
    return status, payload


async def test_slime_rollouts_count_steps_and_anneal_alpha(tiny_server: ProctorServer) -> None:
    url = base(tiny_server) + "/slime/reward?run=slime-e2e&rollouts_per_step=2&total_steps=2&details=1"
    seen = []
    for response in (GOOD, NO_ATOMS, MALFORMED, NO_ATOMS, GOOD, GOOD):
        status, out = await post(url, remote_rm_payload(QUESTION, response, "Paris"))
        assert status == 200, out
        seen.append(out)
    assert [o["training_step"] for o in seen] == [0, 0, 1, 1, 2, 2]
    assert [o["alpha"] for o in seen] == pytest.approx([0.5, 0.5, 0.25, 0.25, 0.0, 0.0])
    assert reward_value(seen[2], "reward") == -1.0  # malformed
    assert reward_value(seen[3], "reward") == pytest.approx(0.75 * seen[3]["r_f1"])  # no atoms: (1 - alpha) R_f1
    assert all(o["proctor_fallback"] == 0.0 for o in seen)
    assert set(seen[0]) >= {"reward", "r_f1", "alpha", "format_ok", "training_step"}


async def test_slime_bare_number_by_default(tiny_server: ProctorServer) -> None:
    url = base(tiny_server) + "/slime/reward?training_step=3&total_steps=4"
    status, out = await post(url, remote_rm_payload(QUESTION, NO_ATOMS, '["Paris", "paris"]'))
    assert status == 200 and isinstance(out, float), out
    assert reward_value(out, None) == pytest.approx((1 - 0.5 * (1 - 3 / 4)) * 0.4)  # no atoms: (1 - alpha) R_f1


@pytest.mark.parametrize(
    ("query", "body", "needle"),
    [
        ("run=r", remote_rm_payload([{"role": "user", "content": QUESTION}], GOOD, "Paris"), "--apply-chat-template"),
        ("", remote_rm_payload(QUESTION, GOOD, "Paris"), "--rm-url"),
        ("run=r&rollouts_per_step=x", remote_rm_payload(QUESTION, GOOD, "Paris"), "rollouts_per_step"),
        ("run=r&details=yes", remote_rm_payload(QUESTION, GOOD, "Paris"), "details"),
        ("run=r", {"prompt": QUESTION, "response": GOOD, "label": "Paris", "extra": 1}, "extra"),
    ],
)
async def test_slime_malformed_requests_are_400_naming_the_fix(
    tiny_server: ProctorServer, query: str, body: Any, needle: str
) -> None:
    status, out = await post(base(tiny_server) + "/slime/reward?" + query, body)
    assert status == 400, out
    assert needle in json.dumps(out), out
