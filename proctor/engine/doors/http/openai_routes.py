"""vLLM's OpenAI-compatible teacher routes: /v1/models, /tokenize, /detokenize, /v1/completions,
/v1/chat/completions and the token-in route /inference/v1/generate, answered in vLLM's JSON shapes.

Prompt log-probs come from the fused Score path, completions from the Generate path (see teacher_calls).
`max_tokens: 0` with `echo` or `prompt_logprobs` scores only; with `max_tokens` >= 1 the prompt is also generated
from, as vLLM does: one token from the Score pass itself where the backend can, more in a second pass (the core
decides). `stream: true` is Server-Sent Events in vLLM's chunk shapes; the Generate path returns whole completions,
so each choice arrives as one chunk when it is done.
/inference/v1/generate's `prompt_logprob_token_ids` (vllm_probes.py) are probed in the same Score as its
`prompt_logprobs`, and so in the same forward as a one-token completion where the core samples it there.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from proctor.engine.doors.http import vllm_probes
from proctor.engine.doors.http.app import HttpFront
from proctor.engine.doors.http.chat_answer import ChatBuild
from proctor.engine.doors.http.completion_answer import CompletionBuild
from proctor.engine.doors.http.errors import ApiError, encode, json_response
from proctor.engine.doors.http.openai_bodies import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    DetokenizeRequest,
    GenerateRequest,
    GenerateSamplingParams,
    TokenizeRequest,
)
from proctor.engine.doors.http.openai_shapes import (
    NULLS,
    prompt_logprobs_json,
    sse,
    stop_reason_json,
    usage_json,
)
from proctor.engine.doors.http.teacher_calls import Position, TeacherCalls, clamp, now, sample_steps
from proctor.engine.doors.http.vocab import Vocab
from proctor.engine.items import Generation, SamplingParams

Prompt = str | list[str] | list[int] | list[list[int]]


class OpenAIRoutes:
    def __init__(self, front: HttpFront, calls: TeacherCalls, vocab: Vocab, name: str, root: str) -> None:
        self.front = front
        self.calls = calls
        self.vocab = vocab
        self.name = name  # what /v1/models reports and `model` must name
        self.root = root

    def router(self) -> APIRouter:
        api = APIRouter()
        api.add_api_route("/v1/models", self.models, methods=["GET"])
        api.add_api_route("/tokenize", self.tokenize, methods=["POST"])
        api.add_api_route("/detokenize", self.detokenize, methods=["POST"])
        api.add_api_route("/v1/completions", self.completions, methods=["POST"])
        api.add_api_route("/v1/chat/completions", self.chat_completions, methods=["POST"])
        api.add_api_route("/inference/v1/generate", self.generate, methods=["POST"])
        return api

    # ---- small routes ----------------------------------------------------------------------------------------

    async def models(self) -> Response:
        created = now()
        card = {
            "id": self.name,
            "object": "model",
            "created": created,
            "owned_by": "proctor",
            "root": self.root,
            "parent": None,
            "max_model_len": self.calls.info.max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{uuid.uuid4().hex}",
                    "object": "model_permission",
                    "created": created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
        return json_response({"object": "list", "data": [card]})

    async def tokenize(self, body: TokenizeRequest) -> Response:
        self._check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise ApiError(400, "prompt: give prompt (text) or messages (a chat), one of them", "prompt")
        if body.prompt is not None:
            self.calls.check_text_fits(len(body.prompt), "prompt")
            ids = await self.vocab.encode(body.prompt, body.add_special_tokens)
        else:
            assert body.messages is not None
            ids = await self._chat_ids_of(body, body.messages)
        strs = None
        if body.return_token_strs:
            texts = await self.vocab.texts()
            strs = [texts[i] for i in ids]
        info = self.calls.info
        return json_response(
            {"count": len(ids), "max_model_len": info.max_model_len, "tokens": ids, "token_strs": strs}
        )

    async def detokenize(self, body: DetokenizeRequest) -> Response:
        self._check_model(body.model)
        vocab = self.calls.info.vocab_size
        bad = next((t for t in body.tokens if t >= vocab), None)
        if bad is not None:
            raise ApiError(400, f"tokens: {bad} is outside the vocabulary [0, {vocab})", "tokens")
        return json_response({"prompt": await self.vocab.decode(body.tokens)})

    # ---- /v1/completions -------------------------------------------------------------------------------------

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        self._check_model(body.model)
        prompts = await self._prompt_ids(body.prompt, body.add_special_tokens)
        max_tokens = 16 if body.max_tokens is None else body.max_tokens
        prompt_k = body.prompt_logprobs
        if prompt_k is None and body.echo and body.logprobs is not None:
            prompt_k = body.logprobs  # vLLM: echo with logprobs scores the prompt with the same k
        if max_tokens == 0 and not body.echo and prompt_k is None:
            raise ApiError(400, "max_tokens: 0 needs echo or prompt_logprobs (scoring only)", "max_tokens")
        if body.stream and prompt_k is not None:
            raise ApiError(400, "prompt_logprobs: not available with stream: true (as in vLLM)", "prompt_logprobs")
        self.calls.check_top(prompt_k, "prompt_logprobs")
        params = [self._params(body, len(ids), max_tokens) for ids in prompts] if max_tokens else []
        items = len(prompts) * ((body.n if max_tokens else 0) + (prompt_k is not None))
        async with self.front.admitted(self.calls.svc, items):
            results = await self.front.run(request, self.complete(prompts, params, prompt_k))
        texts = await self.vocab.texts()
        echo_texts = await asyncio.gather(*(self.vocab.decode(ids) for ids in prompts)) if body.echo else None
        build = CompletionBuild(body, self.name, texts, prompts, results, echo_texts, max_tokens)
        if body.stream:
            return sse(build.chunks())
        return Response(await asyncio.to_thread(lambda: encode(build.response())), media_type="application/json")

    async def complete(
        self, prompts: list[list[int]], params: list[SamplingParams], prompt_k: int | None
    ) -> list[tuple[list[Position] | None, Generation | None]]:
        return list(
            await asyncio.gather(
                *(self.calls.complete(ids, prompt_k, params[i] if params else None) for i, ids in enumerate(prompts))
            )
        )

    def _params(
        self,
        body: CompletionRequest | ChatCompletionRequest | GenerateSamplingParams,
        prompt_len: int,
        max_tokens: int,
        logprobs: int | None = None,
        max_tokens_field: str = "max_tokens",
    ) -> SamplingParams:
        return self.calls.sampling(
            prompt_len=prompt_len,
            n=body.n,
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            seed=body.seed,
            stop=body.stop,
            stop_token_ids=body.stop_token_ids,
            ignore_eos=body.ignore_eos,
            logprobs=body.logprobs if isinstance(body, CompletionRequest) else logprobs,
            max_tokens_field=max_tokens_field,
        )

    # ---- /v1/chat/completions --------------------------------------------------------------------------------

    async def chat_completions(self, body: ChatCompletionRequest, request: Request) -> Response:
        self._check_model(body.model)
        if body.top_logprobs is not None and not body.logprobs:
            raise ApiError(400, "top_logprobs: needs logprobs: true", "top_logprobs")
        if body.stream and body.prompt_logprobs is not None:
            raise ApiError(400, "prompt_logprobs: not available with stream: true (as in vLLM)", "prompt_logprobs")
        ids = await self._chat_ids_of(body, body.messages)
        self.calls.check_prompt(ids, "messages")
        self.calls.check_top(body.prompt_logprobs, "prompt_logprobs")
        field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        max_tokens = self.calls.info.max_model_len - len(ids) if limit is None else limit
        if max_tokens < 1:
            raise ApiError(400, f"{field}: must be >= 1 for a chat completion", field)
        k = (body.top_logprobs or 0) if body.logprobs else None
        params = self._params(body, len(ids), max_tokens, k, field)
        items = body.n + (body.prompt_logprobs is not None)
        async with self.front.admitted(self.calls.svc, items):
            [(prompt_positions, gen)] = await self.front.run(
                request, self.complete([ids], [params], body.prompt_logprobs)
            )
        assert gen is not None
        texts = await self.vocab.texts()
        build = ChatBuild(body, self.name, texts, ids, prompt_positions, gen)
        if body.stream:
            return sse(build.chunks())
        return Response(await asyncio.to_thread(lambda: encode(build.response())), media_type="application/json")

    # ---- /inference/v1/generate ------------------------------------------------------------------------------

    async def generate(self, body: GenerateRequest, request: Request) -> Response:
        self._check_model(body.model)
        sp = body.sampling_params
        ids = self.calls.check_prompt(body.token_ids, "token_ids")
        probes = None
        if sp.prompt_logprob_token_ids is not None or sp.prompt_logprob_start is not None:
            vocab = self.calls.info.vocab_size
            rows, start = sp.prompt_logprob_token_ids, sp.prompt_logprob_start
            probes = await asyncio.to_thread(vllm_probes.checked, rows, start, len(ids), vocab)
        max_tokens = 16 if sp.max_tokens is None else sp.max_tokens
        if max_tokens == 0 and sp.prompt_logprobs is None and probes is None:
            raise ApiError(
                400,
                "sampling_params.max_tokens: 0 needs prompt_logprobs or prompt_logprob_token_ids (scoring)",
                "sampling_params",
            )
        self.calls.check_top(sp.prompt_logprobs, "sampling_params.prompt_logprobs")
        params = [self._params(sp, len(ids), max_tokens, sp.logprobs)] if max_tokens else []
        items = (sp.n if max_tokens else 0) + (sp.prompt_logprobs is not None or probes is not None)
        probe_logprobs: list[list[float]] = []
        async with self.front.admitted(self.calls.svc, items):
            if probes is None:
                [(prompt_positions, gen)] = await self.front.run(
                    request, self.complete([ids], params, sp.prompt_logprobs)
                )
            else:
                probed = self.calls.complete_probed(
                    ids, sp.prompt_logprobs, params[0] if params else None, probes.start, probes.rows, vllm_probes.FIELD
                )
                prompt_positions, probe_logprobs, gen = await self.front.run(request, probed)
        texts = await self.vocab.texts()
        choices = []
        for s in gen.samples if gen else []:
            logprobs = None
            if sp.logprobs is not None:
                content = []
                for step in sample_steps(s, sp.logprobs):
                    assert step is not None
                    head = step[0]
                    content.append(
                        {
                            "token_id": head.token_id,
                            "logprob": clamp(head.logprob),
                            "rank": head.rank,
                            "top_logprobs": [
                                {"token_id": e.token_id, "logprob": clamp(e.logprob), "rank": e.rank} for e in step
                            ],
                        }
                    )
                logprobs = {"content": content}
            choices.append(
                {
                    "index": s.index,
                    "finish_reason": s.finish_reason.value,
                    "stop_reason": stop_reason_json(s, params[0]),
                    "token_ids": s.token_ids,
                    "routed_experts": None,
                    "sampling_mask": None,
                    "weight_versions": None,
                    "logprobs": logprobs,
                }
            )
        generated = sum(len(s.token_ids) for s in gen.samples) if gen else 0
        payload = {
            "request_id": body.request_id or uuid.uuid4().hex,
            "model": self.name,
            "created": now(),
            "usage": usage_json(len(ids), generated),
            "prompt_logprobs": prompt_logprobs_json(prompt_positions, texts),
            "prompt_token_id_logprobs": None,  # with probes: their .npy, encoded off the loop below
            "prompt_token_ids": ids if body.return_token_ids else None,
            "mm_placeholders": None,
            **NULLS,
            "output_mode": "tokens",
            "choices": choices,
        }

        def build() -> bytes:
            if probes is not None:
                payload["prompt_token_id_logprobs"] = vllm_probes.encoded(probes, probe_logprobs)
            return encode(payload)

        return Response(await asyncio.to_thread(build), media_type="application/json")

    # ---- shared ----------------------------------------------------------------------------------------------

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.name:
            raise ApiError(404, f"The model `{model}` does not exist (this server serves `{self.name}`).", "model")

    async def _prompt_ids(self, prompt: Prompt, add_special: bool) -> list[list[int]]:
        """vLLM's four prompt forms (a text, texts, token ids, lists of token ids) as token-id lists."""
        if not prompt:
            raise ApiError(400, "prompt: empty", "prompt")
        many: list[str] | list[list[int]]
        if isinstance(prompt, str):
            many = [prompt]
        elif all(isinstance(t, int) for t in prompt):
            many = [[t for t in prompt if isinstance(t, int)]]
        else:
            many = prompt  # type: ignore[assignment]  # list[str] or list[list[int]]: the body's union says so
        fields = [f"prompt[{i}]" if len(many) > 1 else "prompt" for i in range(len(many))]
        if isinstance(many[0], str):  # the body's union: all texts or all token-id lists
            return await self.calls.text_prompts([(str(p), f) for p, f in zip(many, fields, strict=True)], add_special)
        return [self.calls.check_prompt([int(t) for t in p], f) for p, f in zip(many, fields, strict=True)]

    async def _chat_ids_of(
        self, body: TokenizeRequest | ChatCompletionRequest, messages: list[ChatMessage]
    ) -> list[int]:
        """The body's messages through the chat template, with the body's template options."""
        return await self.chat_ids(
            [m.as_template_input() for m in messages],
            body.add_generation_prompt,
            body.continue_final_message,
            body.chat_template,
            body.chat_template_kwargs,
        )

    async def chat_ids(
        self,
        messages: list[dict[str, Any]],
        generation_prompt: bool,
        continue_final: bool,
        template: str | None = None,
        kw: dict[str, Any] | None = None,
    ) -> list[int]:
        if template is not None and not self.front.config.trust_request_chat_template:
            raise ApiError(
                400,
                "chat_template: a request's own template runs on the server; it is refused unless the server sets "
                "http.trust_request_chat_template (as vLLM's --trust-request-chat-template)",
                "chat_template",
            )
        self.calls.check_text_fits(sum(len(str(m.get("content", ""))) for m in messages), "messages")
        try:
            return await self.vocab.chat(messages, generation_prompt, continue_final, template, kw)
        except (ValueError, TypeError) as exc:  # no template, or the template refused the conversation
            raise ApiError(400, f"messages: the chat template cannot render them: {exc}", "messages") from None
