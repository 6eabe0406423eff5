"""proctor's request dataclasses to vLLM arguments and vLLM's outputs back: pure functions, no vLLM import.

They take and return plain values (keyword dicts, lists), so they are unit-tested without vLLM; the vLLM backend
builds `vllm.SamplingParams(**kwargs)` from them. Only fields that vLLM 0.26 and 0.32 share are used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from proctor.engine.backends.settings import VllmSettings
from proctor.engine.items import FinishReason, Sample, SamplingParams, ScoreOutput, TopK


class LogprobLike(Protocol):
    """What vLLM's `Logprob` carries that proctor reads."""

    logprob: float
    rank: int | None  # the tokens at least as likely, itself included (vLLM v1 always fills it)


PositionLogprobs = Mapping[int, LogprobLike]


def rank_of(entry: LogprobLike) -> int:
    if entry.rank is None:
        raise ValueError("vLLM returned a log-prob without its rank")
    return int(entry.rank)


def engine_kwargs(model: str, dtype: str, settings: VllmSettings) -> dict[str, Any]:
    """Keyword arguments for `vllm.engine.arg_utils.AsyncEngineArgs`; zero / empty settings are left to vLLM."""
    kwargs: dict[str, Any] = {
        "model": model,
        "dtype": dtype,
        "seed": settings.seed,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "pipeline_parallel_size": settings.pipeline_parallel_size,
        "data_parallel_size": settings.data_parallel_size,
        "enable_prefix_caching": settings.enable_prefix_caching,
        "enforce_eager": settings.enforce_eager,
        "max_logprobs": settings.max_logprobs,
        "load_format": settings.load_format,
        # Log-probs of the model's own distribution, before temperature and penalties (what a KD loss wants, and
        # what the torch backend returns).
        "logprobs_mode": "raw_logprobs",
    }
    optional = {
        "max_model_len": settings.max_model_len,
        "kv_cache_memory_bytes": settings.kv_cache_memory_bytes,
        "distributed_executor_backend": settings.distributed_executor_backend,
        "max_num_seqs": settings.max_num_seqs,
    }
    kwargs.update({name: value for name, value in optional.items() if value})
    return kwargs


def sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams` that generate what the torch backend generates."""
    return {
        "n": params.n,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,  # 0 = off in both
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "seed": params.seed,
        "max_tokens": params.max_tokens,
        "stop": list(params.stop),
        "stop_token_ids": list(params.stop_token_ids),
        # Only when asked: vLLM builds Python objects per generated token for them (on the CPU build, a tiny model
        # through proctor ran at 59 % of AsyncLLM's speed when every request asked for them).
        "logprobs": params.top_logprobs if params.logprobs or params.top_logprobs else None,
        "ignore_eos": params.ignore_eos,
        "detokenize": params.detokenize,
        "skip_special_tokens": True,
        "include_stop_str_in_output": False,
    }


def score_kwargs(top_k: int) -> dict[str, Any]:
    """Prompt log-probs (and top-k) of every prompt position; one generated token is the least vLLM allows."""
    return {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": top_k, "detokenize": False}


def top_of(position: PositionLogprobs, k: int) -> tuple[list[int], list[float]]:
    """The k most likely of one position's entries, descending; vLLM adds the chosen token, which may rank lower."""
    best = sorted(position.items(), key=lambda kv: -kv[1].logprob)[:k]
    return [token for token, _ in best], [float(lp.logprob) for _, lp in best]


def to_sample(
    index: int,
    token_ids: Sequence[int],
    text: str,
    finish_reason: str | None,
    stop_reason: int | str | None,
    logprobs: Sequence[PositionLogprobs] | None,
    params: SamplingParams,
) -> Sample:
    """One vLLM `CompletionOutput` (asked with `sampling_kwargs`: log-probs are there when the caller asked)."""
    chosen = ranks = None
    if logprobs is not None:
        entries = [pos[token] for token, pos in zip(token_ids, logprobs, strict=True)]
        chosen = [float(e.logprob) for e in entries]
        ranks = [rank_of(e) for e in entries]
    top: TopK | None = None
    if params.top_logprobs and logprobs is not None:
        top = TopK()
        for pos in logprobs:
            ids, lps = top_of(pos, params.top_logprobs)
            top.ids.append(ids)
            top.logprobs.append(lps)
    return Sample(
        index=index,
        token_ids=list(token_ids),
        text=text if params.detokenize else "",
        finish_reason=FinishReason.LENGTH if finish_reason == "length" else FinishReason.STOP,
        stop_reason="" if stop_reason is None else str(stop_reason),
        cumulative_logprob=float(sum(chosen)) if chosen is not None else None,
        logprobs=chosen,
        top=top,
        ranks=ranks,
    )


def target_scores(
    prompt_ids: Sequence[int],
    prompt_logprobs: Sequence[PositionLogprobs | None],
    first: int,
    top_k: int,
    rank: bool = False,
) -> ScoreOutput:
    """Log-probs of `prompt_ids[first:]` from vLLM's prompt log-probs (position 0 has none: `first` >= 1), with
    vLLM's ranks when asked."""
    if first < 1:
        raise ValueError("the first scored position needs a context token before it")
    positions: Iterable[tuple[int, PositionLogprobs | None]] = zip(
        prompt_ids[first:], prompt_logprobs[first:], strict=True
    )
    logprobs: list[float] = []
    ranks: list[int] | None = [] if rank else None
    top = TopK() if top_k else None
    for token, pos in positions:
        if pos is None:
            raise ValueError("vLLM returned no log-probs for a scored position")
        logprobs.append(float(pos[token].logprob))
        if ranks is not None:
            ranks.append(rank_of(pos[token]))
        if top is not None:
            ids, lps = top_of(pos, top_k)
            top.ids.append(ids)
            top.logprobs.append(lps)
    return ScoreOutput(logprobs=logprobs, top=top, ranks=ranks)
