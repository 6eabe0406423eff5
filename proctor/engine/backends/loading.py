"""Loading an HF model and its tokenizer onto a device, and describing what was loaded: shared by the backends."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from proctor.engine.backends.builtin_models import resolve_model
from proctor.engine.items import BackendInfo

log = logging.getLogger(__name__)


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, not {dtype!r}") from None


def eos_token_ids(config: Any, tokenizer: Any) -> tuple[int, ...]:
    """The end-of-sequence ids: the model config's (one or several), else the tokenizer's."""
    eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
    return tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))


def hf_architecture(config: Any) -> dict[str, Any]:
    """`BackendInfo`'s model_type and architectures from an HF config."""
    return {
        "model_type": str(getattr(config, "model_type", "") or ""),
        "architectures": tuple(getattr(config, "architectures", None) or ()),
    }


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    ref: str  # what the user named
    path: str  # where it was loaded from
    device: torch.device
    dtype: torch.dtype

    def info(self, vocab_size: int, max_model_len: int, eos_token_ids: tuple[int, ...] = ()) -> BackendInfo:
        return BackendInfo(
            model=self.ref if self.ref == self.path else f"{self.ref} ({self.path})",
            backend="torch",
            dtype=str(self.dtype).removeprefix("torch."),
            device=str(self.device),
            tokenizer=type(self.tokenizer).__name__,
            vocab_size=vocab_size,
            max_model_len=max_model_len,
            eos_token_ids=eos_token_ids,
            **hf_architecture(self.model.config),
        )


def load(
    auto_class: Any, ref: str, device: torch.device, dtype: torch.dtype, attn_implementation: str | None = None
) -> Loaded:
    """`auto_class` is a transformers Auto* model class; the model comes back on `device`, in eval mode, with
    transformers' default attention unless `attn_implementation` names one."""
    from transformers import AutoTokenizer

    path = resolve_model(ref)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = auto_class.from_pretrained(path, dtype=dtype, **extra).to(device).eval()
    log.info("loaded %s on %s (%s) in %.1fs", path, device, dtype, time.perf_counter() - t0)
    return Loaded(model, tokenizer, ref, path, device, dtype)
