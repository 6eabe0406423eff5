"""vLLM 0.33's per-position probes on `/inference/v1/generate`, on the tiny teacher against a float64 reference:
`sampling_params.prompt_logprob_token_ids` + `prompt_logprob_start` -> `prompt_token_id_logprobs`, a base64 `.npy`
float32 [rows, ids] matrix. From vllm 0.33.0's source: vllm/sampling_params.py 353-361 (the fields) and 984-1047
(their checks); vllm/v1/engine/input_processor.py 464-475 (the row count); vllm/v1/worker/gpu/sample/prompt_logprob.py
115 (-inf at the -1s); vllm/utils/serial_utils.py 67-71 (`numpy2base64`, called at
vllm/entrypoints/scale_out/token_in_token_out/serving.py 633). Decoded as vLLM's own test and docs decode it
(tests/entrypoints/scale_out/token_in_token_out/test_serving_tokens.py 318-356,
docs/training/prompt_token_id_logprobs.md 42).
"""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import numpy as np
import pytest
import torch

from proctor.engine.server.lifecycle import ProctorServer
from tests.conftest import TINY
from tests.engine.doors.http.test_http_openai import base, call

pytestmark = pytest.mark.asyncio(loop_scope="session")

GENERATE = "/inference/v1/generate"
SEQ = [11, 22, 33, 44, 55, 66]
ROWS = [[33], [44, 100, -1, 7], [-1, 55], [66, 66]]  # ragged, -1 padded anywhere: scored rows 2..5 (start 1)


async def post(server: ProctorServer, path: str, body: Any) -> tuple[int, Any]:
    status, payload, _ = await asyncio.to_thread(call, base(server) + path, body)
    return status, payload


def decoded(payload: dict[str, Any]) -> np.ndarray:
    """As vLLM's client reads it (docs/training/prompt_token_id_logprobs.md 42)."""
    scores: np.ndarray = np.load(io.BytesIO(base64.b64decode(payload["prompt_token_id_logprobs"])))
    return scores


def expected_matrix(ref: torch.Tensor, rows: list[list[int]], start: int) -> np.ndarray:
    width = max(map(len, rows))
    out = np.full((len(rows), width), -np.inf)
    for i, row in enumerate(rows):
        for j, t in enumerate(row):
            if t != -1:
                out[i, j] = float(ref[start + i, t])
    return out


async def test_vllm_probes_with_prompt_logprobs_and_a_token(tiny_server: ProctorServer, reference: Any) -> None:
    body = {
        "token_ids": SEQ,
        "sampling_params": {
            "max_tokens": 1,
            "prompt_logprobs": 0,
            "prompt_logprob_token_ids": ROWS,
            "prompt_logprob_start": 1,
        },
    }
    status, out = await post(tiny_server, GENERATE, body)
    assert status == 200, out
    scores = decoded(out)
    assert scores.dtype == np.float32 and scores.shape == (4, 4)
    ref = reference(SEQ)
    assert np.allclose(scores, expected_matrix(ref, ROWS, 1), atol=1e-4)
    assert np.isneginf(scores[1, 2]) and np.isneginf(scores[2, 0]) and np.isneginf(scores[0, 1:]).all()
    # the same Score as the prompt log-probs: row i's own token is prompt_logprobs[start + i + 1]'s
    for i, row in enumerate(ROWS):
        if row[0] == SEQ[i + 2]:
            assert scores[i, 0] == pytest.approx(out["prompt_logprobs"][i + 2][str(row[0])]["logprob"], abs=1e-6)
    assert len(out["choices"]) == 1 and len(out["choices"][0]["token_ids"]) == 1


async def test_the_docs_distillation_call_is_one_forward(tiny_server: ProctorServer, reference: Any) -> None:
    """docs/training/prompt_token_id_logprobs.md's quick start: prompt + response, the student's top-k per response
    position from prompt_logprob_start = len(prompt) - 1, max_tokens 1. The scores are the float64 reference's, and
    the one token comes from the Score pass (no generation wave): the token Generate gives for the same seed."""
    prompt, response = SEQ[:2], SEQ[2:]
    topk = [[t, (t * 7) % 512, 1] for t in response]
    sampling = {"max_tokens": 1, "seed": 5, "logprobs": 1}
    body = {
        "token_ids": prompt + response,
        "sampling_params": {**sampling, "prompt_logprob_token_ids": topk, "prompt_logprob_start": len(prompt) - 1},
    }
    registry = tiny_server.metrics.registry

    def batches(rpc: str) -> float:
        return registry.get_sample_value("proctor_batch_size_items_count", {"model": TINY, "rpc": rpc}) or 0.0

    before = batches("Score"), batches("Generate")
    status, out = await post(tiny_server, GENERATE, body)
    assert status == 200, out
    assert batches("Generate") == before[1] and batches("Score") > before[0]
    scores = decoded(out)
    assert scores.shape == (len(response), 3)
    assert np.allclose(scores, expected_matrix(reference(SEQ), topk, len(prompt) - 1), atol=1e-4)
    status, plain = await post(tiny_server, GENERATE, {"token_ids": SEQ, "sampling_params": sampling})
    assert status == 200, plain
    assert out["choices"][0]["token_ids"] == plain["choices"][0]["token_ids"]
    assert out["choices"][0]["logprobs"]["content"][0]["logprob"] == pytest.approx(
        plain["choices"][0]["logprobs"]["content"][0]["logprob"], abs=1e-5
    )


async def test_vllm_probes_score_only_from_the_first_row(tiny_server: ProctorServer, reference: Any) -> None:
    rows = [[t, 0, 511] for t in SEQ[1:]]
    body = {"token_ids": SEQ, "sampling_params": {"max_tokens": 0, "prompt_logprob_token_ids": rows}}
    status, out = await post(tiny_server, GENERATE, body)
    assert status == 200, out
    assert out["prompt_logprobs"] is None and out["choices"] == []
    scores = decoded(out)
    assert np.allclose(scores, expected_matrix(reference(SEQ), rows, 0), atol=1e-4)


async def test_the_npy_is_numpy2base64_of_the_matrix(tiny_server: ProctorServer) -> None:
    """vLLM's numpy2base64 (vllm/utils/serial_utils.py 67-71): np.save(allow_pickle=False), standard base64. The
    matrix decoded here, saved and encoded that way, gives the same string, byte for byte."""
    body = {"token_ids": SEQ[:3], "sampling_params": {"max_tokens": 0, "prompt_logprob_token_ids": [[1, -1], [2]]}}
    status, out = await post(tiny_server, GENERATE, body)
    assert status == 200, out
    scores = decoded(out)
    with io.BytesIO() as buffer:
        np.save(buffer, scores, allow_pickle=False)
        assert base64.b64encode(buffer.getvalue()).decode("ascii") == out["prompt_token_id_logprobs"]
    raw = base64.b64decode(out["prompt_token_id_logprobs"])
    assert raw.startswith(b"\x93NUMPY\x01\x00") and b"'descr': '<f4'" in raw and b"'fortran_order': False" in raw
    assert scores.shape == (2, 2) and np.isneginf(scores[0, 1]) and np.isneginf(scores[1, 1])


@pytest.mark.parametrize(
    ("sampling", "field", "says"),
    [
        ({"prompt_logprob_token_ids": [[1]] * 4}, "prompt_logprob_token_ids", "4 rows, but the prompt has 5 scored"),
        ({"prompt_logprob_token_ids": [[1]] * 4, "prompt_logprob_start": 2}, "prompt_logprob_token_ids", "3 scored"),
        ({"prompt_logprob_start": 1}, "prompt_logprob_start", "requires prompt_logprob_token_ids"),
        ({"prompt_logprob_token_ids": [[1]] * 5, "prompt_logprob_start": -1}, "prompt_logprob_start", "non-negative"),
        ({"prompt_logprob_token_ids": [[]] * 5}, "prompt_logprob_token_ids", "non-empty"),
        ({"prompt_logprob_token_ids": [[1] * 129] * 5}, "prompt_logprob_token_ids", "129 token ids per row"),
        ({"prompt_logprob_token_ids": [[1]] * 4 + [[512]]}, "prompt_logprob_token_ids", "vocabulary size: 512"),
        ({"prompt_logprob_token_ids": [[1]] * 4 + [[-2]]}, "prompt_logprob_token_ids", "out-of-vocab"),
        ({"prompt_logprob_token_ids": [[1.5]] * 5}, "prompt_logprob_token_ids", ""),
    ],
)
async def test_vllm_probe_refusals_name_the_field(
    tiny_server: ProctorServer, sampling: dict[str, Any], field: str, says: str
) -> None:
    status, out = await post(
        tiny_server, GENERATE, {"token_ids": SEQ, "sampling_params": {"max_tokens": 0, **sampling}}
    )
    assert status == 400, out
    assert f"sampling_params.{field}" in out["error"]["message"] and says in out["error"]["message"], out
