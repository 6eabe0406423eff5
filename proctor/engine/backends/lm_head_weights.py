"""The output embedding (lm_head) of a causal LM, read alone from its checkpoint: what proctor's fused log-prob
kernels multiply final hidden states with when another engine (vLLM) runs the rest of the model.

For a 70B-class model it is ~2 GB of a ~140 GB checkpoint (Llama 3.1 70B: 128,256 x 8,192 in bf16), so it is held
whole on one device: the kernels never build the [tokens, vocab] logits, and no vocabulary split is needed.
"""

from __future__ import annotations

import json
from typing import Any

import torch

# Config fields of models whose logits are not plain `hidden @ lm_head.T` (Gemma 2/3 soft-capping, Cohere's and
# Granite's scales): the kernels would give wrong log-probs for them, so they are refused by name.
_LOGIT_TRANSFORMS = {"final_logit_softcapping": None, "logit_scale": 1.0, "logits_scaling": 1.0}


def check_plain_lm_head(config: Any) -> None:
    """Raise ValueError when the model's logits are more than its lm_head's product (see _LOGIT_TRANSFORMS)."""
    for name, plain in _LOGIT_TRANSFORMS.items():
        value = getattr(config, name, None)
        if value is not None and value != plain:
            raise ValueError(
                f"the model's logits are not hidden @ lm_head.T ({name}={value}): proctor's lm_head kernels "
                "cannot score it; use scorer: vllm"
            )


def output_embedding_name(config: Any) -> str:
    """The checkpoint name of the output embedding: transformers' own answer (the input embedding's name when the
    two are tied), found on a weightless copy of the model."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    weight = model.get_output_embeddings().weight
    return str(next(name for name, param in model.named_parameters() if param is weight))


def load_lm_head(path: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The [vocab, hidden] output embedding of the model at `path` (a folder or an HF id), contiguous on `device`."""
    from safetensors import safe_open
    from transformers import AutoConfig
    from transformers.utils import cached_file

    config = AutoConfig.from_pretrained(path)
    check_plain_lm_head(config)
    name = output_embedding_name(config)
    index = cached_file(path, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False)
    if index is not None:
        with open(index) as f:
            weight_map: dict[str, str] = json.load(f)["weight_map"]
        if name not in weight_map:
            raise ValueError(f"{path}: the checkpoint index has no {name} (the output embedding)")
        shard = cached_file(path, weight_map[name])
    else:
        shard = cached_file(path, "model.safetensors")
    with safe_open(shard, framework="pt", device="cpu") as f:
        if name not in f.keys():
            raise ValueError(f"{shard} has no {name} (the output embedding)")
        weight: torch.Tensor = f.get_tensor(name)
    return weight.to(device=device, dtype=dtype).contiguous()
