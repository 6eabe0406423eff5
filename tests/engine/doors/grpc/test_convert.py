"""The gRPC door's conversions, against the generated message classes."""

from __future__ import annotations

from proctor.engine.doors.grpc import convert
from proctor.engine.items import TopK
from proctor.v1 import teacher_pb2


def test_top_k_is_written_into_the_result_row_major_and_none_leaves_it_unset() -> None:
    result = teacher_pb2.ScoreResult(id="a")
    convert.fill_top_k(result.top, None)
    assert not result.HasField("top")
    convert.fill_top_k(
        result.top, TopK(ids=[[5, 6], [7, 8], [9, 4]], logprobs=[[-0.5, -1.0], [-0.25, -2.0], [0.0, -3.0]])
    )
    assert result.top.k == 2
    assert list(result.top.token_ids) == [5, 6, 7, 8, 9, 4]
    assert list(result.top.logprobs) == [-0.5, -1.0, -0.25, -2.0, 0.0, -3.0]
    nothing_scored = teacher_pb2.ScoreResult(id="b")
    convert.fill_top_k(nothing_scored.top, TopK())
    assert nothing_scored.HasField("top") and nothing_scored.top.k == 0  # asked for, and empty: still present
