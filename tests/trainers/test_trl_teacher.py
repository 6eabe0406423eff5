"""TRL's teacher-server clients, its real package (1.16), against proctor's HTTP front: VLLMClient's
get_sequence_logprobs (float64 reference and proctor's own Score) and generate, and ServerDistillationTrainer
distilling into a tiny student for two real optimisation steps on the CPU."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from proctor.clients.teacher import AsyncTeacherClient, score_request
from proctor.engine.backends.builtin_models import resolve_model
from proctor.engine.server.lifecycle import ProctorServer
from tests.conftest import TINY
from tests.engine.doors.http.test_http_openai import PROMPT_LENGTHS, SEQUENCES, base
from tests.trainers.conftest import require

trl = require("trl")

pytestmark = pytest.mark.asyncio(loop_scope="session")


def trl_client(url: str) -> Any:
    """TRL's own VLLMClient; its import guard wants vLLM installed, the one check patched here."""
    import trl.generation.vllm_client as vllm_client

    vllm_client.is_vllm_available = lambda *a, **k: True  # type: ignore[attr-defined]
    return vllm_client.VLLMClient(base_url=url, connection_timeout=10)


async def test_trl_sequence_logprobs_match_float64_and_score(
    tiny_server: ProctorServer,
    target: str,
    reference: Any,
) -> None:
    client = await asyncio.to_thread(trl_client, base(tiny_server))
    assert client.model == TINY
    out = await asyncio.to_thread(client.get_sequence_logprobs, SEQUENCES, PROMPT_LENGTHS, 4)
    async with AsyncTeacherClient(target) as grpc_client:
        scored = await grpc_client.score(
            [score_request(str(i), s[:1], s[1:], top_logprobs=4) for i, s in enumerate(SEQUENCES)]
        )
    for i, (seq, start) in enumerate(zip(SEQUENCES, PROMPT_LENGTHS, strict=True)):
        ref = reference(seq)
        rows = ref[start - 1 : len(seq) - 1]  # the rows that predict the completion tokens
        actual = rows.gather(1, torch.tensor(seq[start:]).unsqueeze(1))
        assert torch.allclose(torch.tensor(out["actual_logprobs"][i], dtype=torch.float64), actual, atol=1e-4)
        assert out["actual_token_ids"][i] == [[t] for t in seq[start:]]
        assert torch.allclose(torch.tensor(out["logprobs"][i], dtype=torch.float64), rows.topk(4).values, atol=1e-4)
        grpc_actual = list(scored[str(i)].logprobs)[start - 1 :]
        assert torch.allclose(torch.tensor(grpc_actual, dtype=torch.float64), actual.squeeze(1), atol=1e-6)


async def test_trl_default_top_100_matches_float64(
    tiny_server: ProctorServer,
    reference: Any,
) -> None:
    """get_sequence_logprobs' default, top_logprobs=100 (vLLM's default --max-logprobs of 20 refuses it): the 100
    most likely tokens at every completion position, in order, within 1e-4 of float64."""
    client = await asyncio.to_thread(trl_client, base(tiny_server))
    out = await asyncio.to_thread(client.get_sequence_logprobs, SEQUENCES, PROMPT_LENGTHS)
    for i, (seq, start) in enumerate(zip(SEQUENCES, PROMPT_LENGTHS, strict=True)):
        rows = reference(seq)[start - 1 : len(seq) - 1]
        top = rows.topk(100)
        got = torch.tensor(out["logprobs"][i], dtype=torch.float64)
        assert got.shape == (len(seq) - start, 100)
        assert torch.allclose(got, top.values, atol=1e-4)
        # the ids in the same order where the float64 values are not tied within the tolerance
        apart = (top.values[:, :-1] - top.values[:, 1:]).abs() > 1e-4
        ids = torch.tensor(out["logprob_token_ids"][i])
        assert torch.equal(ids[:, :-1][apart], top.indices[:, :-1][apart])


async def test_trl_generate_n2_prompt_major(tiny_server: ProctorServer) -> None:
    client = await asyncio.to_thread(trl_client, base(tiny_server))
    out = await asyncio.to_thread(client.generate, [[5, 6, 7], [8, 9]], None, 2, 1.0, 1.0, 1.0, 0, 0.0, 3, 1)
    assert out["prompt_ids"] == [[5, 6, 7], [8, 9]]
    assert len(out["completion_ids"]) == 4 and all(len(c) == 3 for c in out["completion_ids"])
    # logprobs=1: the sampled token and the top-1, sorted by log-prob (one entry when they are the same token)
    assert all(1 <= len(step) <= 2 for seq in out["logprobs"] for step in seq)
    assert [step[0] for step in out["logprob_token_ids"][0]] != [] and len(out["logprobs"]) == 4


def _train(url: str, output: Path) -> list[dict[str, Any]]:
    import trl.generation.vllm_client as vllm_client
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    vllm_client.is_vllm_available = lambda *a, **k: True  # type: ignore[attr-defined]  # TRL's import guard only
    from trl.experimental.server_distillation import ServerDistillationConfig, ServerDistillationTrainer

    path = resolve_model(TINY)
    student = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = Dataset.from_dict({"prompt": ["PersonX goes to the market", "PersonX reads a book"] * 2})
    args = ServerDistillationConfig(
        output_dir=str(output),
        teacher_model_server_url=url,
        max_steps=2,
        per_device_train_batch_size=2,
        max_completion_length=8,
        loss_top_k=1,
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
    )
    trainer = ServerDistillationTrainer(model=student, args=args, train_dataset=prompts, processing_class=tokenizer)
    trainer.train()
    return list(trainer.state.log_history)


async def test_server_distillation_trainer_two_steps(tiny_server: ProctorServer, tmp_path: Path) -> None:
    assert tiny_server.http is not None
    served = tiny_server.metrics.requests.labels("proctor.v1.Teacher", "/v1/completions", "200")
    before = served._value.get()
    history = await asyncio.to_thread(_train, f"http://127.0.0.1:{tiny_server.http.port}", tmp_path)
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses), history
    assert served._value.get() - before >= 2, "each step asked the teacher for its log-probs"
