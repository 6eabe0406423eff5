"""Symbolic Knowledge Distillation domain: templates byte-exact against the paper rules, filters, names, cut-offs."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from proctor.engine.items import FinishReason
from proctor.engine.skd import critic_input, cutoffs
from proctor.engine.skd import prompts as skd

RULES = Path(__file__).resolve().parents[3] / "docs" / "paper-rules.md"


def _papers_table(source: Path) -> dict[str, tuple[str, str]]:
    """relation -> (prefix, example) as written in the rules' §1.2 table, with its escapes decoded."""
    rows = {}
    for line in source.read_text().splitlines():
        found = re.match(r"\| (\w+) \| `(.*?)` \| `(.*)` \|$", line)
        if found and found.group(1) in skd.RELATIONS:
            rows[found.group(1)] = (found.group(2).replace("\\n", "\n"), found.group(3).replace("\\n", "\n"))
    return rows


def test_templates_are_byte_exact_against_the_paper_rules() -> None:
    table = _papers_table(RULES)
    assert set(table) == set(skd.RELATIONS)
    for name, rel in skd.RELATIONS.items():
        assert (rel.prefix, rel.example) == table[name], name


def test_event_prompt_has_ten_reshuffled_shots_and_the_open_slot() -> None:
    first = skd.event_prompt(random.Random(1))
    second = skd.event_prompt(random.Random(2))
    assert first != second and first.endswith("\n\n\n11. Event:")
    shots = re.findall(r"(\d+)\. Event: (.*?)\n\n\n", first)
    assert [int(n) for n, _ in shots] == list(range(1, 11))
    assert all(event in skd.seed_events() for _, event in shots)
    assert first == skd.event_prompt(random.Random(1)), "seeded"


def test_inference_prompt_names_and_open_slot() -> None:
    prompt = skd.inference_prompt("xWant", "PersonX asks PersonY for help", random.Random(3))
    assert prompt.startswith("How does this situation affect each character's wants?\n\n\nSituation 1: ")
    assert prompt.endswith("Situation 6: Alex asks Chris for help.\n\nWants: As a result, Alex wants")
    assert "PersonX" not in prompt and "PersonY" not in prompt
    assert prompt.count("Situation ") == 6


def test_seed_data_sizes() -> None:
    assert len(skd.seed_events()) >= 100 and all(e.startswith("PersonX") for e in skd.seed_events())
    assert all(len(v) >= 5 for v in skd.worked_examples().values())
    assert not {"Alex", "Chris"} & set(skd.first_names())


def test_name_pairs_are_the_draws_of_random_sample() -> None:
    """name_pair is rng.sample(names, 2) without its overhead: the same two names for the same generator state."""
    for seed in range(3000):
        pair = skd.name_pair(random.Random(seed))
        assert pair == tuple(random.Random(seed).sample(skd.first_names(), 2)) and pair[0] != pair[1]


def _c(text: str, lp: float = -1.0, finish: FinishReason = FinishReason.STOP, stop: str = "\n\n") -> skd.Candidate:
    return skd.Candidate(text, finish, stop, lp)


def test_event_filters_in_order() -> None:
    samples = [
        _c(" PersonX goes home", -1.0),
        _c(" PersonX goes home", -1.0),  # duplicate
        _c(" PersonY goes home", -1.0),  # does not start with PersonX
        _c(" PersonX runs away", -2.0, FinishReason.LENGTH, ""),  # did not stop
        _c(" PersonX eats @ noon", -3.0),  # bad character, dropped after the likelihood cut
        _c(" PersonX sings", -4.0),
        _c(" PersonX swims", -50.0),  # least likely: int(0.8 * 6 distinct) = 4 kept
        _c(" PersonX reads", -5.0),
        _c(" PersonX’s dog barks", -6.0),  # ’ is allowed; but the 5th most likely of 6
    ]
    kept, counts = skd.filter_events(samples)
    assert [c.text for c in kept] == ["PersonX goes home", "PersonX sings", "PersonX reads"]
    assert (counts.samples, counts.stopped_as_personx, counts.distinct, counts.likely, counts.kept) == (9, 7, 6, 4, 3)


def test_tail_post_processing_and_names_back() -> None:
    tails = [_c(" to thank Chris."), _c("ok"), _c(" to thank Chris"), _c(" Alexandra smiles"), _c(" Alex rests.")]
    tails.append(_c(" ok"))  # 3 raw characters: kept, as "ok"
    got = [c.text for c in skd.clean_tails(tails)]
    assert got == ["to thank PersonY", "PersonXandra smiles", "PersonX rests", "ok"]
    ours = skd.NameChoices(whole_word_names_back=True)
    got = [c.text for c in skd.clean_tails(tails, ours)]
    assert got == ["to thank PersonY", "Alexandra smiles", "PersonX rests", "ok"]
    assert skd.names_back("Alex helps Chris and Chris's dog") == "PersonX helps PersonY and PersonY's dog"


def test_critic_input_pairs_are_seeded_with_two_different_names() -> None:
    pairs = critic_input.triple_pairs("PersonX helps PersonY", "xWant", "to rest", seed=4)
    assert len(pairs) == 5
    assert pairs == critic_input.triple_pairs("PersonX helps PersonY", "xWant", "to rest", seed=4)
    for p in pairs:
        x, _, y = p.first.split()
        assert x != y and p.second == f"as a result, {x} wants to rest"
    assert len({p.first for p in pairs}) > 1


def test_cutoffs_on_a_synthetic_precision_recall_curve() -> None:
    scores = [0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    labels = [True, True, False, True, True, False, True, False, True, False]
    result = cutoffs.cutoffs(scores, labels)  # 6 positives; recall at t counts scores >= t
    high = result["high"]  # ascending: the first threshold with recall <= 0.5 is 0.8 (3 of 6)
    assert high.threshold == 0.8 and high.validation.recall == 0.5 and high.validation.precision == pytest.approx(3 / 4)
    medium = result["medium"]  # recall at 0.5 is 5/6 > 0.8; at 0.6 it is 4/6 <= 0.8
    assert medium.threshold == 0.6 and medium.validation.recall == pytest.approx(4 / 6)
    with pytest.raises(ValueError):
        cutoffs.cutoff_at_recall([0.1], [False], 0.5)
