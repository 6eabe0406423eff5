"""One /v1/chat/completions answer (whole or as stream chunks) in vLLM's shapes."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from proctor.engine.doors.http.openai_bodies import ChatCompletionRequest
from proctor.engine.doors.http.openai_shapes import (
    FINGERPRINT,
    NULLS,
    prompt_logprobs_json,
    stop_params,
    stop_reason_json,
    token_text,
    usage_chunks,
    usage_json,
)
from proctor.engine.doors.http.teacher_calls import Position, clamp, now, sample_steps
from proctor.engine.items import Generation, Sample


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
            token = token_text(token_id, self.texts, as_ids)
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
        params = stop_params(self.body)
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
                "stop_reason": stop_reason_json(s, params),
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
        return out + usage_chunks(head, self.body.stream_options, self.usage_json())
