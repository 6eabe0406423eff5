"""The backend interfaces (Scorer, Generator, Classifier; docs/architecture.md). Services and domain code depend
on these, never on a model."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from proctor.engine.items import (
    BackendInfo,
    Classified,
    GenerateItem,
    Generation,
    GroupOutput,
    ProbeGroupItem,
    ScoreGroupItem,
    ScoreItem,
    ScoreOutput,
    ScoreSample,
    ScoreSampleItem,
    TextPair,
)


class Backend(Protocol):
    """What the server needs of any backend: load, stop, and how much work waits."""

    @property
    def info(self) -> BackendInfo: ...

    def queue_depth(self) -> int: ...

    def alive(self) -> bool:
        """False when the backend can no longer serve (its engine died): the server turns its services
        NOT_SERVING and answers their calls UNAVAILABLE."""
        ...

    async def start(self) -> None:
        """Load the model; the service reports SERVING only after this returns."""

    async def close(self) -> None: ...


class Scorer(Backend, Protocol):
    """Log-probs of given tokens from a causal LM."""

    async def score(self, item: ScoreItem) -> ScoreOutput: ...

    async def score_group(self, item: ScoreGroupItem) -> GroupOutput:
        """Each continuation scored after the shared context, as if scored on its own."""
        ...

    async def probe_group(self, item: ProbeGroupItem) -> GroupOutput:
        """Probes that share a context (e.g. every atom's score position after one RRM prompt)."""
        ...


class Generator(Scorer, Protocol):
    """Completions and log-probs of given tokens from a causal LM."""

    def tokenize(self, text: str, add_special_tokens: bool) -> list[int]: ...

    @property
    def tokenizer(self) -> Any:
        """The HF tokenizer the backend encodes and decodes with (loaded by start()): for the services' text work
        that no model call needs, such as a token's text or a chat template. Use it off the event loop."""
        ...

    async def generate(self, item: GenerateItem) -> Generation:
        """Cancelling the awaiting task stops the item's computation."""
        ...

    async def generate_many(self, items: list[GenerateItem]) -> list[Generation]:
        """Items that must share a batch (e.g. the seven relation prompts of one SKD event)."""
        ...


@runtime_checkable
class ScoreSampler(Protocol):
    """A Generator whose Score pass also samples Generate's one next token after the scored sequence: a Score and a
    one-token Generate of the same prompt in one forward. The torch backend is one; a Generator made of two engines
    (vLLM generating, another scorer scoring) is not, since its tokens must be the generating engine's."""

    async def score_sample(self, item: ScoreSampleItem) -> ScoreSample:
        """The Score, and the Generation that `generate` gives for the item's whole sequence and params."""
        ...


class Classifier(Backend, Protocol):
    """P(valid) of text pairs from a sequence classifier."""

    async def classify(self, pairs: list[TextPair], field: str) -> Classified:
        """P(valid) per pair, with the longest queue time and the longest inference time among them, and the
        pairs' token count. A pair the model cannot take is an ItemError on `field`."""
        ...
