"""The pure mapping between proctor's dataclasses and vLLM's arguments / outputs (no vLLM needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from proctor.engine.backends.settings import VllmSettings
from proctor.engine.backends.vllm.mapping import (
    engine_kwargs,
    sampling_kwargs,
    score_kwargs,
    target_scores,
    to_sample,
    top_of,
)
from proctor.engine.config import ConfigError, TeacherConfig, load_config
from proctor.engine.items import FinishReason, SamplingParams


@dataclass
class Lp:
    """The shape of vLLM's `Logprob` that the mapping reads."""

    logprob: float
    rank: int = 0


def test_every_sampling_field_is_mapped() -> None:
    params = SamplingParams(
        n=3,
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        presence_penalty=0.5,
        frequency_penalty=-0.25,
        seed=11,
        max_tokens=99,
        stop=("\n", "END"),
        stop_token_ids=(7, 8),
        logprobs=True,
        top_logprobs=5,
        ignore_eos=True,
        detokenize=False,
    )
    assert sampling_kwargs(params) == {
        "n": 3,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.25,
        "seed": 11,
        "max_tokens": 99,
        "stop": ["\n", "END"],
        "stop_token_ids": [7, 8],
        "logprobs": 5,
        "ignore_eos": True,
        "detokenize": False,
        "skip_special_tokens": True,
        "include_stop_str_in_output": False,
    }
    # Log-probs cost vLLM Python objects per token: asked for only when the caller wants them.
    assert sampling_kwargs(SamplingParams())["logprobs"] is None
    assert sampling_kwargs(SamplingParams(logprobs=True))["logprobs"] == 0
    assert sampling_kwargs(SamplingParams())["seed"] is None


def test_engine_kwargs_leave_zero_settings_to_vllm() -> None:
    kwargs = engine_kwargs("/models/x", "bfloat16", VllmSettings())
    assert kwargs["model"] == "/models/x" and kwargs["dtype"] == "bfloat16"
    assert kwargs["logprobs_mode"] == "raw_logprobs"
    for unset in ("max_model_len", "kv_cache_memory_bytes", "distributed_executor_backend", "max_num_seqs"):
        assert unset not in kwargs
    settings = VllmSettings(
        max_model_len=4096,
        tensor_parallel_size=4,
        pipeline_parallel_size=2,
        distributed_executor_backend="ray",
        kv_cache_memory_bytes=1 << 30,
        max_num_seqs=512,
    )
    kwargs = engine_kwargs("m", "auto", settings)
    assert kwargs["max_model_len"] == 4096 and kwargs["kv_cache_memory_bytes"] == 1 << 30
    assert kwargs["tensor_parallel_size"] == 4 and kwargs["pipeline_parallel_size"] == 2
    assert kwargs["distributed_executor_backend"] == "ray" and kwargs["max_num_seqs"] == 512


def test_score_kwargs_ask_for_prompt_logprobs() -> None:
    assert score_kwargs(0)["prompt_logprobs"] == 0
    assert score_kwargs(20) == {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 20, "detokenize": False}


def test_top_of_drops_the_lower_ranked_chosen_token() -> None:
    # vLLM returns the top-k plus the chosen token (here 9, ranked 40th): top-2 must not include it.
    position = {9: Lp(-6.0, 40), 3: Lp(-0.5, 1), 4: Lp(-1.5, 2)}
    assert top_of(position, 2) == ([3, 4], [-0.5, -1.5])


def test_to_sample_maps_a_completion() -> None:
    params = SamplingParams(max_tokens=2, top_logprobs=1)
    logprobs = [{5: Lp(-1.0, 2), 6: Lp(-0.1, 1)}, {2: Lp(-0.2, 1)}]
    sample = to_sample(1, [5, 2], "ab", "stop", 2, logprobs, params)
    assert sample.index == 1 and sample.token_ids == [5, 2] and sample.text == "ab"
    assert sample.finish_reason is FinishReason.STOP and sample.stop_reason == "2"
    assert sample.logprobs == [-1.0, -0.2] and sample.cumulative_logprob == pytest.approx(-1.2)
    assert sample.top is not None and sample.top.ids == [[6], [2]]
    assert sample.ranks == [2, 1], "vLLM's own ranks"
    plain = to_sample(0, [5], "a", "length", None, None, SamplingParams(detokenize=False))
    assert plain.finish_reason is FinishReason.LENGTH and plain.stop_reason == ""
    assert plain.logprobs is None and plain.top is None and plain.text == ""
    assert plain.cumulative_logprob is None
    eos = to_sample(0, [5], "a", "stop", None, None, SamplingParams())
    assert eos.finish_reason is FinishReason.STOP and eos.stop_reason == ""


def test_target_scores_read_the_target_positions() -> None:
    prompt = [1, 2, 3, 4]
    prompt_logprobs = [None, {2: Lp(-2.0)}, {3: Lp(-3.0), 8: Lp(-0.1)}, {4: Lp(-0.4), 8: Lp(-1.0)}]
    out = target_scores(prompt, prompt_logprobs, 2, top_k=1)
    assert out.logprobs == [-3.0, -0.4]
    assert out.top is not None and out.top.ids == [[8], [4]] and out.top.logprobs == [[-0.1], [-0.4]]
    assert out.ranks is None, "asked for none"
    assert target_scores(prompt, prompt_logprobs, 1, top_k=0).top is None
    ranked = [None, {2: Lp(-2.0, 7)}, {3: Lp(-3.0, 40), 8: Lp(-0.1, 1)}, {4: Lp(-0.4, 1), 8: Lp(-1.0, 2)}]
    assert target_scores(prompt, ranked, 1, top_k=0, rank=True).ranks == [7, 40, 1], "vLLM's own ranks"
    with pytest.raises(ValueError, match="context token"):
        target_scores(prompt, prompt_logprobs, 0, top_k=0)


def test_backend_and_scorer_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"teacher\.backend"):
        TeacherConfig(backend="tgi")
    with pytest.raises(ConfigError, match=r"teacher\.scorer: vllm needs teacher\.backend: vllm"):
        TeacherConfig(scorer="vllm")
    with pytest.raises(ConfigError, match=r"teacher\.scorer: vllm-hidden needs teacher\.backend: vllm"):
        TeacherConfig(scorer="vllm-hidden", backend="torch")
    with pytest.raises(ConfigError, match=r"reward\.scorer: 'jax' is not one of torch, vllm, vllm-hidden"):
        load_config(None, {"reward": {"scorer": "jax"}})
    assert TeacherConfig(scorer="vllm-hidden", backend="vllm").scorer == "vllm-hidden"


def test_vllm_settings_come_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "teacher:\n  backend: vllm\n"
        "  vllm: {tensor_parallel_size: 2, gpu_memory_utilization: 0.5, enforce_eager: true}\n"
    )
    teacher = load_config(path).teacher
    assert teacher is not None and teacher.vllm.tensor_parallel_size == 2
    assert teacher.vllm.gpu_memory_utilization == 0.5 and teacher.vllm.enforce_eager
    assert teacher.scorer_vllm.gpu_memory_utilization == 0.25, "the pooling engine's own default"
    path.write_text("teacher:\n  backend: vllm\n  scorer: vllm-hidden\n  scorer_vllm: {tensor_parallel_size: 4}\n")
    teacher = load_config(path).teacher
    assert teacher is not None and teacher.scorer_vllm.tensor_parallel_size == 4
    assert teacher.scorer_vllm.gpu_memory_utilization == 0.25, "keys left out keep the section's default"
    path.write_text("teacher:\n  backend: vllm\n  vllm: {tensor_parallel: 2}\n")
    with pytest.raises(ConfigError, match=r"teacher\.vllm: unknown key\(s\) tensor_parallel"):
        load_config(path)


@pytest.mark.asyncio(loop_scope="session")
async def test_one_engine_per_model_so_settings_must_agree() -> None:
    from proctor.engine.config import Config, RewardConfig, ServerConfig
    from proctor.engine.server.lifecycle import ProctorServer

    config = Config(
        server=ServerConfig(port=0, metrics_port=-1),
        teacher=TeacherConfig(model="builtin:tiny", backend="vllm"),
        reward=RewardConfig(model="builtin:tiny", backend="vllm", vllm=VllmSettings(max_model_len=512), total_steps=9),
    )
    with pytest.raises(ConfigError, match=r"reward\.vllm: differs from teacher\.vllm for the same model"):
        await ProctorServer(config).start()  # refused while wiring the services, before any engine starts
    config.reward.vllm = config.teacher.vllm  # type: ignore[union-attr]
    config.teacher.scorer = config.reward.scorer = "vllm-hidden"  # type: ignore[union-attr]
    config.reward.scorer_vllm = VllmSettings(tensor_parallel_size=2)  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"reward\.scorer_vllm: differs from teacher\.scorer_vllm"):
        await ProctorServer(config).start()
