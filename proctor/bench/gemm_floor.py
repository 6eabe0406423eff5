"""The matrix-multiply floor of a scoring workload: the model's own linear layers and its lm_head, as torch float32
products on this machine's cores and nothing else (no attention, norms, activations, sampling or serving).

    python -m proctor.bench.gemm_floor --model builtin:smollm2 --sequences 48 --length 256 --batch 8

Any server that scores these sequences with these weights in float32 computes at least these products: every layer's
projections for every token, and the lm_head over the whole vocabulary for every scored position (a log-softmax
and a top-k need every logit). Their time on the same cores is a lower bound for the server's wall time unless its
products run faster than torch's (MKL / oneDNN here), which `http_prompt_logprobs` reports beside each round so a
throughput target can be read against what the machine can do at all. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
import torch.nn.functional as F

from proctor.engine.backends.builtin_models import resolve_model


def linear_weights(model: Any) -> list[torch.Tensor]:
    """Every nn.Linear weight of the model but its output embeddings (the lm_head, timed on its own)."""
    head = model.get_output_embeddings()
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]


def floor(model: Any, sequences: int, length: int, batch: int, repeats: int) -> dict[str, Any]:
    """The best of `repeats` runs of the workload: `sequences` of `length` tokens in passes of `batch` sequences
    (the last takes the rest), every token through the layers and all but each sequence's first through the
    lm_head."""
    weights = linear_weights(model)
    head = model.get_output_embeddings().weight.float()
    passes = [min(batch, sequences - s) for s in range(0, sequences, batch)]
    rows = batch * length
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in weights}  # one input per layer input width
    x = torch.randn(rows, head.shape[1])
    tokens, scored = sequences * length, sequences * (length - 1)
    flops = 2 * tokens * sum(w.numel() for w in weights) + 2 * scored * head.numel()
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first run warms the BLAS up and is dropped
            start = time.perf_counter()
            for seqs in passes:
                for w in weights:
                    F.linear(inputs[w.shape[1]][: seqs * length], w)
                F.linear(x[: seqs * (length - 1)], head)
            times.append(time.perf_counter() - start)
    best = min(times[1:])
    return {
        "seconds": round(best, 6),
        "seconds_every_pass": [round(t, 6) for t in times[1:]],
        "flop": flops,
        "gflop": round(flops / 1e9, 1),
        "gflop_per_s": round(flops / best / 1e9, 1),
        "threads": torch.get_num_threads(),
        "linear_layers": len(weights),
    }


def workload_arguments(p: argparse.ArgumentParser, batch: str) -> None:
    """The scoring workload's flags, as this floor and the comparisons that run it (`http_prompt_logprobs`) read
    them; `batch` says what a batch of sequences is there."""
    p.add_argument("--model", default="builtin:tiny")
    p.add_argument("--sequences", type=int, default=64)
    p.add_argument("--length", type=int, default=256, help="tokens per sequence")
    p.add_argument("--batch", type=int, default=8, help=f"sequences per {batch}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    workload_arguments(p, "forward pass")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    for name in ("sequences", "batch", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.length < 2:
        p.error(f"--length must be at least 2 (a sequence's first token is not scored), got {args.length}")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=torch.float32).eval()
    print(json.dumps(floor(model, args.sequences, args.length, args.batch, args.repeats)))


if __name__ == "__main__":
    main()
