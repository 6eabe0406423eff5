"""Score groups (one context, many continuations) equal scoring each sequence on its own."""

from __future__ import annotations

import pytest
import torch

from proctor.clients.teacher import AsyncTeacherClient, score_group_request, score_request
from proctor.v1 import common_pb2, teacher_pb2

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.mark.parametrize("n", [1, 3, 16])
async def test_group_equals_independent_scoring(target: str, n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    context = torch.randint(3, 500, (int(torch.randint(1, 40, (1,), generator=gen)),), generator=gen).tolist()
    lengths = [1, *torch.randint(1, 30, (n - 1,), generator=gen).tolist()]  # one-token continuations included
    conts = [torch.randint(3, 500, (k,), generator=gen).tolist() for k in lengths]
    async with AsyncTeacherClient(target) as client:
        group = await client.score([score_group_request("g", context, conts, top_logprobs=3)])
        alone = await client.score([score_request(f"s{i}", context, c, top_logprobs=3) for i, c in enumerate(conts)])
    g = group["g"]
    assert not g.HasField("error"), g.error
    assert g.context_tokens == len(context) and len(g.continuations) == n
    for i, scored in enumerate(g.continuations):
        single = alone[f"s{i}"]
        assert list(scored.token_ids) == conts[i]
        assert torch.allclose(torch.tensor(list(scored.logprobs)), torch.tensor(list(single.logprobs)), atol=1e-4)
        assert torch.allclose(
            torch.tensor(list(scored.top.logprobs)), torch.tensor(list(single.top.logprobs)), atol=1e-4
        )


async def test_mixed_groups_singles_and_bad_groups_in_one_stream(target: str) -> None:
    empty = teacher_pb2.ScoreRequest(
        id="empty",
        context=common_pb2.Prompt(token_ids=common_pb2.TokenIds(ids=[5, 6])),
        continuations=[
            common_pb2.Prompt(token_ids=common_pb2.TokenIds(ids=[7])),
            common_pb2.Prompt(token_ids=common_pb2.TokenIds()),
        ],
    )
    both = score_group_request("both", [5, 6], [[7]])
    both.target.CopyFrom(common_pb2.Prompt(token_ids=common_pb2.TokenIds(ids=[8])))
    async with AsyncTeacherClient(target) as client:
        out = await client.score(
            [
                score_group_request("g1", "Hello there", [" friend", " world and more"]),
                score_request("one", "Hello there", " friend"),
                empty,
                both,
                score_group_request("g2", [5, 6, 7], [[8, 9], [10]]),
            ]
        )
    assert len(out["g1"].continuations) == 2 and len(out["g2"].continuations) == 2
    assert out["one"].logprobs[0] == pytest.approx(out["g1"].continuations[0].logprobs[0], abs=1e-4)
    assert out["empty"].error.field == "continuations[1]" and "at least one token" in out["empty"].error.message
    assert out["both"].error.field == "target"


async def test_probe_group_equals_scoring_each_candidate_token() -> None:
    """The RRM's expected mode: candidate-token log-probs after each continuation of one shared prompt."""
    from proctor.engine.backends.torch.generator import TorchGenerator
    from proctor.engine.items import ProbeGroupItem, ScoreItem

    backend = TorchGenerator("builtin:tiny", device="cpu")
    await backend.start()
    try:
        context = [5, 17, 99, 230, 41, 8]
        conts = [[7], [7, 12, 400], [300, 2]]
        candidates = [[10, 11, 12], [10, 11, 12], [44]]
        group = await backend.probe_group(ProbeGroupItem(context, conts, candidates))
        for cont, ids, got in zip(conts, candidates, group.scores, strict=True):
            for token, logprob in zip(ids, got.logprobs, strict=True):
                single = await backend.score(ScoreItem(context + cont, [token]))
                assert logprob == pytest.approx(single.logprobs[0], abs=1e-4)
    finally:
        await backend.close()
