"""vLLM's JSON pieces that the OpenAI-compatible answers share: the usage block, prompt log-probs, a stop reason,
token texts, the vLLM-only null keys and Server-Sent Events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.responses import StreamingResponse

from proctor.engine.doors.http.errors import encode
from proctor.engine.doors.http.openai_bodies import ChatCompletionRequest, CompletionRequest, StreamOptions
from proctor.engine.doors.http.teacher_calls import Position, clamp
from proctor.engine.items import Sample, SamplingParams
from proctor.engine.version import __version__

FINGERPRINT = f"proctor-{__version__}"
NULLS = {"kv_transfer_params": None, "ec_transfer_params": None, "metrics": None}  # vLLM-only keys, always null


def stop_reason_json(s: Sample, params: SamplingParams) -> int | str | None:
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


def token_text(token_id: int, texts: Sequence[str], as_ids: bool | None) -> str:
    return f"token_id:{token_id}" if as_ids else texts[token_id]


def sse(chunks: list[dict[str, Any]]) -> StreamingResponse:
    async def events() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield b"data: " + encode(chunk) + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def stop_params(body: CompletionRequest | ChatCompletionRequest) -> SamplingParams:
    """Enough of the request's sampling parameters to read a stop reason (the stop token ids)."""
    return SamplingParams(stop_token_ids=tuple(body.stop_token_ids or ()))


def usage_chunks(head: dict[str, Any], options: StreamOptions | None, usage: dict[str, Any]) -> list[dict[str, Any]]:
    """A stream's closing usage chunk, when stream_options.include_usage asks for it."""
    if options is None or not options.include_usage:
        return []
    usage = {k: v for k, v in usage.items() if v is not None}
    return [{**head, "choices": [], "usage": usage, "system_fingerprint": FINGERPRINT}]
