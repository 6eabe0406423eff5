"""CPU Score's lm_head step before and after it stopped making [rows, V] tensors it does not need, same run, same
cores, on the hidden states of a real model's forward over the same sequences.

    python -m proctor.bench.score_cpu [--sequences 48] [--length 255] [--targets 128] [--ranks] [--rounds 3]

Before (the torch reference up to 2026-12-07, `before` below): per 1,024-row chunk the logits, a float32
log-softmax of the whole chunk (one more [1024, V] tensor), the targets' entries and the top-k of the log-softmax,
and with `--ranks` the count of logits at or above each target's (a [1024, V] bool tensor, summed through an int64
copy of it). After: `lm_head_logprobs_reference(..., entropy=False)`, what the torch backend's Score calls now: the
same product per chunk, then per block of rows that stays in cache (`CACHE_BYTES`) one log-sum-exp, the targets'
logits, the logits' top-k and the int32 rank count. `--targets 255 --ranks` is the HTTP front's prompt_logprobs
(every position, vLLM's ranks). The model's forward over the same sequences is timed beside them, so the step's
share of a whole Score is in the same report. Rounds alternate the order; CPU seconds (this process) beside wall.
Writes bench/results/YYYY-MM-DD-cpu-score-lm-head.{json,md} (`--out` another folder).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from proctor.engine.backends.builtin_models import resolve_model
from proctor.kernels.lm_head_logprobs import lm_head_logprobs_reference
from proctor.kernels.topk_select import top_k_ties_by_id

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK = 1024  # the reference's row chunk


def before(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, k: int, ranks: bool) -> torch.Tensor:
    out = []
    for s in range(0, len(h), CHUNK):
        logits, targets = h[s : s + CHUNK] @ w.T, t[s : s + CHUNK, None]
        logprobs = torch.log_softmax(logits, dim=-1)
        out.append(logprobs.gather(1, targets)[:, 0])
        top_k_ties_by_id(logprobs, k)
        if ranks:
            (logits >= logits.gather(1, targets)).sum(dim=1)
    return torch.cat(out)


def after(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, k: int, ranks: bool) -> torch.Tensor:
    rank_out = torch.empty(len(t), dtype=torch.long) if ranks else None
    return lm_head_logprobs_reference(h, w, t, k, rank_out=rank_out, entropy=False)[0]


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall s, this process's CPU s)."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=48)
    parser.add_argument("--length", type=int, default=255)
    parser.add_argument("--targets", type=int, default=128, help="scored positions a sequence (its last ones)")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--ranks", action="store_true", help="each target's rank too (the HTTP front asks)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model("builtin:smollm2"), dtype=torch.float32).eval()
    w = model.get_output_embeddings().weight.detach()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, w.shape[0], (args.sequences, args.length), generator=gen)
    first = args.length - args.targets

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            hidden: torch.Tensor = model.model(input_ids=ids).last_hidden_state
        return hidden[:, first - 1 : args.length - 1].reshape(-1, hidden.shape[-1]).contiguous()

    h = forward()
    t = ids[:, first:].reshape(-1)
    with torch.inference_mode():
        diff = float((before(h, w, t, args.top_k, False) - after(h, w, t, args.top_k, False)).abs().max())
    steps = {"before": before, "after": after}
    wall: dict[str, list[float]] = {"forward": [], "before": [], "after": []}
    cpu: dict[str, list[float]] = {"forward": [], "before": [], "after": []}
    loads = []
    for r in range(args.rounds):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        loads.append(round(os.getloadavg()[0], 2))
        parts = [("forward", forward)] + [
            (n, functools.partial(steps[n], h, w, t, args.top_k, args.ranks)) for n in order
        ]
        for name, fn in parts:
            with torch.inference_mode():
                seconds, cpu_s = _timed(fn)
            wall[name].append(seconds)
            cpu[name].append(cpu_s)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    ratios_cpu = [b / a for b, a in zip(cpu["before"], cpu["after"], strict=True)]
    record = {
        "date": dt.date.today().isoformat(),
        "command": "python -m proctor.bench.score_cpu " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": f"CPU, {os.cpu_count()} cores, torch threads {torch.get_num_threads()} (both paths on the same "
        "cores, same process)",
        "model": "builtin:smollm2 (SmolLM2-135M-Instruct, float32)",
        "rows": len(h),
        "vocab": w.shape[0],
        "top_k": args.top_k,
        "ranks": args.ranks,
        "max_abs_diff_logprob": diff,
        "load_average_per_round": loads,
        "seconds": wall,
        "cpu_seconds": cpu,
        "median_s": med,
        "median_cpu_s": med_cpu,
        "step_speedup_cpu_per_round": [round(x, 2) for x in ratios_cpu],
        "step_speedup_cpu": statistics.median(ratios_cpu),
        "score_speedup_cpu": (med_cpu["forward"] + med_cpu["before"]) / (med_cpu["forward"] + med_cpu["after"]),
    }
    stem = args.out / f"{record['date']}-cpu-score-lm-head"
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# CPU Score: the lm_head step before and after (same run, same cores)",
        "",
        f"Command: `{record['command']}` ({record['date']}); {record['device']}; {record['model']}; "
        f"{args.sequences} sequences of {args.length} tokens, the last {args.targets} scored ({len(h)} rows, V "
        f"{w.shape[0]}), top-{args.top_k}{', with ranks' if args.ranks else ''}; {args.rounds} rounds in "
        f"alternating order (medians); 1-minute load average at each round's start: {loads}.",
        "",
        "| part | median CPU s | median wall s | each round, CPU s / wall s |",
        "|---|---|---|---|",
        *(
            f"| {k} | {med_cpu[k]:.3f} | {med[k]:.3f} | "
            f"{', '.join(f'{c:.2f} / {s:.2f}' for c, s in zip(cpu[k], v, strict=True))} |"
            for k, v in wall.items()
        ),
        "",
        f"- lm_head step: {record['step_speedup_cpu']:.2f}x fewer CPU seconds after (before / after, median of the "
        f"rounds' ratios: {record['step_speedup_cpu_per_round']}).",
        f"- forward + step (an in-process Score's compute): {record['score_speedup_cpu']:.2f}x fewer CPU seconds.",
        f"- largest difference of a target log-prob between the two: {diff:.1e}.",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
