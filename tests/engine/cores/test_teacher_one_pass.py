"""The Teacher core's Score + Generate of one sequence (vLLM's prompt_logprobs with a completion, TRL's
get_sequence_logprobs): one forward for a one-token completion on a backend that samples from its Score pass, the two
calls otherwise; the answer and the metrics are the two calls' either way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from proctor.engine.backends.routed import GenerateAndScore
from proctor.engine.backends.torch.generator import TorchGenerator
from proctor.engine.config import TeacherConfig
from proctor.engine.cores.context import Admission, Lifecycle, ServiceContext
from proctor.engine.cores.metrics import Metrics
from proctor.engine.cores.teacher import TeacherCore
from proctor.engine.errors import ItemError
from proctor.engine.items import SamplingParams

pytestmark = pytest.mark.asyncio(loop_scope="session")

TINY = "builtin:tiny"
IDS = [5, 17, 99, 3, 250, 41, 7]


class Batches:
    def __init__(self) -> None:
        self.rpcs: list[str] = []

    def __call__(self, rpc: str, items: int, tokens: int, slots: int) -> None:
        self.rpcs.append(rpc)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def backend() -> AsyncIterator[tuple[TorchGenerator, Batches]]:
    batches = Batches()
    generator = TorchGenerator(TINY, device="cpu", dtype="float32", on_batch=batches)
    await generator.start()
    yield generator, batches
    await generator.close()


def core(backend: TorchGenerator | GenerateAndScore) -> TeacherCore:
    svc = ServiceContext("teacher", Metrics(), Lifecycle(), Admission(100), stream_window=8)
    return TeacherCore(backend, TeacherConfig(model=TINY, device="cpu"), svc)


def tokens(teacher: TeacherCore, rpc: str, kind: str) -> float:
    value = teacher.svc.metrics.registry.get_sample_value(
        "proctor_tokens_total", {"service": "teacher", "rpc": rpc, "kind": kind}
    )
    return value or 0.0


async def test_a_one_token_completion_is_sampled_in_the_score_pass(backend: tuple[TorchGenerator, Batches]) -> None:
    generator, batches = backend
    teacher = core(generator)
    params = SamplingParams(n=2, max_tokens=1, seed=4, logprobs=True)
    batches.rpcs.clear()
    score, gen = await teacher.score_and_generate(IDS[:1], IDS[1:], 3, params, rank=True)
    assert batches.rpcs == ["Score"], "one forward: no generation wave"

    batches.rpcs.clear()
    alone_score = await teacher.score(IDS[:1], IDS[1:], 3, rank=True)
    alone_gen = await teacher.generate(IDS, params)
    assert batches.rpcs == ["Score", "Generate"]
    assert score.logprobs == pytest.approx(alone_score.logprobs, abs=1e-5) and score.ranks == alone_score.ranks
    assert [s.token_ids for s in gen.samples] == [s.token_ids for s in alone_gen.samples]
    for ours, theirs in zip(gen.samples, alone_gen.samples, strict=True):
        assert ours.logprobs == pytest.approx(theirs.logprobs, abs=1e-5)
    # Recorded as the Score and the Generate it answers: the same counts as the two calls just made.
    assert tokens(teacher, "Score", "scored") == 2 * (len(IDS) - 1)
    assert tokens(teacher, "Generate", "prompt") == 2 * len(IDS)
    assert tokens(teacher, "Generate", "generated") == 2 * 2


async def test_more_tokens_keep_the_score_and_the_generation_apart(backend: tuple[TorchGenerator, Batches]) -> None:
    generator, batches = backend
    batches.rpcs.clear()
    params = SamplingParams(max_tokens=3, seed=4, ignore_eos=True)
    _, gen = await core(generator).score_and_generate(IDS[:1], IDS[1:], 3, params)
    assert sorted(batches.rpcs) == ["Generate", "Score"]
    assert len(gen.samples[0].token_ids) == 3


async def test_a_backend_of_two_engines_keeps_the_two_calls(backend: tuple[TorchGenerator, Batches]) -> None:
    """vLLM generating beside another scorer: the token must be the generating engine's, so no Score-pass sample
    (here both parts are the torch backend, which shows the calls the core makes)."""
    generator, batches = backend
    batches.rpcs.clear()
    params = SamplingParams(max_tokens=1, seed=4)
    _, gen = await core(GenerateAndScore(generator, generator)).score_and_generate(IDS[:1], IDS[1:], 3, params)
    assert sorted(batches.rpcs) == ["Generate", "Score"]
    assert len(gen.samples[0].token_ids) == 1


async def test_a_refused_score_stops_its_generation(backend: tuple[TorchGenerator, Batches]) -> None:
    """On the two-call path a Score refused (a probe outside the vocabulary) leaves no Generate running: nobody will
    read that completion."""
    generator, _ = backend
    params = SamplingParams(max_tokens=2_000, ignore_eos=True)
    bad = [[generator.info.vocab_size]]
    with pytest.raises(ItemError, match=r"outside the vocabulary"):
        await core(generator).score_and_generate(IDS[:1], IDS[1:], 3, params, probes=bad)
    # 2,000 tokens take the tiny model ~20 s on 2 cores; a cancelled generation frees the engine for the next call
    await asyncio.wait_for(core(generator).score(IDS[:1], IDS[1:], 3), 8)
    assert generator.queue_depth() == 0
