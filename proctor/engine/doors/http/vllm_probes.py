"""vLLM 0.33's per-position probes on `/inference/v1/generate`: `sampling_params.prompt_logprob_token_ids`, one row
of token ids per scored prompt row (-1 pads a short row), and `prompt_logprob_start`; row i scores its ids as the
prompt's token start + i + 1. The answer's `prompt_token_id_logprobs` is the [rows, ids] float32 matrix, -inf where
the request had -1, as a base64 `.npy` (vLLM: `numpy2base64` in `vllm/utils/serial_utils.py`, called by
`vllm/entrypoints/scale_out/token_in_token_out/serving.py`).

The checks are vLLM's, with its messages (`SamplingParams._validate_logprobs` in `vllm/sampling_params.py`; the row
count in `vllm/v1/engine/input_processor.py`), except that a row holds at most 128 ids (proctor's fused lm_head) where
vLLM reads its `--max-logprobs`. The Score probes each row without its -1s.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from itertools import chain

import numpy as np

from proctor.engine.cores.checks import MAX_PROBES
from proctor.engine.doors.http.errors import ApiError

FIELD = "sampling_params.prompt_logprob_token_ids"
START_FIELD = "sampling_params.prompt_logprob_start"


@dataclass(frozen=True)
class PromptProbes:
    start: int
    """the first prompt row scored: row i predicts the prompt's token start + i + 1"""
    rows: list[list[int]]
    """each row's ids without the -1s: what the Score probes"""
    ids: np.ndarray
    """[rows, ids] int64: the request's rows, -1 padded to the longest"""


def checked(rows: list[list[int]] | None, start: int | None, prompt_len: int, vocab_size: int) -> PromptProbes | None:
    """The request's probes, checked as vLLM checks them (None: it has none)."""
    if rows is None:
        if start is not None:
            raise ApiError(400, f"{START_FIELD}: requires prompt_logprob_token_ids", START_FIELD)
        return None
    width = max(map(len, rows), default=0)
    if not width:
        raise ApiError(400, f"{FIELD}: must be a non-empty integer array of shape [num_rows, num_ids]", FIELD)
    if width > MAX_PROBES:
        raise ApiError(
            400, f"{FIELD}: {width} token ids per row, greater than the {MAX_PROBES} one position may probe", FIELD
        )
    lo, hi = min(min(r) for r in rows if r), max(max(r) for r in rows if r)
    if lo < -1 or hi >= vocab_size:
        raise ApiError(
            400, f"{FIELD}: contains out-of-vocab token ids (-1 pads a row); vocabulary size: {vocab_size}", FIELD
        )
    first = 0 if start is None else start
    if first < 0:
        raise ApiError(400, f"{START_FIELD}: must be non-negative, got {first}", START_FIELD)
    scored = max(prompt_len - 1 - first, 0)
    if len(rows) != scored:
        raise ApiError(
            400,
            f"{FIELD}: {len(rows)} rows, but the prompt has {scored} scored rows "
            "(prompt_len - 1 - prompt_logprob_start)",
            FIELD,
        )
    ids = np.full((len(rows), width), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    kept = rows if lo >= 0 else [row if -1 not in row else [t for t in row if t != -1] for row in rows]
    return PromptProbes(start=first, rows=kept, ids=ids)


def encoded(probes: PromptProbes, logprobs: list[list[float]]) -> str:
    """The probes' log-probs (row for row as `probes.rows`) as vLLM sends them: the request's [rows, ids] shape in
    float32, -inf at its -1s, saved as `.npy` and base64-encoded."""
    scores = np.full(probes.ids.shape, -np.inf, dtype=np.float32)
    # row-major, as each row's kept ids keep their order
    scores[probes.ids >= 0] = np.fromiter(chain.from_iterable(logprobs), dtype=np.float32)
    with io.BytesIO() as buffer:
        np.save(buffer, scores, allow_pickle=False)
        return base64.b64encode(buffer.getbuffer()).decode("ascii")
