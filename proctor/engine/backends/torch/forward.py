"""The torch backend's forward passes, run on its engine thread one at a time: a Score batch (packed in one row, or
padded), a group's shared context and its continuation batches (scores and probes), a Score batch that also samples
each sequence's next token, and a generation wave's prefill and decode steps. Only the target positions become
log-probs (`proctor.kernels`), never [tokens, vocab] logits for the whole batch."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import accumulate, chain
from typing import Any

import torch

from proctor.engine.backends.lm_head_probes import fused_scores, probe_rows
from proctor.engine.backends.torch.batch_policy import (
    BatchPolicy,
    GenerateJob,
    ProbeGroupJob,
    ScoreGroupJob,
    ScoreJob,
    ScoreSampleJob,
    sequence,
)
from proctor.engine.backends.torch.decoding import Decoding, Wave
from proctor.engine.backends.torch.sampling import RowParams, sample
from proctor.engine.items import (
    GenerateItem,
    Generation,
    GroupOutput,
    Sample,
    ScoreItem,
    ScoreOutput,
    ScoreSample,
    TopK,
)
from proctor.kernels import lm_head_logprobs, token_logprobs


class ForwardPasses:
    def __init__(
        self,
        model: Any,
        device: torch.device,
        pad_id: int,
        vocab: int,
        cache_kwarg: str,
        policy: BatchPolicy,
        decoding: Decoding,
        on_batch: Callable[[str, int, int, int], None],
    ) -> None:
        """`cache_kwarg`: the model's name for the KV cache argument; `on_batch(rpc, items, tokens, slots)` is told
        each batch's size, real tokens and padded slots."""
        self._model = model
        self._device = device
        self._pad_id = pad_id
        self._vocab = vocab
        self._cache_kwarg = cache_kwarg
        self._policy = policy
        self._packed = policy.packed
        self._decoding = decoding
        self._on_batch = on_batch

    def score_batch(self, jobs: list[ScoreJob]) -> None:
        """Run the model to hidden states once, then log-probs only at the rows asked for (fused kernels: no
        [tokens, vocab] logits)."""
        started = time.perf_counter()
        items: list[ScoreItem] = [j.item for j in jobs]
        weight = self._model.get_output_embeddings().weight
        hidden, starts = self._score_hidden(items)
        outputs = self._score_rows(hidden, weight, dict(enumerate(items)), starts)
        done = time.perf_counter()
        for b, job in enumerate(jobs):
            out = outputs[b]
            out.queue_s, out.inference_s = started - job.enqueued, done - started
            job.resolve(out)

    def score_sample_batch(self, jobs: list[ScoreSampleJob]) -> None:
        """A Score batch whose items also get Generate's answer of one token: each sequence's last hidden state is
        the first generated token's (what Generate's prefill computes), so the token is sampled there, by the wave's
        own pieces (generators, sampling, recording, stop rules): one forward instead of a Score and a prefill."""
        started = time.perf_counter()
        items = [j.item for j in jobs]
        embeddings = self._model.get_output_embeddings()
        hidden, starts = self._score_hidden(items)
        outputs = self._score_rows(hidden, embeddings.weight, dict(enumerate(items)), starts)
        ends = [len(sequence(it)) - 1 for it in items]
        if starts is not None:
            rows, cols = [0] * len(items), [start + end for start, end in zip(starts, ends, strict=True)]
        else:
            rows, cols = list(range(len(items))), ends
        last = hidden[torch.tensor(rows, device=self._device), torch.tensor(cols, device=self._device)]
        decoding = self._decoding
        seqs, origin = decoding.seqs(jobs)
        # The model's own lm_head, as Generate's forward applies it (a plain one: Score refuses the others).
        logits = embeddings(last).float()[torch.tensor(origin, device=self._device)]
        params = decoding.row_params([s.job.item.params for s in seqs])
        tokens = sample(logits, torch.zeros_like(logits), params, [s.generator for s in seqs])
        decoding.record(seqs, logits, tokens)  # every sample ends here: max_tokens is 1
        samples: list[list[Sample]] = [[] for _ in jobs]
        for s, b in zip(seqs, origin, strict=True):
            samples[b].append(decoding.sample(s))
        done = time.perf_counter()
        for b, job in enumerate(jobs):
            score = outputs[b]
            score.queue_s, score.inference_s = started - job.enqueued, done - started
            generation = Generation(
                prompt_ids=job.item.prompt_ids,
                samples=samples[b],
                queue_s=score.queue_s,
                inference_s=score.inference_s,
            )
            job.resolve(ScoreSample(score=score, generation=generation))

    def _score_hidden(self, items: Sequence[ScoreItem]) -> tuple[torch.Tensor, list[int] | None]:
        """The items' sequences through the model to their last hidden states: one packed row, with each sequence's
        first column (`starts`), or a padded batch whose row b is item b (`starts` None)."""
        seqs = [sequence(it) for it in items]
        tokens = sum(len(s) for s in seqs)
        if self._packed:
            # One row, every sequence's positions restarting at 0 and no attention mask: transformers reads the
            # sequence boundaries off the position ids (varlen kernels: cu_seqlens; others: a block-diagonal mask).
            self._on_batch("Score", len(seqs), tokens, tokens)
            ids = torch.tensor([list(chain.from_iterable(seqs))], device=self._device)
            positions = torch.tensor([[p for s in seqs for p in range(len(s))]], device=self._device)
            hidden = self._model.base_model(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
            return hidden, list(accumulate((len(s) for s in seqs[:-1]), initial=0))
        width = max(len(s) for s in seqs)
        self._on_batch("Score", len(seqs), tokens, len(seqs) * width)
        ids = torch.full((len(seqs), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = torch.tensor(s)
            mask[b, : len(s)] = 1
        hidden = self._model.base_model(
            input_ids=ids.to(self._device), attention_mask=mask.to(self._device)
        ).last_hidden_state
        return hidden, None

    def _continuation_batches(
        self, job: ScoreGroupJob | ProbeGroupJob, context_ids: list[int], continuations: list[list[int]]
    ) -> Iterator[tuple[list[list[int]], torch.Tensor, torch.Tensor]]:
        """The context's KV cache once; then the continuations in batches against copies of it. Yields each batch
        with its hidden states [B, width, H] and the context's last state (which predicts every first token)."""
        ctx = torch.tensor([context_ids], device=self._device)
        out = self._model.base_model(input_ids=ctx, use_cache=True)
        shared = getattr(out, self._cache_kwarg)
        last_hidden = out.last_hidden_state[0, -1]
        n_ctx = len(context_ids)
        per_batch = self._policy.continuation_batch_size(n_ctx, continuations)
        for start in range(0, len(continuations), per_batch):
            if job.cancelled:
                return
            conts = continuations[start : start + per_batch]
            width = max(len(c) for c in conts)
            self._on_batch("Score", len(conts), sum(len(c) for c in conts), len(conts) * width)
            ids = torch.full((len(conts), width), self._pad_id, dtype=torch.long)
            mask = torch.zeros((len(conts), n_ctx + width), dtype=torch.long)
            mask[:, :n_ctx] = 1
            for b, c in enumerate(conts):
                ids[b, : len(c)] = torch.tensor(c)
                mask[b, n_ctx : n_ctx + len(c)] = 1
            cache = copy.deepcopy(shared)
            cache.batch_select_indices(torch.zeros(len(conts), dtype=torch.long, device=self._device))
            positions = torch.arange(n_ctx, n_ctx + width, device=self._device).expand(len(conts), -1)
            hidden = self._model.base_model(
                input_ids=ids.to(self._device),
                attention_mask=mask.to(self._device),
                position_ids=positions,
                use_cache=True,
                **{self._cache_kwarg: cache},
            ).last_hidden_state
            yield conts, hidden, last_hidden

    def score_group(self, job: ScoreGroupJob) -> None:
        started = time.perf_counter()
        item = job.item
        weight = self._model.get_output_embeddings().weight
        scores: list[ScoreOutput] = []
        for conts, hidden, last_hidden in self._continuation_batches(job, item.context_ids, item.continuations):
            # Token j of a continuation is predicted by the context's last state (j = 0) or its own state j - 1.
            batch_rows = torch.tensor([b for b, c in enumerate(conts) for _ in range(1, len(c))], dtype=torch.long)
            state_cols = torch.tensor([j for c in conts for j in range(len(c) - 1)], dtype=torch.long)
            picked = torch.cat(
                [last_hidden.expand(len(conts), -1), hidden[batch_rows.to(self._device), state_cols.to(self._device)]]
            )
            targets = [c[0] for c in conts] + [t for c in conts for t in c[1:]]
            logprobs, _, top_vals, top_ids = lm_head_logprobs(
                picked, weight, torch.tensor(targets, device=self._device), top_k=item.top_k, entropy=False
            )
            lp = logprobs.cpu().tolist()
            tv = top_vals.cpu().tolist() if top_vals is not None else None
            ti = top_ids.cpu().tolist() if top_ids is not None else None
            offset = len(conts)
            for b, c in enumerate(conts):
                order = [b, *range(offset, offset + len(c) - 1)]
                offset += len(c) - 1
                top = TopK(ids=[ti[i] for i in order], logprobs=[tv[i] for i in order]) if tv and ti else None
                scores.append(ScoreOutput(logprobs=[lp[i] for i in order], top=top))
        done = time.perf_counter()
        job.resolve(GroupOutput(scores=scores, queue_s=started - job.enqueued, inference_s=done - started))

    def probe_group(self, job: ProbeGroupJob) -> None:
        """Candidate-token log-probs after each continuation of a shared context (an RRM reading its score
        tokens after every atom's tail): the expected-score kernel at each continuation's last state."""
        started = time.perf_counter()
        item = job.item
        weight = self._model.get_output_embeddings().weight
        outputs: list[ScoreOutput] = []
        done_so_far = 0
        for conts, hidden, _ in self._continuation_batches(job, item.context_ids, item.continuations):
            last = hidden[torch.arange(len(conts)), torch.tensor([len(c) - 1 for c in conts])]
            sets: dict[tuple[int, ...], list[int]] = {}
            for b in range(len(conts)):
                sets.setdefault(tuple(item.token_ids[done_so_far + b]), []).append(b)
            batch_out: dict[int, ScoreOutput] = {}
            for token_ids, rows in sets.items():
                picked = last[torch.tensor(rows, device=self._device)]
                lps = token_logprobs(picked, weight, torch.tensor(token_ids, device=self._device)).cpu().tolist()
                batch_out.update({b: ScoreOutput(logprobs=lp) for b, lp in zip(rows, lps, strict=True)})
            outputs.extend(batch_out[b] for b in range(len(conts)))
            done_so_far += len(conts)
        done = time.perf_counter()
        job.resolve(GroupOutput(scores=outputs, queue_s=started - job.enqueued, inference_s=done - started))

    def _score_rows(
        self, hidden: torch.Tensor, weight: torch.Tensor, items: dict[int, ScoreItem], starts: list[int] | None = None
    ) -> dict[int, ScoreOutput]:
        """Item b's sequence is row b of `hidden`, or with `starts` (a packed row) row 0 from column starts[b]."""
        rows: list[int] = []
        cols: list[int] = []
        targets: list[int] = []
        for b, it in items.items():
            first = len(it.context_ids) - 1  # the position whose output predicts target[0]
            if starts is not None:
                first += starts[b]
            rows.extend([0 if starts is not None else b] * len(it.target_ids))
            cols.extend(range(first, first + len(it.target_ids)))
            targets.extend(it.target_ids)
        picked = hidden[torch.tensor(rows, device=self._device), torch.tensor(cols, device=self._device)]
        top_k = max(it.top_k for it in items.values())
        want_ranks = any(it.rank for it in items.values())
        ranks = torch.empty(len(targets), dtype=torch.long, device=self._device) if want_ranks else None
        probes = None
        if any(it.probe_ids is not None for it in items.values()):
            probes = [row for it in items.values() for row in probe_rows(it)]
        (logprobs, _, top_vals, top_ids), probed = fused_scores(
            picked, weight, torch.tensor(targets, device=self._device), top_k, ranks, probes
        )
        ranks_l = ranks.cpu().tolist() if ranks is not None else None
        logprobs_l = logprobs.cpu().tolist()
        top_vals_l = top_vals.cpu().tolist() if top_vals is not None else None
        top_ids_l = top_ids.cpu().tolist() if top_ids is not None else None
        out: dict[int, ScoreOutput] = {}
        offset = 0
        for b, it in items.items():
            span = slice(offset, offset + len(it.target_ids))
            offset += len(it.target_ids)
            top = None
            if it.top_k and top_vals_l is not None and top_ids_l is not None:
                k = it.top_k
                top = TopK(ids=[r[:k] for r in top_ids_l[span]], logprobs=[r[:k] for r in top_vals_l[span]])
            out[b] = ScoreOutput(
                logprobs=logprobs_l[span], top=top, ranks=ranks_l[span] if it.rank and ranks_l is not None else None
            )
            if it.probe_ids is not None and probed is not None:
                out[b].probe_logprobs = probed[span][: len(it.probe_ids)]
        return out

    def generate_wave(self, jobs: list[GenerateJob]) -> None:
        decoding = self._decoding
        wave = Wave(jobs=jobs, started=time.perf_counter())
        items: list[GenerateItem] = [j.item for j in jobs]
        width = max(len(it.prompt_ids) for it in items)
        self._on_batch("Generate", len(items), sum(len(it.prompt_ids) for it in items), len(items) * width)
        ids = torch.full((len(items), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for r, it in enumerate(items):
            ids[r, width - len(it.prompt_ids) :] = torch.tensor(it.prompt_ids)
            mask[r, width - len(it.prompt_ids) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self._model(
            input_ids=ids.to(self._device),
            attention_mask=mask.to(self._device),
            position_ids=positions.to(self._device),
            use_cache=True,
            logits_to_keep=1,
        )
        cache = getattr(out, self._cache_kwarg)
        # Each prompt's prefill is shared by its n samples: repeat its cache rows instead of recomputing.
        seqs, origin = decoding.seqs(jobs)
        select = torch.tensor(origin, device=self._device)
        cache.batch_select_indices(select)
        logits = out.logits[:, -1, :].float()[select]
        mask = mask.to(self._device)[select]
        next_pos = positions.to(self._device)[select, -1] + 1
        for job, it in zip(jobs, items, strict=True):
            wave.samples[id(job)] = [None] * it.params.n
        params = decoding.row_params([s.job.item.params for s in seqs])
        counts = torch.zeros((len(seqs), self._vocab), dtype=torch.float32, device=self._device)
        while True:
            tokens = sample(logits, counts, params, [s.generator for s in seqs])
            counts.scatter_add_(1, tokens.unsqueeze(1), torch.ones_like(counts[:, :1]))
            decoding.record(seqs, logits, tokens)
            keep = [i for i, s in enumerate(seqs) if s.finish is None and not s.job.cancelled]
            for _i, s in enumerate(seqs):
                if s.finish is not None:
                    decoding.finish(wave, s)
            if not keep:
                return
            if len(keep) < len(seqs):
                index = torch.tensor(keep, device=self._device)
                cache.batch_select_indices(index)
                seqs = [seqs[i] for i in keep]
                tokens, mask, next_pos, counts = tokens[index], mask[index], next_pos[index], counts[index]
                params = RowParams(*(getattr(params, f)[index] for f in RowParams.__dataclass_fields__))
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = self._model(
                input_ids=tokens.unsqueeze(1),
                attention_mask=mask,
                position_ids=next_pos.unsqueeze(1),
                use_cache=True,
                **{self._cache_kwarg: cache},
            )
            next_pos = next_pos + 1
            logits = out.logits[:, -1, :].float()
