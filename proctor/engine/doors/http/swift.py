"""ms-swift's rollout-server protocol for a GKD teacher (`--teacher_model_server`): `GET /health/` (the front's)
and `POST /infer/`, which takes `{"infer_requests": [...], "request_config": {...}}` and answers a list of chat
completion responses with vLLM's `prompt_logprobs` (`[null, {"<id>": {logprob, rank, decoded_token}}, ...]`).

An infer request is a conversation (`messages`, rendered with the chat template) and optionally the reply as
token ids (`response_token_ids`), appended after the rendered prompt so that they are scored exactly as sent.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from proctor.engine.doors.http.errors import ApiError, encode
from proctor.engine.doors.http.openai_bodies import ChatMessage, NonNegative, TokenIds
from proctor.engine.doors.http.openai_routes import OpenAIRoutes
from proctor.engine.doors.http.openai_shapes import NULLS, prompt_logprobs_json, usage_json
from proctor.engine.doors.http.teacher_calls import now


class InferRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    response_token_ids: TokenIds | None = None


class RequestConfig(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    prompt_logprobs: NonNegative | None = None
    max_tokens: NonNegative | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    n: Literal[1] = 1
    stream: Literal[False] = False
    logprobs: Literal[False] = False


class InferBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    infer_requests: Annotated[list[InferRequest], Field(min_length=1)]
    request_config: RequestConfig = Field(default_factory=RequestConfig)
    # ms-swift's client sends these as null; anything else is a feature of its own server
    metrics: None = None
    template: None = None
    use_tqdm: bool | None = None
    adapter_request: None = None


def router(routes: OpenAIRoutes) -> APIRouter:
    api = APIRouter()
    calls = routes.calls

    @api.post("/infer/")
    async def infer(body: InferBody, request: Request) -> Response:
        rc = body.request_config
        calls.check_top(rc.prompt_logprobs, "request_config.prompt_logprobs")
        prompts = []
        for i, item in enumerate(body.infer_requests):
            reply = item.response_token_ids or []
            ids = await routes.chat_ids([m.as_template_input() for m in item.messages], not reply, False)
            prompts.append(calls.check_prompt(ids + reply, f"infer_requests[{i}]"))
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
                    presence_penalty=None,
                    frequency_penalty=None,
                    seed=rc.seed,
                    stop=None,
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
                out.append(
                    {
                        "model": routes.name,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": sample.text if sample else ""},
                                "finish_reason": sample.finish_reason.value if sample else "length",
                                "logprobs": None,
                            }
                        ],
                        "usage": usage_json(len(ids), len(sample.token_ids) if sample else 0),
                        "id": f"chatcmpl-{uuid.uuid4().hex}",
                        "object": "chat.completion",
                        "created": now(),
                        "prompt_logprobs": prompt_logprobs_json(positions, texts),
                        "prompt_token_ids": ids,
                        **NULLS,
                    }
                )
            return encode(out)

        return Response(await asyncio.to_thread(build), media_type="application/json")

    return api
