"""The Teacher's sampling limits, one check for both fronts: each refusal names the request's own field (gRPC's
`params.x`, HTTP's flat `x`), and a field the body sets reaches the backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from proctor.engine.config import TeacherConfig
from proctor.engine.cores.sampling_checks import checked_sampling
from proctor.engine.cores.teacher import TeacherCore
from proctor.engine.doors.http.errors import ApiError
from proctor.engine.doors.http.teacher_calls import TeacherCalls
from proctor.engine.errors import ItemError
from proctor.engine.items import BackendInfo, SamplingParams

INFO = BackendInfo("m", "torch", "float32", "cpu", "t", vocab_size=100, max_model_len=64, eos_token_ids=(0,))
CONFIG = TeacherConfig(max_n=4, max_top_logprobs=8)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"n": 5}, "n"),
        ({"temperature": 101.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": 101}, "top_k"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"max_tokens": 60}, "max_tokens"),
        ({"stop": ("ok", "")}, "stop[1]"),
        ({"stop_token_ids": (3, 100)}, "stop_token_ids[1]"),
        ({"top_logprobs": 9}, "top_logprobs"),
    ],
)
@pytest.mark.parametrize("at", ["params", ""])
def test_each_limit_names_its_field(change: dict[str, Any], field: str, at: str) -> None:
    params = SamplingParams(**({"max_tokens": 10} | change))
    with pytest.raises(ItemError) as refused:
        checked_sampling(params, prompt_len=5, config=CONFIG, info=INFO, at=at)
    assert refused.value.field == (f"{at}.{field}" if at else field)


def test_the_seed_is_reduced_to_its_range_and_the_rest_kept() -> None:
    params = SamplingParams(n=4, top_k=100, seed=2**64 - 1, max_tokens=59, stop=("\n",), top_logprobs=8)
    checked = checked_sampling(params, prompt_len=5, config=CONFIG, info=INFO)
    assert checked == SamplingParams(n=4, top_k=100, seed=2**63 - 1, max_tokens=59, stop=("\n",), top_logprobs=8)


@dataclass
class _Backend:
    info: BackendInfo


def test_the_http_front_passes_every_field_and_answers_400_naming_it() -> None:
    calls = TeacherCalls(TeacherCore(_Backend(INFO), CONFIG, None))  # type: ignore[arg-type]  # sampling reads only info/config
    fields: dict[str, Any] = {
        "prompt_len": 5,
        "n": 2,
        "max_tokens": 10,
        "temperature": None,
        "top_p": None,
        "top_k": -1,
        "presence_penalty": None,
        "frequency_penalty": None,
        "seed": 7,
        "stop": "\n\n",
        "stop_token_ids": [3],
        "ignore_eos": True,
        "logprobs": 2,
    }
    params = calls.sampling(**fields)
    assert params == SamplingParams(
        n=2, seed=7, max_tokens=10, stop=("\n\n",), stop_token_ids=(3,), logprobs=True, top_logprobs=2, ignore_eos=True
    )
    with pytest.raises(ApiError) as refused:
        calls.sampling(**(fields | {"logprobs": 9}))
    assert (refused.value.status, refused.value.param) == (400, "logprobs")
    assert refused.value.message.startswith("logprobs: 9 > 8")


def test_top_logprobs_default_to_256_and_the_whole_vocabulary_is_refused_naming_the_limit() -> None:
    from proctor.engine.cores.sampling_checks import check_top_logprobs

    big = BackendInfo("m", "torch", "float32", "cpu", "t", vocab_size=151_936, max_model_len=64, eos_token_ids=(0,))
    assert TeacherConfig().max_top_logprobs == 256
    check_top_logprobs(256, "prompt_logprobs", TeacherConfig(), big)  # TRL asks 100; marin's RFC 256
    for k, said in ((257, "257 > 256"), (-1, "-1 asks for the whole vocabulary (151936 entries a position) > 256")):
        with pytest.raises(ItemError) as refused:
            check_top_logprobs(k, "prompt_logprobs", TeacherConfig(), big)
        assert refused.value.field == "prompt_logprobs" and said in refused.value.message
        assert "teacher.max_top_logprobs" in refused.value.message
