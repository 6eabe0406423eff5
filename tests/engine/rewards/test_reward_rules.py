"""Atom-Searcher's rules: format, outcome F1, atoms, schedule, RRM prompt parsing (pure Python, paper rules §2)."""

from __future__ import annotations

import pytest

from proctor.engine.errors import ItemError
from proctor.engine.rewards import alpha_schedule, outcome, rollout, rrm


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


def test_tokens_are_the_literal_normalisation() -> None:
    import random
    import re
    import string

    rng = random.Random(0)
    alphabet = "ab " + string.punctuation + "\t\n\u00a0\u2003\u201c\u2014\x1c\u00e9"
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        spaced = "".join(" " if c in string.punctuation else c for c in text)
        literal = re.sub(r"\s+", " ", spaced).strip()
        assert outcome.tokens(text) == (set(literal.split(" ")) if literal else set()), repr(text)


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
    assert alpha_schedule.alpha(0, 100) == 0.5
    assert alpha_schedule.alpha(50, 100) == 0.25
    assert alpha_schedule.alpha(100, 100) == 0.0
    for step in (-1, 101):
        with pytest.raises(ItemError) as err:
            alpha_schedule.alpha(step, 100)
        assert err.value.field == "training_step"
    with pytest.raises(ItemError) as err:
        alpha_schedule.alpha(0, 0)
    assert err.value.field == "total_steps"
    assert alpha_schedule.mix(0.25, 0.8, 0.4) == pytest.approx(0.5)


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


def _reference_check_format(response: str) -> rollout.FormatVerdict:
    """DeepResearcher's rule written as literally as the paper rules states it: lowercase, count, scan, first answer."""
    import re

    text = response.lower()
    for tag in rollout.FORMAT_TAGS:
        opening, closing = f"<{tag}>", f"</{tag}>"
        if text.count(opening) != text.count(closing):
            return rollout.FormatVerdict(
                False, f"unbalanced <{tag}>: {text.count(opening)} open, {text.count(closing)} close", ""
            )
        pos = 0
        while (start := text.find(opening, pos)) != -1:
            end = text.find(closing, start + len(opening))
            if end == -1:
                return rollout.FormatVerdict(False, f"<{tag}> at offset {start} has no </{tag}> after it", "")
            pos = end + len(closing)
    found = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
    if found is None:
        return rollout.FormatVerdict(False, "no <answer>...</answer> block", "")
    return rollout.FormatVerdict(True, "", found.group(1).strip())


def _reference_atoms(response: str) -> list[rollout.Atom]:
    """Think blocks found on the lowercased text (lazy, across newlines), atoms by the plain lazy pattern."""
    import re

    lowered = response.lower()
    assert len(lowered) == len(response)  # offsets carry over only then
    blocks = [response[m.start(1) : m.end(1)] for m in re.finditer(r"<think>(.*?)</think>", lowered, re.DOTALL)]
    atom = re.compile(r"<([A-Z][A-Z0-9_]*)>(.*?)</\1>", re.DOTALL)
    return [
        rollout.Atom(m.group(1), m.group(2).strip(), turn) for turn, b in enumerate(blocks) for m in atom.finditer(b)
    ]


def test_one_pass_parser_matches_the_literal_rule() -> None:
    """parse() reads the format verdict, the answer and the atoms off one scan of the tags; on random tag soup it
    must agree with the rule done literally (lowercase first), Kelvin signs and final sigmas included."""
    import random
    import re

    pieces = ["<think>", "</think>", "<THINK>", "</Think>", "<thin\u212a>", "</thin\u212a>", "<th\u0130nk>"]
    pieces += ["<answer>", "</answer>", "<Answer>", "</ANSWER>", "<tool_call>", "</tool_call>", "<TOOL_CALL>"]
    pieces += ["<PLAN>", "</PLAN>", "<A>", "</A>", "<B>", "</B>", "<", ">", "/", "x", " ", "\n", "<PLAN", "</think"]
    pieces += ["\u00e9", "\u03a3", "A\u03a3", "\u0130"]
    rng = random.Random(0)
    for _ in range(20000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        got, want = rollout.check_format(text), _reference_check_format(text)
        assert (got.ok, got.answer) == (want.ok, want.answer), text
        if len(text.lower()) == len(text):
            assert got.reason == want.reason, text
            assert rollout.atoms(text) == _reference_atoms(text), text
        else:  # U+0130 lowercases to two characters: the reference's offsets are in the longer text
            assert re.sub(r"\d+", "N", got.reason) == re.sub(r"\d+", "N", want.reason), text


def test_parser_time_is_linear_on_hostile_rollouts() -> None:
    """Degenerate policies repeat tags; no rollout may cost more than a bounded time per kB. The quadratic pattern
    took 1.25 s on 12 kB of `<A>`; each case here is ~96 kB, so a quadratic parser would take over a minute."""
    import gc
    import random
    import time

    size = 96 * 1024
    blocks = ["<A>", "<A>x", "</A>", "<AB_1>", "</B>", "<think>", "</think>", "<", "x", "<answer>", "</answer>"]
    cases = {
        "unclosed tags in a think block": "<think>" + "<A>" * (size // 3) + "</think><answer>a</answer>",
        "unclosed tags, think left open": "<think>" + "<A>" * (size // 3),
        "many names, none closed": "<think>" + "".join(f"<N{i}>" for i in range(size // 8)) + "</think>",
        "closes before every open": "<think>" + "</A>" * (size // 8) + "<A>" * (size // 6) + "</think>",
        "every atom closed": "<think>" + "<A>x</A>" * (size // 8) + "</think><answer>a</answer>",
        "think blocks only": "<think></think>" * (size // 15) + "<answer>a</answer>",
    }
    rng = random.Random(0)
    for i in range(4):
        cases[f"random tag soup {i}"] = "".join(rng.choice(blocks) for _ in range(size // 3))
    for name, text in cases.items():
        # A full collection of the test process's heap is not the parser's cost (the server freezes its heap
        # after loading for the same reason): measured with the collector paused.
        gc.collect()
        gc.disable()
        try:
            started = time.process_time()
            rollout.parse(text)
            ms_per_kb = (time.process_time() - started) * 1e3 / (len(text) / 1024)
        finally:
            gc.enable()
        assert ms_per_kb < 5.0, f"{name}: {ms_per_kb:.2f} ms per kB"
