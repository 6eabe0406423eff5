"""Critic.Classify and Teacher.GenerateTriples end to end over gRPC (tiny random models: plumbing, not quality)."""

from __future__ import annotations

import grpc
import pytest

from proctor.v1 import common_pb2, critic_pb2, critic_pb2_grpc, teacher_pb2, teacher_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="session")

INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]


async def _classify(target: str, requests: list[critic_pb2.ClassifyRequest]) -> dict[str, critic_pb2.ClassifyResult]:
    async with grpc.aio.insecure_channel(target) as channel:
        return {r.id: r async for r in critic_pb2_grpc.CriticStub(channel).Classify(iter(requests))}


def _triple(
    id: str, head: str = "PersonX helps PersonY", tail: str = "to rest", **kw: object
) -> critic_pb2.ClassifyRequest:
    return critic_pb2.ClassifyRequest(
        id=id, triple=critic_pb2.Triple(head=head, relation=common_pb2.X_WANT, tail=tail), **kw
    )


async def test_classify_triples_and_pairs_a_bad_item_fails_alone(target: str) -> None:
    out = await _classify(
        target,
        [
            _triple("a", seed=1),
            _triple("a2", seed=1),
            _triple("b", seed=2),
            critic_pb2.ClassifyRequest(id="pair", pair=critic_pb2.TextPair(first="A dog.", second="It barks.")),
            critic_pb2.ClassifyRequest(id="rel", triple=critic_pb2.Triple(head="PersonX runs", relation=99, tail="x")),
            _triple("empty", tail="  "),
            critic_pb2.ClassifyRequest(id="none"),
            _triple("cut", cutoff=1.5),
            _triple("long", tail="word " * 600),
        ],
    )
    a = out["a"]
    assert not a.HasField("error") and 0.0 < a.score < 1.0 and a.cutoff == 0.5 and a.accepted == (a.score > 0.5)
    assert out["a2"].score == a.score, "seeded name draws: reproducible"
    assert not out["pair"].HasField("error")
    for key, field in {
        "rel": "triple.relation",
        "empty": "triple.tail",
        "none": "input",
        "cut": "cutoff",
        "long": "triple",
    }.items():
        assert out[key].error.code == INVALID and out[key].error.field == field, key


async def test_classify_batched_equals_classify(target: str) -> None:
    requests = [_triple(f"t{i}", tail=f"to rest {i}", seed=i) for i in range(40)] + [_triple("bad", tail="")]
    plain = await _classify(target, requests)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = critic_pb2_grpc.CriticStub(channel)
        batches = [critic_pb2.ClassifyBatch(items=requests[i : i + 16]) for i in range(0, len(requests), 16)]
        batched = {r.id: r async for reply in stub.ClassifyBatched(iter(batches)) for r in reply.items}
    assert set(batched) == set(plain)
    for key, result in plain.items():
        assert batched[key].score == pytest.approx(result.score, abs=1e-5) and batched[key].error == result.error, key
    assert batched["bad"].error.field == "triple.tail"


async def test_generate_triples_from_given_events(target: str) -> None:
    request = teacher_pb2.TriplesRequest(
        events=["PersonX goes to the store", "PersonX calls PersonY"],
        relations=[common_pb2.X_WANT, common_pb2.HINDERED_BY],
        seed=3,
        inference_params=teacher_pb2.SamplingParams(n=4, max_tokens=6, ignore_eos=True, stop=["zz"]),
    )
    async with grpc.aio.insecure_channel(target) as channel:
        stub = teacher_pb2_grpc.TeacherStub(channel)
        first = [r async for r in stub.GenerateTriples(request)]
        again = [r async for r in stub.GenerateTriples(request)]
    assert first, "the tiny model writes some tails"
    assert [(r.head, r.relation, r.tail, r.critic_score) for r in first] == [
        (r.head, r.relation, r.tail, r.critic_score) for r in again
    ], "same seed, same triples"
    assert {r.head for r in first} <= {"PersonX goes to the store", "PersonX calls PersonY"}
    assert {r.relation for r in first} <= {common_pb2.X_WANT, common_pb2.HINDERED_BY}
    for r in first:
        assert not r.HasField("error") and r.HasField("critic_score") and r.accepted == (r.critic_score > 0.5)
        assert "Alex" not in r.tail.split() and "Chris" not in r.tail.split()


async def test_generate_triples_writes_events_and_rejects_bad_calls(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = teacher_pb2_grpc.TeacherStub(channel)
        written = [
            r
            async for r in stub.GenerateTriples(
                teacher_pb2.TriplesRequest(
                    num_events=1,
                    relations=[common_pb2.X_ATTR],
                    skip_critic=True,
                    # the tiny model rarely writes "PersonX ..."; these params keep the test fast, not realistic
                    event_params=teacher_pb2.SamplingParams(n=8, max_tokens=4),
                    inference_params=teacher_pb2.SamplingParams(n=2, max_tokens=4),
                )
            )
        ]
        # The tiny random model writes no "PersonX ..." event in the budget: no triple, and the stream's one result
        # says exactly why (how far each of the paper's filters got).
        [short] = written
        assert short.error.field == "num_events" and short.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert "the teacher's events reached 0 of 1 after 4 event prompts (the budget: 4); 32 samples:" in (
            short.error.message
        )
        for bad, field in (
            (teacher_pb2.TriplesRequest(), "events"),
            (teacher_pb2.TriplesRequest(events=["x"], num_events=2), "num_events"),
            (teacher_pb2.TriplesRequest(events=["x"], relations=[42]), "relations[0]"),
            (
                teacher_pb2.TriplesRequest(events=["x"], inference_params=teacher_pb2.SamplingParams(top_p=2)),
                "inference_params.top_p",
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stub.GenerateTriples(bad):
                    pass
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in (err.value.details() or "")


async def test_the_critic_reads_the_triple_as_ftfy_fixes_it(target: str) -> None:
    """paper rules §1.4: the text is passed through ftfy.fix_text after the names, so a curly apostrophe and an HTML
    entity score exactly as their fixed forms do (the non-ASCII triples are drawn off the event loop)."""
    out = await _classify(
        target,
        [
            _triple("curly", head="PersonX’s dog barks at PersonY", tail="to say sorry &amp; leave", seed=7),
            _triple("plain", head="PersonX's dog barks at PersonY", tail="to say sorry & leave", seed=7),
            _triple("other", head="PersonX's cat barks at PersonY", tail="to say sorry & leave", seed=7),
        ],
    )
    assert not out["curly"].HasField("error") and out["curly"].score == out["plain"].score
    assert out["other"].score != out["plain"].score, "the score does read the text"
