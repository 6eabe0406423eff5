"""`proctor distill`: killed mid-run (SIGKILL) and resumed equals an uninterrupted run."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from proctor.engine import distill

pytestmark = pytest.mark.asyncio(loop_scope="session")

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
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["triples"] == len(rows) and summary["events"] == 6
    assert all(r["kept"]["high"] <= r["kept"]["medium"] for r in rows)


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
    ]
    s = distill.summarize(rows, {"high": 0.6, "medium": 0.5}, 1)
    assert s["acceptance"] == {"high": 0.5, "medium": 1.0}
    assert s["distinct_1"] == pytest.approx(3 / 5) and s["distinct_2"] == pytest.approx(2 / 3)
