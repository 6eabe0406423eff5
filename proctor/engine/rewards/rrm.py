"""The reasoning reward model (RRM): its prompt, the parser of its judgement, and the expected-score reading.

None of this is published by Atom-Searcher (paper rules §2.2); these are proctor's documented choices: the RRM sees
the question, the numbered atoms with their types and (optionally) the gold answer, and gives one integer 0-10 per
atom as lines `Atom <i>: <score>`; R_atom = aggregate(scores) / 10.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from proctor.engine.rewards.rollout import Atom

SCALE = tuple(range(11))

DEFAULT_TEMPLATE = """You are a strict reviewer of a research agent's step-by-step reasoning.
The agent split its reasoning into atomic thoughts, each tagged with its kind.

Question: {question}
{gold}
Atomic thoughts:
{atoms}

Rate every atomic thought from 0 (wrong, irrelevant or useless) to 10 (correct, relevant and a real step toward \
the answer). Answer with exactly {count} lines, one per thought, in the form "Atom <number>: <score>" and nothing else.
"""

_JUDGEMENT_LINE = re.compile(r"^\s*Atom\s+(\d+)\s*:\s*(\d+)\s*$", re.MULTILINE | re.IGNORECASE)
_AGGREGATIONS: dict[str, Callable[[Sequence[float]], float]] = {
    "mean": statistics.fmean,
    "min": min,
    "last": lambda xs: xs[-1],
}


def aggregations() -> list[str]:
    return list(_AGGREGATIONS)


def render_prompt(template: str, question: str, atoms: Sequence[Atom], gold: str | None) -> str:
    listed = "\n".join(f"Atom {i} [{a.type}]: {a.text}" for i, a in enumerate(atoms, 1))
    gold_line = f"Reference answer: {gold}\n" if gold else ""
    return template.format(question=question, atoms=listed, gold=gold_line, count=len(atoms))


def expected_mode_prompt(prompt: str, index: int) -> str:
    """The prompt whose next token is the score of atom `index` (1-based)."""
    return f"{prompt}\nAtom {index}:"


class Unparseable(ValueError):
    pass


def parse_judgement(text: str, count: int) -> list[int]:
    """Exactly one `Atom i: s` line for each i in 1..count, s an integer 0..10; anything else is unparseable."""
    found: dict[int, int] = {}
    for match in _JUDGEMENT_LINE.finditer(text):
        index, score = int(match.group(1)), int(match.group(2))
        if index in found:
            raise Unparseable(f"atom {index} scored twice")
        if score not in SCALE:
            raise Unparseable(f"atom {index} score {score} outside 0..10")
        found[index] = score
    if sorted(found) != list(range(1, count + 1)):
        raise Unparseable(f"expected scores for atoms 1..{count}, found {sorted(found) or 'none'}")
    return [found[i] for i in range(1, count + 1)]


def aggregate(scores: Sequence[float], how: str) -> float:
    """R_atom in [0, 1] from atom scores on the 0..10 scale."""
    return _AGGREGATIONS[how](scores) / 10.0


# ---- expected mode: P(score = k) for k in 0..10 from next-token probabilities ----------------------------------


@dataclass(frozen=True)
class ScoreTokens:
    """How the scores 0..10 tokenise after a prompt: each is a token sequence (e.g. " 10" may be [" ", "1", "0"]).

    `probes` are the token prefixes (relative to the prompt) at which next-token probabilities are needed: the
    root and every proper prefix shared along the candidates' paths.
    """

    sequences: tuple[tuple[int, ...], ...]
    probes: tuple[tuple[int, ...], ...]

    @staticmethod
    def build(tokenize: Callable[[str], list[int]], prompt: str) -> ScoreTokens:
        base = tokenize(prompt)
        sequences = []
        for k in SCALE:
            full = tokenize(f"{prompt} {k}")
            if full[: len(base)] != base or len(full) == len(base):
                raise ValueError(
                    f"the tokenizer merges the score {k} into the prompt's last token; change the template"
                )
            sequences.append(tuple(full[len(base) :]))
        if len(set(sequences)) != len(sequences):
            raise ValueError("two scores tokenise the same way")
        probes = sorted({seq[:j] for seq in sequences for j in range(len(seq))}, key=lambda p: (len(p), p))
        return ScoreTokens(sequences=tuple(sequences), probes=tuple(probes))

    def distribution(
        self, next_probs: dict[tuple[int, ...], dict[int, float]], renormalize: bool = True
    ) -> list[float]:
        """P(score = k) for k in 0..10. `next_probs[probe][token]` = p(token | prompt + probe), full-vocab softmax.

        A score whose tokens are a prefix of another's ("1" of "10") only counts when the sequence does not go on
        to a longer score: its mass is multiplied by 1 - p(continuing into a longer score).
        """
        probs = []
        for seq in self.sequences:
            p = 1.0
            for j, token in enumerate(seq):
                p *= next_probs[seq[:j]][token]
            continuing = {
                other[len(seq)] for other in self.sequences if len(other) > len(seq) and other[: len(seq)] == seq
            }
            if continuing:
                p *= 1.0 - sum(next_probs[seq][t] for t in continuing)
            probs.append(p)
        total = sum(probs)
        if renormalize:
            if total <= 0:
                raise ValueError("the RRM gives zero probability to every score")
            probs = [p / total for p in probs]
        return probs

    def wanted(self) -> dict[tuple[int, ...], list[int]]:
        """For each probe, the token ids whose probabilities `distribution` reads there."""
        wanted: dict[tuple[int, ...], set[int]] = {probe: set() for probe in self.probes}
        for seq in self.sequences:
            for j in range(len(seq)):
                wanted[seq[:j]].add(seq[j])
        return {probe: sorted(ids) for probe, ids in wanted.items()}


def expected_value(distribution: Sequence[float]) -> float:
    return sum(k * p for k, p in zip(SCALE, distribution, strict=True))
