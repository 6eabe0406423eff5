"""SGLang's native protocol for a teacher (as SGLang 0.5.23 serves it, `srt/entrypoints/http_server.py`):
`POST /generate`, `GET /health_generate`, `GET /get_model_info` (and its new name `/model_info`).

`/generate` takes `text` or `input_ids`, one prompt or a batch, and answers `{text, output_ids, meta_info}` (a list
for a batch, or for one prompt with `n` > 1: prompt-major, as SGLang's tokenizer manager sends them). With
`return_logprob`, `meta_info` carries SGLang's log-prob lists (`managers/tokenizer_manager.py`,
`add_logprob_to_meta_info`): `input_token_logprobs` = `[[logprob, token_id, text or null], ...]` for the prompt from
`logprob_start_len` on (-1: none, the output only), the first entry's log-prob always null; with `top_logprobs_num`
> 0 also `input_top_logprobs` (null first) and `output_top_logprobs`. `max_new_tokens: 0` scores only (SGLang's
prefill-only request: no output, `finish_reason` `{"type": "length", "length": 0}`). slime's on-policy
distillation (`--opd-type sglang`) sends exactly that and reads `input_token_logprobs[1:][i][0]`.

Prompt log-probs come from the fused Score path, output ones from the Generate path; both are the model's raw
log-probs (SGLang's `SGLANG_RETURN_ORIGINAL_LOGPROB`), -inf written as -9999.0. `token_ids_logprob` (one flat list
of ids for every prompt, or a list per prompt of a batch) with `return_logprob` adds `input_token_ids_logprobs`
(null first, then per reported position `[[logprob, token_id, text or null], ...]` in the list's order, from the
same Score) and `output_token_ids_logprobs`; it is served for prompt-only requests (`max_new_tokens: 0`, where the
output list is empty), a 400 naming it otherwise. Fields proctor cannot honour (images, LoRA, streaming, grammars,
...) are a 400 naming them unless they hold SGLang's default.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from proctor.engine.doors.http.errors import ApiError, encode, json_response
from proctor.engine.doors.http.openai_bodies import NonNegative, TokenIds, _Body
from proctor.engine.doors.http.openai_routes import OpenAIRoutes
from proctor.engine.doors.http.teacher_calls import clamp
from proctor.engine.items import FinishReason, Generation, Sample, SamplingParams, ScoreOutput

_TOP_K_ALL = 1 << 30  # SGLang's "no top-k" besides -1


class SGLangSampling(_Body):
    """SGLang's `SamplingParams` (`srt/sampling/sampling_params.py`): what proctor implements, and the rest at
    SGLang's default only (min_p and repetition_penalty at their neutral value, as on the vLLM routes)."""

    max_new_tokens: NonNegative | None = 128
    temperature: Annotated[float, Field(ge=0)] = 1.0
    top_p: float = 1.0
    top_k: int = -1
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    n: Annotated[int, Field(ge=1)] = 1
    stop: str | list[str] | None = None
    stop_token_ids: TokenIds | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    sampling_seed: int | None = None
    stream_interval: int | None = None  # streaming only; nothing streams here
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_new_tokens: Literal[0] = 0
    spaces_between_special_tokens: Literal[True] = True
    no_stop_trim: Literal[False] = False
    stop_regex: None = None
    json_schema: None = None
    regex: None = None
    ebnf: None = None
    structural_tag: None = None
    logit_bias: None = None
    custom_params: None = None
    beam_width: None = None


class SGLangGenerate(BaseModel):
    """SGLang's `GenerateReqInput` (`srt/managers/io_struct.py`): its text and log-prob fields, and the rest at
    SGLang's default only."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    text: str | list[str] | None = None
    input_ids: TokenIds | list[TokenIds] | None = None
    sampling_params: SGLangSampling | list[SGLangSampling] | None = None
    rid: str | list[str] | None = None
    return_logprob: bool | list[bool] | None = None
    logprob_start_len: int | list[int] | None = None
    top_logprobs_num: NonNegative | list[NonNegative] | None = None
    return_text_in_logprobs: bool = False
    log_metrics: bool = True  # SGLang's own metrics switch; proctor counts every request
    token_ids_logprob: TokenIds | list[TokenIds] | None = None
    stream: Literal[False] = False
    input_embeds: None = None
    image_data: None = None
    video_data: None = None
    audio_data: None = None
    lora_path: None = None
    lora_id: None = None
    session_params: None = None
    custom_logit_processor: None = None
    return_hidden_states: Literal[False] = False
    return_routed_experts: Literal[False] = False
    return_prompt_token_ids: Literal[False] = False
    return_flat_raw_top_logprobs: Literal[False] = False
    return_flat_raw_output_top_logprobs: Literal[False] = False
    return_flat_raw_top_logprobs_b64: Literal[False] = False
    bootstrap_host: None = None
    bootstrap_port: None = None
    bootstrap_room: None = None
    data_parallel_rank: None = None


@dataclass(frozen=True)
class _Prompt:
    """One prompt of the request, with its settings resolved."""

    rid: str
    ids: list[int]
    n: int
    logprobs: bool
    start: int  # the first prompt position reported; len(ids) = none
    k: int
    max_new_tokens: int
    skip_special: bool
    params: SamplingParams | None  # None: nothing to generate
    probe_ids: list[int] | None = None  # token_ids_logprob: probed at every reported prompt position

    @property
    def scores(self) -> bool:
        return self.logprobs and len(self.ids) - self.start >= 2  # positions with a log-prob to report


def router(routes: OpenAIRoutes) -> APIRouter:
    api = APIRouter()
    SGLangRoutes(routes).add(api)
    return api


class SGLangRoutes:
    def __init__(self, routes: OpenAIRoutes) -> None:
        self.routes = routes
        self.calls = routes.calls

    def add(self, api: APIRouter) -> None:
        api.add_api_route("/generate", self.generate, methods=["POST", "PUT"])
        api.add_api_route("/health_generate", self.health_generate, methods=["GET"])
        api.add_api_route("/get_model_info", self.model_info, methods=["GET"])
        api.add_api_route("/model_info", self.model_info, methods=["GET"])

    async def health_generate(self) -> Response:
        """200 while the model's engine serves (the front answers 503 before it is loaded and while draining)."""
        return Response(status_code=200 if self.calls.core.backend.alive() else 503)

    async def model_info(self) -> Response:
        info = self.calls.info
        return json_response(
            {
                "model_path": self.routes.root,
                "served_model_name": self.routes.name,
                "tokenizer_path": info.tokenizer,
                "is_generation": True,
                "preferred_sampling_params": None,
                "weight_version": "default",
                "load_format": None,
                "reasoning_parser": None,
                "tool_call_parser": None,
                "disaggregation_mode": "null",
                "has_image_understanding": False,
                "has_audio_understanding": False,
                "model_type": info.model_type or None,
                "architectures": list(info.architectures) or None,
            }
        )

    async def generate(self, body: SGLangGenerate, request: Request) -> Response:
        started = time.perf_counter()
        prompts, batch = await self._prompts(body)
        items = sum((p.params.n if p.params else 0) + p.scores for p in prompts)
        if not items and not any(p.logprobs for p in prompts):
            raise ApiError(
                400, "sampling_params.max_new_tokens: 0 needs return_logprob (scoring only)", "sampling_params"
            )
        async with self.routes.front.admitted(self.calls.svc, items):
            results = await self.routes.front.run(request, asyncio.gather(*(self._one(p) for p in prompts)))
        wanted = body.return_text_in_logprobs and any(p.logprobs for p in prompts)
        texts = await self.routes.vocab.texts() if wanted else None
        outputs = []
        for p, (scored, gen) in zip(prompts, results, strict=True):
            samples: list[Sample | None] = list(gen.samples) if gen else [None] * p.n
            for sample in samples:
                rid = p.rid if p.n == 1 else uuid.uuid4().hex  # SGLang gives each of n samples a rid of its own
                outputs.append((p, rid, scored, sample, await self._text(p, sample)))
        latency = time.perf_counter() - started

        def build() -> bytes:
            out = [_output(p, rid, scored, sample, text, texts, latency) for p, rid, scored, sample, text in outputs]
            return encode(out if batch else out[0])

        return Response(await asyncio.to_thread(build), media_type="application/json")

    async def _text(self, p: _Prompt, sample: Sample | None) -> str:
        if sample is None:
            return ""
        return sample.text if p.skip_special else await self.routes.vocab.decode(sample.token_ids)

    async def _one(self, p: _Prompt) -> tuple[ScoreOutput | None, Generation | None]:
        probes = None if p.probe_ids is None else [p.probe_ids] * (len(p.ids) - p.start - 1)
        scoring = (
            self.calls.score_prompt(p.ids, p.k, p.start, probes, "token_ids_logprob") if p.scores else asyncio.sleep(0)
        )
        generating = self.calls.generate(p.ids, p.params) if p.params else asyncio.sleep(0)
        return await asyncio.gather(scoring, generating)

    # ---- the request, resolved per prompt --------------------------------------------------------------------

    async def _prompts(self, body: SGLangGenerate) -> tuple[list[_Prompt], bool]:
        """Each prompt's ids and settings (SGLang's normalisation, `GenerateReqInput.normalize_batch_and_...`),
        and whether the request is a batch."""
        if (body.text is None) == (body.input_ids is None):
            raise ApiError(400, "text: give text or input_ids, one of them", "text")
        many: list[str] | list[list[int]]
        field = "text" if body.text is not None else "input_ids"
        ids_in = body.input_ids or []
        batch = isinstance(body.text, list) or (bool(ids_in) and isinstance(ids_in[0], list))
        if isinstance(body.text, str):
            many = [body.text]
        elif body.text is not None:
            many = body.text
        else:
            many = ids_in if batch else [ids_in]  # type: ignore[assignment]  # list[int] | list[list[int]]
        if not many:
            raise ApiError(400, f"{field}: an empty batch", field)
        count = len(many)
        sampling = _per(body.sampling_params or SGLangSampling(), count, "sampling_params")
        n = sampling[0].n
        if any(s.n != n for s in sampling):
            raise ApiError(
                400, "sampling_params: n must be the same for every prompt (as in SGLang)", "sampling_params"
            )
        lists = ("return_logprob", "logprob_start_len", "top_logprobs_num", "sampling_params")
        if n > 1 and any(isinstance(getattr(body, name), list) for name in lists):
            raise ApiError(400, "per-prompt lists cannot be combined with n > 1 (as in SGLang)", "sampling_params")
        logprobs = _per(body.return_logprob or False, count, "return_logprob")
        starts = _per(-1 if body.logprob_start_len is None else body.logprob_start_len, count, "logprob_start_len")
        ks = _per(body.top_logprobs_num or 0, count, "top_logprobs_num")
        rids = _rids(body.rid, count, batch)
        probe_sets = _probe_sets(body.token_ids_logprob, count, batch, n)
        wheres = [f"{field}[{i}]" if batch else field for i in range(count)]
        if body.text is not None:  # checked for length before they are tokenized, as on every route
            all_ids = await self.calls.text_prompts([(str(t), w) for t, w in zip(many, wheres, strict=True)], True)
        else:
            all_ids = [self.calls.check_prompt(cast(list[int], p), w) for p, w in zip(many, wheres, strict=True)]
        out = [
            self._prompt(ids, rids[i], sampling[i], logprobs[i], starts[i], ks[i], probe_sets[i])
            for i, ids in enumerate(all_ids)
        ]
        return out, batch or n > 1

    def _prompt(
        self,
        ids: list[int],
        rid: str,
        sp: SGLangSampling,
        logprobs: bool,
        start: int,
        k: int,
        probe_ids: tuple[list[int], str] | None,
    ) -> _Prompt:
        if start < -1:
            raise ApiError(400, f"logprob_start_len: must be >= -1, got {start}", "logprob_start_len")
        if logprobs and start > len(ids):
            raise ApiError(
                400,
                f"logprob_start_len: {start} is higher than the number of input tokens {len(ids)}",
                "logprob_start_len",
            )
        if logprobs and k:
            self.calls.check_top(k, "top_logprobs_num")
        limit = self.calls.info.max_model_len - len(ids)
        max_new = limit if sp.max_new_tokens is None else sp.max_new_tokens
        if probe_ids is not None:  # checked with or without return_logprob, as SGLang's tokenizer manager does
            self.calls.check_probe_ids(*probe_ids)
            if logprobs and max_new:
                raise ApiError(
                    400,
                    "token_ids_logprob: served for the prompt only (sampling_params.max_new_tokens: 0); the generated "
                    "tokens' probes are not",
                    "token_ids_logprob",
                )
        params = None
        if max_new:
            params = self.calls.sampling(
                prompt_len=len(ids),
                n=sp.n,
                max_tokens=max_new,
                temperature=sp.temperature,
                top_p=sp.top_p,
                top_k=None if sp.top_k >= _TOP_K_ALL else sp.top_k,
                presence_penalty=sp.presence_penalty,
                frequency_penalty=sp.frequency_penalty,
                seed=sp.sampling_seed,
                stop=sp.stop,
                stop_token_ids=sp.stop_token_ids,
                ignore_eos=sp.ignore_eos,
                logprobs=k if logprobs else None,
                max_tokens_field="sampling_params.max_new_tokens",
            )
        return _Prompt(
            rid=rid,
            ids=ids,
            n=sp.n,
            logprobs=logprobs,
            start=len(ids) if start == -1 else start,
            k=k if logprobs else 0,
            max_new_tokens=max_new,
            skip_special=sp.skip_special_tokens,
            params=params,
            probe_ids=probe_ids[0] if logprobs and probe_ids is not None else None,
        )


def _per(value: Any, count: int, field: str) -> list[Any]:
    """A field given once for all prompts or as a list of one per prompt."""
    if not isinstance(value, list):
        return [value] * count
    if len(value) != count:
        raise ApiError(400, f"{field}: {len(value)} entries for {count} prompts", field)
    return value


def _probe_sets(value: list[int] | list[list[int]] | None, count: int, batch: bool, n: int) -> list[Any]:
    """Each prompt's token_ids_logprob and the field that names it, or None (SGLang's normalisation: one flat list
    for every prompt, or a list per prompt of a batch)."""
    if not value:
        return [None] * count
    if all(isinstance(t, int) for t in value):
        return [(value, "token_ids_logprob")] * count
    if n > 1:
        raise ApiError(
            400,
            "token_ids_logprob: a list per prompt cannot be combined with n > 1 (as in SGLang)",
            "token_ids_logprob",
        )
    if not batch:
        raise ApiError(400, "token_ids_logprob: one prompt takes a flat list of token ids", "token_ids_logprob")
    return [(ids, f"token_ids_logprob[{i}]") for i, ids in enumerate(_per(value, count, "token_ids_logprob"))]


def _rids(rid: str | list[str] | None, count: int, batch: bool) -> list[str]:
    if rid is None:
        return [uuid.uuid4().hex for _ in range(count)]
    if isinstance(rid, str):
        return [rid] if not batch else [f"{rid}_{i}" for i in range(count)]
    return _per(rid, count, "rid")


# ---- the answer ------------------------------------------------------------------------------------------------


def _output(
    p: _Prompt,
    rid: str,
    scored: ScoreOutput | None,
    sample: Sample | None,
    text: str,
    texts: list[str] | None,
    latency: float,
) -> dict[str, Any]:
    out_ids = sample.token_ids if sample else []
    meta: dict[str, Any] = {
        "id": rid,
        "finish_reason": _finish(p, sample),
        "prompt_tokens": len(p.ids),
        "weight_version": "default",
        "num_retractions": 0,
    }
    if p.logprobs:
        _add_logprobs(meta, p, scored, sample, texts)
    meta.update(
        {
            "reasoning_tokens": 0,
            "completion_tokens": len(out_ids),
            "cached_tokens": 0,
            "e2e_latency": latency,
        }
    )
    return {"text": text, "output_ids": out_ids, "meta_info": meta}


def _finish(p: _Prompt, sample: Sample | None) -> dict[str, Any]:
    """SGLang's finish reasons (`managers/schedule_batch.py`, FINISH_LENGTH / FINISH_MATCHED_TOKEN / _STR)."""
    if sample is None or sample.finish_reason == FinishReason.LENGTH:
        return {"type": "length", "length": p.max_new_tokens}
    stop = sample.stop_reason
    matched: int | str | None
    if stop and p.params is not None and stop.isdigit() and int(stop) in p.params.stop_token_ids:
        matched = int(stop)
    elif stop:
        matched = stop
    else:  # end of sequence: the EOS token, the last of the output
        matched = sample.token_ids[-1] if sample.token_ids else None
    return {"type": "stop", "matched": matched}


def _add_logprobs(
    meta: dict[str, Any], p: _Prompt, scored: ScoreOutput | None, sample: Sample | None, texts: list[str] | None
) -> None:
    def entry(logprob: float | None, token: int) -> list[Any]:
        return [None if logprob is None else clamp(logprob), token, texts[token] if texts is not None else None]

    reported = p.ids[p.start :]
    inputs = [entry(None, reported[0])] if reported else []
    if scored is not None:
        inputs += [entry(lp, t) for lp, t in zip(scored.logprobs, reported[1:], strict=True)]
    logprobs = (sample.logprobs or []) if sample else []
    outputs = [entry(lp, t) for lp, t in zip(logprobs, sample.token_ids if sample else [], strict=True)]
    meta["input_token_logprobs"] = inputs
    meta["output_token_logprobs"] = outputs
    meta["output_token_logprobs_length"] = len(outputs)
    if p.k:

        def tops(top_ids: list[int], top_lps: list[float]) -> list[list[Any]]:
            return [entry(lp, t) for t, lp in zip(top_ids[: p.k], top_lps[: p.k], strict=True)]

        input_top: list[Any] = [None] if reported else []
        if scored is not None and scored.top is not None:
            input_top += [tops(i, lp) for i, lp in zip(scored.top.ids, scored.top.logprobs, strict=True)]
        top = sample.top if sample else None
        meta["input_top_logprobs"] = input_top
        meta["output_top_logprobs"] = (
            [tops(i, lp) for i, lp in zip(top.ids, top.logprobs, strict=True)] if top is not None else []
        )
    if p.probe_ids is not None:
        # SGLang writes an empty position (no ids to probe) as null, like the first
        probed: list[Any] = [None] if reported else []
        if scored is not None and scored.probe_logprobs is not None:
            ids = p.probe_ids
            probed += [[entry(lp, t) for t, lp in zip(ids, row, strict=True)] or None for row in scored.probe_logprobs]
        meta["input_token_ids_logprobs"] = probed
        meta["output_token_ids_logprobs"] = []  # the prompt only: nothing was generated
