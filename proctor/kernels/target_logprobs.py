"""logits [N, V] (any float dtype) -> log p(target) [N], entropy [N] and optional top-k (k <= 256), float32, in
one read of the logits for every k.

The Triton kernel runs persistent programs (as many as the SMs hold at once), each scoring rows one after another.
Per row it keeps an online log-sum-exp (running max, rescaled sums of exp(x) and of x * exp(x)) tile by tile, so it
reads each logit once and never writes a [N, V] float32 tensor; the target's logit is one load.

With a top-k each program keeps a buffer of candidates (BUFFER float32 values and their ids, 8 KiB in global
memory: 4 MiB for 512 programs, which L2 holds). A tile appends its logits above the threshold theta in column
order (a prefix sum gives their places, a masked store writes them). When the buffer would overflow it is compacted
in place to its k best: the k-th largest value is built bit by bit from the top of its order-preserving int32 key,
one count over the buffer a bit (16 bits for bf16 logits, 19 for fp16, 32 for fp32: the others are zero), the
values above it are kept and of those equal to it the first appended (the lowest ids) up to k; theta becomes it.
A later logit equal to theta has a higher id than the k kept at or above it, so only logits strictly above theta
may still enter. A tile that alone holds more than the free places (the first, while theta is -inf) keeps its own
k best the same way, in registers. At the row's end the buffer is compacted once more and its k logits, in id
order, written out; the host sorts them by value, stable (ties stay by id), and subtracts the log-sum-exp. A row
with fewer than k finite logits (the buffer never takes -inf) is answered from its own logits on the host.

Per logit that is a compare with theta, and in a tile where something enters a prefix sum and a masked store; at
k = 256 on a 151,936-word row, with the large logits in random order, ~2,600 entries are appended and the buffer
is compacted ~4 times (the threshold rises geometrically; bench/cost_model.py's `admission`). The running top-k
this replaces (kernels/topk.py, still the lm_head kernel's) made one pass over its tile per value that entered,
~k ln(V / k) a row, and past 64 slots left the top-k to torch.topk: a second read of the logits.

Rows whose target is `ignore_index` get 0.0 log-prob and entropy (their top-k is still reported).
`target_logprobs_reference` is the plain-torch definition it must match.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from proctor.kernels.buffers import poisoned
from proctor.kernels.lm_head_plan import H200_SMS, device_sms
from proctor.kernels.topk_select import check_top_k, top_k_ties_by_id

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional: the reference serves CPU tensors
    triton = None


Result = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]

BLOCK_V = 4096  # logits a step without a top-k
TOPK_BLOCK_V = 2048  # with one
TOPK_MAXNREG = 128  # registers a thread with a top-k: 4 programs of 4 warps an SM
BUFFER = 1024  # a program's top-k candidates (float32 value + int32 id each): 8 KiB
WARPS_PER_SM = 32  # warps of resident programs per SM the grid is sized for without a top-k (half of an sm_90's 64)
REGISTERS_PER_SM = 65_536  # an sm_90 SM's register file (32-bit registers)
# The kernel's integers that only bound loops and meet counts: not specialised on (bench/hopper.py compiles alike).
UNSPECIALISED = ["n_rows", "top_k"]


def target_logprobs_reference(
    logits: torch.Tensor,
    targets: torch.Tensor,
    top_k: int = 0,
    ignore_index: int = -100,
    entropy: bool = True,
    probe_ids: torch.Tensor | None = None,
    probe_out: torch.Tensor | None = None,
) -> Result:
    """(log-prob of target [N], entropy [N] or None, top-k log-probs [N, k] or None, top-k ids [N, k] or None).

    Only what is asked is computed: each row's log-sum-exp, the targets' logits, the logits' top-k (ties by id),
    each minus its row's log-sum-exp; no [N, V] log-softmax (each pass over [N, V] is one more read of the logits,
    and a written one one more allocation). The entropy (the log-softmax, an exp pass and a product over [N, V])
    only with `entropy`. With `probe_ids` [N, P] each row's log-probs of those tokens go to `probe_out`."""
    x = logits.float() if logits.dtype != torch.float64 else logits
    lse = torch.logsumexp(x, dim=-1)
    keep = targets != ignore_index
    picked = x.gather(1, torch.where(keep, targets, 0).long().unsqueeze(1)).squeeze(1) - lse
    zero = torch.zeros_like(picked)
    ent = None
    if entropy:
        logprobs = x - lse[:, None]
        ent = torch.where(keep, -(logprobs.exp() * logprobs).nansum(dim=-1), zero)
    vals, ids = top_k_ties_by_id(x, top_k) if top_k else (None, None)
    if probe_ids is not None and probe_out is not None:
        probe_out.copy_(x.gather(1, probe_ids.long()) - lse[:, None])
    return torch.where(keep, picked, zero), ent, None if vals is None else vals - lse[:, None], ids


def target_ranks_reference(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Each target's rank [N] (int64): the logits at or above its own, itself included, as vLLM v1 ranks a token
    (`batched_count_greater_than`); 0 on ignore-index rows. Counted in int32 (a vocabulary is far below 2**31):
    torch sums a bool tensor as int64 through a copy of it 8 bytes wide."""
    keep = targets != ignore_index
    own = logits.gather(1, torch.where(keep, targets, 0).long().unsqueeze(1))
    return torch.where(keep, (logits >= own).sum(dim=1, dtype=torch.int32), 0).long()


if triton is not None:

    @triton.jit
    def _from_key(key):  # type: ignore[no-untyped-def]
        """The float32 whose order-preserving int32 key (sign-magnitude folded to two's complement) is `key`."""
        return (key ^ ((key >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)

    @triton.jit  # type: ignore[untyped-decorator]
    def _kth_largest(v, k, KEY_BITS: tl.constexpr):  # type: ignore[no-untyped-def]
        """The k-th largest of v [B] (-inf where empty; at least k finite): the largest key t with k values at
        or above the float t stands for, set bit by bit from the top. The counts compare floats, as torch orders
        them (-0.0 == 0.0). Only the top KEY_BITS bits are searched: the logits' dtype leaves the others of every
        value's float32 zero, so of its key zero (>= 0) or one (< 0)."""
        key = tl.where(tl.sum((v >= 0.0).to(tl.int32), axis=0) >= k, 0, -(2**31))
        for i in range(KEY_BITS - 1):
            cand = key | (1 << (30 - i))
            key = tl.where(tl.sum((v >= _from_key(cand)).to(tl.int32), axis=0) >= k, cand, key)
        return _from_key(tl.where(key < 0, key | ((1 << (32 - KEY_BITS)) - 1), key))

    @triton.jit
    def _best(v, theta, k):  # type: ignore[no-untyped-def]
        """Which of v [B] (in id order, theta its k-th largest) are its k best, ties to the first."""
        above = v > theta
        tied = (v == theta).to(tl.int32)
        room = k - tl.sum(above.to(tl.int32), axis=0)
        return above | ((tied > 0) & (tl.cumsum(tied, axis=0) - tied < room))

    # A program's buffer: BUFFER float32 values, then their ids (int32, stored as float32 bits): the two stores of
    # an entry share one address (an id's place is its value's + BUFFER), which keeps the kernel in 128 registers.
    @triton.jit  # type: ignore[untyped-decorator]
    def _compact(buf, count, k, BUFFER: tl.constexpr, KEY_BITS: tl.constexpr):  # type: ignore[no-untyped-def]
        """Keep the buffer's k best of its `count` (> k) in place, in id order; their least value."""
        slots = tl.arange(0, BUFFER)
        tl.debug_barrier()  # every warp's appends are in
        v = tl.load(buf + slots, slots < count, -float("inf"))
        ids = tl.load(buf + BUFFER + slots, slots < count, 0.0)
        theta = _kth_largest(v, k, KEY_BITS)
        keep = _best(v, theta, k)
        at = tl.cumsum(keep.to(tl.int32), axis=0) - 1
        tl.debug_barrier()  # every warp has read before any overwrites
        tl.store(buf + at, v, keep)
        tl.store(buf + BUFFER + at, ids, keep)
        return theta

    @triton.jit  # type: ignore[untyped-decorator]
    def _admit(x, cols, theta, count, buf, k, BUFFER: tl.constexpr, KEY_BITS: tl.constexpr):  # type: ignore[no-untyped-def]
        """Append the tile x's logits above theta (columns cols, ascending) to the buffer: (theta, count)."""
        enter = x > theta
        n = tl.sum(enter.to(tl.int32), axis=0)
        if n > 0:
            if count + n > BUFFER:
                if count > k:
                    theta = _compact(buf, count, k, BUFFER, KEY_BITS)
                    count = tl.minimum(count, k)
                    enter = x > theta
                    n = tl.sum(enter.to(tl.int32), axis=0)
                if count + n > BUFFER:  # the tile alone: only its own k best can still count (n > k here)
                    x = tl.where(enter, x, -float("inf"))
                    theta = _kth_largest(x, k, KEY_BITS)
                    enter = _best(x, theta, k)
                    n = tl.minimum(n, k)
            at = count + tl.cumsum(enter.to(tl.int32), axis=0) - 1
            tl.store(buf + at, x, enter)
            tl.store(buf + BUFFER + at, cols.to(tl.float32, bitcast=True), enter)
            count += n
        return theta, count

    # One compiled kernel serves every batch and every k of a K_PAD (UNSPECIALISED).
    @triton.jit(do_not_specialize=UNSPECIALISED)  # type: ignore[untyped-decorator]
    def _target_logprobs_kernel(  # type: ignore[no-untyped-def]
        logits_ptr,
        targets_ptr,
        out_ptr,
        entropy_ptr,
        lse_ptr,
        topv_ptr,
        topi_ptr,
        buf_ptr,
        n_rows,
        top_k,
        stride_row,
        vocab,
        ignore_index,
        BLOCK_V: tl.constexpr,
        K_PAD: tl.constexpr,
        BUFFER: tl.constexpr,
        KEY_BITS: tl.constexpr,
    ):
        pid = tl.program_id(0)
        buf = buf_ptr + pid * 2 * BUFFER
        for r in range(pid, n_rows, tl.num_programs(0)):
            row = tl.cast(r, tl.int64)
            base = logits_ptr + row * stride_row
            target = tl.load(targets_ptr + row).to(tl.int32)
            keep = target != ignore_index
            target_logit = tl.load(base + target, keep & (target >= 0) & (target < vocab), 0.0).to(tl.float32)
            run_max = -float("inf")
            sum_exp = 0.0
            sum_x_exp = 0.0
            theta = -float("inf")
            count = 0
            for start in range(0, vocab, BLOCK_V):
                cols = start + tl.arange(0, BLOCK_V)
                x = tl.load(base + cols, cols < vocab, -float("inf")).to(tl.float32)
                new_max = tl.maximum(run_max, tl.max(x, axis=0))
                # Until a finite logit is seen (whole tiles of masked -inf logits) new_max is -inf, and -inf - -inf
                # is NaN: shifting by 0 instead keeps rescale and e at exp(-inf) = 0.
                shift = tl.where(new_max == -float("inf"), 0.0, new_max)
                rescale = tl.exp(run_max - shift)
                e = tl.exp(x - shift)
                sum_exp = sum_exp * rescale + tl.sum(e, axis=0)
                # x * exp(x) is 0 where exp(x) is (columns past the vocabulary, -inf logits), never -inf * 0
                sum_x_exp = sum_x_exp * rescale + tl.sum(e * tl.where(e > 0.0, x, 0.0), axis=0)
                run_max = new_max
                if K_PAD > 0:
                    theta, count = _admit(x, cols, theta, count, buf, top_k, BUFFER, KEY_BITS)
            lse = run_max + tl.log(sum_exp)
            tl.store(lse_ptr + row, lse)
            tl.store(out_ptr + row, tl.where(keep, target_logit - lse, 0.0))
            tl.store(entropy_ptr + row, tl.where(keep, lse - sum_x_exp / sum_exp, 0.0))
            if K_PAD > 0:
                if count > top_k:
                    _compact(buf, count, top_k, BUFFER, KEY_BITS)
                slots = tl.arange(0, K_PAD)
                tl.debug_barrier()  # the compaction's stores are in
                got = slots < tl.minimum(count, top_k)  # fewer than k only where the row has fewer finite logits
                v = tl.load(buf + slots, got, -float("inf"))
                ids = tl.load(buf + BUFFER + slots, got, 0.0).to(tl.int32, bitcast=True)
                tl.store(topv_ptr + row * top_k + slots, v, slots < top_k)
                tl.store(topi_ptr + row * top_k + slots, tl.where(got, ids, -1), slots < top_k)
                tl.debug_barrier()  # every warp has read before the next row appends


# the tensor arguments
POINTERS = ("logits_ptr", "targets_ptr", "out_ptr", "entropy_ptr", "lse_ptr", "topv_ptr", "topi_ptr", "buf_ptr")


@dataclass(frozen=True)
class LogitsLaunch:
    """One launch of the logits kernel: `programs` persistent programs, each scoring every programs-th row,
    BLOCK_V logits per step, with a candidate buffer of `buffer` entries when there is a top-k."""

    rows: int
    block_v: int
    num_warps: int
    num_stages: int
    top_k: int
    programs: int
    buffer: int
    maxnreg: int | None  # registers a thread may use (ptxas's .maxnreg), None: as many as it likes

    @property
    def k_pad(self) -> int:
        return 1 << (self.top_k - 1).bit_length() if self.top_k else 0

    @property
    def rows_per_program(self) -> int:
        return -(-self.rows // self.programs) if self.rows else 0


def logits_launch(
    rows: int, vocab: int, top_k: int, block_v: int | None = None, sms: int = H200_SMS, buffer: int = BUFFER
) -> LogitsLaunch:
    """The launch for `rows` rows on 4 warps a program: 4,096-logit tiles without a top-k (48-96 registers); with
    one, 2,048-logit tiles held to 128 registers (the tile, its prefix sum and the scattered stores of an append,
    or a compaction, beside it: 117-168 registers unheld, none spilled held) so that 4 programs fit an SM. As many
    programs as an SM holds at once (4 with a top-k, 8 without: WARPS_PER_SM), each with the same number of rows
    (16,384 rows: 512 programs of 32 with a top-k)."""
    block = min(block_v or (TOPK_BLOCK_V if top_k else BLOCK_V), 1 << max(vocab - 1, 1).bit_length())
    k_pad = 1 << (top_k - 1).bit_length() if top_k else 0
    if buffer & (buffer - 1) or buffer < 2 * k_pad:
        raise ValueError(f"the buffer must be a power of two >= 2 x {k_pad} (top-k {top_k}), got {buffer}")
    warps, maxnreg = 4, TOPK_MAXNREG if top_k else None
    resident = REGISTERS_PER_SM // (32 * warps * maxnreg) if maxnreg else WARPS_PER_SM // warps
    per = -(-rows // (sms * resident))
    programs = -(-rows // per) if rows else 1
    return LogitsLaunch(rows, block, warps, 3, top_k, programs, buffer, maxnreg)


# The float32 bits a logit of each dtype can set (sign, exponent, mantissa): the k-th value's search needs no more.
KEY_BITS = {torch.bfloat16: 16, torch.float16: 19}


def kernel_arguments(
    launch: LogitsLaunch, vocab: int, stride_row: int, dtype: torch.dtype
) -> tuple[dict[str, int], dict[str, object]]:
    """(integer arguments, constexprs) of one launch: what `_launch` passes, and what bench/hopper.py compiles."""
    ints = {"n_rows": launch.rows, "top_k": launch.top_k, "stride_row": stride_row, "vocab": vocab}
    ints["ignore_index"] = -100
    consts: dict[str, object] = {"BLOCK_V": launch.block_v, "K_PAD": launch.k_pad, "BUFFER": launch.buffer}
    return ints, consts | {"KEY_BITS": KEY_BITS.get(dtype, 32)}


def _launch(
    logits: torch.Tensor,
    targets: torch.Tensor,
    top_k: int,
    ignore_index: int,
    block_v: int | None = None,
    buffer: int = BUFFER,
) -> tuple[torch.Tensor, ...]:
    """Run the kernel: (log-prob, entropy, log-sum-exp, top-k logits [N, k] in id order, their ids [N, k] int32;
    -inf / -1 past a row's finite logits)."""
    if triton is None:
        raise RuntimeError("Triton is not installed")
    if logits.ndim != 2 or logits.stride(1) != 1:
        raise ValueError("logits must be a row-major [N, V] tensor")
    n, vocab = logits.shape
    check_top_k(top_k, vocab)
    dev = logits.device
    launch = logits_launch(n, vocab, top_k, block_v, device_sms(dev), buffer)
    out, entropy, lse = poisoned(n, device=dev), poisoned(n, device=dev), poisoned(n, device=dev)
    top_v = poisoned(n, max(top_k, 1), device=dev)
    top_i = poisoned(n, max(top_k, 1), device=dev, dtype=torch.int32)
    buf = torch.empty(2 * launch.programs * launch.buffer if top_k else 1, device=dev)
    if n:
        ints, consts = kernel_arguments(launch, vocab, logits.stride(0), logits.dtype)
        ints["ignore_index"] = ignore_index
        _target_logprobs_kernel[(launch.programs,)](
            logits, targets, out, entropy, lse, top_v, top_i, buf, **ints, **consts,
            num_warps=launch.num_warps, num_stages=launch.num_stages, maxnreg=launch.maxnreg,
        )  # fmt: skip
    return out, entropy, lse, top_v, top_i


def target_logprobs_triton(
    logits: torch.Tensor,
    targets: torch.Tensor,
    top_k: int = 0,
    ignore_index: int = -100,
    block_v: int | None = None,
    entropy: bool = True,
    buffer: int = BUFFER,
) -> Result:
    """One read of the logits for every k <= 256: the kernel's k best logits a row (in id order) sorted by value,
    stable, so ties stay by id; a row with fewer than k finite logits is answered from its own logits
    (`top_k_ties_by_id`: one host sync a call with a top-k to find them)."""
    check_top_k(top_k, logits.shape[1] if logits.ndim == 2 else 0)
    out, ent, lse, top_v, top_i = _launch(logits, targets, top_k, ignore_index, block_v, buffer)
    ent_or_none = ent if entropy else None
    if not top_k:
        return out, ent_or_none, None, None
    vals, order = top_v.sort(dim=1, descending=True, stable=True)
    ids = top_i.long().gather(1, order)
    short = vals[:, -1] == -float("inf")
    if bool(short.any()):
        rows = short.nonzero()[:, 0]
        exact, ids[rows] = top_k_ties_by_id(logits[rows], top_k)
        vals[rows] = exact.float()
    return out, ent_or_none, vals - lse[:, None], ids


def logsumexp_triton(logits: torch.Tensor) -> torch.Tensor:
    """Per-row log-sum-exp in float32, one read of the logits."""
    ignored = torch.full((logits.shape[0],), -100, dtype=torch.int64, device=logits.device)
    return _launch(logits, ignored, 0, -100)[2]


def target_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, top_k: int = 0, ignore_index: int = -100, entropy: bool = True
) -> Result:
    """Dispatcher: the Triton kernel on CUDA tensors, the reference elsewhere."""
    if logits.is_cuda and triton is not None:
        return target_logprobs_triton(logits, targets, top_k, ignore_index, entropy=entropy)
    return target_logprobs_reference(logits, targets, top_k, ignore_index, entropy)
