"""Atom-Searcher's rules: format, outcome F1, atoms, schedule, RRM prompt parsing (pure Python, PAPERS.md §2)."""

from __future__ import annotations

import pytest

from proctor.engine import outcome, rollout, rrm, schedule
from proctor.engine.errors import ItemError


@pytest.mark.parametrize(
    ("response", "ok", "answer"),
    [
        ("<think>x</think><answer>Paris</answer>", True, "paris"),
        ("<Think>x</THINK><Answer> Paris </answer>", True, "paris"),  # case-insensitive, stripped
        ("<think>x</think><answer></answer>", True, ""),  # empty answer is well-formed, scores 0
        ("<think>x</think><answer>a</answer><answer>b</answer>", True, "a"),  # first answer only
        ("<think>x<answer>a\nb</answer></think>", True, "a\nb"),  # across newlines
        ("<think>x</think>", False, ""),  # no answer
        ("<think>x<answer>a</answer>", False, ""),  # unbalanced think
        ("</think><think><answer>a</answer>", False, ""),  # counts equal, but the open tag has no close after it
        ("<think><think>x</think></think><answer>a</answer>", True, "a"),  # nested but balanced passes the rule
        ("<think>x</think><tool_call>{}<answer>a</answer>", False, ""),  # unbalanced tool_call
        ("<think>x</think></answer>a<answer>", False, ""),  # close before open
    ],
)
def test_format_check(response: str, ok: bool, answer: str) -> None:
    verdict = rollout.check_format(response)
    assert verdict.ok is ok, verdict.reason
    assert verdict.answer == answer
    assert bool(verdict.reason) is not ok


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("paris", "paris", 1.0),
        ("the city of paris", "paris", 2 * (1 / 4) * 1 / (1 / 4 + 1)),
        ("paris, france!", "france paris", 1.0),  # ASCII punctuation -> space, token sets
        ("paris paris paris", "paris", 1.0),  # sets, not bags
        ("", "paris", 0.0),
        ("paris", "", 0.0),
        ("...", "paris", 0.0),  # only punctuation -> no tokens
        ("“paris”", "paris", 0.0),  # non-ASCII quotes are not removed
        ("don't", "don t", 1.0),
    ],
)
def test_f1(prediction: str, gold: str, expected: float) -> None:
    assert outcome.f1(prediction, gold) == pytest.approx(expected)


def test_best_f1_takes_the_max_over_golds_split_on_answer_split() -> None:
    golds = ["New York City<|answer_split|>NYC", "the big apple"]
    assert outcome.best_f1("nyc", golds) == 1.0
    assert outcome.best_f1("big apple", golds) == pytest.approx(0.8)
    assert outcome.best_f1("boston", golds) == 0.0


def test_atoms_across_turns_with_open_tag_names() -> None:
    response = (
        "<think><PLAN>search first</PLAN> free text <OBSERVATION>nothing yet</OBSERVATION></think>"
        '<tool_call>{"q": "x"}</tool_call><tool_response><PLAN>not in a think block</PLAN></tool_response>'
        "<think><MY_OWN_KIND2>invented tag</MY_OWN_KIND2><lower>ignored</lower><BROKEN>no close</think>"
        "<answer>x</answer>"
    )
    found = rollout.atoms(response)
    assert [(a.type, a.text, a.turn) for a in found] == [
        ("PLAN", "search first", 0),
        ("OBSERVATION", "nothing yet", 0),
        ("MY_OWN_KIND2", "invented tag", 1),
    ]


def test_schedule() -> None:
    assert schedule.alpha(0, 100) == 0.5
    assert schedule.alpha(50, 100) == 0.25
    assert schedule.alpha(100, 100) == 0.0
    for step in (-1, 101):
        with pytest.raises(ItemError) as err:
            schedule.alpha(step, 100)
        assert err.value.field == "training_step"
    with pytest.raises(ItemError) as err:
        schedule.alpha(0, 0)
    assert err.value.field == "total_steps"
    assert schedule.mix(0.25, 0.8, 0.4) == pytest.approx(0.5)


def test_judgement_parser() -> None:
    assert rrm.parse_judgement("Atom 1: 7\nAtom 2: 10\n", 2) == [7, 10]
    assert rrm.parse_judgement("Sure.\n  atom 2 : 3\natom 1: 0", 2) == [0, 3]
    for junk in ("Atom 1: 7", "Atom 1: 7\nAtom 1: 8\nAtom 2: 1", "Atom 1: 11\nAtom 2: 1", "7, 8", ""):
        with pytest.raises(rrm.Unparseable):
            rrm.parse_judgement(junk, 2)


def test_aggregations() -> None:
    assert rrm.aggregate([10, 5, 0], "mean") == 0.5
    assert rrm.aggregate([10, 5, 2], "min") == 0.2
    assert rrm.aggregate([10, 5, 3], "last") == 0.3


def test_prompt_lists_numbered_typed_atoms_and_the_gold() -> None:
    atoms = [rollout.Atom("PLAN", "search", 0), rollout.Atom("VERIFICATION", "check", 1)]
    prompt = rrm.render_prompt(rrm.DEFAULT_TEMPLATE, "Who?", atoms, "paris")
    assert "Atom 1 [PLAN]: search\nAtom 2 [VERIFICATION]: check" in prompt
    assert "Reference answer: paris" in prompt and "exactly 2 lines" in prompt
    assert "Reference answer" not in rrm.render_prompt(rrm.DEFAULT_TEMPLATE, "Who?", atoms, None)


def _digit_tokenizer(text: str) -> list[int]:
    """Every character its own token (like tokenizers that split digits): ' 10' -> [' ', '1', '0']."""
    return [ord(c) for c in text]


def test_expected_score_distribution_with_multi_token_ten() -> None:
    plan = rrm.ScoreTokens.build(_digit_tokenizer, "Atom 1:")
    space, one, zero = ord(" "), ord("1"), ord("0")
    assert plan.sequences[10] == (space, one, zero)
    assert plan.probes == ((), (space,), (space, one))
    # p(' ') = 0.5 at the root; after the space, digits 0..9 get 0.1 each; after '1', '0' follows with 0.25
    next_probs = {
        (): {space: 0.5},
        (space,): {ord(str(k)): 0.1 for k in range(10)},
        (space, one): {zero: 0.25},
    }
    dist = plan.distribution(next_probs, renormalize=False)
    assert dist[10] == pytest.approx(0.5 * 0.1 * 0.25)
    assert dist[1] == pytest.approx(0.5 * 0.1 * 0.75)
    assert dist[3] == pytest.approx(0.05)
    assert sum(dist) == pytest.approx(0.5)
    renorm = plan.distribution(next_probs)
    assert sum(renorm) == pytest.approx(1.0)
    assert rrm.expected_value(renorm) == pytest.approx(sum(k * p for k, p in enumerate(dist)) / 0.5)


def test_unrolled_tag_patterns_match_the_plain_definitions() -> None:
    """The think / atom patterns are unrolled for speed; they must match exactly what the plain lazy patterns do."""
    import random
    import re

    from proctor.engine import rollout

    think = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)
    atom = re.compile(r"<([A-Z][A-Z0-9_]*)>(.*?)</\1>", re.DOTALL)
    pieces = ["<think>", "</think>", "<THINK>", "</Think>", "<PLAN>", "</PLAN>", "<A>", "</A>", "<B>", "</B>"]
    pieces += ["<", ">", "/", "x", " ", "\n", "<PLAN", "</think", "é"]
    rng = random.Random(0)
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        blocks = [m.group(1) for m in think.finditer(text)]
        assert [m.group(1) for m in rollout._THINK.finditer(text)] == blocks, text
        for block in blocks:
            assert [m.groups() for m in rollout._ATOM.finditer(block)] == [m.groups() for m in atom.finditer(block)]
