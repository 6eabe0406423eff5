"""Phase `models`: random-init models of the bars' real shapes, built where they will run (seconds on a GPU) and
saved for the servers; and the arithmetic each forward does, to turn rates into a share of the matrix ceiling.

Weights' values do not matter for speed, and the correctness checks compare the served model with the same
weights in float64. The teacher has Qwen2.5-1.5B's shape with the built-in tiny model's byte-level BPE tokenizer
(ids beyond it decode to nothing). The critic has RoBERTa-large's shape as a BERT model with a WordPiece tokenizer
trained here on the project's own text (no model hub, nothing carried): SKD pairs are common English words and
names, which it keeps whole, as a real BERT vocabulary does.

    python -m proctor.bench.gpu_check.models --config-only DIR   # the teacher's config + tokenizer, no weights
                                                                  # (vLLM's load_format=dummy needs no more)
"""

from __future__ import annotations

import argparse
import importlib.resources
from pathlib import Path
from typing import Any

import torch

from proctor.bench.gpu_check.context import PhaseContext
from proctor.bench.gpu_check.scale import GPU, Scale
from proctor.engine.backends.builtin_models import resolve_model

CRITIC_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def teacher_config(shape: dict[str, int]) -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(**shape, tie_word_embeddings=True)  # as Qwen2.5-1.5B (and 0.5B) are


def teacher_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model("builtin:tiny"))


def critic_tokenizer(vocab_size: int) -> Any:
    """A BERT-style WordPiece tokenizer ([CLS] a [SEP] b [SEP], segment ids) trained on the project's shipped text."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    data = importlib.resources.files("proctor.engine.data")
    corpus = [
        line
        for name in ("tiny_corpus.txt", "seed_events.txt", "first_names.txt")
        for line in data.joinpath(name).read_text().splitlines()
    ]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=CRITIC_SPECIALS, show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )


def build(folder: Path, scale: Scale) -> tuple[Path, Path]:
    """The teacher and the critic, initialised on the scale's device and saved in its serving dtype."""
    from transformers import BertConfig, BertForSequenceClassification, Qwen2ForCausalLM

    dtype = getattr(torch, scale.dtype)
    teacher, critic = folder / "teacher", folder / "critic"
    torch.manual_seed(0)
    with torch.device(scale.device):  # initialise where it will run: seconds on a GPU, not minutes on the CPU
        model: Any = Qwen2ForCausalLM(teacher_config(scale.teacher))
        model.to(dtype).save_pretrained(teacher)
        del model
        model = BertForSequenceClassification(BertConfig(**scale.critic, num_labels=1))
        model.to(dtype).save_pretrained(critic)
        del model
    teacher_tokenizer().save_pretrained(teacher)
    critic_tokenizer(min(scale.critic["vocab_size"], 30522)).save_pretrained(critic)
    return teacher, critic


def decoder_flops(shape: dict[str, int], seq_len: int, scored: int) -> float:
    """Forward FLOPs of one causal sequence of `seq_len` tokens with the lm_head at `scored` positions (matrix
    products only: 2 per multiply-add; causal attention over half the sequence on average)."""
    h, layers, inter = shape["hidden_size"], shape["num_hidden_layers"], shape["intermediate_size"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    per_token = 2 * layers * (2 * h * h + 2 * h * kv + 3 * h * inter)
    attention = 2 * 2 * layers * h * seq_len * seq_len / 2
    return float(seq_len * per_token + attention + 2 * h * shape["vocab_size"] * scored)


def encoder_flops(shape: dict[str, int], seq_len: int) -> float:
    """Forward FLOPs of one bidirectional sequence (the critic): 4 h^2 attention + 2 h i MLP weights per layer."""
    h, layers, inter = shape["hidden_size"], shape["num_hidden_layers"], shape["intermediate_size"]
    return float(seq_len * 2 * layers * (4 * h * h + 2 * h * inter) + 2 * 2 * layers * h * seq_len * seq_len)


def run(ctx: PhaseContext) -> None:
    teacher, critic = build(ctx.models, ctx.scale)
    sizes = {p.name: sum(f.stat().st_size for f in p.glob("*.safetensors")) / 2**30 for p in (teacher, critic)}
    ctx.log.data(teacher=str(teacher), critic=str(critic), weights_gib=sizes)
    vocab = len(critic_tokenizer_from(critic))
    ctx.log.check("teacher", (teacher / "config.json").exists(), f"{sizes['teacher']:.2f} GiB of {ctx.scale.dtype} "
                  f"weights, Qwen2 {ctx.scale.teacher}")  # fmt: skip
    ctx.log.check("critic", (critic / "config.json").exists(), f"{sizes['critic']:.2f} GiB, BERT {ctx.scale.critic}, "
                  f"WordPiece vocabulary {vocab}")  # fmt: skip


def critic_tokenizer_from(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-only", type=Path, required=True, help="write the teacher's config and tokenizer here")
    args = p.parse_args(argv)
    teacher_config(GPU.teacher).save_pretrained(args.config_only)
    teacher_tokenizer().save_pretrained(args.config_only)
    print(f"saved {args.config_only}: a {GPU.teacher['num_hidden_layers']}-layer Qwen2 config and its tokenizer")


if __name__ == "__main__":
    main()
