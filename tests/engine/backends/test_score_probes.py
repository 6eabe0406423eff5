"""Score's per-position token-id probes through the backends: the fused lm_head's pass (never a second lm_head),
checked against float64 log-softmaxes of the same rows / the same tiny random-init model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
import torch

from proctor.engine.backends.builtin_models import resolve_model
from proctor.engine.backends.lm_head_probes import fused_scores
from proctor.engine.backends.torch.generator import TorchGenerator
from proctor.engine.backends.vllm.generator import VllmGenerator
from proctor.engine.backends.vllm.hidden_scorer import VllmHiddenScorer
from proctor.engine.cores import checks
from proctor.engine.errors import ItemError
from proctor.engine.items import ScoreItem
from proctor.kernels import lm_head_logprobs
from proctor.kernels.lm_head_logprobs import MAX_PROBES

on_the_loop = pytest.mark.asyncio(loop_scope="session")

TINY = "builtin:tiny"


def test_the_cores_limit_is_the_kernels() -> None:
    assert checks.MAX_PROBES == MAX_PROBES == 128


def test_fused_scores_split_a_mixed_batch_and_equal_float64() -> None:
    """Rows with probes and rows without in one batch: two calls, results back in row order; the same log-probs,
    top-k and ranks as one call without probes, and the probes' log-probs those of the float64 log-softmax."""
    gen = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(9, 32, generator=gen), torch.randn(300, 32, generator=gen)
    targets = torch.randint(0, 300, (9,), generator=gen)
    probes = [[5, 7], [], [299, 0, 5, 5], [], [], [1], [2, 3], [], [4]]
    ranks, plain_ranks = torch.empty(9, dtype=torch.long), torch.empty(9, dtype=torch.long)
    (lp, ent, top_v, top_i), probed = fused_scores(hidden, weight, targets, 3, ranks, probes)
    plain_lp, _, plain_v, plain_i = lm_head_logprobs(hidden, weight, targets, 3, rank_out=plain_ranks, entropy=False)
    assert ent is None and top_v is not None and top_i is not None and plain_v is not None
    assert torch.equal(lp, plain_lp) and torch.equal(top_v, plain_v) and torch.equal(top_i, plain_i)
    assert torch.equal(ranks, plain_ranks)
    ref = torch.log_softmax(hidden.double() @ weight.double().T, dim=-1)
    assert probed is not None and [len(r) for r in probed] == [len(r) for r in probes]
    for r, (ids, got) in enumerate(zip(probes, probed, strict=True)):
        assert torch.allclose(torch.tensor(got, dtype=torch.float64), ref[r, ids], atol=1e-5), r


def test_fused_scores_without_probes_is_the_plain_call() -> None:
    hidden, weight = torch.randn(4, 16), torch.randn(50, 16)
    targets = torch.tensor([1, 2, 3, 4])
    (lp, _, _, _), probed = fused_scores(hidden, weight, targets, 0, None, None)
    assert probed is None and torch.equal(lp, lm_head_logprobs(hidden, weight, targets, entropy=False)[0])
    (_, _, _, _), empty = fused_scores(hidden, weight, targets, 0, None, [[], [], [], []])
    assert empty == [[], [], [], []]


ITEMS = [
    ScoreItem([5, 17, 99], [3, 250, 41, 7], top_k=2, probe_ids=[[3, 4, 5], [], [41, 0, 511]]),  # fewer rows
    ScoreItem([300, 12], [12, 80, 9], rank=True),  # no probes, in the same batch
    ScoreItem([8], [9, 10], probe_ids=[[1], [2, 2, 2]]),
]


def check_item(item: ScoreItem, out_logprobs: list[float], probed: list[list[float]] | None, ref: torch.Tensor) -> None:
    rows = ref[len(item.context_ids) - 1 : len(item.context_ids) + len(item.target_ids) - 1]
    expected = rows.gather(1, torch.tensor(item.target_ids).unsqueeze(1)).squeeze(1)
    assert torch.allclose(torch.tensor(out_logprobs, dtype=torch.float64), expected, atol=1e-4)
    if item.probe_ids is None:
        assert probed is None
        return
    assert probed is not None and len(probed) == len(item.probe_ids)
    for i, (ids, got) in enumerate(zip(item.probe_ids, probed, strict=True)):
        assert len(got) == len(ids)
        assert torch.allclose(torch.tensor(got, dtype=torch.float64), rows[i, ids], atol=1e-4), i


@pytest_asyncio.fixture(scope="module", loop_scope="session", params=["padded", "packed"])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[TorchGenerator]:
    backend = TorchGenerator(TINY, device="cpu", dtype="float32", score_packing=request.param)
    await backend.start()
    yield backend
    await backend.close()


@on_the_loop
async def test_torch_backend_probes_equal_float64(engine: TorchGenerator, reference: Callable) -> None:
    outputs = await engine._submit(engine._queues.score, ITEMS)  # one batch: queued at once
    for item, out in zip(ITEMS, outputs, strict=True):
        check_item(item, out.logprobs, out.probe_logprobs, reference(item.context_ids + item.target_ids))
    assert outputs[1].ranks is not None and outputs[0].top is not None


@on_the_loop
async def test_hidden_scorer_lm_head_probes_equal_float64(reference: Callable) -> None:
    """vllm-hidden's lm_head side (vLLM hands it the final hidden states): transformers' last_hidden_state stands
    in for vLLM's, which the vLLM tests check equal."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model(TINY), dtype=torch.float32)
    scorer = VllmHiddenScorer(TINY, device="cpu", dtype="float32")
    scorer._weight = model.get_output_embeddings().weight.detach()
    try:
        rows, targets, probes = [], [], []
        for item in (ITEMS[0], ITEMS[2]):
            with torch.no_grad():
                hidden = model.model(torch.tensor([item.context_ids + item.target_ids])).last_hidden_state[0]
            first = len(item.context_ids) - 1
            rows.append(hidden[first : first + len(item.target_ids)])
            targets.append(item.target_ids)
            probes += (item.probe_ids or []) + [[]] * (len(item.target_ids) - len(item.probe_ids or []))
        outs = scorer._target_logprobs(rows, targets, 0, False, probes)
        for item, out in zip((ITEMS[0], ITEMS[2]), outs, strict=True):
            assert out.probe_logprobs is not None
            check_item(
                item,
                out.logprobs,
                out.probe_logprobs[: len(item.probe_ids or [])],
                reference(item.context_ids + item.target_ids),
            )
    finally:
        await scorer.close()


@on_the_loop
async def test_vllm_prompt_logprobs_scorer_refuses_probes_naming_the_setting() -> None:
    with pytest.raises(ItemError) as refused:
        await VllmGenerator(TINY).score(ScoreItem([1], [2], probe_ids=[[3]]))
    assert refused.value.code == "FAILED_PRECONDITION" and "teacher.scorer" in refused.value.message
