"""`proctor distill`: killed mid-run (SIGKILL) and resumed equals an uninterrupted run."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from proctor.engine.jobs import distill
from proctor.engine.skd import prompts as skd

pytestmark = pytest.mark.asyncio(loop_scope="session")

SEED_EVENTS = skd.DATA / "seed_events.txt"

EVENTS = ["PersonX goes to the store", "PersonX calls PersonY", "PersonX bakes bread", "PersonX loses a bet",
          "PersonX paints a wall", "PersonX wins a race"]  # fmt: skip


def _args(target: str, output: Path, events: Path) -> list[str]:
    return [
        sys.executable, "-m", "proctor.engine.cli", "distill", "--server", target, "--output", str(output),
        "--events", str(events), "--relations", "xWant,xReact", "--chunk-events", "2", "--inference-n", "3",
        "--seed", "5", "--cutoffs", "high=0.6,medium=0.5",
    ]  # fmt: skip


async def _run(args: list[str]) -> int:
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    return proc.returncode


async def test_killed_and_resumed_equals_uninterrupted(target: str, tmp_path: Path) -> None:
    events = tmp_path / "events.txt"
    events.write_text("\n".join(EVENTS) + "\n")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    await _run(_args(target, whole, events))

    proc = await asyncio.create_subprocess_exec(
        *_args(target, resumed, events), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    progress = resumed / "progress.json"
    for _ in range(600):
        if progress.exists() and json.loads(progress.read_text())["chunks"] >= 1:
            break
        await asyncio.sleep(0.05)
    proc.kill()
    await proc.wait()
    chunks = json.loads(progress.read_text())["chunks"]
    assert chunks < 3, "killed before the end"
    with open(resumed / "corpus.jsonl", "a") as corpus:
        corpus.write('{"head": "half a chunk')  # what a kill in the middle of a write leaves
    await _run(_args(target, resumed, events))

    assert (resumed / "corpus.jsonl").read_text() == (whole / "corpus.jsonl").read_text()
    rows = [json.loads(line) for line in (whole / "corpus.jsonl").read_text().splitlines()]
    assert rows and {r["head"] for r in rows} <= set(EVENTS) and {r["relation"] for r in rows} <= {"xWant", "xReact"}
    statistics = json.loads((whole / "statistics.json").read_text())
    assert statistics["triples"] == len(rows) and statistics["events"] == 6
    assert all(r["kept"]["high"] <= r["kept"]["medium"] for r in rows)
    for level in ("high", "medium"):
        assert (resumed / f"student-comet-{level}.jsonl").read_text() == (
            whole / f"student-comet-{level}.jsonl"
        ).read_text()


async def test_another_job_in_the_same_folder_is_refused(target: str, tmp_path: Path) -> None:
    job = distill.DistillJob(seed=1, events_file=str(tmp_path / "e.txt"))
    (tmp_path / "e.txt").write_text("PersonX runs\n")
    distill._prepare(tmp_path / "out", job)
    with pytest.raises(SystemExit, match="different job"):
        distill._prepare(tmp_path / "out", distill.DistillJob(seed=2, events_file=str(tmp_path / "e.txt")))


async def test_summary_and_distinct_n() -> None:
    rows = [
        {"relation": "xWant", "tail": "to eat", "kept": {"high": True, "medium": True}},
        {"relation": "xWant", "tail": "to eat food", "kept": {"high": False, "medium": True}},
        {"relation": "xReact", "tail": "sad", "kept": {"high": False, "medium": False}},
    ]
    s = distill.summarize(rows, {"high": 0.6, "medium": 0.5}, 1)
    assert s["acceptance"] == {"high": pytest.approx(1 / 3), "medium": pytest.approx(2 / 3)}
    assert s["kept"] == {"high": 1, "medium": 2}
    assert s["per_relation"]["xWant"] == {"triples": 2, "kept": {"high": 1, "medium": 2},
                                          "acceptance": {"high": 0.5, "medium": 1.0}}  # fmt: skip
    assert s["per_relation"]["xReact"]["acceptance"] == {"high": 0.0, "medium": 0.0}
    assert s["distinct_1"] == pytest.approx(4 / 6) and s["distinct_2"] == pytest.approx(2 / 3)
    assert s["distinct_kept"]["high"] == {"distinct_1": 1.0, "distinct_2": 1.0}


async def test_distill_over_the_shipped_seed_events_writes_corpus_student_file_and_statistics(
    target: str, tmp_path: Path
) -> None:
    """Every shipped seed event through the tiny teacher and critic (two relations, two tails each: fast)."""
    out = tmp_path / "seed"
    args = [
        sys.executable, "-m", "proctor.engine.cli", "distill", "--server", target, "--output", str(out),
        "--events", str(SEED_EVENTS), "--relations", "xWant,HinderedBy", "--chunk-events", "32", "--inference-n", "2",
        "--seed", "1", "--cutoffs", "high=0.52,medium=0.5", "--student-format", "comet",
    ]  # fmt: skip
    await _run(args)
    seeds = [e.strip() for e in SEED_EVENTS.read_text().splitlines() if e.strip()]
    events = [json.loads(line)["event"] for line in (out / "events.jsonl").read_text().splitlines()]
    assert events == seeds and len(seeds) >= 100
    rows = [json.loads(line) for line in (out / "corpus.jsonl").read_text().splitlines()]
    assert rows and {r["head"] for r in rows} <= set(seeds)
    statistics = json.loads((out / "statistics.json").read_text())
    assert statistics["events"] == len(seeds) and statistics["triples"] == len(rows)
    for level, cut in (("high", 0.52), ("medium", 0.5)):
        kept = [r for r in rows if r["kept"][level]]
        pairs = [json.loads(line) for line in (out / f"student-comet-{level}.jsonl").read_text().splitlines()]
        assert pairs == [
            {"input": f"<head> {r['head'].strip()} </head> <relation> {r['relation']} </relation> [GEN] ",
             "target": r["tail"]}
            for r in kept
        ]  # fmt: skip
        assert statistics["kept"][level] == len(kept)
        assert statistics["acceptance"][level] == pytest.approx(len(kept) / len(rows))
        for relation, counts in statistics["per_relation"].items():
            assert counts["kept"][level] == sum(r["relation"] == relation for r in kept)
        # kept is decided on the unrounded score: a written (rounded) score never contradicts it by more
        assert all(r["critic_score"] >= cut - 1e-6 for r in kept)
    assert sum(c["triples"] for c in statistics["per_relation"].values()) == len(rows)
    assert 0 < statistics["distinct_1"] <= 1


async def test_distill_without_events_reaches_num_events_or_says_why(target: str, tmp_path: Path) -> None:
    """The tiny random teacher almost never writes "PersonX ...": the run stops and says how far each filter got."""
    args = [
        sys.executable, "-m", "proctor.engine.cli", "distill", "--server", target, "--output", str(tmp_path / "o"),
        "--num-events", "3", "--max-event-prompts", "2", "--relations", "xWant", "--cutoffs", "high=0.6,medium=0.5",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode != 0
    message = err.decode()
    assert "--num-events 3: the teacher's events reached" in message and "after 2 event prompts" in message
    assert "200 samples:" in message and "Raise --max-event-prompts, or give --events" in message
    counts = json.loads((tmp_path / "o" / "event_filter.json").read_text())
    assert counts["prompts"] == 2 and counts["samples"] == 200
    assert not (tmp_path / "o" / "events.jsonl").exists()
