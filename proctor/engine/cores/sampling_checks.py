"""The Teacher's sampling limits, checked once for both fronts (gRPC and HTTP): each refusal an ItemError naming
the request field, which the gRPC service turns into an item's Status and the HTTP front into a 400."""

from __future__ import annotations

from dataclasses import replace

from proctor.engine.config import TeacherConfig
from proctor.engine.cores import checks
from proctor.engine.errors import ItemError
from proctor.engine.items import BackendInfo, SamplingParams

# Seeds are taken modulo 2**63 (a torch generator's range), so any 64-bit seed a client sends is a valid one.
_MAX_SEED = 2**63


def check_top_logprobs(k: int, field: str, config: TeacherConfig, info: BackendInfo) -> None:
    limit = min(config.max_top_logprobs, info.vocab_size)
    if k < 0:  # vLLM's -1: the whole vocabulary, a [tokens, vocab] answer; refused, never cut to the limit
        raise ItemError(
            f"{k} asks for the whole vocabulary ({info.vocab_size} entries a position) > {limit} "
            "(server limit teacher.max_top_logprobs)",
            field,
        )
    if k > limit:
        raise ItemError(f"{k} > {limit} (server limit teacher.max_top_logprobs)", field)


def checked_sampling(
    params: SamplingParams,
    *,
    prompt_len: int,
    config: TeacherConfig,
    info: BackendInfo,
    at: str = "",
    max_tokens_field: str = "max_tokens",
    top_logprobs_field: str = "top_logprobs",
) -> SamplingParams:
    """`params` with every limit checked and the seed reduced to its range; `at` prefixes the field names
    (`params.` on gRPC, nothing on HTTP, whose bodies are flat)."""

    def field(name: str) -> str:
        return f"{at}.{name}" if at else name

    if params.n > config.max_n:
        raise ItemError(f"{params.n} > {config.max_n} (server limit teacher.max_n)", field("n"))
    checks.check_range(params.temperature, field("temperature"), 0.0, 100.0)
    checks.check_range(params.top_p, field("top_p"), 0.0, 1.0, low_open=True)
    if not 0 <= params.top_k <= info.vocab_size:
        raise ItemError(f"{params.top_k} is outside [0, {info.vocab_size}] (0 = off)", field("top_k"))
    checks.check_range(params.presence_penalty, field("presence_penalty"), -2.0, 2.0)
    checks.check_range(params.frequency_penalty, field("frequency_penalty"), -2.0, 2.0)
    if prompt_len + params.max_tokens > info.max_model_len:
        raise ItemError(
            f"prompt ({prompt_len} tokens) + {max_tokens_field} ({params.max_tokens}) exceeds the model's context "
            f"length {info.max_model_len}",
            field(max_tokens_field),
        )
    for i, stop in enumerate(params.stop):
        if not stop:
            raise ItemError("empty stop string", f"{field('stop')}[{i}]")
    checks.token_ids(list(params.stop_token_ids), field("stop_token_ids"), info.vocab_size)
    check_top_logprobs(params.top_logprobs, field(top_logprobs_field), config, info)
    return replace(params, seed=params.seed % _MAX_SEED if params.seed is not None else None)
