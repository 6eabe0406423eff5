"""Each row's log-probs of its own token ids (per-position probes, a student's top-k): hidden [N, H], weight [V, H],
ids [N, P], the rows' log-sum-exp [N] (from the lm_head pass that scored them) -> [N, P] float32, exact (float32
logits of the inputs' products), by one of two ways, chosen per call by their predicted cost (`probe_plan`).

- gathered: per row its P weight rows gathered (made float32) and dotted with its hidden state. Memory-bound: it
  reads N x P weight rows however often the rows repeat (16,384 x 128 x 4,096 bf16: 17 GB, then 69 GB more of
  float32 copies written and read back).
- shared: the distinct ids U of all rows (torch.unique), then one dense product hidden @ W[U].T [N, |U|] on the
  tensor cores (bf16 in, float32 out: torch's mm with out_dtype on CUDA), each of W[U]'s rows read once, and each
  row's P columns picked out through the ids' places in U. Compute-bound: 2 x N x |U| x H FLOPs. A student's top-k
  at neighbouring positions overlap, so |U| is far below N x P in practice (and never above V).

Neither needs a second lm_head over the vocabulary. Extra memory stays under PROBE_BUDGET (the other kernels'
0.25 GiB): the shared way takes rows in groups (each its own U), the distinct ids in column chunks and the rows in
row chunks, so the W[U] chunk, the [rows, cols] float32 logits and the ids' places each fit their share.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PROBE_BUDGET = 2**28  # bytes of extra memory a call may hold: a quarter for the ids' places, a quarter for a
# chunk of W[U], half for a block of float32 logits
GATHER_ROWS = 128  # rows the gathered way takes at a time: 128 x 128 x 4,096 float32 weight rows, 256 MiB
SORT_PASSES = 8  # torch.unique's segmented radix sort over int64 ids: its passes (a lead, as bench/cost_model.py's)

# The rates the choice is priced at: bench/cost_model.py's H200 leads (an 8192^3 bf16 torch matmul's 790 TFLOP/s, a
# device copy's 4.3 TB/s, 5 us a launch). The choice moves only with their ratio (~184 FLOPs a byte; an H100 SXM's
# 990 / 3.35 is ~296, which favours the shared way further) and with the launch cost.
GEMM_FLOPS = 790e12
HBM_BPS = 4.3e12
LAUNCH_S = 5e-6

# The shared way's product needs float32 out of 16-bit operands on the tensor cores: torch's mm with out_dtype (the
# aten::mm.dtype overload). A torch without it would multiply in float32 on the CUDA cores, ~10x slower, so there
# the gathered way serves every 16-bit CUDA call.
MM_TO_FLOAT32 = hasattr(torch.ops.aten.mm, "dtype")


@dataclass(frozen=True)
class ProbeCost:
    """What one way of computing the probes costs, predicted at the given rates."""

    flops: float  # tensor-core FLOPs (the shared way's product; the gathered way's dots hide under its reads)
    hbm_bytes: float
    launches: int
    seconds: float
    extra_bytes: float  # buffers beyond the inputs and the output


@dataclass(frozen=True)
class ProbePlan:
    """The way a group of rows takes: shared (with its chunks) or gathered, and both ways' predicted costs."""

    shared: bool
    cols: int  # distinct ids per column chunk (the shared way)
    block: int  # rows per product (the shared way)
    gathered_cost: ProbeCost
    shared_cost: ProbeCost

    @property
    def cost(self) -> ProbeCost:
        return self.shared_cost if self.shared else self.gathered_cost


def group_rows(probes: int, budget: int = PROBE_BUDGET) -> int:
    """Rows the shared way takes together (one torch.unique, one U): their ids' places (int64 place, int64 place in
    the chunk, bool inside it, float32 picked: 21 bytes an id) fit a quarter of the budget."""
    return max(1, budget // 4 // (max(probes, 1) * 21))


def shared_chunks(rows: int, unique: int, hidden: int, elt: int, budget: int = PROBE_BUDGET) -> tuple[int, int]:
    """(distinct ids per column chunk, rows per product): W[U]'s chunk fits a quarter of the budget, the [rows,
    cols] float32 logits half."""
    cols = max(1, min(unique, budget // 4 // (hidden * elt)))
    return cols, max(1, min(rows, budget // 2 // (cols * 4)))


def gathered_cost(
    rows: int, probes: int, hidden: int, elt: int, hbm_bps: float = HBM_BPS, launch_s: float = LAUNCH_S
) -> ProbeCost:
    """Per GATHER_ROWS rows: the rows' P weight rows gathered (read in the weight's dtype, written as float32 and
    read back by the batched dot, whose FLOPs run on the CUDA cores under these reads), the ids read, the log-probs
    written; ~4 launches a chunk."""
    ids = rows * probes
    moved = ids * (hidden * (elt + 2 * 4) + 8 + 4)
    launches = 4 * -(-rows // GATHER_ROWS)
    extra = min(rows, GATHER_ROWS) * probes * hidden * 4.0
    return ProbeCost(0.0, moved, launches, moved / hbm_bps + launches * launch_s, extra)


def shared_cost(
    rows: int,
    probes: int,
    unique: int,
    hidden: int,
    elt: int,
    gemm_flops: float = GEMM_FLOPS,
    hbm_bps: float = HBM_BPS,
    launch_s: float = LAUNCH_S,
    budget: int = PROBE_BUDGET,
) -> ProbeCost:
    """torch.unique over the N x P ids (SORT_PASSES passes of an id and its place, read and written; the places
    written), one host sync; per column chunk W[U]'s rows gathered (read, written) and the ids' places in it (read
    8, written 8 + 1 + 8 bytes an id); per product the hidden block and the chunk read, the float32 logits written
    (the product's time the larger of its FLOPs and these bytes); per row block its P columns picked (a 32-byte
    sector each, the places read, float32 written) and, past one column chunk, merged (read 1 + 4 + 4, written 4);
    last the log-sum-exp subtracted (read and written)."""
    ids = rows * probes
    cols, block = shared_chunks(rows, unique, hidden, elt, budget)
    col_chunks, row_chunks = -(-unique // cols), -(-rows // block)
    flops = 2.0 * rows * unique * hidden
    product = row_chunks * unique * hidden * elt + col_chunks * rows * hidden * elt + rows * unique * 4.0
    rest = ids * SORT_PASSES * 16.0 * 2 + ids * 8.0  # the sort, the places
    rest += 2 * unique * hidden * elt + col_chunks * ids * 25.0  # the chunks' weight rows, the places in each
    rest += col_chunks * ids * (32 + 8 + 4.0) + (col_chunks > 1) * col_chunks * ids * 13.0  # picked, merged
    rest += ids * 8.0 + rows * 4.0  # minus the log-sum-exp
    launches = 6 + col_chunks * (4 + row_chunks * (2 + (col_chunks > 1))) + 1
    seconds = max(flops / gemm_flops, product / hbm_bps) + rest / hbm_bps + launches * launch_s
    extra = ids * 21.0 + ids * 8 + min(cols, unique) * hidden * elt + block * cols * 4.0  # + torch.unique's output
    return ProbeCost(flops, product + rest, launches, seconds, extra)


def probe_plan(
    rows: int,
    probes: int,
    unique: int,
    hidden: int,
    elt: int,
    float32_product: bool = True,
    budget: int = PROBE_BUDGET,
) -> ProbePlan:
    """The rule: the shared way where its predicted time (`shared_cost`) is below the gathered way's
    (`gathered_cost`) at the H200 leads, and its float32 product runs on the tensor cores (`float32_product`).

    At the lm_head's shape (one launch's 8,192 rows x 128 probes, H = 4,096 bf16) the gathered way moves ~10 bytes
    an element of N x P x H (11.3 ms predicted) and the shared way does 2 FLOPs an element of N x |U| x H (~85 ns a
    distinct id), so the shared way wins below |U| ~ 115,000 (of at most 151,936 ids); with few rows the gathered
    way's few launches win (128 rows x 128 probes: below |U| ~ 11,800; 11 rows: always gathered).
    bench/cost_model.py prints both at the issue's shapes."""
    cols, block = shared_chunks(rows, unique, hidden, elt, budget)
    gathered = gathered_cost(rows, probes, hidden, elt)
    shared = shared_cost(rows, probes, unique, hidden, elt, budget=budget)
    return ProbePlan(float32_product and shared.seconds < gathered.seconds, cols, block, gathered, shared)


def gathered_probe_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, lse: torch.Tensor, chunk_rows: int = GATHER_ROWS
) -> torch.Tensor:
    """The gathered way: per row its P weight rows gathered and dotted with its hidden state, chunk_rows rows at a
    time (at most chunk_rows x P x H float32 gathered)."""
    out = torch.empty(ids.shape, dtype=torch.float32, device=hidden.device)
    for s in range(0, hidden.shape[0], chunk_rows):
        rows = weight[ids[s : s + chunk_rows].long()].float()  # [c, P, H]
        dots = torch.bmm(rows, hidden[s : s + chunk_rows, :, None].float())[:, :, 0]
        out[s : s + chunk_rows] = dots - lse[s : s + chunk_rows, None]
    return out


def float32_logits(hidden: torch.Tensor, weight_rows: torch.Tensor) -> torch.Tensor:
    """hidden [n, H] @ weight_rows [u, H].T as float32: 16-bit CUDA operands on the tensor cores with a float32
    result (exact products, float32 accumulation); anything else made float32 first."""
    if hidden.is_cuda and hidden.dtype in (torch.bfloat16, torch.float16):
        return torch.mm(hidden, weight_rows.T, out_dtype=torch.float32)
    return hidden.float() @ weight_rows.float().T


def shared_probe_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    lse: torch.Tensor,
    unique: torch.Tensor,
    places: torch.Tensor,
    cols: int,
    block: int,
) -> torch.Tensor:
    """The shared way for rows whose ids are `unique`[`places`] (torch.unique's output): W[unique] in chunks of
    `cols` rows, each multiplied by `block` rows of hidden at a time, each row's columns picked from its chunk."""
    out = torch.empty(places.shape, dtype=torch.float32, device=hidden.device)
    chunks = -(-unique.numel() // cols)
    for c in range(0, unique.numel(), cols):
        rows_w = weight[unique[c : c + cols]]  # [u, H], each distinct id's weight row read once
        at = places - c
        inside = (at >= 0) & (at < rows_w.shape[0])
        at = at.clamp(0, rows_w.shape[0] - 1)
        for s in range(0, hidden.shape[0], block):
            logits = float32_logits(hidden[s : s + block], rows_w)
            if chunks == 1:
                torch.gather(logits, 1, at[s : s + block], out=out[s : s + block])
            else:
                picked = logits.gather(1, at[s : s + block])
                torch.where(inside[s : s + block], picked, out[s : s + block], out=out[s : s + block])
    return out.sub_(lse[:, None])


def probe_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, lse: torch.Tensor, budget: int = PROBE_BUDGET
) -> torch.Tensor:
    """log p(ids[r, j] | row r) [N, P] float32 from each row's log-sum-exp: per group of `group_rows` rows the
    distinct ids found (one host sync), then the way `probe_plan` picks for their count."""
    n, p = ids.shape
    out = torch.empty(ids.shape, dtype=torch.float32, device=hidden.device)
    product = MM_TO_FLOAT32 or not (hidden.is_cuda and hidden.dtype in (torch.bfloat16, torch.float16))
    step = group_rows(p, budget)
    for s in range(0, n, step):
        group = slice(s, s + step)
        unique, places = torch.unique(ids[group].long(), return_inverse=True)
        rows, elt = min(step, n - s), weight.element_size()
        plan = probe_plan(rows, p, unique.numel(), hidden.shape[1], elt, product, budget)
        if plan.shared:
            out[group] = shared_probe_logprobs(hidden[group], weight, lse[group], unique, places, plan.cols, plan.block)
        else:
            out[group] = gathered_probe_logprobs(hidden[group], weight, ids[group], lse[group])
    return out
