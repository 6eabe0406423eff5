"""vLLM's OpenAI-compatible teacher routes: /v1/models, /tokenize, /detokenize, /v1/completions,
/v1/chat/completions and the token-in route /inference/v1/generate, answered in vLLM's JSON shapes.

Prompt log-probs come from the fused Score path, completions from the Generate path (see teacher_calls).
`max_tokens: 0` with `echo` or `prompt_logprobs` scores only; with `max_tokens` >= 1 the prompt is also generated
from, as vLLM does (a second pass over it). `stream: true` is Server-Sent Events in vLLM's chunk shapes; the
Generate path returns whole completions, so each choice arrives as one chunk when it is done.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from proctor.engine.items import Generation, Sample, SamplingParams
from proctor.engine.services.http.app import HttpFront
from proctor.engine.services.http.errors import ApiError, encode, json_response
from proctor.engine.services.http.openai_bodies import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    GenerateRequest,
    TokenizeRequest,
)
from proctor.engine.services.http.teacher_calls import Position, TeacherCalls, clamp, now, sample_steps
from proctor.engine.services.http.vocab import Vocab
from proctor.engine.version import __version__

Prompt = str | list[str] | list[int] | list[list[int]]
FINGERPRINT = f"proctor-{__version__}"
NULLS = {"kv_transfer_params": None, "ec_transfer_params": None, "metrics": None}  # vLLM-only keys, always null


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
            "max_model_len": self.calls.backend.info.max_model_len,
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
            ids = await self.vocab.encode(body.prompt, body.add_special_tokens)
        else:
            assert body.messages is not None
            ids = await self.chat_ids(
                [m.as_template_input() for m in body.messages],
                body.add_generation_prompt,
                body.continue_final_message,
                body.chat_template,
                body.chat_template_kwargs,
            )
        strs = None
        if body.return_token_strs:
            texts = await self.vocab.texts()
            strs = [texts[i] for i in ids]
        info = self.calls.backend.info
        return json_response(
            {"count": len(ids), "max_model_len": info.max_model_len, "tokens": ids, "token_strs": strs}
        )

    async def detokenize(self, body: DetokenizeRequest) -> Response:
        self._check_model(body.model)
        vocab = self.calls.backend.info.vocab_size
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
            return _sse(build.chunks())
        return Response(await asyncio.to_thread(lambda: encode(build.response())), media_type="application/json")

    async def complete(
        self, prompts: list[list[int]], params: list[SamplingParams], prompt_k: int | None
    ) -> list[tuple[list[Position] | None, Generation | None]]:
        async def one(i: int) -> tuple[list[Position] | None, Generation | None]:
            scoring = self.calls.prompt_logprobs(prompts[i], prompt_k) if prompt_k is not None else _none()
            generating = self.calls.generate(prompts[i], params[i]) if params else _none()
            return await asyncio.gather(scoring, generating)

        return list(await asyncio.gather(*(one(i) for i in range(len(prompts)))))

    def _params(self, body: CompletionRequest | ChatCompletionRequest, prompt_len: int, max_tokens: int,
                logprobs: int | None = None, max_tokens_field: str = "max_tokens") -> SamplingParams:  # fmt: skip
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
        ids = await self.chat_ids(
            [m.as_template_input() for m in body.messages],
            body.add_generation_prompt,
            body.continue_final_message,
            body.chat_template,
            body.chat_template_kwargs,
        )
        self.calls.check_prompt(ids, "messages")
        self.calls.check_top(body.prompt_logprobs, "prompt_logprobs")
        field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        max_tokens = self.calls.backend.info.max_model_len - len(ids) if limit is None else limit
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
            return _sse(build.chunks())
        return Response(await asyncio.to_thread(lambda: encode(build.response())), media_type="application/json")

    # ---- /inference/v1/generate ------------------------------------------------------------------------------

    async def generate(self, body: GenerateRequest, request: Request) -> Response:
        self._check_model(body.model)
        sp = body.sampling_params
        ids = self.calls.check_prompt(body.token_ids, "token_ids")
        max_tokens = 16 if sp.max_tokens is None else sp.max_tokens
        if max_tokens == 0 and sp.prompt_logprobs is None:
            raise ApiError(400, "sampling_params.max_tokens: 0 needs prompt_logprobs (scoring)", "sampling_params")
        self.calls.check_top(sp.prompt_logprobs, "sampling_params.prompt_logprobs")
        params = []
        if max_tokens:
            params = [
                self.calls.sampling(
                    prompt_len=len(ids),
                    n=sp.n,
                    max_tokens=max_tokens,
                    temperature=sp.temperature,
                    top_p=sp.top_p,
                    top_k=sp.top_k,
                    presence_penalty=sp.presence_penalty,
                    frequency_penalty=sp.frequency_penalty,
                    seed=sp.seed,
                    stop=sp.stop,
                    stop_token_ids=sp.stop_token_ids,
                    ignore_eos=sp.ignore_eos,
                    logprobs=sp.logprobs,
                )
            ]
        items = (sp.n if max_tokens else 0) + (sp.prompt_logprobs is not None)
        async with self.front.admitted(self.calls.svc, items):
            [(prompt_positions, gen)] = await self.front.run(request, self.complete([ids], params, sp.prompt_logprobs))
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
                    "stop_reason": _stop_reason(s, params[0]),
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
            "prompt_token_id_logprobs": None,
            "prompt_token_ids": ids if body.return_token_ids else None,
            "mm_placeholders": None,
            **NULLS,
            "output_mode": "tokens",
            "choices": choices,
        }
        return Response(await asyncio.to_thread(encode, payload), media_type="application/json")

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
        out = []
        for i, p in enumerate(many):
            field = f"prompt[{i}]" if len(many) > 1 else "prompt"
            ids = await self.vocab.encode(p, add_special) if isinstance(p, str) else [int(t) for t in p]  # type: ignore[call-overload]
            out.append(self.calls.check_prompt(ids, field))
        return out

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
        try:
            return await self.vocab.chat(messages, generation_prompt, continue_final, template, kw)
        except (ValueError, TypeError) as exc:  # no template, or the template refused the conversation
            raise ApiError(400, f"messages: the chat template cannot render them: {exc}", "messages") from None


async def _none() -> None:
    return None


def _stop_reason(s: Sample, params: SamplingParams) -> int | str | None:
    """vLLM's: the stop string, or the stop token id (an integer); None for EOS or length."""
    if not s.stop_reason:
        return None
    if s.stop_reason.isdigit() and int(s.stop_reason) in params.stop_token_ids:
        return int(s.stop_reason)
    return s.stop_reason


def usage_json(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }


def prompt_logprobs_json(positions: list[Position] | None, texts: Sequence[str]) -> list[Any] | None:
    if positions is None:
        return None
    return [
        None
        if p is None
        else {
            str(e.token_id): {"logprob": clamp(e.logprob), "rank": e.rank, "decoded_token": texts[e.token_id]}
            for e in p
        }
        for p in positions
    ]


def _token_text(token_id: int, texts: Sequence[str], as_ids: bool | None) -> str:
    return f"token_id:{token_id}" if as_ids else texts[token_id]


def _completion_logprobs(
    token_ids: list[int], positions: list[Position], k: int, texts: Sequence[str], as_ids: bool | None
) -> dict[str, Any]:
    """vLLM's legacy completions log-probs: per token its text, log-prob and the first k + 1 entries."""
    offsets: list[int] = []
    lps: list[float | None] = []
    tokens: list[str] = []
    tops: list[dict[str, float] | None] = []
    offset = 0
    for token_id, position in zip(token_ids, positions, strict=True):
        token = _token_text(token_id, texts, as_ids)
        tokens.append(token)
        if position is None:
            lps.append(None)
            tops.append(None)
        else:
            lps.append(clamp(position[0].logprob))
            tops.append({_token_text(e.token_id, texts, as_ids): clamp(e.logprob) for e in position[: k + 1]})
        offsets.append(offset)
        offset += len(token)
    return {"text_offset": offsets, "token_logprobs": lps, "tokens": tokens, "top_logprobs": tops}


def _sse(chunks: list[dict[str, Any]]) -> StreamingResponse:
    async def events() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield b"data: " + encode(chunk) + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


class CompletionBuild:
    """One /v1/completions answer from its results (pure: runs in a thread for big answers)."""

    def __init__(
        self,
        body: CompletionRequest,
        model: str,
        texts: Sequence[str],
        prompts: list[list[int]],
        results: list[tuple[list[Position] | None, Generation | None]],
        echo_texts: Sequence[str] | None,
        max_tokens: int,
    ) -> None:
        self.body, self.model, self.texts, self.prompts = body, model, texts, prompts
        self.results, self.echo_texts, self.max_tokens = results, echo_texts, max_tokens
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = now()

    def _choices(self) -> list[dict[str, Any]]:
        body = self.body
        choices: list[dict[str, Any]] = []
        for i, (ids, (prompt_positions, gen)) in enumerate(zip(self.prompts, self.results, strict=True)):
            samples = gen.samples if gen is not None else [None] * body.n
            for s in samples:
                out_ids = s.token_ids if s is not None else []
                text = s.text if s is not None else ""
                positions: list[Position] = []
                if body.logprobs is not None and s is not None:
                    positions = sample_steps(s, body.logprobs)
                token_ids = out_ids
                if body.echo:
                    assert self.echo_texts is not None
                    text = ("" if body.return_token_ids else self.echo_texts[i]) + text
                    token_ids = ids + out_ids
                    positions = (prompt_positions or [None] * len(ids)) + positions
                logprobs = None
                if body.logprobs is not None:
                    logprobs = _completion_logprobs(
                        token_ids, positions, body.logprobs, self.texts, body.return_tokens_as_token_ids
                    )
                choices.append(
                    {
                        "index": len(choices),
                        "text": text,
                        "logprobs": logprobs,
                        "finish_reason": s.finish_reason.value if s is not None else "length",
                        "stop_reason": _stop_reason(s, _params_of(body)) if s is not None else None,
                        "token_ids": out_ids if body.return_token_ids else None,
                        "prompt_logprobs": prompt_logprobs_json(prompt_positions, self.texts),
                        "prompt_token_ids": ids if body.return_token_ids else None,
                        "routed_experts": None,
                    }
                )
        return choices

    def usage_json(self) -> dict[str, Any]:
        generated = sum(len(s.token_ids) for _, gen in self.results if gen is not None for s in gen.samples)
        return usage_json(sum(len(p) for p in self.prompts), generated)

    def response(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": self._choices(),
            "service_tier": None,
            "system_fingerprint": FINGERPRINT,
            "usage": self.usage_json(),
            **NULLS,
        }

    def chunks(self) -> list[dict[str, Any]]:
        head = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model}
        keys = ("index", "text", "logprobs", "finish_reason", "stop_reason", "prompt_token_ids", "token_ids")
        out = [{**head, "choices": [{k: c[k] for k in keys}]} for c in self._choices()]
        options = self.body.stream_options
        if options is not None and options.include_usage:
            out.append(
                {**head, "choices": [], "usage": _without_nulls(self.usage_json()), "system_fingerprint": FINGERPRINT}
            )
        return out


class ChatBuild:
    def __init__(
        self,
        body: ChatCompletionRequest,
        model: str,
        texts: Sequence[str],
        ids: list[int],
        prompt_positions: list[Position] | None,
        gen: Generation,
    ) -> None:
        self.body, self.model, self.texts, self.ids = body, model, texts, ids
        self.prompt_positions, self.gen = prompt_positions, gen
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = now()

    def _logprobs(self, s: Sample) -> dict[str, Any] | None:
        if not self.body.logprobs:
            return None
        k = self.body.top_logprobs or 0
        as_ids = self.body.return_tokens_as_token_ids

        def item(token_id: int, logprob: float) -> dict[str, Any]:
            token = _token_text(token_id, self.texts, as_ids)
            return {"token": token, "logprob": clamp(logprob), "bytes": list(token.encode())}

        content = []
        for step in sample_steps(s, k):
            assert step is not None
            head = step[0]
            content.append(
                {**item(head.token_id, head.logprob), "top_logprobs": [item(e.token_id, e.logprob) for e in step[:k]]}
            )
        return {"content": content}

    def _choices(self) -> list[dict[str, Any]]:
        params = _params_of(self.body)
        return [
            {
                "index": s.index,
                "message": {
                    "role": "assistant",
                    "content": s.text,
                    "refusal": None,
                    "annotations": None,
                    "audio": None,
                    "function_call": None,
                    "reasoning": None,
                },
                "logprobs": self._logprobs(s),
                "finish_reason": s.finish_reason.value,
                "stop_reason": _stop_reason(s, params),
                "token_ids": s.token_ids if self.body.return_token_ids else None,
                "routed_experts": None,
            }
            for s in self.gen.samples
        ]

    def usage_json(self) -> dict[str, Any]:
        return usage_json(len(self.ids), sum(len(s.token_ids) for s in self.gen.samples))

    def response(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": self._choices(),
            "service_tier": None,
            "system_fingerprint": FINGERPRINT,
            "usage": self.usage_json(),
            "prompt_logprobs": prompt_logprobs_json(self.prompt_positions, self.texts),
            "prompt_token_ids": self.ids if self.body.return_token_ids else None,
            "prompt_text": None,
            **NULLS,
        }

    def chunks(self) -> list[dict[str, Any]]:
        head = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}
        out = []
        for c in self._choices():
            first: dict[str, Any] = {
                "index": c["index"],
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
            if self.body.return_token_ids:
                first["prompt_token_ids"] = self.ids
            out.append({**head, "choices": [first]})
            last = {
                "index": c["index"],
                "delta": {"content": c["message"]["content"]},
                "logprobs": c["logprobs"],
                "finish_reason": c["finish_reason"],
                "stop_reason": c["stop_reason"],
            }
            if self.body.return_token_ids:
                last["token_ids"] = c["token_ids"]
            out.append({**head, "choices": [last]})
        options = self.body.stream_options
        if options is not None and options.include_usage:
            out.append(
                {**head, "choices": [], "usage": _without_nulls(self.usage_json()), "system_fingerprint": FINGERPRINT}
            )
        return out


def _params_of(body: CompletionRequest | ChatCompletionRequest) -> SamplingParams:
    """Enough of the request's sampling parameters to read a stop reason (the stop token ids)."""
    return SamplingParams(stop_token_ids=tuple(body.stop_token_ids or ()))


def _without_nulls(usage: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in usage.items() if v is not None}
