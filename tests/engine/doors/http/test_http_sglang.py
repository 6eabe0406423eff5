"""SGLang's native /generate on the tiny teacher, against SGLang 0.5.23's source (its io_struct module needs the
whole runtime, torchvision included, to import, so the shapes are reproduced from the files named below) and
slime v0.3.1's on-policy-distillation request; log-probs checked against a float64 reference."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from proctor.engine.server.lifecycle import ProctorServer
from tests.conftest import TINY
from tests.engine.doors.http.test_http_openai import SEQUENCES, base, call

pytestmark = pytest.mark.asyncio(loop_scope="session")

# sglang 0.5.23 srt/managers/tokenizer_manager.py: meta_info's keys in the order it writes them, without metrics:
# 2507-2513 (id .. num_retractions), 2868-2870 (the log-prob lists), 2938 / 2973 (the top-k lists, when
# top_logprobs_num > 0), 2554-2558 (reasoning_tokens, completion_tokens, cached_tokens), 2753 (e2e_latency).
HEAD = ["id", "finish_reason", "prompt_tokens", "weight_version", "num_retractions"]
LOGPROBS = ["input_token_logprobs", "output_token_logprobs", "output_token_logprobs_length"]
TOPS = ["input_top_logprobs", "output_top_logprobs"]
TAIL = ["reasoning_tokens", "completion_tokens", "cached_tokens", "e2e_latency"]


def opd_payload(tokens: list[int]) -> dict[str, Any]:
    """slime v0.3.1 slime/rollout/on_policy_distillation.py lines 9-19 (`reward_func`, --opd-type sglang)."""
    return {
        "input_ids": tokens,
        "sampling_params": {"temperature": 0, "max_new_tokens": 0, "skip_special_tokens": False},
        "return_logprob": True,
        "logprob_start_len": 0,
    }


def opd_teacher_logprobs(reward: dict[str, Any], response_length: int) -> list[float]:
    """slime v0.3.1 slime/rollout/on_policy_distillation.py lines 49-56 (`post_process_rewards`)."""
    logprobs = [item[0] for item in reward["meta_info"]["input_token_logprobs"][1:]]
    return logprobs[-response_length:]


async def post(server: ProctorServer, body: Any, path: str = "/generate") -> tuple[int, Any]:
    status, payload, _ = await asyncio.to_thread(call, base(server) + path, body)
    return status, payload


async def test_slime_opd_request_scores_the_prompt(tiny_server: ProctorServer, reference: Any) -> None:
    seq = SEQUENCES[0]
    status, out = await post(tiny_server, opd_payload(seq))
    assert status == 200, out
    assert list(out) == ["text", "output_ids", "meta_info"]
    meta = out["meta_info"]
    assert list(meta) == HEAD + LOGPROBS + TAIL
    assert out["text"] == "" and out["output_ids"] == []
    assert meta["finish_reason"] == {"type": "length", "length": 0}
    assert meta["prompt_tokens"] == len(seq) and meta["completion_tokens"] == 0
    assert meta["output_token_logprobs"] == [] and meta["output_token_logprobs_length"] == 0
    inputs = meta["input_token_logprobs"]
    assert [e[1] for e in inputs] == seq and all(e[2] is None for e in inputs)
    assert inputs[0][0] is None  # SGLang's first input log-prob is always null
    expected = reference(seq)[:-1].gather(1, torch.tensor(seq[1:]).unsqueeze(1)).squeeze(1)
    assert torch.allclose(torch.tensor([e[0] for e in inputs[1:]], dtype=torch.float64), expected, atol=1e-4)
    response = opd_teacher_logprobs(out, 3)
    assert torch.allclose(torch.tensor(response, dtype=torch.float64), expected[-3:], atol=1e-4)


async def test_batch_text_start_topk_and_generation(tiny_server: ProctorServer, reference: Any) -> None:
    texts = ["hello world, a longer prompt", "PersonX goes to the market"]
    body = {
        "text": texts,
        "sampling_params": {"max_new_tokens": 3, "temperature": 0.0},
        "return_logprob": True,
        "logprob_start_len": 2,
        "top_logprobs_num": 3,
        "return_text_in_logprobs": True,
        "rid": "r",
    }
    status, out = await post(tiny_server, body)
    assert status == 200, out
    assert isinstance(out, list) and len(out) == 2
    _, tokenized, _ = await asyncio.to_thread(call, base(tiny_server) + "/tokenize", {"prompt": texts[0]})
    ids = tokenized["tokens"]
    _, strs, _ = await asyncio.to_thread(
        call, base(tiny_server) + "/tokenize", {"prompt": texts[0], "return_token_strs": True}
    )
    first = out[0]["meta_info"]
    assert [o["meta_info"]["id"] for o in out] == ["r_0", "r_1"]  # SGLang's batch rids (io_struct.py 757-760)
    assert list(first) == HEAD + LOGPROBS + TOPS + TAIL
    inputs, tops = first["input_token_logprobs"], first["input_top_logprobs"]
    assert [e[1] for e in inputs] == ids[2:] and len(tops) == len(inputs)
    assert inputs[0][0] is None and tops[0] is None
    ref = reference(ids)
    actual = ref[1:-1].gather(1, torch.tensor(ids[2:]).unsqueeze(1)).squeeze(1)  # rows predicting ids[2:]
    assert torch.allclose(torch.tensor([e[0] for e in inputs[1:]], dtype=torch.float64), actual[1:], atol=1e-4)
    for p, top in enumerate(tops[1:], start=3):
        values, indices = ref[p - 1].topk(3)
        assert [e[1] for e in top] == indices.tolist()
        assert torch.allclose(torch.tensor([e[0] for e in top], dtype=torch.float64), values, atol=1e-4)
    assert [e[2] for e in inputs] == strs["token_strs"][2:]  # return_text_in_logprobs: each token's text
    # greedy generation: each output token is the top-1 of its step, its log-prob the float64 one
    outs, out_tops = first["output_token_logprobs"], first["output_top_logprobs"]
    gen = out[0]["output_ids"]
    assert len(outs) == len(out_tops) == len(gen) == first["completion_tokens"] >= 1
    full = reference(ids + gen)
    for i, (entry, top) in enumerate(zip(outs, out_tops, strict=True)):
        row = full[len(ids) - 1 + i]
        assert entry[1] == gen[i] == top[0][1] == int(row.argmax())
        assert abs(entry[0] - float(row[gen[i]])) <= 1e-4
    finish = first["finish_reason"]
    assert finish == {"type": "length", "length": 3} or finish["type"] == "stop"


async def test_output_only_default_and_n(tiny_server: ProctorServer) -> None:
    body = {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 2, "n": 2}, "return_logprob": True}
    status, out = await post(tiny_server, body)
    assert status == 200, out
    assert isinstance(out, list) and len(out) == 2  # one prompt, n = 2: a batch (io_struct.py 539-547)
    for o in out:
        meta = o["meta_info"]
        assert meta["input_token_logprobs"] == []  # logprob_start_len -1: the output only (scheduler.py 3260-3264)
        assert len(meta["output_token_logprobs"]) == len(o["output_ids"]) == meta["completion_tokens"]
        assert "input_top_logprobs" not in meta
    status, single = await post(tiny_server, {"text": "hello", "sampling_params": {"max_new_tokens": 1}})
    assert status == 200 and isinstance(single, dict) and list(single["meta_info"]) == HEAD + TAIL


@pytest.mark.parametrize(
    ("body", "field"),
    [
        # tokens to generate: the generated tokens' probes are not served (test_http_probes has the prompt's)
        ({"input_ids": [5, 6], "token_ids_logprob": [1, 2], "return_logprob": True}, "token_ids_logprob"),
        ({"input_ids": [5, 6], "image_data": "x.png"}, "image_data"),
        ({"input_ids": [5, 6], "stream": True}, "stream"),
        ({"input_ids": [5, 6], "lora_path": "adapter"}, "lora_path"),
        ({"input_ids": [5, 6], "not_a_field": 1}, "not_a_field"),
        ({"input_ids": [5, 6], "sampling_params": {"regex": "a+"}}, "sampling_params.regex"),
        ({"input_ids": [5, 6], "sampling_params": {"repetition_penalty": 1.2}}, "repetition_penalty"),
        ({"input_ids": [5, 6], "return_logprob": True, "logprob_start_len": 3}, "logprob_start_len"),
        ({"input_ids": [5, 6], "text": "a"}, "text"),
        ({"input_ids": [[5, 6], [7]], "return_logprob": [True]}, "return_logprob"),
        ({"input_ids": [5, 6], "sampling_params": {"max_new_tokens": 0}}, "sampling_params"),
    ],
)
async def test_refusals_name_the_field(tiny_server: ProctorServer, body: dict[str, Any], field: str) -> None:
    status, out = await post(tiny_server, body)
    assert status == 400, out
    assert field in out["error"]["message"], out


async def test_health_generate_and_model_info(tiny_server: ProctorServer) -> None:
    status, _, _ = await asyncio.to_thread(call, base(tiny_server) + "/health_generate")
    assert status == 200
    for path in ("/get_model_info", "/model_info"):
        status, info, _ = await asyncio.to_thread(call, base(tiny_server) + path)
        assert status == 200
        # sglang 0.5.23 srt/entrypoints/http_server.py 816-841: the keys of /model_info
        assert list(info) == [
            "model_path",
            "served_model_name",
            "tokenizer_path",
            "is_generation",
            "preferred_sampling_params",
            "weight_version",
            "load_format",
            "reasoning_parser",
            "tool_call_parser",
            "disaggregation_mode",
            "has_image_understanding",
            "has_audio_understanding",
            "model_type",
            "architectures",
        ]
        assert info["model_path"] == TINY and info["is_generation"] is True
        # the tiny model is a random-init Llama: its HF config's model_type and architectures, as SGLang reports them
        assert info["model_type"] == "llama" and info["architectures"] == ["LlamaForCausalLM"]
