"""The teacher's events for one run (paper rules §1.1, §1.4): event prompts sampled round by round into one pool,
the paper's filters taken over the whole pool, until it holds the events asked for or the prompt budget is spent.

Pure Python: whoever samples (the Teacher service on its backend, `proctor distill` over gRPC) drives it with
`next_round()` and `add()`. Every prompt and its sampling seed derive from (seed, prompt index) alone, so the same
run gives the same events.
"""

from __future__ import annotations

import dataclasses
import math
import random

from proctor.engine.items import SamplingParams
from proctor.engine.skd import prompts as skd

PROMPTS_PER_EVENT = 4  # event prompts allowed per event asked for before the run gives up on more


class EventPool:
    def __init__(self, count: int, seed: int, params: SamplingParams, max_prompts: int = 0) -> None:
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        self.count = count
        self.seed = seed
        self.params = params
        self.max_prompts = max_prompts or count * PROMPTS_PER_EVENT
        self.prompts = 0  # sent so far
        self.samples: list[skd.Candidate] = []
        self._kept, self.counts = skd.filter_events([])

    def next_round(self) -> list[tuple[str, SamplingParams]]:
        """The next prompts to sample (with their seeds), as many as the yield so far says are still needed;
        empty when the pool is full or the budget is spent."""
        missing = self.count - len(self._kept)
        left = self.max_prompts - self.prompts
        if missing <= 0 or left <= 0:
            return []
        if not self.prompts:
            wanted = 1
        elif not self._kept:
            wanted = self.prompts  # nothing kept yet: double
        else:
            wanted = math.ceil(missing * self.prompts / len(self._kept))
        out = []
        for index in range(self.prompts, self.prompts + min(wanted, left)):
            rng = random.Random(skd.derive_seed(self.seed, "events", str(index)))
            prompt = skd.event_prompt(rng)
            out.append((prompt, dataclasses.replace(self.params, seed=rng.randrange(2**62))))
        return out

    def add(self, rounds: list[list[skd.Candidate]]) -> None:
        """The samples of the prompts next_round() gave, in its order."""
        self.prompts += len(rounds)
        for samples in rounds:
            self.samples.extend(samples)
        self._kept, self.counts = skd.filter_events(self.samples)

    def events(self) -> list[str]:
        """The first `count` kept events of the pool, in sampling order."""
        return [c.text for c in self._kept[: self.count]]

    def shortfall(self) -> str:
        """Why the pool holds fewer events than asked ("" when it holds enough)."""
        if len(self._kept) >= self.count:
            return ""
        return (
            f"the teacher's events reached {len(self._kept)} of {self.count} after {self.prompts} event prompts "
            f"(the budget: {self.max_prompts}); {self.counts.explain()}"
        )
