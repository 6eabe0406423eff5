"""One /v1/completions answer (whole or as stream chunks) in vLLM's shapes, built from the Score and Generate
results."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from proctor.engine.doors.http.openai_bodies import CompletionRequest
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
from proctor.engine.items import Generation


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
        token = token_text(token_id, texts, as_ids)
        tokens.append(token)
        if position is None:
            lps.append(None)
            tops.append(None)
        else:
            lps.append(clamp(position[0].logprob))
            tops.append({token_text(e.token_id, texts, as_ids): clamp(e.logprob) for e in position[: k + 1]})
        offsets.append(offset)
        offset += len(token)
    return {"text_offset": offsets, "token_logprobs": lps, "tokens": tokens, "top_logprobs": tops}


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
                        "stop_reason": stop_reason_json(s, stop_params(body)) if s is not None else None,
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
        return out + usage_chunks(head, self.body.stream_options, self.usage_json())
