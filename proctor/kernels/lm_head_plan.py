"""The fused lm_head kernel's launch plan (pure Python, no Triton): the tile, warps and pipeline depth for the rows
and dtype, the vocabulary splits that fill whole waves of SMs, and row chunks that keep the per-split partials
under PARTIALS_BUDGET and the probes' host-side buffers under PROBE_BUDGET. kernels/lm_head_logprobs.py launches
it; bench/cost_model.py costs it and bench/hopper.py compiles it."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from proctor.kernels.probe_logprobs import PROBE_BUDGET, PROBE_BYTES

H200_SMS = 132  # multiprocessors of an H200 (and H100 SXM): the launch shapes of the compile report and cost model
PARTIALS_BUDGET = 64 * 2**20  # bytes of per-split partials and top-k candidates per launch; rows are chunked to fit


def device_sms(device: torch.device) -> int:
    """The device's multiprocessors: what the launch grids are sized for (an H200's off a GPU: the interpreter)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).multi_processor_count)
    return H200_SMS


@dataclass(frozen=True)
class LmHeadLaunch:
    """One launch of the fused kernel: its tile, warps, pipeline depth and grid."""

    rows: int  # rows in this launch (a chunk of the call's rows)
    block_n: int
    block_v: int  # columns of a tile's first accumulator
    block_v2: int  # columns of its second accumulator, which shares the hidden block's loads (0: none)
    block_h: int
    num_warps: int
    num_stages: int
    group: int  # row blocks per group of the program order
    splits: int  # vocabulary splits: programs per row block
    tiles_per_split: int
    top_k: int
    set_size: int = 0  # tokens whose logits every row also reports (RRM probes' score tokens)
    rank: bool = False  # also count each row's logits at or above its target's (prompt-logprob ranks)
    probes: int = 0  # token ids each row probes (per-position probes, kernels/probe_logprobs.py), 0: none
    col0: int = 0  # the first vocabulary column this launch covers
    columns: int = 0  # how many it covers: a multiple of 16 (the body), or the 1-15 after it (the tail)

    @property
    def tile_v(self) -> int:
        """Vocabulary columns of one tile (both accumulators)."""
        return self.block_v + self.block_v2

    @property
    def row_blocks(self) -> int:
        return -(-self.rows // self.block_n)

    @property
    def programs(self) -> int:
        return self.row_blocks * self.splits

    @property
    def k_pad(self) -> int:
        return 1 << (self.top_k - 1).bit_length() if self.top_k else 0

    def partial_bytes(self) -> int:
        """The per-split partials (4 float32, 5 with a rank) and top-k candidates (float32 value, int32 id)."""
        return self.rows * self.splits * (16 + 4 * self.rank + 8 * self.top_k)

    def probe_bytes(self) -> int:
        """The probes' buffers: the host's ordering of the rows' ids, at its peak (`PROBE_BYTES` a probe), and each
        row's place to start at in each split (int32)."""
        return self.rows * (self.probes * PROBE_BYTES + 4 * self.splits) if self.probes else 0


TAIL_ALIGN = 16  # the body launch covers the vocabulary's first multiple of 16 columns: the integer Triton then marks


def vocab_body(vocab: int) -> int:
    """The columns of the body launch: the kernel's vocabulary argument is divisible by 16, the hint a real
    launch gives the compiler (without it, a 50,257-word vocabulary spilled beside a top-k). A vocabulary under
    16 (tests) is all body."""
    return vocab if vocab < TAIL_ALIGN else vocab - vocab % TAIL_ALIGN


def lm_head_tail(launch: LmHeadLaunch, vocab: int) -> LmHeadLaunch | None:
    """The launch for the 1-15 columns after a body launch's (None when the vocabulary is a multiple of 16): the
    same rows in one 16-column block each, the partials beside the body's as one more split. It reads the rows'
    hidden states once more (a ~0.1 % of the body's operand bytes at 151,936 x 4,096) and no column mask spills in
    so small a tile. Beside a 32- or 64-slot top-k it runs on 8 warps: on 4, a tail without the divisibility hint
    (32,002 words) spilled 8 B with 64 slots; so does one with probes beside a 1- to 8-slot top-k (a float32 one
    spilled 8-16 B on 4 warps, and beside 16 slots 8 B on 8)."""
    tail = vocab - vocab_body(vocab)
    if not tail:
        return None
    warps = 8 if launch.top_k > 16 or (launch.probes and 0 < launch.top_k < 16) else 4
    return replace(
        launch, block_v=TAIL_ALIGN, block_v2=0, num_warps=warps,
        group=min(16, launch.row_blocks), splits=1, tiles_per_split=1, col0=vocab_body(vocab), columns=tail,
    )  # fmt: skip


def _tile(
    rows: int, dtype: torch.dtype, top_k: int, rank: bool = False, probes: bool = False
) -> tuple[int, int, int, int, int, int]:
    """(BLOCK_N, BLOCK_V, BLOCK_V2, BLOCK_H, warps, stages): the largest tiles that triton 3.6 compiles for sm_90
    without a spill (bench/hopper.py's report, which compiles every top-k slot count). One 128 x 256 accumulator
    spills 280-2,000 bytes even without top-k; two accumulators, 128 x 128 and 128 x 128 (128 x 64 beside a
    running top-k), folded one after the other, do not. A 32-slot top-k (top-k 17-32) spills 8 bytes at BLOCK_H 64
    and none at BLOCK_H 32 (four stages keep as many bytes in flight). A rank's threshold and count take the top-k
    tiles (128 x (128 + 128) spills 8-32 bytes with them), and beside a 32- or 64-slot top-k, which spill 8-32
    bytes at any of those, a 32-column second block at BLOCK_H 32 (the HTTP front's prompt log-probs, the only
    launches with a rank, pay ~10 % more operand reads for it). With per-position probes' passes a 32-slot top-k
    spills 8 B at BLOCK_H 32 (at 128 + 64 or + 32, three to five stages) and none at 128 x (128 + 64) x 64; a
    64-slot one, or a rank's count beside a 32-slot one, spills 8-112 B with any second block (40 B at + 32) and
    none without one (~20 % more operand reads: only the rank's launches and top-k above 32 pay it)."""
    if dtype == torch.float32:  # no tensor-core path at 1e-4: FMA tiles (32 x 64 and 32 x 32 spilled 8-16 B); a
        # 16-slot top-k spills 8 B on 4 warps, a 32-slot on 8; beside probes' passes a 2- to 8-slot one 8-16 B on 8
        return 64, 32, 0, 32, 8 if top_k <= (1 if probes else 16) else 4, 3
    if probes and top_k > 16:  # the probes' passes beside a 32- or 64-slot top-k
        block_n, warps = (128, 8) if rows > 64 or rank else (64, 4)
        return block_n, 128, 64 if top_k <= 32 and not rank else 0, 64, warps, 3
    if rank and top_k > 16:
        return 128, 128, 32, 32, 8, 4
    block_n, warps = (128, 8) if rows > 64 else (64, 4)  # few rows: all in one block, the weight read once
    block_v2 = 64 if top_k or rank else 128
    block_h, stages = (32, 4) if 16 < top_k <= 32 else (64, 3)
    return block_n, 128, block_v2, block_h, warps, stages


def _splits(row_blocks: int, tiles: int, sms: int) -> tuple[int, int]:
    """(splits, tiles per split) with the least time in whole waves: waves x tiles per program."""

    def cost(s: int) -> tuple[int, int]:
        per = -(-tiles // s)
        return -(-row_blocks * -(-tiles // per) // sms) * per, s

    best = min(range(1, min(tiles, 4 * sms) + 1), key=cost)
    per = -(-tiles // best)
    return -(-tiles // per), per


def lm_head_launches(
    rows: int,
    vocab: int,
    dtype: torch.dtype,
    top_k: int = 0,
    sms: int = H200_SMS,
    set_size: int = 0,
    rank: bool = False,
    probes: int = 0,
) -> list[LmHeadLaunch]:
    """The body launches that score `rows` rows over the vocabulary's first `vocab_body` columns: one, or row
    chunks when the partials would pass PARTIALS_BUDGET or the probes' buffers PROBE_BUDGET. Each has a tail launch
    (`lm_head_tail`) when the vocabulary is not a multiple of 16."""
    body = vocab_body(vocab)
    if rows == 0:
        return []
    block_n, block_v, block_v2, block_h, warps, stages = _tile(rows, dtype, top_k, rank, probes > 0)
    tiles = -(-body // (block_v + block_v2))
    chunk = rows
    while True:
        row_blocks = -(-chunk // block_n)
        splits, per = _splits(row_blocks, tiles, sms)
        group = min(16, row_blocks)
        launch = LmHeadLaunch(
            chunk,
            block_n,
            block_v,
            block_v2,
            block_h,
            warps,
            stages,
            group,
            splits,
            per,
            top_k,
            set_size,
            rank,
            probes,
            columns=body,
        )
        fits = launch.partial_bytes() <= PARTIALS_BUDGET and launch.probe_bytes() <= PROBE_BUDGET
        if fits or chunk <= block_n:
            break
        chunk = max(block_n, (chunk // 2 + block_n - 1) // block_n * block_n)
    full, rest = divmod(rows, chunk)
    out = [launch] * full
    if rest:
        out += lm_head_launches(rest, vocab, dtype, top_k, sms, set_size, rank, probes)
    return out
