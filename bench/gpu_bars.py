"""The issue's GPU bars in one run: random-init models of the real shapes, served by `proctor serve`, driven by
`proctor bench` over gRPC. Weights' values do not matter for speed.

    python -m proctor.bench.gpu_bars                       # on a GPU: Qwen2.5-1.5B-shaped teacher, BERT-large critic
    python -m proctor.bench.gpu_bars --small --device cpu  # a smoke run of the harness (tiny shapes, a minute)

Bars (bench/README.md): Score >= 200k tok/s through gRPC with <= 1 GiB extra per 16k tokens (the server's GPU
memory peak is reported per level); Critic >= 30k pairs/s (a triple is `critic.draws` = 5 pairs); rule-only rewards
>= 10k rollouts/s per server core. The critic has RoBERTa-large's shape (hidden 1024, 24 layers, 16 heads,
intermediate 4096) as a BERT model, so that the shipped MiniLM tokenizer (segment ids, vocabulary 30,522) feeds it;
the compute is the same. `--packed` serves the teacher a second time with flex_attention (packed Score rows).
Writes bench/results/YYYY-MM-DD-<gpu>-bench-{score,skd,grpo}[-packed].{json,md,png} (-smoke added with --small).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from proctor.bench import load
from proctor.bench.kernels import device_tag
from proctor.bench.server import serve
from proctor.engine.backends.builtin_models import resolve_model

QWEN_1_5B = {"hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
             "intermediate_size": 8960, "vocab_size": 151936, "max_position_embeddings": 32768}  # fmt: skip
ROBERTA_LARGE = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096}
SMALL_TEACHER = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
                 "intermediate_size": 128, "vocab_size": 512, "max_position_embeddings": 8192}  # fmt: skip
SMALL_CRITIC = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def build_models(folder: Path, small: bool, device: str) -> tuple[Path, Path]:
    """A random-init teacher and critic of the bars' shapes, with the built-in models' tokenizers."""
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    teacher, critic = folder / "teacher", folder / "critic"
    with torch.device(device):  # initialise where it will run: seconds on a GPU, not minutes on the CPU
        model: Any = Qwen2ForCausalLM(Qwen2Config(**(SMALL_TEACHER if small else QWEN_1_5B), tie_word_embeddings=False))
        model.to(dtype).save_pretrained(teacher)
        del model
        shape = SMALL_CRITIC if small else ROBERTA_LARGE
        model = BertForSequenceClassification(BertConfig(**shape, num_labels=1, vocab_size=30522))
        model.to(dtype).save_pretrained(critic)
        del model
    AutoTokenizer.from_pretrained(resolve_model("builtin:tiny")).save_pretrained(teacher)
    AutoTokenizer.from_pretrained(resolve_model("builtin:tiny-critic")).save_pretrained(critic)
    return teacher, critic


def config(teacher: Path, critic: Path, device: str, attn: str) -> str:
    return f"""server: {{port: 0, metrics_port: 0, max_message_bytes: 268435456}}
teacher: {{model: '{teacher}', backend: torch, device: {device}, attn_implementation: {attn}, max_score_tokens: 16384}}
critic: {{model: '{critic}', device: {device}, cutoff: 0.5, max_batch_items: 1024, max_batch_tokens: 49152}}
reward: {{model: '', mode: rules, total_steps: 10000}}
"""


def run(args: argparse.Namespace) -> list[Path]:
    device = torch.device(args.device)
    tag = device_tag(device)
    command = "python -m proctor.bench.gpu_bars " + " ".join(sys.argv[1:])
    items = {
        "score": 16 if args.small else 256,
        "skd": 512 if args.small else 16384,
        "grpo": 4096 if args.small else 16384,
    }
    levels = {"score": [4.0] if args.small else [4.0, 16.0], "skd": [4.0] if args.small else [4.0, 16.0], "grpo": [1.0]}
    written = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        print(f"building random-init models of the bars' shapes on {device} ...", flush=True)
        teacher, critic = build_models(Path(folder), args.small, device.type)
        variants = [("", "sdpa")] + ([("-packed", "flex_attention")] if args.packed else [])
        for suffix, attn in variants:
            proc, target, metrics = serve(Path(folder), config(teacher, critic, args.device, attn))
            try:
                for name in ["score"] if suffix else ["score", "skd", "grpo"]:
                    work = load.workloads(8192)[name]
                    results = asyncio.run(
                        load.run_levels(target, work, "closed", levels[name], items[name], 256, proc.pid, metrics)
                    )
                    smoke = "-smoke" if args.small else ""  # never in place of a real figure
                    written.append(load.report(name + suffix + smoke, f"own process ({attn})", results, tag, command))
            finally:
                proc.terminate()
                proc.wait()
    return written


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="tiny shapes: a smoke run of the harness")
    p.add_argument("--packed", action="store_true", help="also Score with flex_attention (packed rows)")
    p.add_argument("--workdir", default=None, help="where the models are written (~3.5 GB full size)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: these are GPU bars (use --small --device cpu for a smoke run)")
    for stem in run(args):
        print("saved " + ", ".join(str(f) for f in sorted(stem.parent.glob(stem.name + ".*"))))


if __name__ == "__main__":
    main()
