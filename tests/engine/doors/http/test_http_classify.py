"""The Critic over HTTP in vLLM's pooling shape (/classify), mounted on the tiny server as the server mounts its
routes: the same scores as gRPC's Classify, a pair checked against the classifier in float64, vLLM's
ClassificationResponse key for key (vllm/entrypoints/pooling/classify/protocol.py: ClassificationData,
ClassificationResponse), and the read of verl 0.9.1's reward loop (`data[-1]["probs"][-1]`,
verl/experimental/reward_loop/reward_loop.py line 242)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import pytest_asyncio
import torch

from proctor.engine.backends.builtin_models import resolve_model
from proctor.engine.server.lifecycle import ProctorServer
from proctor.v1 import common_pb2, critic_pb2, critic_pb2_grpc
from tests.engine.doors.http.test_http_openai import base, call

pytestmark = pytest.mark.asyncio(loop_scope="session")

CRITIC = "builtin:tiny-critic"
PAIR = {"first": "A dog.", "second": "It barks."}
TRIPLE = {"head": "PersonX helps PersonY", "relation": "xWant", "tail": "to rest", "seed": 1}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def critic_front(tiny_server: ProctorServer) -> ProctorServer:
    """/classify as the server mounts it on its front, over its Critic core."""
    assert tiny_server.http is not None and tiny_server.cores.critic is not None
    assert tiny_server.http.services["/classify"] == tiny_server.cores.critic.svc.name
    return tiny_server


async def post(server: ProctorServer, body: Any) -> tuple[int, Any]:
    status, payload, _ = await asyncio.to_thread(call, base(server) + "/classify", body)
    return status, payload


async def test_pairs_and_triples_score_as_grpc_classify(critic_front: ProctorServer, target: str) -> None:
    body = {"model": CRITIC, "input": [PAIR, TRIPLE], "use_activation": True}
    status, out = await post(critic_front, body)
    assert status == 200, out
    assert list(out) == ["id", "object", "created", "model", "data", "usage"] and out["object"] == "list"
    assert out["id"].startswith("classify-") and out["model"] == CRITIC
    assert [list(d) for d in out["data"]] == [["index", "label", "probs", "num_classes"]] * 2
    assert out["usage"]["prompt_tokens"] > 0 and out["usage"]["completion_tokens"] == 0
    async with grpc.aio.insecure_channel(target) as channel:
        requests = [
            critic_pb2.ClassifyRequest(id="pair", pair=critic_pb2.TextPair(**PAIR)),
            critic_pb2.ClassifyRequest(
                id="triple",
                triple=critic_pb2.Triple(head=TRIPLE["head"], relation=common_pb2.X_WANT, tail=TRIPLE["tail"]),
                seed=1,
            ),
        ]
        grpc_out = {r.id: r.score async for r in critic_pb2_grpc.CriticStub(channel).Classify(iter(requests))}
    for data, key in zip(out["data"], ("pair", "triple"), strict=True):
        p = data["probs"][-1]
        assert p == pytest.approx(grpc_out[key], abs=1e-6)
        assert data["probs"][0] == pytest.approx(1 - p) and data["num_classes"] == 2
        assert data["label"] == ("valid" if p > 0.5 else "invalid")
    verl_score = out["data"][-1]["probs"][-1]  # verl 0.9.1's read of a classify answer
    assert verl_score == pytest.approx(grpc_out["triple"], abs=1e-6)


async def test_a_pair_matches_the_classifier_in_float64(critic_front: ProctorServer) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model(CRITIC)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float64)
    enc = AutoTokenizer.from_pretrained(path)(PAIR["first"], PAIR["second"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[0]
    # the classifier's rule: one logit -> sigmoid, two -> softmax at critic.valid_label (1)
    expected = float(torch.sigmoid(logits[0]) if logits.numel() == 1 else torch.softmax(logits, dim=-1)[1])
    status, out = await post(critic_front, {"input": PAIR})
    assert status == 200, out
    assert out["data"][0]["probs"][-1] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"input": "A dog barks."}, "not a text alone"),
        ({"input": ["A dog.", "It barks."]}, "not a text alone"),
        ({"input": [PAIR], "use_activation": False}, "use_activation"),
        ({"input": [{**TRIPLE, "relation": "xLikes"}]}, "input[0].relation"),
        ({"input": [PAIR, {**TRIPLE, "tail": " "}]}, "input[1].tail"),
        ({"input": [{"first": "word " * 600, "second": "x"}]}, "input[0]"),
        ({"input": [PAIR], "truncate_prompt_tokens": 8}, "truncate_prompt_tokens"),
        ({"input": []}, "input"),
    ],
)
async def test_refusals_name_the_field(critic_front: ProctorServer, body: dict[str, Any], needle: str) -> None:
    status, out = await post(critic_front, body)
    assert status == 400, out
    assert needle in out["error"]["message"], out


async def test_another_model_is_404(critic_front: ProctorServer) -> None:
    status, out = await post(critic_front, {"model": "other", "input": PAIR})
    assert status == 404 and out["error"]["param"] == "model"
