"""OpenRLHF, its real package (0.11.2, installed --no-deps with what its reward path imports): its
SingleTurnAgentExecutor — the code that runs each rollout and POSTs it to `--reward.remote_url` — with a stand-in
generation engine (vLLM is not installed), against proctor. (OpenRLHF's samples generator, which turns each
answer into tensors — `torch.tensor([value])` per reward and extra_logs entry — imports vLLM; the test makes those
tensors itself.)

Two proctor replicas share one step-state directory and OpenRLHF alternates between them (a comma-separated
remote_url): T is still exact, and α anneals from 0.5 to 0 over the run."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio
import torch

from proctor.engine.backends.builtin_models import resolve_model
from proctor.engine.config import Config, HttpConfig, RewardConfig, ServerConfig, StepsConfig
from proctor.engine.server.lifecycle import ProctorServer
from tests.conftest import started
from tests.engine.doors.grpc.test_reward_service import GOOD, MALFORMED, NO_ATOMS
from tests.trainers.conftest import require

require("openrlhf")
from openrlhf.utils.agent import SingleTurnAgentExecutor  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="session")

QUESTION = "What is the capital of France?"


class StandInEngine:
    """What the executor needs of vLLM's engine: generate(prompt_token_ids, params) -> outputs[0] with token_ids,
    text, finish_reason, logprobs. It answers the next canned response."""

    def __init__(self, tokenizer: Any, responses: list[str]) -> None:
        self.tokenizer = tokenizer
        self.responses = iter(responses)

    async def generate(self, prompt_token_ids: list[int], params: Any, multi_modal_data: Any = None) -> Any:
        text = next(self.responses)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, text=text, finish_reason="stop", logprobs=None)])


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def replicas(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[list[ProctorServer]]:
    """Two servers of the tiny RRM (expected mode, T_MAX from the URL) on one step-state directory."""
    state = str(tmp_path_factory.mktemp("steps"))
    config = Config(
        server=ServerConfig(port=0, metrics_port=-1),
        reward=RewardConfig(model="builtin:tiny", device="cpu", steps=StepsConfig(state_dir=state)),
        http=HttpConfig(port=0),
    )
    servers = [await started(dataclasses.replace(config)) for _ in range(2)]
    yield servers
    for server in servers:
        await server.drain(grace_s=1)


async def test_openrlhf_executor_over_two_replicas_anneals_alpha(replicas: list[ProctorServer], tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("builtin:tiny"))
    steps, per_step = 3, 4  # rollout_batch_size 2 x n_samples_per_prompt 2
    urls = [
        f"http://127.0.0.1:{s.http.port}/reward?run=openrlhf-e2e&rollouts_per_step={per_step}&total_steps={steps - 1}"
        for s in replicas
        if s.http is not None
    ]
    executor = SingleTurnAgentExecutor(remote_rm_url=urls)  # OpenRLHF's own rotation over the endpoints
    # A long prompt, cut from the left by the executor (max_length - max_tokens), as OpenRLHF does.
    prompt = "Context: " + "Paris is in France. " * 40 + QUESTION
    responses = [GOOD, NO_ATOMS, MALFORMED, GOOD] * steps
    engine = StandInEngine(tokenizer, responses)
    assert len(tokenizer.encode(prompt, add_special_tokens=False)) > 160 - 64, "the executor must cut this prompt"
    labels = ["Paris", '["Paris", "paris"]', "", ["Paris"]]
    alphas, rewards = [], []
    for step in range(steps):
        outputs = []
        for i in range(per_step):  # one rollout at a time: the executor POSTs each on its own
            params = SimpleNamespace(max_tokens=64, logprobs=None)
            out = await executor.execute(prompt, labels[i], params, 160, tokenizer, engine)
            outputs.append(out)
        for out in outputs:
            assert out["reward"] is not None, "a missing reward crashes OpenRLHF's training"
            assert torch.tensor([out["reward"]]).numel() == 1
            assert all(torch.tensor([value]).numel() == 1 for value in out["extra_logs"].values())
            assert {"alpha", "r_f1", "proctor_fallback"} <= set(out["extra_logs"])
            alphas.append(out["extra_logs"]["alpha"][0])
            rewards.append(out["reward"][0])
        assert step == outputs[0]["extra_logs"]["training_step"][0]
    assert alphas == pytest.approx([0.5] * per_step + [0.25] * per_step + [0.0] * per_step)
    # No atoms, R_f1 0.4 against the JSON-list label: (1 - alpha) * 0.4; malformed: -1 whatever the (empty) label.
    assert [rewards[i] for i in (1, 5, 9)] == pytest.approx([0.2, 0.3, 0.4])
    assert [rewards[i] for i in (2, 6, 10)] == [-1.0] * 3
    assert rewards[8] == rewards[11] == pytest.approx(1.0)  # alpha 0 on the last step: R_f1 of the right answer
