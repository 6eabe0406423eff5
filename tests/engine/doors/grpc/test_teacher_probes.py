"""Score's token-id probes over gRPC (ScoreRequest.probes -> ScoreResult.probe_logprobs), on the tiny teacher,
checked against a float64 reference; every refusal names its field and fails only its item."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from proctor.clients.teacher import AsyncTeacherClient, score_request
from proctor.v1 import common_pb2, teacher_pb2

pytestmark = pytest.mark.asyncio(loop_scope="session")

INVALID_ARGUMENT = 3


async def test_probes_equal_a_float64_reference(target: str, reference: Callable[[list[int]], torch.Tensor]) -> None:
    gen = torch.Generator().manual_seed(1)
    cases = {}
    for i, (c, t, width) in enumerate([(1, 1, 1), (5, 9, 20), (17, 3, 128), (40, 40, 7)]):
        context = torch.randint(0, 512, (c,), generator=gen).tolist()
        tgt = torch.randint(0, 512, (t,), generator=gen).tolist()
        rows = [
            torch.randint(0, 512, (width - j % 3 if width > 2 else width,), generator=gen).tolist() for j in range(t)
        ]
        cases[f"p{i}"] = (context, tgt, rows[: max(1, t - 1)])  # the last positions may probe nothing
    plain = score_request("plain", [3, 4], [5, 6, 7], top_logprobs=2)
    async with AsyncTeacherClient(target) as client:
        results = await client.score(
            [plain, *(score_request(k, c, t, top_logprobs=2, probes=p) for k, (c, t, p) in cases.items())]
        )
    assert not results["plain"].HasField("error") and not results["plain"].probe_logprobs
    for key, (context, tgt, rows) in cases.items():
        r = results[key]
        assert not r.HasField("error"), r.error
        ref = reference(context + tgt)[len(context) - 1 : len(context) + len(tgt) - 1]
        expected_target = ref.gather(1, torch.tensor(tgt).unsqueeze(1)).squeeze(1)
        assert torch.allclose(torch.tensor(list(r.logprobs), dtype=torch.float64), expected_target, atol=1e-4), key
        expected = torch.cat([ref[i, ids] for i, ids in enumerate(rows)])
        got = torch.tensor(list(r.probe_logprobs), dtype=torch.float64)
        assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-4), key


async def test_bad_probes_are_refused_naming_the_field(target: str) -> None:
    group = teacher_pb2.ScoreRequest(
        id="group",
        context=common_pb2.Prompt(token_ids=common_pb2.TokenIds(ids=[1, 2])),
        continuations=[common_pb2.Prompt(token_ids=common_pb2.TokenIds(ids=[3]))],
        probes=[common_pb2.TokenIds(ids=[4])],
    )
    bad = {
        "wide": (score_request("wide", [1], [2, 3], probes=[[1] * 129]), "probes[0]", "129 token ids > 128"),
        "vocab": (score_request("vocab", [1], [2, 3], probes=[[1], [2, 3, 512]]), "probes[1][2]", "vocabulary"),
        "rows": (score_request("rows", [1], [2, 3], probes=[[1], [2], [3]]), "probes", "3 rows for 2 target"),
        "group": (group, "probes", "not with continuations"),
    }
    good = score_request("good", [1], [2, 3], probes=[[1] * 128])
    async with AsyncTeacherClient(target) as client:
        results = await client.score([*(r for r, _, _ in bad.values()), good])
    for key, (_, field, says) in bad.items():
        assert results[key].error.code == INVALID_ARGUMENT, key
        assert results[key].error.field == field and says in results[key].error.message, results[key].error
    assert not results["good"].HasField("error") and len(results["good"].probe_logprobs) == 128
