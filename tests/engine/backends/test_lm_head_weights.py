"""The output embedding read alone from a checkpoint (the hidden-state scorer's lm_head): the tensor transformers
loads, tied or not, single file or sharded, and models whose logits are more than its product refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from proctor.engine.backends.builtin_models import resolve_model
from proctor.engine.backends.lm_head_weights import check_plain_lm_head, load_lm_head
from tests.conftest import TINY


def test_the_tiny_models_untied_lm_head() -> None:
    path = resolve_model(TINY)
    weight = load_lm_head(path, torch.device("cpu"), torch.float32)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert torch.equal(weight, model.get_output_embeddings().weight)
    assert not torch.equal(weight, model.get_input_embeddings().weight)


@pytest.mark.parametrize("shard", [False, True])
def test_a_tied_lm_head_is_the_input_embedding(tmp_path: Path, shard: bool) -> None:
    config = LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1,
        tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(1)
    model = LlamaForCausalLM(config)
    model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="8KB" if shard else "1GB")
    assert (tmp_path / "model.safetensors.index.json").exists() == shard
    weight = load_lm_head(str(tmp_path), torch.device("cpu"), torch.bfloat16)
    assert weight.dtype == torch.bfloat16 and weight.is_contiguous()
    assert torch.equal(weight, model.get_input_embeddings().weight.to(torch.bfloat16))


def test_logit_transforms_are_refused() -> None:
    check_plain_lm_head(LlamaConfig())
    capped = LlamaConfig()
    capped.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match=r"final_logit_softcapping=30\.0.*scorer: vllm"):
        check_plain_lm_head(capped)
    scaled = LlamaConfig()
    scaled.logit_scale = 0.0625
    with pytest.raises(ValueError, match="logit_scale"):
        check_plain_lm_head(scaled)
    unit = LlamaConfig()
    unit.logits_scaling = 1.0
    check_plain_lm_head(unit)


async def test_the_torch_scorer_refuses_score_on_soft_capped_logits_and_still_generates(tmp_path: Path) -> None:
    """The fused Score kernels read hidden @ lm_head.T: on a model whose logits are soft-capped they would answer
    wrong log-probs, so Score, groups, probes and a Score that samples are refused by name while Generate (the model's
    own logits) runs."""
    import json
    import shutil

    from proctor.engine.backends.torch.generator import TorchGenerator
    from proctor.engine.errors import ItemError
    from proctor.engine.items import (
        GenerateItem,
        ProbeGroupItem,
        SamplingParams,
        ScoreGroupItem,
        ScoreItem,
        ScoreSampleItem,
    )

    folder = tmp_path / "capped"
    shutil.copytree(resolve_model(TINY), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "final_logit_softcapping": 30.0}))
    backend = TorchGenerator(str(folder), device="cpu", dtype="float32")
    await backend.start()
    try:
        for call in (
            backend.score(ScoreItem(context_ids=[1, 2], target_ids=[3])),
            backend.score_group(ScoreGroupItem(context_ids=[1, 2], continuations=[[3]])),
            backend.probe_group(ProbeGroupItem(context_ids=[1, 2], continuations=[[3]], token_ids=[[4, 5]])),
            backend.score_sample(
                ScoreSampleItem(context_ids=[1, 2], target_ids=[3], params=SamplingParams(max_tokens=1))
            ),
        ):
            with pytest.raises(ItemError, match=r"final_logit_softcapping=30\.0") as refused:
                await call
            assert refused.value.code == "FAILED_PRECONDITION"
        generation = await backend.generate(GenerateItem(prompt_ids=[1, 2], params=SamplingParams(max_tokens=2)))
        assert generation.samples
    finally:
        await backend.close()
