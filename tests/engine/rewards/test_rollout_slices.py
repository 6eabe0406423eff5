"""The rollout parser scans in slices (no regex call over a whole rollout holds the GIL): the slices must find
exactly what one scan finds, tags cut at a slice's end and tags longer than a slice included."""

from __future__ import annotations

import random

import pytest

from proctor.engine.rewards import rollout

PIECES = ["<think>", "</think>", "<THINK>", "</thin\u212a>", "<answer>", "</answer>", "<tool_call>", "</TOOL_CALL>"]
PIECES += ["<PLAN>", "</PLAN>", "<A>", "</A>", "<LONG_NAME_", "LONG_NAME>", "</LONG_NAME_LONG_NAME>", "<", ">", "/"]
PIECES += ["x", " ", "\n", "<PLAN", "</think", "\u2039", "<<", "A"]


def _soups(count: int) -> list[str]:
    rng = random.Random(1)
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 80))) for _ in range(count)]


@pytest.mark.parametrize("slice_chars", [1, 2, 3, 5, 8, 13])
def test_sliced_scan_finds_what_one_scan_finds(slice_chars: int, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = _soups(3000)
    whole = [rollout.parse(t) for t in texts]  # SLICE_CHARS far past every text: one slice each
    monkeypatch.setattr(rollout, "SLICE_CHARS", slice_chars)
    for text, want in zip(texts, whole, strict=True):
        assert rollout.parse(text) == want, text


def test_an_atom_name_longer_than_many_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    name = "N" * 1000
    text = f"<think>x<{name}>inside</{name}><B>b</B></think><answer>a</answer>"
    monkeypatch.setattr(rollout, "SLICE_CHARS", 7)
    assert rollout.atoms(text) == [rollout.Atom(name, "inside", 0), rollout.Atom("B", "b", 0)]


@pytest.mark.parametrize("slice_chars", [1, 2, 5])
def test_tokens_in_slices_are_the_tokens_of_the_whole(slice_chars: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import string

    from proctor.engine.rewards import outcome

    rng = random.Random(2)
    alphabet = "ab " + string.punctuation + "\t\n\u00a0\u2003\u201c\u2014\x1c\u00e9"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(3000)]
    whole = [outcome.tokens(t) for t in texts]
    monkeypatch.setattr(outcome, "SLICE_CHARS", slice_chars)
    for text, want in zip(texts, whole, strict=True):
        assert outcome.tokens(text) == want, repr(text)


def test_a_rollout_over_the_limit_fails_naming_it() -> None:
    from proctor.engine.errors import ItemError
    from proctor.engine.rewards.pipeline import RewardScorer, RewardSettings, RolloutInput

    scorer = RewardScorer(RewardSettings(mode="rules", max_rollout_chars=100), None)
    fits = RolloutInput("q" * 10, "<answer>paris</answer>" + "x" * 63, ["paris"], 0, 10)
    assert scorer.apply_rules(fits).format_ok  # 10 + 85 + 5 = 100 characters: at the limit
    over = RolloutInput("q" * 10, fits.response + "x", ["paris"], 0, 10)
    with pytest.raises(ItemError) as refused:
        scorer.apply_rules(over)
    assert refused.value.code == "INVALID_ARGUMENT"
    assert refused.value.field == "response"
    assert "101 characters (question 10, response 86, gold_answers 5) > reward.max_rollout_chars 100" in str(
        refused.value
    )
    golds = RolloutInput("", "<answer>x</answer>", ["g" * 90], 0, 10)
    with pytest.raises(ItemError, match=r"reward\.max_rollout_chars") as by_golds:
        scorer.apply_rules(golds)
    assert by_golds.value.field == "gold_answers"
