"""The Triton kernel under TRITON_INTERPRET=1 against the float64 reference on the same (rounded) inputs."""

from __future__ import annotations

import pytest
import torch

from proctor.kernels.target_logprobs import logits_launch, target_logprobs_reference, target_logprobs_triton

# tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported: these CPU tensors run in the interpreter.
pytest.importorskip("triton")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _inputs(n: int, vocab: int, dtype: torch.dtype, scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, vocab, generator=gen) * scale).to(dtype)
    targets = torch.randint(0, vocab, (n,), generator=gen)
    return logits, targets


def _check(logits: torch.Tensor, targets: torch.Tensor, top_k: int, **kw: int) -> None:
    lp, ent, vals, ids = target_logprobs_triton(logits, targets, top_k=top_k, **kw)
    ref_lp, ref_ent, ref_vals, _ = target_logprobs_reference(logits.double(), targets, top_k=top_k)
    assert not torch.isnan(lp).any() and not torch.isnan(ent).any(), "every output written"
    assert (lp.double() - ref_lp).abs().max() <= 1e-4
    assert (ent.double() - ref_ent).abs().max() <= 1e-4
    if top_k:
        assert vals is not None and ids is not None and ref_vals is not None
        assert (vals.double() - ref_vals).abs().max() <= 1e-4  # ties may pick other ids with equal values
        full = torch.log_softmax(logits.double(), dim=-1)
        assert (full.gather(1, ids) - vals.double()).abs().max() <= 1e-4


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("n", "vocab", "block", "top_k"), [(7, 1000, 256, 0), (3, 4097, 1024, 20), (1, 33, 4096, 33), (2, 70, 16, 64)]
)
def test_matches_float64_reference(dtype: torch.dtype, n: int, vocab: int, block: int, top_k: int) -> None:
    logits, targets = _inputs(n, vocab, dtype, 3.0, seed=n * vocab)
    _check(logits, targets, top_k, block_v=block)


def test_qwen_vocabulary_large_magnitudes_and_ignore_index() -> None:
    logits, targets = _inputs(3, 151_936, torch.bfloat16, 30.0, seed=1)
    logits[0, 5] = 1e4  # one huge logit: a naive exp overflows
    targets[1] = -100
    _check(logits, targets, top_k=20)
    lp, ent, _, _ = target_logprobs_triton(logits, targets)
    assert lp[1] == 0.0 and ent[1] == 0.0


def _exact(logits: torch.Tensor, k: int, **kw: int) -> None:
    """The same ids in the same order as float64's stable sort (ties by id) and values within 1e-4; -inf where
    float64 has it."""
    n, vocab = logits.shape
    targets = torch.arange(n) % vocab
    lp, ent, vals, ids = target_logprobs_triton(logits, targets, top_k=k, **kw)
    lsm = torch.log_softmax(logits.double(), dim=-1)
    ref_vals, ref_ids = lsm.sort(dim=1, descending=True, stable=True)
    ref_lp, ref_ent, _, _ = target_logprobs_reference(logits.double(), targets)
    assert vals is not None and ids is not None and ent is not None
    assert torch.equal(ids, ref_ids[:, :k]), "the same entries in the same order"
    finite = torch.isfinite(ref_vals[:, :k])
    assert torch.equal(torch.isfinite(vals), finite) and (vals.double() - ref_vals[:, :k])[finite].abs().max() <= 1e-4
    assert (lp.double() - ref_lp).abs().max() <= 1e-4 and (ent.double() - ref_ent).abs().max() <= 1e-4


@pytest.mark.parametrize("k", [20, 100, 256])
def test_top_k_exact_when_every_logit_enters(k: int) -> None:
    """Ascending logits: every tile's logits beat theta, so the smallest buffer is compacted every buffer - k
    appends (~20 compactions a row here); descending: the first tile's own k best and nothing after."""
    ascending = (torch.arange(3_001, dtype=torch.float32) / 100).expand(2, 3_001).contiguous()
    buffer = 2 << (k - 1).bit_length()
    _exact(ascending, k, block_v=256, buffer=buffer)
    _exact(ascending.flip(1).contiguous(), k, block_v=1_024, buffer=buffer)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 64, 100, 256])
@pytest.mark.parametrize("vocab", [300, 3_000])
def test_top_k_ties_at_the_kth_keep_the_lowest_ids(dtype: torch.dtype, k: int, vocab: int) -> None:
    """Integer logits tie by the hundred, -0.0 beside 0.0 among them (equal, as torch compares them): the k-th
    value is shared by many more ids than fit, in a tile and in the buffer, and is negative on 300 words."""
    logits = torch.randint(-20, 20, (3, vocab), generator=torch.Generator().manual_seed(k)).to(dtype)
    logits[1, ::3] = -0.0
    _exact(logits, k, block_v=512, buffer=2 << (k - 1).bit_length())


def test_rows_with_fewer_than_k_finite_logits_are_answered_from_their_own_logits() -> None:
    """The buffer never takes -inf: rows with fewer finite logits than k are found by the host and answered by
    the exact top-k of their logits (the -inf ones by id); their entropy counts -inf logits as 0 (not -inf * 0)."""
    logits = torch.randn(3, 3_001, generator=torch.Generator().manual_seed(3))
    logits[0, 10:] = -float("inf")  # 10 finite
    logits[1, ::2] = -float("inf")  # 1,500 finite: its top-256 is all finite
    _exact(logits, 256, block_v=512, buffer=512)


def test_the_launch_fills_the_sms_with_even_rows_and_checks_its_buffer() -> None:
    with_k, without = logits_launch(16_384, 151_936, 256), logits_launch(16_384, 151_936, 0)
    assert (with_k.block_v, with_k.num_warps, with_k.maxnreg) == (2_048, 4, 128), "4 programs an SM"
    assert (with_k.programs, with_k.rows_per_program) == (512, 32) and with_k.programs <= 132 * 4
    assert (without.block_v, without.maxnreg, without.programs, without.rows_per_program) == (4_096, None, 1_024, 16)
    few = logits_launch(3, 33, 20)
    assert (few.programs, few.block_v) == (3, 64)
    with pytest.raises(ValueError, match=r"the buffer must be a power of two >= 2 x 256 \(top-k 256\), got 384"):
        logits_launch(8, 1_000, 256, buffer=384)


@pytest.mark.parametrize("top_k", [0, 20])
def test_a_row_whose_first_tiles_are_all_minus_inf(top_k: int) -> None:
    """Masked logits (a logits processor, banned tokens) can fill whole tiles with -inf: the online log-sum-exp must
    not turn exp(-inf - -inf) into NaN before the first finite logit arrives."""
    logits, targets = _inputs(3, 3_000, torch.float32, 3.0, seed=7)
    logits[0, :1_100] = -float("inf")  # two whole tiles of 512, then finite ones
    logits[1, :512] = -float("inf")  # exactly the first tile
    targets[:2] = 2_000  # a finite target
    _check(logits, targets, top_k, block_v=512)
