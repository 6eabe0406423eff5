"""vLLM's small print on the HTTP front: -inf log-probs written as -9999.0 in every JSON answer (and NaN never
on the wire), /ping, /version, /load; and every 4xx on a service's route logged with its reason and counted."""

from __future__ import annotations

import asyncio
import logging
import math
from importlib.metadata import version

import pytest

from proctor.engine.doors.http import sglang
from proctor.engine.doors.http.completion_answer import _completion_logprobs
from proctor.engine.doors.http.errors import encode
from proctor.engine.doors.http.openai_shapes import prompt_logprobs_json
from proctor.engine.doors.http.teacher_calls import FLOOR, Entry, clamp
from proctor.engine.items import FinishReason, Sample, ScoreOutput, TopK
from proctor.engine.server.lifecycle import ProctorServer
from tests.engine.doors.http.test_http_openai import base, call

on_the_server = pytest.mark.asyncio(loop_scope="session")

INF = -math.inf
TEXTS = ["a", "b", "c", "d"]


def test_minus_infinity_is_minus_9999_in_every_json_shape() -> None:
    assert clamp(INF) == FLOOR == -9999.0 and clamp(-3.5) == -3.5
    position = [Entry(2, INF, 4), Entry(0, -0.1, 1), Entry(1, INF, 2)]
    vllm_prompt = prompt_logprobs_json([None, position], TEXTS)
    assert vllm_prompt is not None and vllm_prompt[1]["2"]["logprob"] == -9999.0
    legacy = _completion_logprobs([2], [position], 2, TEXTS, None)
    assert legacy["token_logprobs"] == [-9999.0] and set(legacy["top_logprobs"][0].values()) == {-9999.0, -0.1}
    prompt = sglang._Prompt(
        rid="r", ids=[0, 1, 2], n=1, logprobs=True, start=0, k=2, max_new_tokens=1, skip_special=True, params=None
    )
    sample = Sample(0, [3], "d", FinishReason.LENGTH, "", INF, [INF], TopK([[3, 0]], [[INF, INF]]))
    scored = ScoreOutput([INF, -0.5], TopK([[1, 0], [2, 3]], [[INF, INF], [-0.5, INF]]))
    out = sglang._output(prompt, "r", scored, sample, "d", TEXTS, 0.0)
    meta = out["meta_info"]
    assert meta["input_token_logprobs"] == [[None, 0, "a"], [-9999.0, 1, "b"], [-0.5, 2, "c"]]
    assert meta["output_token_logprobs"] == [[-9999.0, 3, "d"]]
    assert meta["input_top_logprobs"][1] == [[-9999.0, 1, "b"], [-9999.0, 0, "a"]]
    assert meta["output_top_logprobs"] == [[[-9999.0, 3, "d"], [-9999.0, 0, "a"]]]
    for shape in (vllm_prompt, legacy, out):
        encode(shape)  # strict JSON: it would raise on an infinity left in
    with pytest.raises(ValueError):
        encode({"logprob": clamp(math.nan)})  # a NaN is a failure to surface, never a number on the wire


@on_the_server
async def test_ping_version_load(tiny_server: ProctorServer) -> None:
    for body in (None, b"{}"):  # vLLM's /ping answers GET and POST as /health does
        status, payload, _ = await asyncio.to_thread(call, base(tiny_server) + "/ping", body)
        assert status == 200 and payload is None
    status, payload, _ = await asyncio.to_thread(call, base(tiny_server) + "/version")
    assert status == 200 and payload == {"version": version("proctor")}
    status, payload, _ = await asyncio.to_thread(call, base(tiny_server) + "/load")
    assert status == 200 and payload == {"server_load": 0}


@on_the_server
async def test_load_counts_the_requests_in_flight(tiny_server: ProctorServer) -> None:
    body = {"input_ids": list(range(5, 60)), "sampling_params": {"max_new_tokens": 8, "ignore_eos": True}}
    busy = asyncio.create_task(asyncio.to_thread(call, base(tiny_server) + "/generate", body))
    seen = 0
    while not busy.done():
        _, payload, _ = await asyncio.to_thread(call, base(tiny_server) + "/load")
        seen = max(seen, payload["server_load"])
    assert (await busy)[0] == 200
    assert seen == 1
    _, payload, _ = await asyncio.to_thread(call, base(tiny_server) + "/load")
    assert payload == {"server_load": 0}


@on_the_server
@pytest.mark.parametrize(
    ("path", "body", "status", "reason"),
    [
        ("/generate", {"input_ids": [5, 6], "stream": True}, 400, "stream"),
        ("/v1/completions", {"prompt": [5, 6], "best_of": 2}, 400, "best_of: not supported"),
        ("/slime/reward", {"prompt": "q", "response": "r"}, 400, "--rm-url"),
        ("/reward", {"query": ["x"], "prompts": ["x"], "labels": [None]}, 400, "--reward.remote_url"),
        ("/v1/models", b"{}", 405, "Method Not Allowed"),
        (
            "/inference/v1/generate",
            {"token_ids": [5, 6], "sampling_params": {"max_tokens": 0, "prompt_logprob_start": 0}},
            400,
            "sampling_params.prompt_logprob_start: requires prompt_logprob_token_ids",
        ),
        ("/inference/v1/generate", {"token_ids": [5, 6], "features": {}}, 400, "features: not supported"),
    ],
)
async def test_every_refusal_is_logged_with_its_reason_and_counted(
    tiny_server: ProctorServer, caplog: pytest.LogCaptureFixture, path: str, body: object, status: int, reason: str
) -> None:
    counter = tiny_server.metrics.http_refusals.labels(path, str(status))
    before = counter._value.get()
    with caplog.at_level(logging.INFO, logger="proctor.engine.doors.http.app"):
        got, _, _ = await asyncio.to_thread(call, base(tiny_server) + path, body)
    assert got == status
    assert counter._value.get() - before == 1
    [record] = [r for r in caplog.records if r.name == "proctor.engine.doors.http.app"]
    assert record.levelno == logging.INFO and path in record.getMessage() and reason in record.getMessage()


@on_the_server
async def test_unknown_paths_are_not_labels(tiny_server: ProctorServer) -> None:
    got, _, _ = await asyncio.to_thread(call, base(tiny_server) + "/no/such/route", {})
    assert got == 404
    assert not any(
        s.labels.get("route") == "/no/such/route" for m in tiny_server.metrics.registry.collect() for s in m.samples
    )
