"""Atom-Searcher's reward for one rollout: R = alpha * R_atom + (1 - alpha) * R_f1, or -1 when malformed.

The RRM is any Generator (the backend interface); everything else is rules on strings. Rules-only work never waits
on the model.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass, field
from enum import StrEnum

from proctor.engine.backends.base import Generator
from proctor.engine.errors import ItemError
from proctor.engine.items import GenerateItem, ProbeGroupItem, SamplingParams
from proctor.engine.rewards import alpha_schedule, outcome, rollout, rrm
from proctor.engine.rewards.steps import StepRun, StepTracker


class RewardMode(StrEnum):
    """How R_atom is had (paper rules §2): the RRM writes scores, its expected score is read off the score tokens'
    probabilities, or there is no R_atom (the reward is R_f1)."""

    GENERATE = "generate"
    EXPECTED = "expected"
    RULES = "rules"


ATTEMPTS = 2  # an unparseable judgement is retried once


@dataclass
class RewardSettings:
    """The reward's settings (the `reward` config section holds them with the RRM's backend settings)."""

    mode: str = "expected"
    """generate | expected | rules (a request may choose another)"""
    total_steps: int = 0
    """T_MAX; 0 = every request must carry total_steps"""
    aggregation: str = "mean"
    """mean | min | last"""
    no_atoms_r_atom: float = 0.0
    """R_atom of a rollout without atoms (flagged in the result)"""
    prompt_template: str = rrm.DEFAULT_TEMPLATE
    """the RRM's prompt; placeholders {question} {atoms} {gold} {count} (engine/rewards/rrm.py)"""
    include_gold: bool = True
    """the RRM prompt shows the first gold answer"""
    judge_temperature: float = 0.7
    """generate mode: the RRM's sampling temperature"""
    judge_max_tokens: int = 0
    """0 = 8 per atom + 16"""
    renormalize: bool = True
    """expected mode: renormalise over the score tokens"""
    max_rollout_chars: int = 1024 * 1024
    """the most characters one rollout may carry in its question, response and gold answers together; a longer one
    fails alone with INVALID_ARGUMENT (the rules cost ~0.3 us a character of tag soup, on a thread of their own)"""


@dataclass(frozen=True)
class RolloutInput:
    question: str
    response: str
    golds: list[str]
    step: int | None  # T as the trainer sent it; None = derived from `run`
    total_steps: int | None = None
    mode: RewardMode | None = None
    run: StepRun | None = None  # the run whose rollouts are counted when the trainer sends no T


@dataclass
class RewardOutcome:
    reward: float
    alpha: float
    r_f1: float
    format_ok: bool
    format_reason: str
    atoms: list[rollout.Atom]
    atom_scores: list[float] = field(default_factory=list)
    r_atom: float | None = None
    no_atoms: bool = False
    rrm_text: str = ""
    rrm_attempts: int = 0
    inference_s: float = 0.0
    queue_s: float = 0.0  # the RRM's work waiting in its backend's queue
    # The RRM's tokens: its prompt, what it wrote (generate mode), the probes it scored (expected mode)
    prompt_tokens: int = 0
    generated_tokens: int = 0
    scored_tokens: int = 0
    training_step: int = 0  # the T used: the trainer's, or derived from its run


@dataclass(frozen=True)
class PendingJudgement:
    """A well-formed rollout with atoms whose R_atom the RRM has still to give: the outcome so far, the prompt."""

    item: RolloutInput
    outcome: RewardOutcome
    prompt: str
    mode: RewardMode  # generate | expected


class RewardScorer:
    def __init__(self, settings: RewardSettings, judge: Generator | None, steps: StepTracker | None = None) -> None:
        self.settings = settings
        self.judge = judge
        self.steps = steps or StepTracker()
        self._score_tokens: rrm.ScoreTokens | None = None

    async def score(self, item: RolloutInput) -> RewardOutcome:
        decided = self.apply_rules(item)
        return await self.judge_atoms(decided) if isinstance(decided, PendingJudgement) else decided

    def apply_rules(self, item: RolloutInput) -> RewardOutcome | PendingJudgement:
        """Everything that needs no model: the final outcome (rules mode, a malformed rollout, no atoms), or what
        is left for the RRM."""
        step = self.training_step(item)  # first: a rollout the trainer sent is counted even when it fails below
        self._check_size(item)
        mode = item.mode or RewardMode(self.settings.mode)
        if mode != RewardMode.RULES and self.judge is None:
            raise ItemError(
                f"{mode} mode needs an RRM and this server has none configured; use RULES",
                "mode",
                "FAILED_PRECONDITION",
            )
        total = item.total_steps if item.total_steps is not None else self.settings.total_steps
        alpha = alpha_schedule.alpha(step, total)  # validates T even in rules mode
        if mode == RewardMode.RULES:  # alpha is taken as 0: there is no R_atom to mix in
            alpha = 0.0
        verdict, atoms = rollout.parse(item.response)
        if not verdict.ok:
            return RewardOutcome(-1.0, alpha, 0.0, False, verdict.reason, atoms, training_step=step)
        r_f1 = outcome.best_f1(verdict.answer, item.golds)
        if mode == RewardMode.RULES:
            return RewardOutcome(r_f1, alpha, r_f1, True, "", atoms, training_step=step)
        result = RewardOutcome(0.0, alpha, r_f1, True, "", atoms, training_step=step)
        if not atoms:
            result.no_atoms = True
            result.r_atom = self.settings.no_atoms_r_atom
            result.reward = alpha_schedule.mix(alpha, result.r_atom, r_f1)
            return result
        if not item.question.strip():
            raise ItemError(f"required: the question, which the RRM reads in {mode} mode", "question")
        # The first gold with any text: an empty gold list (or empty golds) is scored, not refused (paper rules §2.2).
        golds = (g for g in outcome.split_golds(item.golds) if g.strip())
        gold = next(golds, None) if self.settings.include_gold else None
        prompt = rrm.render_prompt(self.settings.prompt_template, item.question, atoms, gold)
        return PendingJudgement(item, result, prompt, mode)

    def _check_size(self, item: RolloutInput) -> None:
        sizes = {"question": len(item.question), "response": len(item.response)}
        sizes["gold_answers"] = sum(len(g) for g in item.golds)
        limit = self.settings.max_rollout_chars
        if sum(sizes.values()) > limit:
            parts = ", ".join(f"{name} {size}" for name, size in sizes.items())
            raise ItemError(
                f"{sum(sizes.values())} characters ({parts}) > reward.max_rollout_chars {limit}",
                max(sizes, key=lambda name: sizes[name]),
            )

    def training_step(self, item: RolloutInput) -> int:
        """T: the trainer's when it sent one (it always wins), else the run's count (engine.rewards.steps)."""
        if item.step is not None:
            return item.step
        if item.run is None:
            raise ItemError("required: the training step, or a run whose rollouts the server counts", "training_step")
        return self.steps.step(item.run)

    async def judge_atoms(self, pending: PendingJudgement) -> RewardOutcome:
        """The RRM's part: score the atoms, aggregate them into R_atom, mix."""
        result = pending.outcome
        started = time.perf_counter()
        if pending.mode == RewardMode.GENERATE:
            await self._judge_by_sampling(pending.prompt, pending.item, result)
        else:
            await self._judge_by_expectation(pending.prompt, result)
        result.inference_s = time.perf_counter() - started
        result.r_atom = rrm.aggregate(result.atom_scores, self.settings.aggregation)
        result.reward = alpha_schedule.mix(result.alpha, result.r_atom, result.r_f1)
        return result

    def _prompt_ids(self, text: str) -> list[int]:
        assert self.judge is not None
        ids = self.judge.tokenize(text, True)
        limit = self.judge.info.max_model_len
        if len(ids) + self._judge_max_tokens(1) > limit:
            raise ItemError(f"the RRM prompt is {len(ids)} tokens, over the RRM's context length {limit}", "response")
        return ids

    def _judge_max_tokens(self, count: int) -> int:
        return self.settings.judge_max_tokens or 8 * count + 16

    async def _judge_by_sampling(self, prompt: str, item: RolloutInput, result: RewardOutcome) -> None:
        assert self.judge is not None
        ids = self._prompt_ids(prompt)
        # Seeded by the rollout's content: the same rollout gets the same judgement on any replica.
        seed = zlib.crc32(f"{item.question}\x00{item.response}".encode())
        problem = ""
        for attempt in range(1, ATTEMPTS + 1):
            params = SamplingParams(
                temperature=self.settings.judge_temperature,
                seed=seed + attempt,
                max_tokens=self._judge_max_tokens(len(result.atoms)),
            )
            generation = await self.judge.generate(GenerateItem(prompt_ids=ids, params=params))
            result.queue_s += generation.queue_s
            result.prompt_tokens += len(ids)
            result.generated_tokens += len(generation.samples[0].token_ids)
            text = generation.samples[0].text
            result.rrm_attempts = attempt
            result.rrm_text = text
            try:
                result.atom_scores = [float(s) for s in rrm.parse_judgement(text, len(result.atoms))]
                return
            except rrm.Unparseable as exc:
                problem = str(exc)
        raise ItemError(
            f"the RRM's judgement was unparseable after {ATTEMPTS} attempts ({problem}); last output: {text[:300]!r}",
            code="INTERNAL",
        )

    async def _judge_by_expectation(self, prompt: str, result: RewardOutcome) -> None:
        """One pass over the judge prompt (its KV cache shared), then every atom's short tail and score probes."""
        assert self.judge is not None
        plan = self._plan()
        wanted = plan.wanted()
        prompt_ids = self._prompt_ids(prompt)
        continuations: list[list[int]] = []
        token_ids: list[list[int]] = []
        for i in range(1, len(result.atoms) + 1):
            tail = self.judge.tokenize(rrm.expected_mode_prompt("", i), False)
            for probe, ids in wanted.items():
                continuations.append(tail + list(probe))
                token_ids.append(ids)
        group = await self.judge.probe_group(ProbeGroupItem(prompt_ids, continuations, token_ids))
        result.queue_s = group.queue_s
        result.prompt_tokens = len(prompt_ids)
        result.scored_tokens = sum(len(c) for c in continuations)
        outputs = iter(group.scores)
        scores = []
        for _ in result.atoms:
            next_probs = {}
            for probe, ids in wanted.items():
                logprobs = next(outputs).logprobs
                next_probs[probe] = {t: math.exp(lp) for t, lp in zip(ids, logprobs, strict=True)}
            distribution = plan.distribution(next_probs, renormalize=self.settings.renormalize)
            scores.append(rrm.expected_value(distribution))
        result.atom_scores = scores

    def _plan(self) -> rrm.ScoreTokens:
        if self._score_tokens is None:
            assert self.judge is not None
            judge = self.judge
            # How " k" continues "...Atom i:" depends only on the tail, so a short tail stands for every prompt.
            self._score_tokens = rrm.ScoreTokens.build(
                lambda s: judge.tokenize(s, False), rrm.expected_mode_prompt("", 1)
            )
        return self._score_tokens
