"""ms-swift's GKD / OPD teacher client, its real package (4.6.0, installed --no-deps with what its client module
imports), against proctor's /infer/: `VLLMInferClient.infer` with the requests its trainer builds (the reply as
token ids through `replace_assistant_response_with_ids`, `RequestConfig(prompt_logprobs=k, max_tokens=1,
temperature=0.0)` as `rollout_mixin._infer_teacher_requests` makes it), read by its own `parse_prompt_logprobs`;
log-probs checked against the tiny teacher in float64."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from proctor.engine.server.lifecycle import ProctorServer
from tests.engine.doors.http.test_http_openai import base
from tests.trainers.conftest import require

require("swift")

pytestmark = pytest.mark.asyncio(loop_scope="session")

REPLY = [40, 41, 42, 43]


def _infer(url: str, topk: int, add_eos: Any) -> tuple[list[Any], list[Any]]:
    import swift.rlhf_trainers.vllm_client as vllm_client
    from swift.infer_engine import RequestConfig
    from swift.infer_engine.protocol import RolloutInferRequest
    from swift.rlhf_trainers.utils import parse_prompt_logprobs, replace_assistant_response_with_ids

    vllm_client.is_vllm_available = lambda *a, **k: True  # type: ignore[attr-defined]  # its import guard only
    client = vllm_client.VLLMInferClient(base_urls=[url], connection_timeout=10)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "placeholder"}]
    masked = replace_assistant_response_with_ids([m.copy() for m in messages], REPLY, [1] * len(REPLY))
    plain = replace_assistant_response_with_ids([m.copy() for m in messages], REPLY)
    requests = [RolloutInferRequest(messages=m, add_eos=add_eos) for m in (plain, masked)]
    config = RequestConfig(prompt_logprobs=topk, max_tokens=1, temperature=0.0)
    responses = client.infer(requests, request_config=config, use_tqdm=False)
    return responses, [parse_prompt_logprobs(r, topk=topk) for r in responses]


async def _ids(server: ProctorServer, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    from tests.engine.doors.http.test_http_openai import call

    body = {"messages": messages, "add_generation_prompt": generation_prompt}
    status, out, _ = await asyncio.to_thread(call, base(server) + "/tokenize", body)
    assert status == 200, out
    return list(out["tokens"])


async def test_swift_teacher_sampled_token_logprobs(tiny_server: ProctorServer, reference: Any) -> None:
    responses, parsed = await asyncio.to_thread(_infer, base(tiny_server), 0, "auto")
    prompt = await _ids(tiny_server, [{"role": "user", "content": "hi"}], True)
    for response, (lps, ixs) in zip(responses, parsed, strict=True):
        ids = response.prompt_token_ids
        assert ids[: len(prompt)] == prompt and ids[len(prompt) : len(prompt) + len(REPLY)] == REPLY
        assert len(ids) > len(prompt) + len(REPLY), "add_eos 'auto': the template's end of the turn follows"
        assert [i[0] for i in ixs] == ids[1:], "k = 0: each position's one entry is the token that is there"
        ref = reference(ids)
        expected = ref[:-1].gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)
        assert torch.allclose(torch.tensor([lp[0] for lp in lps], dtype=torch.float64), expected, atol=1e-4)


async def test_swift_teacher_topk(tiny_server: ProctorServer, reference: Any) -> None:
    responses, parsed = await asyncio.to_thread(_infer, base(tiny_server), 5, None)
    for response, (lps, ixs) in zip(responses, parsed, strict=True):
        ids = response.prompt_token_ids
        assert ids[-len(REPLY) :] == REPLY, "add_eos None: the reply ends the sequence"
        ref = reference(ids)[:-1]
        top = ref.topk(5)
        assert ixs == top.indices.tolist()
        assert torch.allclose(torch.tensor(lps, dtype=torch.float64), top.values, atol=1e-4)
