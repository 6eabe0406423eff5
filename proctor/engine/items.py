"""Plain dataclasses that cross between the service, domain and backend layers (no proto, no model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int = 16
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False
    detokenize: bool = True


@dataclass(frozen=True)
class GenerateItem:
    prompt_ids: list[int]
    params: SamplingParams


@dataclass
class TopK:
    """Top-k alternatives per position: ids[p][j], logprobs[p][j], descending."""

    ids: list[list[int]] = field(default_factory=list)
    logprobs: list[list[float]] = field(default_factory=list)


@dataclass
class Sample:
    index: int
    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    stop_reason: str
    cumulative_logprob: float | None  # when log-probs were asked for
    logprobs: list[float] | None = None
    top: TopK | None = None
    ranks: list[int] | None = None  # with the log-probs: each token's rank (the tokens at least as likely)


@dataclass
class Generation:
    prompt_ids: list[int]
    samples: list[Sample]
    queue_s: float = 0.0
    inference_s: float = 0.0


@dataclass(frozen=True)
class ScoreItem:
    context_ids: list[int]
    target_ids: list[int]
    top_k: int = 0
    rank: bool = False  # also each target's rank: the tokens at least as likely as it, itself included (vLLM's)
    # Per target position i, token ids whose log-probs after context + target[:i] come back beside the target's (a
    # student's top-k, for distillation); at most one row a position, rows past the list's end probe nothing.
    probe_ids: list[list[int]] | None = None


@dataclass(frozen=True)
class ScoreSampleItem(ScoreItem):
    """A Score item that also gives Generate's answer after its whole sequence (context + target) with `params`, from
    the last position of the same forward: that position's logits are the first generated token's distribution, so
    only a generation of one token (`max_tokens` 1; any `n`) can be answered there."""

    params: SamplingParams = field(kw_only=True)

    def __post_init__(self) -> None:
        if self.params.max_tokens != 1:
            raise ValueError(f"a Score pass samples one token, not max_tokens {self.params.max_tokens}")

    @property
    def prompt_ids(self) -> list[int]:
        """The prompt the generation continues, as a GenerateItem names it."""
        return self.context_ids + self.target_ids


@dataclass(frozen=True)
class ScoreGroupItem:
    """One context, many continuations: the context is computed once and shared."""

    context_ids: list[int]
    continuations: list[list[int]]
    top_k: int = 0


@dataclass(frozen=True)
class ProbeGroupItem:
    """Log-probs of `token_ids[i]` right after context + continuations[i]; the context is computed once."""

    context_ids: list[int]
    continuations: list[list[int]]
    token_ids: list[list[int]]


@dataclass
class GroupOutput:
    scores: list[ScoreOutput]
    queue_s: float = 0.0
    inference_s: float = 0.0


@dataclass
class ScoreOutput:
    logprobs: list[float]
    top: TopK | None = None
    ranks: list[int] | None = None  # when the item asked for them
    probe_logprobs: list[list[float]] | None = None  # the item's probe_ids' log-probs, row for row, id for id
    queue_s: float = 0.0
    inference_s: float = 0.0


@dataclass
class ScoreSample:
    """A ScoreSampleItem's answer: its Score and its Generation, from one forward (they share its times)."""

    score: ScoreOutput
    generation: Generation


@dataclass(frozen=True)
class TextPair:
    """What a Classifier reads: a sentence pair (the Critic's view of a triple, or a pair sent as it is)."""

    first: str
    second: str


@dataclass(frozen=True)
class Classified:
    """A Classifier's answer to one submission of pairs."""

    probs: list[float]
    """P(valid) per pair, in order"""
    queue_s: float
    """the longest time a pair waited before the model (tokenizing included)"""
    inference_s: float
    """the longest inference time among the pairs"""
    tokens: int
    """the pairs' tokens as the model read them (all pairs, unpadded)"""


@dataclass(frozen=True)
class BackendInfo:
    model: str
    backend: str
    dtype: str
    device: str
    tokenizer: str
    vocab_size: int
    max_model_len: int
    eos_token_ids: tuple[int, ...]
    model_type: str = ""
    """the HF config's model_type ("llama", "qwen2", ...); "" when the model has no HF config"""
    architectures: tuple[str, ...] = ()
    """the HF config's architectures (e.g. ("LlamaForCausalLM",))"""
