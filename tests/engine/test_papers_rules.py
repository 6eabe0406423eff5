"""The SKD rules of paper rules §1.1-1.4, each checked against facts read out of that file's own text.

The facts (numbers, strings, worked examples) are parsed from the text, not taken from the code's constants, so a
change to either shows.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from pathlib import Path

import pytest

from proctor.engine.items import FinishReason, GenerateItem, Generation
from proctor.engine.jobs import distill
from proctor.engine.server.lifecycle import ProctorServer
from proctor.engine.skd import critic_input, cutoffs, triples
from proctor.engine.skd import prompts as skd
from proctor.engine.skd.event_pool import EventPool

pytestmark = pytest.mark.asyncio(loop_scope="session")

RULES = Path(__file__).resolve().parents[2] / "docs" / "paper-rules.md"
TEXT = RULES.read_text().split("-->\n", 1)[1]


def _section(title: str) -> str:
    start = TEXT.index(title)
    end = TEXT.find("\n#", start + 1)
    return TEXT[start : end if end != -1 else len(TEXT)]


def _bullet(section: str, starts: str) -> str:
    """One `- **...**` / `- ...` bullet of a section, its continuation lines joined."""
    text = _section(section)
    start = text.index(f"- {starts}")
    end = text.find("\n- ", start + 1)
    return " ".join(line.strip() for line in text[start : end if end != -1 else len(text)].splitlines())


def _c(text: str, lp: float = -1.0, finish: FinishReason = FinishReason.STOP, stop: str = "\n\n") -> skd.Candidate:
    return skd.Candidate(text, finish, stop, lp)


# ---- 1.1 events ------------------------------------------------------------------------------------------------


async def test_event_sampling_is_the_papers() -> None:
    line = _bullet("### 1.1 Events", "Sampling:")
    number = {
        name: float(re.search(rf"{pattern} ([\d.]+)", line).group(1))  # type: ignore[union-attr]
        for name, pattern in {
            "temperature": "temperature",
            "top_p": "top_p",
            "presence_penalty": "presence penalty",
            "frequency_penalty": "frequency penalty",
            "max_tokens": "max",
            "n": "n =",
        }.items()
    }
    params = skd.EVENT_SAMPLING
    assert {k: float(getattr(params, k)) for k in number} == number
    assert params.stop == (json.loads(re.search(r'stop `(".*?")`', line).group(1)),)  # type: ignore[union-attr]
    assert params.logprobs


async def test_stopped_samples_are_kept_on_either_kind_of_stop() -> None:
    rule = _bullet("### 1.4", "**Stopped samples**")
    assert "the stop string **or** the end of sequence" in rule
    pool = [_c(f" PersonX event {i}", -i) for i in range(5)]
    pool += [_c(" PersonX ends on eos", -1.5, FinishReason.STOP, "2")]  # the end-of-sequence token id
    pool += [_c(" PersonX runs out of tokens", -0.1, FinishReason.LENGTH, "")]
    kept, counts = skd.filter_events(pool)
    assert "PersonX ends on eos" in [c.text for c in kept]
    assert "PersonX runs out of tokens" not in [c.text for c in kept] and counts.stopped_as_personx == 6


async def test_letters_and_digits_are_unicode() -> None:
    rule = _bullet("### 1.4", "**Letters and digits**")
    example = re.search(r"so `(.*?)` is kept", rule).group(1)  # type: ignore[union-attr]
    allowed = re.search(r"letters, digits, space and `(.*?)`, or shorter", _section("### 1.1")).group(1)  # type: ignore[union-attr]
    assert example == "PersonX visits Zürich"
    assert skd.event_characters_ok(example) and skd.event_characters_ok(f"PersonX 12 {allowed}")
    for bad in ("PersonX eats @ noon", "PersonX\tgoes", "PersonX pays 5€", "PersonX_goes"):
        assert not skd.event_characters_ok(bad), bad
    kept, _ = skd.filter_events(
        [
            _c(f" PersonX sees {city}", -float(i))
            for i, city in enumerate(["Zürich"] * 1 + ["Köln", "Malmö", "Łódź", "Ørsted"])
        ]
    )
    assert [c.text for c in kept] == [
        "PersonX sees Zürich",
        "PersonX sees Köln",
        "PersonX sees Malmö",
        "PersonX sees Łódź",
    ]


async def test_the_twenty_percent_drop_is_over_the_runs_pool_after_duplicates() -> None:
    rule = _bullet("### 1.4", "**The 20 % drop**")
    assert "`int(0.8 · N)` most likely are kept" in rule and "last occurrence" in rule
    # Two prompts' samples in one pool, one event repeated across them: 9 distinct events, int(0.8 * 9) = 7 kept.
    first = [_c(f" PersonX does thing {i}", -float(i)) for i in range(5)]
    second = [_c(f" PersonX does thing {i}", -float(i)) for i in range(5, 9)] + [_c(" PersonX does thing 0", -100.0)]
    pool = EventPool(9, 0, skd.EVENT_SAMPLING)
    pool.add([first, second])
    assert pool.counts.distinct == 9 and pool.counts.likely == int(0.8 * 9) == 7
    kept = pool.events()
    # "thing 0" now carries its last log-prob (-100), the least likely; then thing 8 (-8) goes too.
    assert kept == [f"PersonX does thing {i}" for i in range(1, 8)]
    # Per prompt with floor rounding it would have dropped 1 of 5 and 0 of 4 (before the cross-prompt duplicate).
    for n in range(1, 40):
        events = [_c(f" PersonX thing {i}", -float(i)) for i in range(n)]
        assert len(skd.filter_events(events)[0]) == int(0.8 * n)


async def test_the_pool_says_exactly_why_it_is_short() -> None:
    pool = EventPool(3, 0, skd.EVENT_SAMPLING, max_prompts=2)
    while prompts := pool.next_round():
        pool.add([[_c(" PersonY is not the subject"), _c(" PersonX ok", -1.0)] for _ in prompts])
    assert pool.prompts == 2 and pool.events() == []  # int(0.8 * 1) = 0
    assert pool.shortfall() == (
        "the teacher's events reached 0 of 3 after 2 event prompts (the budget: 2); 4 samples: 2 stopped and start "
        "with PersonX, 1 distinct, 0 after dropping the least likely 20 %, 0 with only letters, digits, spaces and "
        "',\".-’$ and at least 7 characters"
    )


async def test_event_prompts_are_seeded_by_index_and_rounds_grow_with_the_yield() -> None:
    pool = EventPool(10, 3, skd.EVENT_SAMPLING)
    [(prompt, params)] = pool.next_round()
    assert prompt.endswith("11. Event:") and params.seed is not None
    pool.add([[_c(f" PersonX thing {i}", -float(i)) for i in range(5)]])  # 4 kept from one prompt
    again = EventPool(10, 3, skd.EVENT_SAMPLING)
    assert again.next_round() == [(prompt, params)], "the same run, the same prompts"
    assert len(pool.next_round()) == 2  # 6 missing at 4 per prompt


# ---- 1.2 inferences --------------------------------------------------------------------------------------------


async def test_short_tails_are_measured_on_the_raw_text() -> None:
    rule = _bullet("### 1.4", "**Short tails**")
    raw, survivor = re.search(r'`"(.*?)"` survives as `(.*?)`', rule).groups()  # type: ignore[union-attr]
    limit = int(re.search(r"drop tails of (\d+) characters or fewer", _section("### 1.2")).group(1))  # type: ignore[union-attr]
    assert [c.text for c in skd.clean_tails([_c(raw)])] == [survivor]
    assert skd.clean_tails([_c("x" * limit)]) == [] and len(skd.clean_tails([_c("x" * (limit + 1))])) == 1


async def test_worked_examples_are_the_first_five_in_order() -> None:
    rule = _bullet("### 1.4", "**Worked examples**")
    count = int(re.search(r"the first (\d+) of the relation's list", rule).group(1))  # type: ignore[union-attr]

    def named(text: str) -> str:  # the text as a pattern where each placeholder is some first name
        return re.escape(text).replace("PersonX", r"[A-Z][a-z]+").replace("PersonY", r"[A-Z][a-z]+")

    for relation, rel in skd.RELATIONS.items():
        examples = skd.worked_examples()[relation]
        assert len(examples) > count, "the list holds more than the prompt takes"
        shots = "".join(named(rel.example.format(n=n, head=h, tail=t)) for n, (h, t) in enumerate(examples[:count], 1))
        target = re.escape(skd.replace_names(rel.open_slot(count + 1, "PersonX waits"), *skd.TARGET_NAMES))
        for seed in range(5):
            prompt = skd.inference_prompt(relation, "PersonX waits", random.Random(seed))
            assert re.fullmatch(re.escape(rel.prefix) + shots + target, prompt), (relation, seed)


async def test_names_are_the_authors_by_default_and_ours_by_name() -> None:
    kept = TEXT[TEXT.index("Where proctor deliberately differs") :]
    whole_word = re.search(r"turns `(\w+)` into `(\w+)`", kept).groups()  # type: ignore[union-attr]
    assert skd.names_back(whole_word[0]) == whole_word[1]  # the authors' str.replace
    assert skd.names_back(whole_word[0], whole_words=True) == whole_word[0]  # ours
    rng = random.Random(0)
    same = sum(len(set(skd.example_names(rng, distinct=False))) == 1 for _ in range(20_000))
    assert same > 0, "the authors' draws may give both placeholders one name"
    assert all(len(set(skd.example_names(rng, distinct=True))) == 2 for _ in range(5_000))
    assert skd.NameChoices() == skd.NameChoices(distinct_example_names=False, whole_word_names_back=False)


# ---- 1.3 the critic --------------------------------------------------------------------------------------------


async def test_critic_relation_phrases_are_the_papers() -> None:
    text = " ".join(_section("### 1.3").split())
    phrases = dict(re.findall(r"(\w+) `(.*?)`", text[text.index("Relation phrases:") :]))
    assert {k: v for k, v in phrases.items() if k in critic_input.RELATION_PHRASES} == critic_input.RELATION_PHRASES


async def test_critic_input_is_fixed_by_ftfy_after_the_names() -> None:
    rule = _bullet("### 1.4", "**Critic input**")
    before, after = re.search(r"it turns `(.)` into `(.)`", rule).groups()  # type: ignore[union-attr]
    pairs = critic_input.triple_pairs(f"PersonX{before}s dog barks at PersonY", "xReact", f"sorry{before}", seed=1)
    for pair in pairs:
        assert before not in pair.first + pair.second and f"{after}s dog barks at" in pair.first
        assert pair.second.endswith(f"sorry{after}")
    # HTML entities are unescaped too (ftfy's defaults), mojibake repaired
    [pair] = critic_input.triple_pairs("PersonX eats fish &amp; chips", "xWant", "cafÃ©", seed=1, draws=1)
    assert pair.first.endswith("eats fish & chips") and pair.second.endswith("café")


async def test_fix_text_shortcut_equals_ftfy() -> None:
    import string

    import ftfy

    rng = random.Random(0)
    alphabet = string.printable + "&’é\u00a0Ã©\x1b\x85"
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert critic_input.fix_text(text) == ftfy.fix_text(text), repr(text)


async def test_cutoff_worked_example() -> None:
    rule = _bullet("### 1.4", "**Cut-offs**")
    example = re.search(r"Example: valid ([\d., ]+), invalid ([\d., ]+), target ([\d.]+) → ([\d.]+)\.", rule)
    assert example is not None
    valid, invalid = ([float(x) for x in group.split(", ")] for group in example.group(1, 2))
    target, want = float(example.group(3)), float(example.group(4))
    scores, labels = valid + invalid, [True] * len(valid) + [False] * len(invalid)
    found = cutoffs.cutoff_at_recall(scores, labels, target)
    assert found.threshold == want
    assert found.validation.recall <= target
    # averaged with a test set's cut-off when both are given
    test = ([0.95, 0.4, 0.2], [True, True, False])  # recall at 0.95 is 1/2 <= 0.5 -> 0.95
    assert cutoffs.cutoff_at_recall(scores, labels, target, test).threshold == pytest.approx((want + 0.95) / 2)


async def test_cutoff_curve_counts_scores_at_or_above_and_ties_together() -> None:
    points = cutoffs.precision_recall_curve([0.2, 0.5, 0.5, 0.9], [False, True, False, True])
    assert [(p.threshold, p.recall, p.precision) for p in points] == [
        (0.2, 1.0, 0.5),
        (0.5, 1.0, 2 / 3),
        (0.9, 0.5, 1.0),
    ]
    with pytest.raises(ValueError, match=r"no threshold has recall <= 0\.5"):
        cutoffs.cutoff_at_recall([0.9, 0.9, 0.1], [True, True, False], 0.5)
    with pytest.raises(ValueError, match="no positive"):
        cutoffs.cutoff_at_recall([0.1], [False], 0.5)
    assert cutoffs.TARGET_RECALLS == {"high": 0.5, "medium": 0.8}


async def test_student_input_is_the_papers_format_with_the_event_stripped() -> None:
    fmt = re.search(r'reads `"(.*?)"`', _section("### 1.3")).group(1)  # type: ignore[union-attr]
    assert "stripped" in _bullet("### 1.4", "**Student input**")
    got = distill.comet_input("  PersonX goes home ", "xWant")
    assert got == fmt.format(event="PersonX goes home", relation="xWant")


async def test_inference_sampling_is_the_papers() -> None:
    line = _bullet("### 1.2 Inferences", "Per (event, relation):")
    params = skd.INFERENCE_SAMPLING
    assert float(re.search(r"temperature ([\d.]+)", line).group(1)) == params.temperature  # type: ignore[union-attr]
    assert float(re.search(r"top_p ([\d.]+)", line).group(1)) == params.top_p  # type: ignore[union-attr]
    assert int(re.search(r"n = (\d+)", line).group(1)) == params.n  # type: ignore[union-attr]
    assert int(re.search(r"max (\d+) tokens", line).group(1)) == params.max_tokens  # type: ignore[union-attr]
    assert params.stop == (json.loads(re.search(r'stop `(".*?")`', line).group(1)),)  # type: ignore[union-attr]
    assert params.logprobs and "log-probs returned" in line


async def test_the_seven_prompts_of_an_event_go_out_together(tiny_server: ProctorServer) -> None:
    """One backend call carries every relation's prompt of the event (the real tiny teacher, observed)."""
    assert "The seven prompts of one event go out together" in " ".join(_section("### 1.2").split())
    [teacher] = {id(g): g for g in tiny_server.backends.generators()}.values()
    calls: list[list[GenerateItem]] = []

    class Observed:
        info = teacher.info
        tokenize = teacher.tokenize

        async def generate_many(self, items: list[GenerateItem]) -> list[Generation]:
            calls.append(items)
            return list(await teacher.generate_many(items))

    params = dataclasses.replace(skd.INFERENCE_SAMPLING, n=1, max_tokens=2)
    await triples.infer(Observed(), "PersonX waits", list(skd.RELATIONS), 1, params)  # type: ignore[arg-type]
    assert len(calls) == 1 and len(calls[0]) == len(skd.RELATIONS) == 7
    for item, relation in zip(calls[0], skd.RELATIONS, strict=True):
        rng = random.Random(skd.derive_seed(1, "PersonX waits", relation))
        assert item.prompt_ids == teacher.tokenize(skd.inference_prompt(relation, "PersonX waits", rng), True)


async def test_the_critic_scores_the_mean_of_five_name_draws_at_two_target_recalls() -> None:
    from proctor.engine.config import CriticConfig

    text = " ".join(_section("### 1.3").split())
    draws = int(re.search(r"Score = \*\*mean over (\d+) draws\*\*", text).group(1))  # type: ignore[union-attr]
    assert CriticConfig().draws == draws and len(critic_input.triple_pairs("PersonX runs", "xWant", "to rest")) == draws
    recalls = dict(re.findall(r'"(high|medium)" (?:filtration )?= recall (\d+(?:\.\d+)?)', text))
    assert {k: float(v) for k, v in recalls.items()} == cutoffs.TARGET_RECALLS
    assert "kept if its score is **greater than** the cut-off" in text
