"""The torch backend's Score that also samples the next token (`score_sample`): one forward gives Score's log-probs
and the one token Generate would give for the same prompt, seed and rules; checked against `generate` itself and a
float64 reference, in a padded and a packed Score batch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import torch

from proctor.engine.backends.torch.generator import TorchGenerator
from proctor.engine.items import FinishReason, GenerateItem, SamplingParams, ScoreItem, ScoreSampleItem

pytestmark = pytest.mark.asyncio(loop_scope="session")

TINY = "builtin:tiny"
PROMPTS = [[5, 17, 99, 3, 250, 41, 7], [300, 12, 12, 80, 9], [44, 2, 130, 131, 77, 18, 260, 301, 6, 11]]


class Batches:
    """What the backend ran: (rpc, items) per batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def __call__(self, rpc: str, items: int, tokens: int, slots: int) -> None:
        self.seen.append((rpc, items))


@pytest_asyncio.fixture(scope="module", loop_scope="session", params=["padded", "packed"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[tuple[TorchGenerator, Batches]]:
    batches = Batches()
    generator = TorchGenerator(TINY, device="cpu", dtype="float32", score_packing=request.param, on_batch=batches)
    await generator.start()
    yield generator, batches
    await generator.close()


def one_token(**params: Any) -> SamplingParams:
    return SamplingParams(max_tokens=1, logprobs=True, **params)


def item(ids: list[int], params: SamplingParams, top_k: int = 3) -> ScoreSampleItem:
    return ScoreSampleItem(context_ids=ids[:1], target_ids=ids[1:], top_k=top_k, rank=True, params=params)


CASES = [
    one_token(seed=7),
    one_token(seed=7, top_logprobs=4),
    one_token(seed=123, temperature=0.7, top_p=0.8, top_k=40),
    one_token(seed=5, n=3, temperature=1.3),
    one_token(seed=9, presence_penalty=1.5, frequency_penalty=-0.5),  # no generated token yet: no effect
    one_token(temperature=0.0, top_logprobs=2),
]


@pytest.mark.parametrize("params", CASES, ids=lambda p: f"t{p.temperature}-n{p.n}-seed{p.seed}")
async def test_the_token_is_generates_for_the_same_prompt_and_seed(
    backend: tuple[TorchGenerator, Batches], params: SamplingParams
) -> None:
    generator, _ = backend
    # The three prompts in one Score batch, as a multi-prompt request sends them; Generate runs each alone.
    both = await asyncio.gather(*(generator.score_sample(item(ids, params)) for ids in PROMPTS))
    for ids, out in zip(PROMPTS, both, strict=True):
        gen = await generator.generate(GenerateItem(prompt_ids=ids, params=params))
        assert out.generation.prompt_ids == ids
        assert len(out.generation.samples) == params.n
        for ours, theirs in zip(out.generation.samples, gen.samples, strict=True):
            assert ours.index == theirs.index
            assert ours.token_ids == theirs.token_ids and len(ours.token_ids) == 1
            assert ours.text == theirs.text and ours.finish_reason == theirs.finish_reason
            assert ours.logprobs is not None and theirs.logprobs is not None
            assert ours.logprobs == pytest.approx(theirs.logprobs, abs=1e-5)
            assert ours.cumulative_logprob == pytest.approx(theirs.cumulative_logprob, abs=1e-5)
            assert ours.ranks == theirs.ranks
            if params.top_logprobs:
                assert ours.top is not None and theirs.top is not None
                assert ours.top.ids == theirs.top.ids
                assert torch.allclose(torch.tensor(ours.top.logprobs), torch.tensor(theirs.top.logprobs), atol=1e-5)
            else:
                assert ours.top is None and theirs.top is None


async def test_same_seed_same_token_and_other_seeds_differ(backend: tuple[TorchGenerator, Batches]) -> None:
    generator, _ = backend
    ids = PROMPTS[0]

    async def token(seed: int) -> int:
        out = await generator.score_sample(item(ids, one_token(seed=seed, temperature=2.0)))
        return out.generation.samples[0].token_ids[0]

    assert await token(11) == await token(11)
    assert len({await token(seed) for seed in range(8)}) > 1, "a flat distribution: seeds must pick differently"


async def test_greedy_takes_the_argmax_and_the_prompt_logprobs_are_float64s(
    backend: tuple[TorchGenerator, Batches], reference: Any
) -> None:
    generator, _ = backend
    for ids in PROMPTS:
        out = await generator.score_sample(item(ids, one_token(temperature=0.0), top_k=5))
        expected = reference(ids)
        sample = out.generation.samples[0]
        assert sample.token_ids == [int(expected[-1].argmax())]
        assert sample.logprobs == pytest.approx([float(expected[-1].max())], abs=1e-4)
        actual = expected[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
        assert torch.allclose(torch.tensor(out.score.logprobs, dtype=torch.float64), actual, atol=1e-4)
        assert out.score.top is not None
        top_vals, top_ids = expected[:-1].topk(5, dim=-1)
        assert out.score.top.ids == top_ids.tolist()
        assert torch.allclose(torch.tensor(out.score.top.logprobs, dtype=torch.float64), top_vals, atol=1e-4)
        ranks = (expected[:-1] >= actual.unsqueeze(1)).sum(dim=1)
        assert out.score.ranks == ranks.tolist()


async def test_the_score_is_scores_own(backend: tuple[TorchGenerator, Batches]) -> None:
    generator, _ = backend
    for ids in PROMPTS:
        both = await generator.score_sample(item(ids, one_token(seed=1)))
        alone = await generator.score(ScoreItem(context_ids=ids[:1], target_ids=ids[1:], top_k=3, rank=True))
        assert both.score.logprobs == pytest.approx(alone.logprobs, abs=1e-5)
        assert both.score.ranks == alone.ranks
        assert both.score.top is not None and alone.top is not None and both.score.top.ids == alone.top.ids


async def test_one_forward_a_score_batch_and_no_generation(backend: tuple[TorchGenerator, Batches]) -> None:
    generator, batches = backend
    batches.seen.clear()
    await asyncio.gather(*(generator.score_sample(item(ids, one_token(seed=3, n=2))) for ids in PROMPTS))
    assert batches.seen == [("Score", len(PROMPTS))]


async def test_stop_rules_on_the_one_token_are_generates(backend: tuple[TorchGenerator, Batches]) -> None:
    generator, _ = backend
    ids = PROMPTS[1]
    free = (await generator.score_sample(item(ids, one_token(temperature=0.0)))).generation.samples[0]
    assert free.finish_reason is FinishReason.LENGTH and free.text
    for params in (
        one_token(temperature=0.0, stop_token_ids=(free.token_ids[0],)),
        one_token(temperature=0.0, stop=(free.text[-1],)),
    ):
        ours = (await generator.score_sample(item(ids, params))).generation.samples[0]
        theirs = (await generator.generate(GenerateItem(prompt_ids=ids, params=params))).samples[0]
        assert ours.finish_reason is FinishReason.STOP
        assert (ours.token_ids, ours.text, ours.stop_reason) == (theirs.token_ids, theirs.text, theirs.stop_reason)


async def test_a_cancelled_call_leaves_nothing_queued(backend: tuple[TorchGenerator, Batches]) -> None:
    generator, _ = backend
    long = GenerateItem(prompt_ids=PROMPTS[0], params=SamplingParams(max_tokens=300, ignore_eos=True))
    busy = asyncio.create_task(generator.generate(long))  # holds the engine while the next one waits
    await asyncio.sleep(0.2)
    waiting = asyncio.create_task(generator.score_sample(item(PROMPTS[1], one_token(seed=2))))
    await asyncio.sleep(0.05)
    waiting.cancel()
    busy.cancel()
    for task in (waiting, busy):
        with pytest.raises(asyncio.CancelledError):
            await task
    out = await asyncio.wait_for(generator.score_sample(item(PROMPTS[2], one_token(seed=2))), 60)
    assert len(out.generation.samples) == 1 and generator.queue_depth() == 0


async def test_more_than_one_token_is_not_a_score_pass() -> None:
    with pytest.raises(ValueError, match="max_tokens 2"):
        item(PROMPTS[0], SamplingParams(max_tokens=2))
