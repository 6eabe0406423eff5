"""SGLang 0.5.23's `token_ids_logprob` on `/generate`, on the tiny teacher against a float64 reference:
`meta_info.input_token_ids_logprobs` / `output_token_ids_logprobs` as SGLang writes them
(srt/managers/tokenizer_manager.py 2975-3007; the detokenized rows 3098-3136, an empty row as null;
srt/managers/scheduler_components/logprob_result_processor.py 116-150, null first), its normalisation and checks
(srt/managers/io_struct.py 809-821, tokenizer_manager.py 1513-1532).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from proctor.engine.server.lifecycle import ProctorServer
from tests.engine.doors.http.test_http_openai import base, call
from tests.engine.doors.http.test_http_sglang import HEAD, LOGPROBS, TAIL, TOPS

pytestmark = pytest.mark.asyncio(loop_scope="session")

SEQ = [11, 22, 33, 44, 55, 66]
SGLANG_IDS = [3, 7, 7, 500]


async def post(server: ProctorServer, body: Any) -> tuple[int, Any]:
    status, payload, _ = await asyncio.to_thread(call, base(server) + "/generate", body)
    return status, payload


async def test_sglang_token_ids_logprob_on_the_prompt(tiny_server: ProctorServer, reference: Any) -> None:
    body = {
        "input_ids": SEQ,
        "sampling_params": {"max_new_tokens": 0},
        "return_logprob": True,
        "logprob_start_len": 2,
        "top_logprobs_num": 2,
        "token_ids_logprob": SGLANG_IDS,
        "return_text_in_logprobs": True,
    }
    status, out = await post(tiny_server, body)
    assert status == 200, out
    meta = out["meta_info"]
    assert list(meta) == HEAD + LOGPROBS + TOPS + ["input_token_ids_logprobs", "output_token_ids_logprobs"] + TAIL
    probed = meta["input_token_ids_logprobs"]
    assert probed[0] is None and len(probed) == len(meta["input_token_logprobs"]) == len(SEQ) - 2
    assert meta["output_token_ids_logprobs"] == []
    ref = reference(SEQ)
    for i, position in enumerate(probed[1:]):
        assert [e[1] for e in position] == SGLANG_IDS and all(isinstance(e[2], str) for e in position)
        expected = ref[2 + i, SGLANG_IDS]
        assert torch.allclose(torch.tensor([e[0] for e in position], dtype=torch.float64), expected, atol=1e-4)


async def test_sglang_token_ids_logprob_per_prompt_of_a_batch(tiny_server: ProctorServer, reference: Any) -> None:
    prompts = [SEQ, [5, 6, 7]]
    body = {
        "input_ids": prompts,
        "sampling_params": {"max_new_tokens": 0},
        "return_logprob": True,
        "logprob_start_len": 0,
        "token_ids_logprob": [[1, 2], []],
    }
    status, out = await post(tiny_server, body)
    assert status == 200, out
    first, second = (o["meta_info"]["input_token_ids_logprobs"] for o in out)
    ref = reference(SEQ)
    assert first[0] is None and len(first) == len(SEQ)
    for i, position in enumerate(first[1:]):
        assert [e[1] for e in position] == [1, 2] and position[0][2] is None
        assert torch.allclose(torch.tensor([e[0] for e in position], dtype=torch.float64), ref[i, [1, 2]], atol=1e-4)
    assert second == [None, None, None]  # an empty set: every position null, as SGLang writes an empty row


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"token_ids_logprob": [1, 2], "sampling_params": {"max_new_tokens": 3}}, "max_new_tokens: 0"),
        ({"token_ids_logprob": [[1, 2]]}, "a flat list"),
        ({"token_ids_logprob": [[1, 2]], "input_ids": [[5, 6]], "sampling_params": {"n": 2}}, "n > 1"),
        ({"token_ids_logprob": [[1], [2]], "input_ids": [[5, 6]]}, "2 entries for 1 prompts"),
        ({"token_ids_logprob": [1] * 129}, "129 token ids > 128"),
        ({"token_ids_logprob": [1, 512]}, "token_ids_logprob[1]: token id 512 is outside the vocabulary"),
        ({"token_ids_logprob": [-1]}, "token_ids_logprob"),
    ],
)
async def test_sglang_token_ids_logprob_refusals(tiny_server: ProctorServer, body: dict[str, Any], says: str) -> None:
    request = {"input_ids": [5, 6, 7], "return_logprob": True, "sampling_params": {"max_new_tokens": 0}, **body}
    status, out = await post(tiny_server, request)
    assert status == 400, out
    assert "token_ids_logprob" in out["error"]["message"] and says in out["error"]["message"], out
