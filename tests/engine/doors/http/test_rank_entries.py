"""How the HTTP front lays out one position's log-prob entries in vLLM's shape: the target, then the top-k."""

from __future__ import annotations

from proctor.engine.doors.http.teacher_calls import Entry, _position


def test_a_token_inside_the_top_k_has_its_place_there_as_rank() -> None:
    """vLLM's top-k entries overwrite the counted rank: two tied tokens at the top read ranks 1 and 2 (the count
    would give both 2); outside the top-k the count stands."""
    tied = _position(5, -0.69, [9, 5, 2], [-0.69, -0.69, -2.0], 2, rank=2)
    assert tied == [Entry(5, -0.69, 2), Entry(9, -0.69, 1)]
    first = _position(9, -0.69, [9, 5, 2], [-0.69, -0.69, -2.0], 2, rank=2)
    assert first[0] == Entry(9, -0.69, 1)
    outside = _position(7, -5.0, [9, 5], [-0.69, -0.69], 2, rank=40)
    assert outside == [Entry(7, -5.0, 40), Entry(9, -0.69, 1), Entry(5, -0.69, 2)]
