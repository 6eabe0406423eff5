"""Phase `packed`: Score with packed rows (one row per batch, no padding) on flex_attention, the varlen attention
that needs no extra package; its own phase because flex_attention is compiled (torch.compile) on first use.

The warm-up requests of the bars phase are sent again and their log-probs compared with the padded server's
answers (both in the bars' dtype: in bfloat16 the two layouts round differently, so the bound is bfloat16's, not
the float32 1e-4 of the serve phase, which already holds packed = padded exactly on sdpa). Then the Score bar's
rate with packed rows, beside the padded rate of the bars phase.
"""

from __future__ import annotations

import asyncio
import json
import random
import time

from proctor.bench import load
from proctor.bench.gpu_check import servers
from proctor.bench.gpu_check.bars import BATCH, WARM_SEED, score_requests
from proctor.bench.gpu_check.context import PhaseContext
from proctor.bench.gpu_check.models import decoder_flops
from proctor.bench.gpu_check.report import Figure, read_record
from proctor.clients.teacher import TeacherClient
from proctor.v1 import teacher_pb2, teacher_pb2_grpc

# bfloat16 keeps 8 bits: a log-prob near -12 moves by up to ~0.05 when its logits are rounded differently.
BF16_BOUND = 0.1


def run(ctx: PhaseContext) -> None:
    s, log = ctx.scale, ctx.log
    teacher_section = servers.teacher_section(
        ctx, s.dtype, attn_implementation=s.packed_attention, score_packing="packed"
    )
    with servers.running(ctx, {"packed": servers.config(teacher=teacher_section)}, lambda: None) as (up, _):
        served = up["packed"]
        teacher = TeacherClient(served.target, timeout_s=600, max_message_bytes=servers.MAX_MESSAGE)
        vocab = teacher.info().vocab_size
        warm = score_requests(s, BATCH, 20, WARM_SEED, vocab)
        t0 = time.perf_counter()
        answers = teacher.score(warm)
        log.check("first packed batch", not any(a.HasField("error") for a in answers.values()),
                  f"{BATCH} sequences in {time.perf_counter() - t0:.1f} s ({s.packed_attention}; flex_attention "
                  "compiles here)")  # fmt: skip
        saved = ctx.workdir / "padded-scores.json"
        if saved.exists():
            padded = json.loads(saved.read_text())
            diff = max(abs(a - b) for r in warm for a, b in zip(answers[r.id].logprobs, padded[r.id], strict=True))
            log.figure(Figure("packed vs padded rows, max abs Δ log-prob", diff, "nats", BF16_BOUND, False,
                              note=f"{s.dtype}; {BATCH} sequences of {s.score_len} tokens"))  # fmt: skip
            log.check("packed = padded", diff <= BF16_BOUND, f"max abs Δ {diff:.2e} (bound {BF16_BOUND}, {s.dtype})")
        else:
            log.check("packed = padded", False, "no padded answers: the bars phase did not get to its warm-up")
        requests = score_requests(s, s.score_seqs, 0, seed=0, vocab=vocab)

        def make(rng: random.Random, i: int) -> teacher_pb2.ScoreRequest:
            return requests[i]

        work = load.Workload("Score", teacher_pb2_grpc.TeacherStub, "Score", make, lambda r: s.score_len, step=BATCH)
        [level] = asyncio.run(load.run_levels(served.target, work, "closed", [float(s.concurrency)], len(requests),
                                              metrics_url=served.metrics))  # fmt: skip
        log.check("packed Score bar answers", not level.errors and level.items == len(requests),
                  f"{level.items} sequences, errors {level.errors or 0}")  # fmt: skip
        bars = read_record(ctx.workdir, "bars")
        padded_rate = next((f.value for f in bars.figures if f.name == "Score through gRPC"), None) if bars else None
        flops = decoder_flops(s.teacher, s.score_len, s.score_len - s.score_context)
        log.figure(Figure(f"Score through gRPC, packed rows ({s.packed_attention})", level.tokens_per_s, "tok/s",
                          None if s.rehearse else 200_000.0, anchor="the padded rows' rate (bars phase)",
                          anchor_value=padded_rate, of_ceiling=ctx.matmul_share(level.tokens_per_s * flops /
                          s.score_len), ceiling=ctx.matmul_ceiling(),
                          note=f"{len(requests)} x {s.score_len} tokens, {level.seconds:.2f} s"))  # fmt: skip
        teacher.close()
