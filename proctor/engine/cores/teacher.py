"""The Teacher's core: prompts checked and tokenized, sampling checked, Generate / Score / score groups /
GenerateTriples run on the Generator backend, and Generate's and Score's metrics recorded — once, for the gRPC and the
HTTP door (GenerateTriples records its items, its call, and its samples' tokens under its own name). A Score
and a Generate of the same sequence (vLLM's prompt_logprobs with a completion) run in one forward where they can
(`score_and_generate`).

Where work runs: a request's text prompts are tokenized on the event loop when they are short together and in a
worker thread when they are long (a tokenizer takes ~1 s a MB); a text that cannot fit the prompt limit at
`MAX_CHARS_PER_TOKEN` characters a token is refused before any tokenizer work, which is what bounds it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

from proctor.engine.backends.base import Generator, ScoreSampler
from proctor.engine.config import TeacherConfig
from proctor.engine.cores import checks
from proctor.engine.cores.context import CallMetrics, Later, ServiceContext
from proctor.engine.cores.sampling_checks import check_top_logprobs, checked_sampling
from proctor.engine.errors import ItemError
from proctor.engine.items import (
    BackendInfo,
    GenerateItem,
    Generation,
    GroupOutput,
    SamplingParams,
    ScoreGroupItem,
    ScoreItem,
    ScoreOutput,
    ScoreSampleItem,
)
from proctor.engine.skd import triples
from proctor.engine.skd.relations import RELATIONS

T = TypeVar("T")

INLINE_TOKENIZE_CHARS = 4096
MAX_CHARS_PER_TOKEN = 64


@dataclass(frozen=True)
class PromptInput:
    """A prompt as a door received it: text or token ids, and the request fields that name it in errors (`field`
    the prompt as a whole; `text_field` / `ids_field` its text or its ids, where the wire format nests them)."""

    text: str | None = None
    ids: list[int] | None = None
    field: str = "prompt"
    text_field: str = ""
    ids_field: str = ""


@dataclass(frozen=True)
class TriplesJob:
    """A GenerateTriples call, checked: the events to infer from (or how many the teacher writes), and how."""

    events: list[str]
    num_events: int
    relations: list[str]
    seed: int
    event_params: SamplingParams
    inference_params: SamplingParams
    cutoff: float | None
    skip_critic: bool


@dataclass(frozen=True)
class EventFailed:
    """One event of a GenerateTriples call that failed; the next events go on."""

    head: str
    error: ItemError


class TeacherCore:
    def __init__(
        self, backend: Generator, config: TeacherConfig, svc: ServiceContext, critic: triples.Critic | None = None
    ) -> None:
        self.backend = backend
        self.config = config
        self.svc = svc
        self.critic = critic
        self.sampler = backend if isinstance(backend, ScoreSampler) else None

    @property
    def info(self) -> BackendInfo:
        return self.backend.info

    @property
    def max_prompt_tokens(self) -> int:
        model_len = self.backend.info.max_model_len
        return min(self.config.max_prompt_tokens, model_len) if self.config.max_prompt_tokens else model_len

    # ---- checks (synchronous: a door runs them before an item takes a queue slot) ------------------------------

    def check_top(self, k: int, field: str) -> None:
        check_top_logprobs(k, field, self.config, self.backend.info)

    def sampling(
        self,
        params: SamplingParams,
        prompt_len: int,
        *,
        at: str = "",
        max_tokens_field: str = "max_tokens",
        top_logprobs_field: str = "top_logprobs",
    ) -> SamplingParams:
        return checked_sampling(
            params,
            prompt_len=prompt_len,
            config=self.config,
            info=self.backend.info,
            at=at,
            max_tokens_field=max_tokens_field,
            top_logprobs_field=top_logprobs_field,
        )

    def check_text_fits(self, chars: int, field: str) -> None:
        """Text of `chars` characters that cannot fit the prompt limit is refused before any tokenizer (or chat
        template) work: that is what bounds the work."""
        limit = self.max_prompt_tokens
        bound = limit * MAX_CHARS_PER_TOKEN
        if chars > bound:
            raise ItemError(
                f"{chars} characters cannot fit max_prompt_tokens {limit} "
                f"(at most {bound} characters, {MAX_CHARS_PER_TOKEN} a token); nothing is truncated",
                field,
            )

    def prompt_ids(self, prompt: PromptInput, add_special_tokens: bool) -> list[int]:
        """The prompt's token ids, checked: in the vocabulary, not empty, within the prompt limit; nothing is cut."""
        if prompt.text is not None:
            text_field = prompt.text_field or prompt.field
            if not prompt.text:
                raise ItemError("empty text", text_field)
            self.check_text_fits(len(prompt.text), text_field)
            ids = self.backend.tokenize(prompt.text, add_special_tokens)
        else:
            ids = checks.token_ids(prompt.ids or [], prompt.ids_field or prompt.field, self.backend.info.vocab_size)
        if not ids:
            raise ItemError("empty: needs at least one token", prompt.field)
        limit = self.max_prompt_tokens
        if len(ids) > limit:
            raise ItemError(f"{len(ids)} tokens > max_prompt_tokens {limit}; nothing is truncated", prompt.field)
        return ids

    def tokenized(self, work: Callable[[], T], *prompts: PromptInput) -> T | Later[T]:
        """`work` (which tokenizes `prompts`) done now when their texts are short together, else deferred: a `Later`
        that runs it in a worker thread once awaited. The one policy of where tokenizing runs, for both doors; the
        budget is the request's, so many short prompts in one request go to the thread together."""
        chars = 0
        for p in prompts:  # a loop, not sum() over a generator: this runs for every item, token ids or text
            if p.text is not None:
                chars += len(p.text)
        if chars > INLINE_TOKENIZE_CHARS:
            return Later(lambda: asyncio.to_thread(work))
        return work()

    def check_group(self, continuations: int, has_target: bool, has_probes: bool = False) -> None:
        if not continuations:
            return
        if has_probes:
            raise ItemError("token-id probes go with a target, not with continuations", "probes")
        if has_target:
            raise ItemError("set target or continuations, not both", "target")
        if continuations > self.config.max_group_size:
            raise ItemError(f"{continuations} > {self.config.max_group_size} (teacher.max_group_size)", "continuations")

    def check_probe_row(self, ids: list[int], field: str) -> list[int]:
        return checks.probe_row(ids, field, self.backend.info.vocab_size)

    def score_inputs(self, context: PromptInput, scored: list[PromptInput]) -> tuple[list[int], list[list[int]]]:
        """The context's ids and each scored sequence's, each checked to fit the model with the context."""
        context_ids = self.prompt_ids(context, add_special_tokens=True)
        targets = []
        limit = self.backend.info.max_model_len
        for prompt in scored:
            ids = self.prompt_ids(prompt, add_special_tokens=False)
            if len(context_ids) + len(ids) > limit:
                raise ItemError(
                    f"context ({len(context_ids)} tokens) + target ({len(ids)} tokens) exceeds the model's context "
                    f"length {limit}; nothing is truncated",
                    prompt.field,
                )
            targets.append(ids)
        return context_ids, targets

    # ---- backend calls, each recorded once ----------------------------------------------------------------------

    async def generate(self, ids: list[int], params: SamplingParams) -> Generation:
        return self._generated(len(ids), await self.backend.generate(GenerateItem(prompt_ids=ids, params=params)))

    async def score(
        self,
        context: list[int],
        target: list[int],
        top_k: int,
        rank: bool = False,
        probes: list[list[int]] | None = None,
        probes_field: str = "probes",
    ) -> ScoreOutput:
        """`probes`: per target position, token ids whose log-probs come back in `probe_logprobs` (checked here)."""
        self._check_probes(probes, probes_field, len(target))
        return await self._score(
            ScoreItem(context_ids=context, target_ids=target, top_k=top_k, rank=rank, probe_ids=probes)
        )

    async def _score(self, item: ScoreItem) -> ScoreOutput:
        return self._scored(item, await self.backend.score(item))

    async def score_and_generate(
        self,
        context: list[int],
        target: list[int],
        top_k: int,
        params: SamplingParams,
        rank: bool = False,
        probes: list[list[int]] | None = None,
        probes_field: str = "probes",
    ) -> tuple[ScoreOutput, Generation]:
        """`score(context, target, ...)` and `generate(context + target, params)`, recorded as those two calls.

        One forward where it can be: the Score pass ends at the sequence's last position, whose logits are the
        first generated token's distribution, so a generation of one token is sampled there when the backend can
        (ScoreSampler: the torch backend) — each of its `n` samples and every stop rule on it (EOS, stop ids, stop
        strings) read that token alone. A second token needs the first fed back through the model (Generate's
        decode loop), so `max_tokens` > 1 keeps the two calls, and so does a backend whose Score and Generate are
        two engines (vLLM generating: its tokens must be vLLM's)."""
        self._check_probes(probes, probes_field, len(target))  # before either call starts work
        if self.sampler is not None and params.max_tokens == 1:
            item = ScoreSampleItem(
                context_ids=context, target_ids=target, top_k=top_k, rank=rank, probe_ids=probes, params=params
            )
            both = await self.sampler.score_sample(item)
            return self._scored(item, both.score), self._generated(len(item.prompt_ids), both.generation)
        scored = ScoreItem(context_ids=context, target_ids=target, top_k=top_k, rank=rank, probe_ids=probes)
        scoring = asyncio.ensure_future(self._score(scored))
        generating = asyncio.ensure_future(self.generate(context + target, params))
        try:
            return await asyncio.gather(scoring, generating)
        except BaseException:  # one failed (a backend refusal or error): the other's work is not wanted
            scoring.cancel()
            generating.cancel()
            raise

    def _check_probes(self, probes: list[list[int]] | None, field: str, positions: int) -> None:
        if probes is not None:
            checks.probe_rows(probes, field, self.backend.info.vocab_size, positions)

    def _generated(self, prompt: int, gen: Generation, rpc: str = "Generate") -> Generation:
        generated = sum(len(s.token_ids) for s in gen.samples)
        self.svc.metrics.count_tokens(self.svc.name, rpc, prompt=prompt, generated=generated)
        self.svc.metrics.observe_times(self.svc.name, rpc, gen.queue_s, gen.inference_s)
        return gen

    def _scored(self, item: ScoreItem, out: ScoreOutput) -> ScoreOutput:
        self.svc.metrics.count_tokens(self.svc.name, "Score", prompt=len(item.context_ids), scored=len(item.target_ids))
        self.svc.metrics.observe_times(self.svc.name, "Score", out.queue_s, out.inference_s)
        if item.rank and out.ranks is None:
            raise RuntimeError(f"{type(self.backend).__name__}.score gave no ranks for an item that asked for them")
        if item.probe_ids is not None and out.probe_logprobs is None:
            raise RuntimeError(f"{type(self.backend).__name__}.score gave no probe log-probs for an item with probes")
        return out

    async def score_group(self, context: list[int], continuations: list[list[int]], top_k: int) -> GroupOutput:
        group = await self.backend.score_group(
            ScoreGroupItem(context_ids=context, continuations=continuations, top_k=top_k)
        )
        scored = sum(len(c) for c in continuations)
        self.svc.metrics.count_tokens(self.svc.name, "Score", prompt=len(context), scored=scored)
        self.svc.metrics.observe_times(self.svc.name, "Score", group.queue_s, group.inference_s)
        return group

    # ---- GenerateTriples ------------------------------------------------------------------------------------

    def triples_job(
        self,
        *,
        events: list[str],
        num_events: int,
        relations: list[str],
        seed: int,
        event_params: SamplingParams,
        inference_params: SamplingParams,
        cutoff: float | None,
        skip_critic: bool,
    ) -> TriplesJob:
        events = [e.strip() for e in events]
        for i, event in enumerate(events):
            if not event:
                raise ItemError("empty event", f"events[{i}]")
        if events and num_events:
            raise ItemError("give events or num_events, not both", "num_events")
        if not events and not num_events:
            raise ItemError("required: events to infer from, or num_events for the teacher to write", "events")
        limit = self.config.max_triples_events
        if max(len(events), num_events) > limit:
            raise ItemError(f"at most {limit} events per call (teacher.max_triples_events)", "events")
        if cutoff is not None:
            checks.check_range(cutoff, "cutoff", 0.0, 1.0)
        if not skip_critic and self.critic is None:
            raise ItemError(
                "no critic: host the Critic service here or set teacher.critic to a Critic's address; "
                "or set skip_critic",
                "skip_critic",
                "FAILED_PRECONDITION",
            )
        return TriplesJob(
            events=events,
            num_events=num_events,
            relations=relations or list(RELATIONS),
            seed=seed,
            event_params=event_params,
            inference_params=inference_params,
            cutoff=cutoff,
            skip_critic=skip_critic,
        )

    async def triples(self, job: TriplesJob, calls: CallMetrics) -> AsyncIterator[triples.Triple | EventFailed]:
        """The job's triples as each event's are ready; a failed event is an `EventFailed` and the next go on. When
        the teacher wrote fewer events than asked, the last is an `EventFailed` (no head) saying how far each filter
        got."""
        events, shortfall = job.events, ""
        recorded = _RecordedTriples(self)
        if not events:
            pool = await triples.generate_events(recorded, job.num_events, job.seed, job.event_params)
            events, shortfall = pool.events(), pool.shortfall()
        critic = None if job.skip_critic else self.critic
        for head in events:
            received = time.perf_counter()
            try:
                found = await triples.triples_for_event(
                    recorded,
                    head,
                    job.relations,
                    job.seed,
                    job.inference_params,
                    critic,
                    job.cutoff,
                    self.config.skd_names,
                )
            except ItemError as exc:
                calls.item(exc.code, received)
                yield EventFailed(head, exc)
                continue
            for triple in found:
                calls.item("OK", received)
                yield triple
        if shortfall:
            error = ItemError(shortfall, "num_events", "FAILED_PRECONDITION")
            calls.item(error.code, time.perf_counter())
            yield EventFailed("", error)


class _RecordedTriples:
    """The backend as GenerateTriples' pipeline sees it (`triples.Completer`), its samples recorded as that call's
    tokens and times."""

    def __init__(self, core: TeacherCore) -> None:
        self._core = core

    @property
    def info(self) -> BackendInfo:
        return self._core.backend.info

    def tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        return self._core.backend.tokenize(text, add_special_tokens)

    async def generate_many(self, items: list[GenerateItem]) -> list[Generation]:
        generations = await self._core.backend.generate_many(items)
        for item, gen in zip(items, generations, strict=True):
            self._core._generated(len(item.prompt_ids), gen, "GenerateTriples")
        return generations
