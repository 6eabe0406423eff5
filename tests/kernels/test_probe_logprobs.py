"""Per-position probes' log-probs (kernels/probe_logprobs.py): both ways against float64 on the same (rounded)
inputs, their chunks and row groups, and the rule that picks between them."""

from __future__ import annotations

import pytest
import torch

from proctor.kernels import probe_logprobs as pl
from proctor.kernels.lm_head_logprobs import lm_head_logprobs_reference, lm_head_logprobs_triton

Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _inputs(n: int, vocab: int, hidden: int, probes: int, dtype: torch.dtype, seed: int, pool: int = 0) -> Inputs:
    """(hidden, weight, ids, lse): ids drawn from the first `pool` words (all of them if 0), so rows share ids and
    a row repeats some of its own; lse the float64 log-sum-exp, made float32 as the lm_head pass gives it."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=gen).to(dtype)
    w = (torch.randn(vocab, hidden, generator=gen) / hidden**0.5 * 4).to(dtype)
    ids = torch.randint(0, pool or vocab, (n, probes), generator=gen)
    lse = torch.logsumexp(h.double() @ w.double().T, dim=1).float()
    return h, w, ids, lse


def _float64(h: torch.Tensor, w: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(h.double() @ w.double().T, dim=1).gather(1, ids)


def _close(got: torch.Tensor, h: torch.Tensor, w: torch.Tensor, ids: torch.Tensor) -> None:
    assert got.dtype == torch.float32 and got.shape == ids.shape and not got.isnan().any()
    assert (got.double() - _float64(h, w, ids)).abs().max() <= 1e-4


def _shared(h: torch.Tensor, w: torch.Tensor, ids: torch.Tensor, lse: torch.Tensor, cols: int, block: int):  # type: ignore[no-untyped-def]
    unique, places = torch.unique(ids, return_inverse=True)
    return pl.shared_probe_logprobs(h, w, lse, unique, places, cols, block)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize(("n", "probes", "pool"), [(1, 1, 0), (7, 5, 0), (33, 128, 0), (130, 128, 40), (9, 3, 2)])
def test_both_ways_equal_float64(dtype: torch.dtype, n: int, probes: int, pool: int) -> None:
    """Ragged row counts, P up to 128, ids repeated within a row and across rows (a pool of 40 or 2 words)."""
    h, w, ids, lse = _inputs(n, 300, 48, probes, dtype, seed=n * probes, pool=pool)
    if pool:
        assert all(len(set(row.tolist())) < probes for row in ids), "each row repeats an id"
    _close(pl.gathered_probe_logprobs(h, w, ids, lse), h, w, ids)
    unique = torch.unique(ids).numel()
    _close(_shared(h, w, ids, lse, cols=unique, block=n), h, w, ids)


@pytest.mark.parametrize(("cols", "block"), [(1, 1), (3, 4), (39, 129), (40, 130), (41, 131), (7, 64)])
def test_the_shared_ways_chunks_give_the_same_answer(cols: int, block: int) -> None:
    """Column chunks of 1, a few, one short of the 40 distinct ids, all, more; row blocks around the 130 rows."""
    h, w, ids, lse = _inputs(130, 300, 32, 17, torch.bfloat16, seed=5, pool=40)
    assert torch.unique(ids).numel() == 40
    got = _shared(h, w, ids, lse, cols, block)
    _close(got, h, w, ids)
    whole = _shared(h, w, ids, lse, cols=40, block=130)
    assert (got - whole).abs().max() <= 1e-5, "the same float32 products, summed in another order at most"


def test_row_groups_each_find_their_own_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """A budget that takes 512 rows a group (1,030 rows of 128 probes over 50 words: groups of 512, 512 and 6), each
    with its own distinct ids and the way its rule picks: the shared way for the two full groups (their few
    launches), the gathered way for the last 6 rows."""
    h, w, ids, lse = _inputs(1_030, 300, 16, 128, torch.float32, seed=9, pool=50)
    ids[512:1024] %= 20  # the second group's ids: 20 words, not the first group's 50
    budget = 512 * 128 * 21 * 4
    assert pl.group_rows(128, budget) == 512
    seen = []
    real = pl.probe_plan

    def spy(*args: int | bool) -> pl.ProbePlan:
        plan = real(*args)  # type: ignore[arg-type]
        seen.append((args[0], args[2], plan.shared))
        return plan

    monkeypatch.setattr(pl, "probe_plan", spy)
    _close(pl.probe_logprobs(h, w, ids, lse, budget=budget), h, w, ids)
    assert seen == [(512, 50, True), (512, 20, True), (6, torch.unique(ids[1024:]).numel(), False)]


def test_the_dispatch_takes_the_shared_way_where_it_is_cheaper() -> None:
    """1,024 rows x 128 probes over 50 words: the shared way (its few launches against the gathered way's 32),
    exact; with a torch whose mm cannot give float32 out of 16-bit CUDA operands the rule falls back."""
    h, w, ids, lse = _inputs(1024, 300, 16, 128, torch.float32, seed=3, pool=50)
    plan = pl.probe_plan(1024, 128, 50, 16, 4)
    assert plan.shared and plan.cost is plan.shared_cost and (plan.cols, plan.block) == (50, 1024)
    assert not pl.probe_plan(1024, 128, 50, 16, 4, float32_product=False).shared
    _close(pl.probe_logprobs(h, w, ids, lse), h, w, ids)


def test_probes_through_the_fused_lm_head_equal_the_reference() -> None:
    """The Triton path (interpreter) hands each launch's rows and log-sum-exp to the probes: the same log-probs as
    the reference's full log-softmax, ragged rows padded with repeats as the backend pads them."""
    h, w, ids, _ = _inputs(70, 600, 64, 6, torch.bfloat16, seed=1, pool=30)
    ids[3, 2:] = ids[3, 0]
    t = torch.randint(0, 600, (70,), generator=torch.Generator().manual_seed(2))
    out, ref = torch.full(ids.shape, float("nan")), torch.full(ids.shape, float("nan"), dtype=torch.float64)
    lm_head_logprobs_triton(h, w, t, top_k=3, probes=(ids, out))
    lm_head_logprobs_reference(h.double(), w.double(), t, top_k=3, probes=(ids, ref))
    assert (out.double() - ref).abs().max() <= 1e-4


@pytest.mark.parametrize(
    ("rows", "probes", "unique", "shared"),
    [
        (8_192, 128, 2_048, True),  # the lm_head's launch, a student's top-k over one topic
        (8_192, 128, 32_768, True),
        (8_192, 128, 110_000, True),
        (8_192, 128, 120_000, False),  # near every id distinct: gathering the rows moves less
        (8_192, 128, 151_936, False),
        (16_384, 1, 8_000, True),
        (128, 128, 11_000, True),
        (128, 128, 12_500, False),
        (11, 128, 100, False),  # few rows: the gathered way's few launches
        (1, 128, 128, False),
    ],
)
def test_the_rule_picks_the_cheaper_way(rows: int, probes: int, unique: int, shared: bool) -> None:
    plan = pl.probe_plan(rows, probes, unique, 4_096, 2)
    assert plan.shared is shared
    assert plan.cost.seconds == min(plan.shared_cost.seconds, plan.gathered_cost.seconds)


def test_the_rule_switches_once_as_distinct_ids_grow() -> None:
    picks = [pl.probe_plan(8_192, 128, u, 4_096, 2).shared for u in range(1_000, 151_937, 1_000)]
    switch = picks.index(False)
    assert all(picks[:switch]) and not any(picks[switch:]) and 100 <= switch <= 130


@pytest.mark.parametrize("unique", [1, 2_048, 8_192, 32_768, 151_936])
def test_the_shared_way_stays_within_its_budget(unique: int) -> None:
    cols, block = pl.shared_chunks(8_192, unique, 4_096, 2)
    assert cols * 4_096 * 2 <= pl.PROBE_BUDGET // 4 and block * cols * 4 <= pl.PROBE_BUDGET // 2
    assert pl.group_rows(128) * 128 * 21 <= pl.PROBE_BUDGET // 4
    assert pl.shared_cost(8_192, 128, unique, 4_096, 2).extra_bytes <= pl.PROBE_BUDGET
    assert pl.gathered_cost(8_192, 128, 4_096, 2).extra_bytes <= pl.PROBE_BUDGET
