"""What OpenRLHF sends to /reward, taken apart: the response inside a query whose prompt was cut from the left,
and the labels' shapes."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from proctor.engine.doors.http.openrlhf import golds, overlap, response_of


@given(
    prompt=st.text(alphabet="ab <>|\n", max_size=300),
    cut=st.integers(min_value=0, max_value=300),
    response=st.text(alphabet="xyz<>/", max_size=50),
)
def test_the_response_is_found_after_a_prompt_cut_anywhere(prompt: str, cut: int, response: str) -> None:
    """Whatever part of the prompt the left cut keeps, what follows it is the response (here a response whose first
    character is not in the prompt's alphabet, so that the boundary is unambiguous)."""
    assume(prompt[cut:])
    assert response_of(prompt, prompt[cut:] + "\x01" + response) == "\x01" + response


def test_overlap_is_the_longest_start_of_the_query_ending_the_prompt() -> None:
    assert overlap("abcabc", "bcabcX") == 5
    assert overlap("aaaa", "aaaaaaa") == 4  # never more than the prompt
    assert overlap("abc", "xyz") == 0
    assert overlap("", "xyz") == 0


def test_labels_in_every_shape_openrlhf_sends() -> None:
    assert golds("Paris") == ["Paris"]
    assert golds(["Paris", "paris"]) == ["Paris", "paris"]
    assert golds('["Paris", "paris"]') == ["Paris", "paris"]
    assert golds("[not json") == ["[not json"]
    assert golds("[1, 2]") == ["[1, 2]"]  # a JSON list of numbers is not a list of golds: the text is the gold
    assert golds("") == [""] and golds(None) == []
