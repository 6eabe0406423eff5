"""What the teacher's HTTP routes ask of the backend, checked against the server's limits: prompt log-probs from
the fused Score path (never a [tokens, vocab] tensor) and completions from the Generate path; both at once through
the core, which answers a one-token completion from the Score pass where the backend can.

Prompt log-probs are vLLM's: per prompt position the actual token's entry first, then the top-k, each with its
log-prob and rank; position 0 has none. They are the model's raw log-probs (vLLM's default `logprobs_mode`),
whatever the request's temperature. Ranks are vLLM's: a token inside the top-k has its place there, one outside it
the count of tokens at least as likely over the whole vocabulary, itself included, with the logits as the model's
dtype gives them (so a 16-bit model's ties count in). The Score path counts in the same pass as the log-probs, the
Generate path over each step's log-probs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

from proctor.engine.cores.context import Later
from proctor.engine.cores.teacher import PromptInput, TeacherCore
from proctor.engine.doors.http.errors import http_error
from proctor.engine.errors import ItemError
from proctor.engine.items import BackendInfo, Generation, Sample, SamplingParams, ScoreOutput

# JSON has no -inf: vLLM sends -9999.0 for a log-prob of -inf, and so does this server.
FLOOR = -9999.0


def clamp(logprob: float) -> float:
    return max(logprob, FLOOR)


@dataclass(frozen=True)
class Entry:
    token_id: int
    logprob: float
    rank: int


Position = list[Entry] | None  # the actual token first, then the rest of the top-k; None at position 0


class TeacherCalls:
    """The Teacher's core as the HTTP routes call it: its refusals as HTTP errors, its answers as vLLM's shapes."""

    def __init__(self, core: TeacherCore) -> None:
        self.core = core
        self.svc = core.svc

    @property
    def info(self) -> BackendInfo:
        return self.core.info

    def check_top(self, k: int | None, field: str) -> None:
        if k is not None:
            with _as_http():
                self.core.check_top(k, field)

    def check_text_fits(self, chars: int, field: str) -> None:
        with _as_http():
            self.core.check_text_fits(chars, field)

    def check_prompt(self, ids: list[int], field: str) -> list[int]:
        with _as_http():
            return self.core.prompt_ids(PromptInput(ids=ids, field=field), add_special_tokens=False)

    async def text_prompts(self, prompts: list[tuple[str, str]], add_special_tokens: bool) -> list[list[int]]:
        """(text, field) pairs as checked token ids: on the loop when short together, else in one worker thread."""
        inputs = [PromptInput(text=text, field=field) for text, field in prompts]
        with _as_http():
            ids = self.core.tokenized(lambda: [self.core.prompt_ids(p, add_special_tokens) for p in inputs], *inputs)
            return await ids.run() if isinstance(ids, Later) else ids

    def sampling(
        self,
        *,
        prompt_len: int,
        n: int,
        max_tokens: int,
        temperature: float | None,
        top_p: float | None,
        top_k: int | None,
        presence_penalty: float | None,
        frequency_penalty: float | None,
        seed: int | None,
        stop: str | list[str] | None,
        stop_token_ids: list[int] | None,
        ignore_eos: bool,
        logprobs: int | None,
        max_tokens_field: str = "max_tokens",
    ) -> SamplingParams:
        """The request's sampling fields, checked; vLLM's defaults where a field is absent."""
        params = SamplingParams(
            n=n,
            temperature=1.0 if temperature is None else temperature,
            top_p=1.0 if top_p is None else top_p,
            top_k=0 if top_k is None or top_k == -1 else top_k,  # vLLM: -1 or 0 = off
            presence_penalty=presence_penalty or 0.0,
            frequency_penalty=frequency_penalty or 0.0,
            seed=seed,
            max_tokens=max_tokens,
            stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
            stop_token_ids=tuple(stop_token_ids or ()),
            logprobs=logprobs is not None,
            top_logprobs=logprobs or 0,
            ignore_eos=ignore_eos,
        )
        with _as_http():
            return self.core.sampling(
                params, prompt_len, max_tokens_field=max_tokens_field, top_logprobs_field="logprobs"
            )

    # ---- backend calls ---------------------------------------------------------------------------------------

    async def complete(
        self, ids: list[int], k: int | None, params: SamplingParams | None
    ) -> tuple[list[Position] | None, Generation | None]:
        """The prompt log-probs of `ids` with top-`k` when `k` is given, and a completion when `params` are."""
        if params is None:
            return (await self.prompt_logprobs(ids, k) if k is not None else None), None
        if k is None:
            return None, await self.generate(ids, params)
        if len(ids) < 2:  # nothing to score
            return [None] * len(ids), await self.generate(ids, params)
        with _as_http():
            out, gen = await self.core.score_and_generate(ids[:1], ids[1:], k, params, rank=True)
        return await _positions(ids, out, k), gen

    async def prompt_logprobs(self, ids: list[int], k: int) -> list[Position]:
        """Per position of `ids`: None at 0, then the actual token's entry and the top-k (Score's fused path)."""
        if len(ids) < 2:
            return [None] * len(ids)
        with _as_http():
            out = await self.core.score(ids[:1], ids[1:], k, rank=True)
        return await _positions(ids, out, k)

    async def complete_probed(
        self,
        ids: list[int],
        k: int | None,
        params: SamplingParams | None,
        start: int,
        rows: list[list[int]],
        field: str,
    ) -> tuple[list[Position] | None, list[list[float]], Generation | None]:
        """`complete` with probes, all from one Score of the prompt: the log-probs of `rows` (row i after
        ids[: start + i + 1]), the prompt log-probs with top-`k` when `k` is given, and a completion when `params`
        are (sampled from the same pass where the core can)."""
        first = start if k is None else 0  # the Score's first scored row: the prompt log-probs' need all of them
        context, target = ids[: first + 1], ids[first + 1 :]
        probes: list[list[int]] = [[] for _ in range(start - first)] + rows
        with _as_http():
            if params is None:
                out = await self.core.score(context, target, k or 0, k is not None, probes, field)
                gen = None
            else:
                out, gen = await self.core.score_and_generate(
                    context, target, k or 0, params, k is not None, probes, field
                )
        positions = await _positions(ids, out, k) if k is not None else None
        return positions, (out.probe_logprobs or [])[start - first :], gen

    async def score_prompt(
        self, ids: list[int], k: int, start: int = 0, probes: list[list[int]] | None = None, probes_field: str = ""
    ) -> ScoreOutput:
        """The log-probs (and top-k, and the log-probs of `probes`: a row per position) of ids[start + 1:], each
        after the tokens before it (Score's fused path)."""
        with _as_http():
            return await self.core.score(
                ids[: start + 1], ids[start + 1 :], k, probes=probes, probes_field=probes_field
            )

    def check_probe_ids(self, ids: list[int], field: str) -> list[int]:
        with _as_http():
            return self.core.check_probe_row(ids, field)

    async def generate(self, ids: list[int], params: SamplingParams) -> Generation:
        with _as_http():
            return await self.core.generate(ids, params)


@contextlib.contextmanager
def _as_http() -> Iterator[None]:
    """A core's ItemError as the HTTP error its code maps to (400, 429 and 503 retryable, 500)."""
    try:
        yield
    except ItemError as exc:
        raise http_error(exc) from None


async def _positions(ids: list[int], out: ScoreOutput, k: int) -> list[Position]:
    """A Score of ids[1:] after ids[0] as vLLM's prompt log-probs: None at 0, then the actual token and the top-k."""
    ranks = out.ranks or []
    top_ids: list[list[int]] = out.top.ids if out.top else [[] for _ in ranks]
    top_lps: list[list[float]] = out.top.logprobs if out.top else [[] for _ in ranks]
    # ~20 entries per position: built off the event loop, like the JSON that carries them
    return await asyncio.to_thread(
        lambda: (
            [None]
            + [
                _position(actual, logprob, top_i, top_lp, k, rank)
                for actual, logprob, top_i, top_lp, rank in zip(
                    ids[1:], out.logprobs, top_ids, top_lps, ranks, strict=True
                )
            ]
        )
    )


def _position(actual: int, logprob: float, top_ids: list[int], top_lps: list[float], k: int, rank: int) -> list[Entry]:
    """The actual token's entry, then the first k of the top. Inside the top k the actual token takes its place
    there as its rank, as in vLLM (whose top-k entries overwrite the counted one: tied tokens keep distinct ranks)."""
    top = list(zip(top_ids[:k], top_lps[:k], strict=True))
    rank = next((r for r, (t, _) in enumerate(top, 1) if t == actual), rank)
    return [Entry(actual, logprob, rank), *(Entry(t, lp, r) for r, (t, lp) in enumerate(top, 1) if t != actual)]


def sample_steps(sample: Sample, k: int) -> list[Position]:
    """A generated sample's tokens as positions: the sampled token first, then its step's top-k."""
    logprobs, ranks, top = sample.logprobs or [], sample.ranks or [], sample.top
    return [
        _position(token, logprobs[i], top.ids[i] if top else [], top.logprobs[i] if top else [], k, ranks[i])
        for i, token in enumerate(sample.token_ids)
    ]


def now() -> int:
    return int(time.time())
