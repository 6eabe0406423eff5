"""Score groups vs scoring every sequence whole, on the torch backend, in the same run.

    python -m proctor.bench.score_groups --model builtin:tiny --device cpu --prompts 8 --n 16 --context 256 --cont 64
    python -m proctor.bench.score_groups --model /models/qwen2.5-1.5b --device cuda   # the issue's 64 x 16 workload

Writes bench/results/YYYY-MM-DD-<device>-score-groups.{json,md}: wall time of each mode, tokens/s counting every
token and counting each distinct token once, the speed-up, and the largest difference between the two modes'
log-probs (they must agree within 1e-4).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch

from proctor.engine.backends.torch.generator import TorchGenerator
from proctor.engine.items import ScoreGroupItem, ScoreItem

RESULTS = Path(__file__).resolve().parent / "results"


async def run(args: argparse.Namespace) -> dict[str, object]:
    backend = TorchGenerator(args.model, device=args.device, dtype=args.dtype, max_score_tokens=args.max_score_tokens)
    await backend.start()
    vocab = backend.info.vocab_size
    gen = torch.Generator().manual_seed(0)
    work = [
        (
            torch.randint(3, vocab, (args.context,), generator=gen).tolist(),
            [torch.randint(3, vocab, (args.cont,), generator=gen).tolist() for _ in range(args.n)],
        )
        for _ in range(args.prompts)
    ]

    async def grouped() -> list[list[list[float]]]:
        outs = await asyncio.gather(*(backend.score_group(ScoreGroupItem(c, conts)) for c, conts in work))
        return [[s.logprobs for s in o.scores] for o in outs]

    async def whole() -> list[list[list[float]]]:
        outs = await asyncio.gather(
            *(asyncio.gather(*(backend.score(ScoreItem(c, k)) for k in conts)) for c, conts in work)
        )
        return [[s.logprobs for s in o] for o in outs]

    timings = {}
    results = {}
    for name, fn in (("whole", whole), ("group", grouped)):
        await fn()  # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        results[name] = await fn()
        timings[name] = time.perf_counter() - t0
    await backend.close()
    diff = max(
        abs(a - b)
        for ga, gb in zip(results["group"], results["whole"], strict=True)
        for sa, sb in zip(ga, gb, strict=True)
        for a, b in zip(sa, sb, strict=True)
    )
    every = args.prompts * args.n * (args.context + args.cont)
    distinct = args.prompts * (args.context + args.n * args.cont)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    return {
        "device": device,
        "model": backend.info.model,
        "workload": f"{args.prompts} prompts x {args.context} tokens, {args.n} continuations x {args.cont} tokens",
        "whole_s": timings["whole"],
        "group_s": timings["group"],
        "speedup": timings["whole"] / timings["group"],
        "group_tok_s_every_token": every / timings["group"],
        "group_tok_s_distinct": distinct / timings["group"],
        "max_abs_logprob_diff": diff,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--cont", type=int, default=512)
    p.add_argument("--max-score-tokens", type=int, default=16384)
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    report = asyncio.run(run(args))
    report["command"] = "python -m proctor.bench.score_groups " + " ".join(sys.argv[1:] if argv is None else argv)
    for key, value in report.items():
        print(f"{key:>26}: {value}")
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        tag = "cpu" if report["device"] == "CPU" else str(report["device"]).split()[-1].lower()
        stem = RESULTS / f"{dt.date.today().isoformat()}-{tag}-score-groups"
        stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
        lines = [f"# Score groups vs whole sequences on {report['device']}", "", f"Command: `{report['command']}`", ""]
        lines += ["| | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in report.items() if k != "command"]
        stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
        print(f"saved {stem}.{{json,md}}")


if __name__ == "__main__":
    main()
