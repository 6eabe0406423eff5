"""A Generator made of two backends: completions from one (vLLM), log-probs of given text from another (the
torch scorer, or vLLM's hidden states through the fused lm_head: no [tokens, vocab] logits, shared-context
groups)."""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import Any

from proctor.engine.backends.base import Generator, Scorer
from proctor.engine.items import (
    BackendInfo,
    GenerateItem,
    Generation,
    GroupOutput,
    ProbeGroupItem,
    ScoreGroupItem,
    ScoreItem,
    ScoreOutput,
)


class GenerateAndScore:
    def __init__(self, generator: Generator, scorer: Scorer) -> None:
        """Both must serve the same model (same tokenizer and vocabulary): the server builds them from one name."""
        self.generator = generator
        self.scorer = scorer

    @cached_property  # read per item by the services; computed once both parts have loaded (raises until then)
    def info(self) -> BackendInfo:
        gen, score = self.generator.info, self.scorer.info
        return dataclasses.replace(
            gen,
            backend=f"{gen.backend} (scoring: {score.backend} on {score.device})",
            max_model_len=min(gen.max_model_len, score.max_model_len),
        )

    def queue_depth(self) -> int:
        return self.generator.queue_depth() + self.scorer.queue_depth()

    def alive(self) -> bool:
        return self.generator.alive() and self.scorer.alive()

    async def start(self) -> None:
        """The server starts (and closes) the two parts itself, since either may be shared with another service."""

    async def close(self) -> None:
        pass

    @property
    def tokenizer(self) -> Any:
        return self.generator.tokenizer

    def tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.generator.tokenize(text, add_special_tokens)

    async def generate(self, item: GenerateItem) -> Generation:
        return await self.generator.generate(item)

    async def generate_many(self, items: list[GenerateItem]) -> list[Generation]:
        return await self.generator.generate_many(items)

    async def score(self, item: ScoreItem) -> ScoreOutput:
        return await self.scorer.score(item)

    async def score_group(self, item: ScoreGroupItem) -> GroupOutput:
        return await self.scorer.score_group(item)

    async def probe_group(self, item: ProbeGroupItem) -> GroupOutput:
        return await self.scorer.probe_group(item)
