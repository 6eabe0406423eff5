"""Sampling and stop handling of a generation wave: each sample's generator, the per-row sampling parameters, a
sampled token recorded with its raw log-prob and top-k, the stop conditions (EOS, stop tokens, stop strings,
max_tokens), and a prompt's result once its last sample ends. The same pieces sample the one token a Score pass
gives after its sequence (a ScoreSampleJob), so that token is the one Generate would give. The forward passes are
forward.py's."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch

from proctor.engine.backends.torch.batch_policy import GenerateJob, ScoreSampleJob
from proctor.engine.backends.torch.sampling import RowParams
from proctor.engine.items import FinishReason, Generation, Sample, SamplingParams, TopK

_SEED_STRIDE = 0x9E3779B97F4A7C15  # decorrelates the generators of the n samples of one seeded prompt

# What samples: a generation wave's job, or a Score job that samples the token after its sequence.
SampledJob = TypeVar("SampledJob", GenerateJob, ScoreSampleJob)


@dataclass
class Seq(Generic[SampledJob]):
    job: SampledJob
    index: int
    generator: torch.Generator
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)
    top: TopK = field(default_factory=TopK)
    text: str | None = None  # set when a stop string cut it
    finish: FinishReason | None = None
    stop_reason: str = ""


@dataclass
class Wave:
    """Book-keeping of one generation wave: which samples of which job are still running."""

    jobs: list[GenerateJob]
    started: float
    samples: dict[int, list[Sample | None]] = field(default_factory=dict)


class Decoding:
    def __init__(
        self, tokenizer: Any, eos_token_ids: tuple[int, ...], device: torch.device, unseeded: torch.Generator
    ) -> None:
        self._tokenizer = tokenizer
        self._eos_token_ids = eos_token_ids
        self._device = device
        self._unseeded = unseeded

    def sample_generator(self, seed: int | None, index: int) -> torch.Generator:
        """Sample `index` of a prompt: its own generator, from the request's seed or an unseeded draw."""
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=self._unseeded))
        # On the model's device: torch.multinomial on CUDA probabilities refuses a CPU generator ("Expected a 'cuda'
        # device type for generator"). Seeds reproduce per device type; CPU and CUDA streams differ.
        return torch.Generator(device=self._device).manual_seed((seed + index * _SEED_STRIDE) % 2**63)

    def seqs(self, jobs: Sequence[SampledJob]) -> tuple[list[Seq[SampledJob]], list[int]]:
        """The jobs' samples (`n` each, each with its generator) and, per sample, the row of its job in `jobs`."""
        slots = [(r, i) for r, job in enumerate(jobs) for i in range(job.item.params.n)]
        seqs = [
            Seq(job=jobs[r], index=i, generator=self.sample_generator(jobs[r].item.params.seed, i)) for r, i in slots
        ]
        return seqs, [r for r, _ in slots]

    def row_params(self, params: Sequence[SamplingParams]) -> RowParams:
        def col(name: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor([getattr(p, name) for p in params], dtype=dtype, device=self._device)

        return RowParams(
            temperature=col("temperature", torch.float32),
            top_p=col("top_p", torch.float32),
            top_k=col("top_k", torch.long),
            presence_penalty=col("presence_penalty", torch.float32),
            frequency_penalty=col("frequency_penalty", torch.float32),
        )

    def record(self, seqs: Sequence[Seq[SampledJob]], logits: torch.Tensor, tokens: torch.Tensor) -> None:
        """Append each row's sampled token with its raw log-prob and rank, then check the stop conditions."""
        raw = torch.log_softmax(logits, dim=-1)
        picked = raw.gather(1, tokens.unsqueeze(1))
        chosen = picked.squeeze(1).tolist()
        # vLLM's rank: the tokens at least as likely, itself included (counted only when someone reads it)
        wanted = any(s.job.item.params.logprobs or s.job.item.params.top_logprobs for s in seqs)
        ranks = (raw >= picked).sum(dim=1).tolist() if wanted else [0] * len(seqs)
        max_k = max(s.job.item.params.top_logprobs for s in seqs)
        top_vals, top_ids = raw.topk(max_k, dim=-1) if max_k else (None, None)
        for row, (s, token, lp, rank) in enumerate(zip(seqs, tokens.tolist(), chosen, ranks, strict=True)):
            p = s.job.item.params
            s.tokens.append(token)
            s.logprobs.append(lp)
            s.ranks.append(rank)
            if p.top_logprobs and top_vals is not None and top_ids is not None:
                s.top.ids.append(top_ids[row, : p.top_logprobs].tolist())
                s.top.logprobs.append(top_vals[row, : p.top_logprobs].tolist())
            self._check_stop(s, token)

    def _check_stop(self, s: Seq[SampledJob], token: int) -> None:
        p = s.job.item.params
        if not p.ignore_eos and token in self._eos_token_ids:
            s.finish = FinishReason.STOP
        elif token in p.stop_token_ids:
            s.finish, s.stop_reason = FinishReason.STOP, str(token)
        elif p.stop:
            text = self._tokenizer.decode(s.tokens, skip_special_tokens=True)
            hits = [(text.find(stop), stop) for stop in p.stop if stop in text]
            if hits:
                at, stop = min(hits)
                s.finish, s.stop_reason, s.text = FinishReason.STOP, stop, text[:at]
                return
        if s.finish is None and len(s.tokens) >= p.max_tokens:
            s.finish = FinishReason.LENGTH

    def finish(self, wave: Wave, s: Seq[GenerateJob]) -> None:
        """A sample ended: its slot in the wave is filled, and the prompt's result goes once its last one is."""
        slots = wave.samples[id(s.job)]
        slots[s.index] = self.sample(s)
        if all(slot is not None for slot in slots):
            now = time.perf_counter()
            s.job.resolve(
                Generation(
                    prompt_ids=s.job.item.prompt_ids,
                    samples=[slot for slot in slots if slot is not None],
                    queue_s=wave.started - s.job.enqueued,
                    inference_s=now - wave.started,
                )
            )

    def sample(self, s: Seq[SampledJob]) -> Sample:
        """An ended sample as its caller reads it: text, finish and, when asked, its log-probs."""
        p = s.job.item.params
        text = ""
        if p.detokenize:
            text = s.text if s.text is not None else self._tokenizer.decode(s.tokens, skip_special_tokens=True)
        return Sample(
            index=s.index,
            token_ids=s.tokens,
            text=text,
            finish_reason=s.finish or FinishReason.LENGTH,
            stop_reason=s.stop_reason,
            cumulative_logprob=float(sum(s.logprobs)) if p.logprobs or p.top_logprobs else None,
            logprobs=s.logprobs if p.logprobs or p.top_logprobs else None,
            top=s.top if p.top_logprobs else None,
            ranks=s.ranks if p.logprobs or p.top_logprobs else None,
        )
