"""`proctor distill`: the SKD corpus job. Events -> inferences -> critic -> JSONL, crash-safe and resumable.

The output folder holds:
  job.json        what was asked (a resumed run must ask the same)
  events.jsonl    the events, fixed before any inference (given, or written by the teacher)
  event_filter.json  with teacher-written events: how many samples passed each of the paper's event filters
  corpus.jsonl    one triple per line: head, relation, tail, teacher_logprob, critic_score, kept {high, medium}
  progress.json   chunks done and the byte length of corpus.jsonl they account for; replaced atomically
  student-comet-{level}.jsonl  the student's training pairs (COMET-distil's input, the tail), one per kept triple
  statistics.json counts per relation and level, acceptance rates, distinct-n
A killed run leaves at most a partial chunk past the recorded length; the next run cuts it off and goes on from
the next chunk. Every event's triples derive from (seed, event, relation) alone, so a resumed run writes the same
corpus as an uninterrupted one. `kept` is decided on the critic's score as the server sent it; the score is written
rounded to 6 decimals.

Without an events file the teacher writes the events here, over its Generate RPC: event prompts sampled into one
pool, the paper's filters over the whole pool (engine/skd/event_pool.py), until it holds --num-events or the prompt
budget is spent; then the run stops and says how far each filter got.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from proctor.clients.critic import CriticClient, cutoff_levels
from proctor.clients.streaming import PLAINTEXT, Credentials
from proctor.clients.teacher import TeacherClient, generate_request
from proctor.engine.items import FinishReason, SamplingParams
from proctor.engine.skd import prompts as skd
from proctor.engine.skd.event_pool import EventPool
from proctor.engine.skd.relations import RELATIONS
from proctor.v1 import common_pb2, teacher_pb2

_ENUMS = {r.name: common_pb2.Relation.Value(r.enum) for r in RELATIONS.values()}
_NAMES = {value: name for name, value in _ENUMS.items()}


@dataclass(frozen=True)
class DistillJob:
    seed: int = 0
    num_events: int = 0  # with no events file: how many the teacher writes
    events_file: str = ""
    relations: tuple[str, ...] = tuple(RELATIONS)
    chunk_events: int = 4  # events per GenerateTriples call, and per checkpoint
    inference_n: int = 10  # the paper's n
    event_n: int = 100  # the paper's n
    max_event_prompts: int = 0  # the teacher's event prompts at most; 0 = 4 per event asked for
    student_format: str = "comet"  # the student's training file: comet (COMET-distil's input format)


STUDENT_FORMATS = ("comet",)
LEVELS = ("high", "medium")


def comet_input(head: str, relation: str) -> str:
    """COMET-distil's input (paper rules §1.3): the event stripped, the relation's name, then [GEN] and a space."""
    return f"<head> {head.strip()} </head> <relation> {relation} </relation> [GEN] "


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _critic_cutoffs(critic: CriticClient, given: dict[str, float]) -> dict[str, float]:
    if given:
        return given
    found = {level: cut for level, cut in cutoff_levels(critic.info()).items() if level in LEVELS}
    if len(found) != 2:
        raise SystemExit("the server's critic publishes no high/medium cut-offs; pass --cutoffs high=X,medium=Y")
    return found


def _prepare(output: Path, job: DistillJob) -> None:
    output.mkdir(parents=True, exist_ok=True)
    spec = json.dumps(asdict(job), sort_keys=True, indent=1)
    job_file = output / "job.json"
    if job_file.exists():
        if job_file.read_text() != spec:
            raise SystemExit(f"{output} holds a different job ({job_file}); use another --output or the same options")
    else:
        _write_atomic(job_file, spec)


def _events(teacher: TeacherClient, output: Path, job: DistillJob) -> list[str]:
    path = output / "events.jsonl"
    if path.exists():
        return [json.loads(line)["event"] for line in path.read_text().splitlines()]
    if job.events_file:
        events = [e.strip() for e in Path(job.events_file).read_text().splitlines() if e.strip()]
    else:
        print(f"writing {job.num_events} events with the teacher ...", flush=True)
        pool = _teacher_events(teacher, job)
        _write_atomic(output / "event_filter.json", json.dumps({"prompts": pool.prompts, **asdict(pool.counts)}))
        if pool.shortfall():
            raise SystemExit(
                f"--num-events {job.num_events}: {pool.shortfall()}. Raise --max-event-prompts, or give --events"
            )
        events = pool.events()
    _write_atomic(path, "".join(json.dumps({"event": e}) + "\n" for e in events))
    return events


def _teacher_events(teacher: TeacherClient, job: DistillJob) -> EventPool:
    """The run's event pool, sampled over Generate round by round."""
    pool = EventPool(
        job.num_events, job.seed, dataclasses.replace(skd.EVENT_SAMPLING, n=job.event_n), job.max_event_prompts
    )
    while prompts := pool.next_round():
        requests = [generate_request(str(i), text, **_wire_params(params)) for i, (text, params) in enumerate(prompts)]
        results = teacher.generate(requests)
        samples = []
        for i in range(len(prompts)):
            result = results[str(i)]
            if result.HasField("error"):
                raise SystemExit(f"an event prompt failed: {result.error.message}")
            samples.append([_candidate(c) for c in result.completions])
        pool.add(samples)
    return pool


def _wire_params(p: SamplingParams) -> dict[str, Any]:
    """The sampling fields the wire's SamplingParams shares with the engine's, as generate_request takes them."""
    wire = teacher_pb2.SamplingParams.DESCRIPTOR.fields_by_name
    values = {f.name: getattr(p, f.name) for f in dataclasses.fields(p) if f.name in wire}
    return {name: list(v) if isinstance(v, tuple) else v for name, v in values.items() if v is not None}


def _candidate(c: teacher_pb2.Completion) -> skd.Candidate:
    finish = FinishReason.STOP if c.finish_reason == teacher_pb2.STOP else FinishReason.LENGTH
    return skd.Candidate(c.text, finish, c.stop_reason, float(sum(c.logprobs)))


def _resume(output: Path) -> tuple[int, int]:
    """(chunks done, corpus bytes); cuts off whatever a killed run wrote past the last checkpoint."""
    progress_file, corpus = output / "progress.json", output / "corpus.jsonl"
    done, length = 0, 0
    if progress_file.exists():
        progress = json.loads(progress_file.read_text())
        done, length = int(progress["chunks"]), int(progress["bytes"])
    if corpus.exists() and corpus.stat().st_size != length:
        with open(corpus, "r+b") as f:
            f.truncate(length)
    return done, length


def run(
    target: str,
    output: Path,
    job: DistillJob,
    cutoffs: dict[str, float] | None = None,
    after_chunk: Callable[[int], None] | None = None,
    credentials: Credentials = PLAINTEXT,
) -> dict[str, Any]:
    """Run (or resume) the job against a server (TLS and a bearer token as `credentials` say); returns the summary it
    also writes to summary.json."""
    _prepare(output, job)
    with (
        TeacherClient(target, credentials=credentials) as teacher,
        CriticClient(target, credentials=credentials, timeout_s=60) as critic,
    ):
        levels = _critic_cutoffs(critic, cutoffs or {})
        events = _events(teacher, output, job)
        chunks = [events[i : i + job.chunk_events] for i in range(0, len(events), job.chunk_events)]
        done, length = _resume(output)
        if done:
            print(f"resuming after chunk {done} of {len(chunks)}", flush=True)
        with (
            open(output / "corpus.jsonl", "ab") as corpus,
            tqdm(total=len(events), initial=min(done * job.chunk_events, len(events)), unit="event") as bar,
        ):
            for index in range(done, len(chunks)):
                request = teacher_pb2.TriplesRequest(
                    events=chunks[index],
                    relations=[_ENUMS[r] for r in job.relations],
                    seed=job.seed,
                    inference_params=teacher_pb2.SamplingParams(n=job.inference_n),
                    cutoff=min(levels.values()),
                )
                lines = []
                for r in teacher.generate_triples(request):
                    if r.HasField("error"):
                        raise SystemExit(f"event {r.head!r} failed: {r.error.message}")
                    row = {
                        "head": r.head,
                        "relation": _NAMES[r.relation],
                        "tail": r.tail,
                        "teacher_logprob": round(r.teacher_logprob, 6),
                        "critic_score": round(r.critic_score, 6),
                        "kept": {level: r.critic_score > cut for level, cut in levels.items()},  # unrounded
                    }
                    lines.append(json.dumps(row) + "\n")
                data = "".join(lines).encode()
                corpus.write(data)
                corpus.flush()
                os.fsync(corpus.fileno())
                length += len(data)
                _write_atomic(output / "progress.json", json.dumps({"chunks": index + 1, "bytes": length}))
                bar.update(len(chunks[index]))
                if after_chunk is not None:
                    after_chunk(index + 1)
    rows = [json.loads(line) for line in (output / "corpus.jsonl").read_text().splitlines()]
    write_student_files(output, rows, levels, job.student_format)
    filtered = output / "event_filter.json"
    statistics = summarize(rows, levels, len(events), json.loads(filtered.read_text()) if filtered.exists() else None)
    _write_atomic(output / "statistics.json", json.dumps(statistics, indent=2))
    return statistics


def student_file(output: Path, student_format: str, level: str) -> Path:
    return output / f"student-{student_format}-{level}.jsonl"


def write_student_files(output: Path, rows: Sequence[dict[str, Any]], levels: dict[str, float], fmt: str) -> None:
    """Per filtration level, one {"input", "target"} pair per kept triple (the target is the tail)."""
    if fmt not in STUDENT_FORMATS:
        raise ValueError(f"student format {fmt!r} is not one of {', '.join(STUDENT_FORMATS)}")
    for level in levels:
        pairs = (
            json.dumps({"input": comet_input(r["head"], r["relation"]), "target": r["tail"]}) + "\n"
            for r in rows
            if r["kept"][level]
        )
        _write_atomic(student_file(output, fmt, level), "".join(pairs))


def distinct_n(texts: Sequence[str], n: int) -> float:
    grams = [tuple(words[i : i + n]) for t in texts for words in [t.split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def summarize(
    rows: list[dict[str, Any]], levels: dict[str, float], events: int, event_filter: dict[str, int] | None = None
) -> dict[str, Any]:
    """Counts per relation and level, acceptance rates, distinct-1/2 over the tails (all, and kept per level)."""
    tails = [r["tail"] for r in rows]
    per_relation = Counter(r["relation"] for r in rows)
    kept = {level: [r for r in rows if r["kept"][level]] for level in levels}
    return {
        "events": events,
        "event_filter": event_filter,
        "triples": len(rows),
        "cutoffs": levels,
        "per_relation": {
            relation: {
                "triples": count,
                "kept": {level: sum(r["relation"] == relation for r in kept[level]) for level in levels},
                "acceptance": {
                    level: _share(sum(r["relation"] == relation for r in kept[level]), count) for level in levels
                },
            }
            for relation, count in sorted(per_relation.items())
        },
        "kept": {level: len(kept[level]) for level in levels},
        "acceptance": {level: _share(len(kept[level]), len(rows)) for level in levels},
        "distinct_1": distinct_n(tails, 1),
        "distinct_2": distinct_n(tails, 2),
        "distinct_kept": {
            level: {
                "distinct_1": distinct_n([r["tail"] for r in kept[level]], 1),
                "distinct_2": distinct_n([r["tail"] for r in kept[level]], 2),
            }
            for level in levels
        },
    }


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\n{summary['triples']} triples from {summary['events']} events")
    for relation, counts in summary["per_relation"].items():
        kept = ", ".join(f"{level} {n}" for level, n in counts["kept"].items())
        print(f"  {relation:<11} {counts['triples']} (kept: {kept})")
    for level, rate in summary["acceptance"].items():
        print(f"  kept at {level} (cut-off {summary['cutoffs'][level]:.4f}): {rate:.1%}")
    print(f"  distinct-1 {summary['distinct_1']:.3f}, distinct-2 {summary['distinct_2']:.3f} (over tails)")
