"""ms-swift's rollout-server protocol for a GKD / OPD teacher (`--teacher_model_server`), as ms-swift 4.6.0's
`VLLMInferClient` speaks it (`swift/rlhf_trainers/vllm_client.py`): `GET /health` (the front's) and `POST /infer/`
with `{"infer_requests": [asdict(RolloutInferRequest)], "request_config": asdict(RequestConfig), "metrics",
"use_tqdm", "adapter_request"}`, answered with a list of `ChatCompletionResponse`s carrying vLLM's `prompt_logprobs`
(`[null, {"<id>": {logprob, rank, decoded_token}}, ...]`), which `parse_prompt_logprobs` reads: with
`prompt_logprobs: 0` the one entry of each position is the token that is there (the sampled one), with k > 0 the
top-k.

ms-swift sends the sampled reply as token ids in the last assistant turn's content (`[ids]`, or
`{"token_ids", "loss_scale"}`; `rlhf_trainers/utils.py`, `replace_assistant_response_with_ids`), so that the
teacher scores exactly the tokens the student sampled: the turns before it go through the chat template with the
generation prompt, the ids follow as they are, then the template's end of an assistant turn when `add_eos` asks
for it (ms-swift's rule: `true`; `"auto"` unless the reply ends with an end-of-sequence token; `null` / `false`
not). The teacher's chat template must render as the student's ms-swift template does, as for any GKD teacher.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from proctor.engine.doors.http.errors import ApiError, encode
from proctor.engine.doors.http.openai_bodies import NonNegative, TokenIds
from proctor.engine.doors.http.openai_routes import OpenAIRoutes
from proctor.engine.doors.http.openai_shapes import prompt_logprobs_json
from proctor.engine.doors.http.teacher_calls import now

_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class ReplyIds(BaseModel):
    """An assistant turn's content as token ids with their loss mask (ms-swift's form when it masks some)."""

    model_config = _STRICT

    token_ids: TokenIds
    loss_scale: list[float]


class SwiftMessage(BaseModel):
    model_config = _STRICT

    role: Literal["system", "user", "assistant"]
    content: str | TokenIds | ReplyIds


class InferRequest(BaseModel):
    """ms-swift's RolloutInferRequest (`swift/infer_engine/protocol.py`), a text conversation."""

    model_config = _STRICT

    messages: Annotated[list[SwiftMessage], Field(min_length=1)]
    images: list[Any] = Field(default_factory=list)
    audios: list[Any] = Field(default_factory=list)
    videos: list[Any] = Field(default_factory=list)
    tools: None = None
    objects: dict[str, Any] = Field(default_factory=dict)
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    data_dict: dict[str, Any] = Field(default_factory=dict)  # ms-swift's own rollout metadata: not read
    uuid: str | None = None
    add_eos: bool | Literal["auto"] | None = None


class RequestConfig(BaseModel):
    """ms-swift's RequestConfig, every field as `asdict` sends it; those proctor does not implement at their
    default only."""

    model_config = _STRICT

    prompt_logprobs: NonNegative | None = None
    max_tokens: NonNegative | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    n: Literal[1] = 1
    stream: Literal[False] = False
    logprobs: Literal[False] = False
    top_logprobs: None = None
    min_p: Literal[0] | None = None
    repetition_penalty: Literal[1] | None = None
    num_beams: Literal[1] = 1
    best_of: None = None
    length_penalty: Literal[1] = 1
    return_details: Literal[False] = False
    structured_outputs_regex: None = None


class InferBody(BaseModel):
    model_config = _STRICT

    infer_requests: Annotated[list[InferRequest], Field(min_length=1)]
    request_config: RequestConfig = Field(default_factory=RequestConfig)
    # ms-swift's client sends these as null; anything else is a feature of its own server
    metrics: None = None
    use_tqdm: bool | None = None
    adapter_request: None = None


def router(routes: OpenAIRoutes) -> APIRouter:
    api = APIRouter()
    calls = routes.calls

    async def prompt_of(item: InferRequest, field: str) -> list[int]:
        """The conversation as the teacher scores it: the reply's ids exactly as sent, between the template's
        generation prompt and (per add_eos) its end of an assistant turn."""
        for name in ("images", "audios", "videos", "objects"):
            if getattr(item, name):
                raise ApiError(400, f"{field}.{name}: not supported by this server (a text teacher)", field)
        *before, last = item.messages
        for j, m in enumerate(before):
            if not isinstance(m.content, str):
                raise ApiError(400, f"{field}.messages[{j}].content: token ids only in the last assistant turn")
        kw = item.chat_template_kwargs or None
        if isinstance(last.content, str):
            messages = [{"role": m.role, "content": m.content} for m in item.messages]
            return await routes.chat_ids(messages, last.role != "assistant", False, None, kw)
        if last.role != "assistant":
            raise ApiError(400, f"{field}.messages[{len(before)}].content: token ids are an assistant's reply")
        reply = last.content if isinstance(last.content, list) else last.content.token_ids
        context = [{"role": m.role, "content": m.content} for m in before]
        prompt = await routes.chat_ids(context, True, False, None, kw)
        eos = calls.info.eos_token_ids
        close = item.add_eos is True or (item.add_eos == "auto" and not (reply and reply[-1] in eos))
        end = await routes.vocab.turn_end(context, kw) if close else []
        return prompt + reply + end

    @api.post("/infer/")
    async def infer(body: InferBody, request: Request) -> Response:
        rc = body.request_config
        calls.check_top(rc.prompt_logprobs, "request_config.prompt_logprobs")
        prompts = []
        for i, item in enumerate(body.infer_requests):
            field = f"infer_requests[{i}]"
            try:
                ids = await prompt_of(item, field)
            except ValueError as exc:  # the template cannot render the conversation
                raise ApiError(400, f"{field}.messages: {exc}", f"{field}.messages") from None
            prompts.append(calls.check_prompt(ids, field))
        max_tokens = 1 if rc.max_tokens is None else rc.max_tokens
        params = []
        if max_tokens:
            params = [
                calls.sampling(
                    prompt_len=len(ids),
                    n=1,
                    max_tokens=max_tokens,
                    temperature=rc.temperature,
                    top_p=rc.top_p,
                    top_k=rc.top_k,
                    presence_penalty=rc.presence_penalty,
                    frequency_penalty=rc.frequency_penalty,
                    seed=rc.seed,
                    stop=rc.stop,
                    stop_token_ids=None,
                    ignore_eos=False,
                    logprobs=None,
                    max_tokens_field="request_config.max_tokens",
                )
                for ids in prompts
            ]
        items = len(prompts) * ((1 if max_tokens else 0) + (rc.prompt_logprobs is not None))
        if not items:
            raise ApiError(400, "request_config: max_tokens 0 needs prompt_logprobs", "request_config.max_tokens")
        async with routes.front.admitted(calls.svc, items):
            results = await routes.front.run(request, routes.complete(prompts, params, rc.prompt_logprobs))
        texts = await routes.vocab.texts()

        def build() -> bytes:
            out = []
            for ids, (positions, gen) in zip(prompts, results, strict=True):
                sample = gen.samples[0] if gen is not None else None
                generated = len(sample.token_ids) if sample else 0
                out.append(
                    {  # ms-swift's ChatCompletionResponse, field for field
                        "model": routes.name,
                        "choices": [
                            {
                                "index": 0,
                                "message": {
                                    "role": "assistant",
                                    "content": sample.text if sample else "",
                                    "tool_calls": None,
                                    "reasoning_content": None,
                                },
                                "finish_reason": sample.finish_reason.value if sample else "length",
                                "logprobs": None,
                                "token_ids": sample.token_ids if sample else [],
                                "routed_experts": None,
                            }
                        ],
                        "usage": {
                            "prompt_tokens": len(ids),
                            "completion_tokens": generated,
                            "total_tokens": len(ids) + generated,
                        },
                        "id": f"chatcmpl-{uuid.uuid4().hex}",
                        "object": "chat.completion",
                        "created": now(),
                        "prompt_token_ids": ids,
                        "prompt_logprobs": prompt_logprobs_json(positions, texts),
                        "images_size": None,
                    }
                )
            return encode(out)

        return Response(await asyncio.to_thread(build), media_type="application/json")

    return api
