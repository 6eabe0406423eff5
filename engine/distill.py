"""`proctor distill`: the SKD corpus job. Events -> inferences -> critic -> JSONL, crash-safe and resumable.

The output folder holds:
  job.json        what was asked (a resumed run must ask the same)
  events.jsonl    the events, fixed before any inference (given, or written by the teacher)
  corpus.jsonl    one triple per line: head, relation, tail, teacher_logprob, critic_score, kept {high, medium}
  progress.json   chunks done and the byte length of corpus.jsonl they account for; replaced atomically
A killed run leaves at most a partial chunk past the recorded length; the next run cuts it off and goes on from
the next chunk. Every event's triples derive from (seed, event, relation) alone, so a resumed run writes the same
corpus as an uninterrupted one (critic scores are rounded to 6 decimals so batching noise cannot show).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
from tqdm import tqdm

from proctor.engine import skd
from proctor.proto.proctor.v1 import common_pb2, critic_pb2_grpc, teacher_pb2, teacher_pb2_grpc

RELATION_NAMES = {v: k for k, v in common_pb2.Relation.items()}
_SKD_NAMES = {
    "X_WANT": "xWant",
    "X_ATTR": "xAttr",
    "X_INTENT": "xIntent",
    "X_EFFECT": "xEffect",
    "X_REACT": "xReact",
    "X_NEED": "xNeed",
    "HINDERED_BY": "HinderedBy",
}
_ENUMS = {name: common_pb2.Relation.Value(enum) for enum, name in _SKD_NAMES.items()}


@dataclass(frozen=True)
class DistillJob:
    seed: int = 0
    num_events: int = 0  # with no events file: how many the teacher writes
    events_file: str = ""
    relations: tuple[str, ...] = tuple(skd.RELATIONS)
    chunk_events: int = 4  # events per GenerateTriples call, and per checkpoint
    inference_n: int = 10  # the paper's n
    event_n: int = 100  # the paper's n


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _critic_cutoffs(channel: grpc.Channel, given: dict[str, float]) -> dict[str, float]:
    if given:
        return given
    info = critic_pb2_grpc.CriticStub(channel).Info(common_pb2.InfoRequest(), timeout=60)
    found = {
        level: float(info.extra[f"cutoff_{level}"]) for level in ("high", "medium") if f"cutoff_{level}" in info.extra
    }
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


def _events(stub: teacher_pb2_grpc.TeacherStub, output: Path, job: DistillJob) -> list[str]:
    path = output / "events.jsonl"
    if path.exists():
        return [json.loads(line)["event"] for line in path.read_text().splitlines()]
    if job.events_file:
        events = [e.strip() for e in Path(job.events_file).read_text().splitlines() if e.strip()]
    else:
        print(f"writing {job.num_events} events with the teacher ...", flush=True)
        # GenerateTriples writes the events; ask for one relation with n = 1 and read the heads back.
        request = teacher_pb2.TriplesRequest(
            num_events=job.num_events,
            relations=[_ENUMS[job.relations[0]]],
            seed=job.seed,
            skip_critic=True,
            event_params=teacher_pb2.SamplingParams(n=job.event_n),
            inference_params=teacher_pb2.SamplingParams(n=1),
        )
        events = list(dict.fromkeys(r.head for r in stub.GenerateTriples(request)))
    _write_atomic(path, "".join(json.dumps({"event": e}) + "\n" for e in events))
    return events


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
) -> dict[str, Any]:
    """Run (or resume) the job against a server; returns the summary it also writes to summary.json."""
    _prepare(output, job)
    with grpc.insecure_channel(target) as channel:
        stub = teacher_pb2_grpc.TeacherStub(channel)
        levels = _critic_cutoffs(channel, cutoffs or {})
        events = _events(stub, output, job)
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
                for r in stub.GenerateTriples(request):
                    if r.HasField("error"):
                        raise SystemExit(f"event {r.head!r} failed: {r.error.message}")
                    score = round(r.critic_score, 6)
                    row = {
                        "head": r.head,
                        "relation": _SKD_NAMES[RELATION_NAMES[r.relation]],
                        "tail": r.tail,
                        "teacher_logprob": round(r.teacher_logprob, 6),
                        "critic_score": score,
                        "kept": {level: score > cut for level, cut in levels.items()},
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
    summary = summarize(
        [json.loads(line) for line in (output / "corpus.jsonl").read_text().splitlines()], levels, len(events)
    )
    _write_atomic(output / "summary.json", json.dumps(summary, indent=2))
    return summary


def distinct_n(texts: Sequence[str], n: int) -> float:
    grams = [tuple(words[i : i + n]) for t in texts for words in [t.split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def summarize(rows: list[dict[str, Any]], levels: dict[str, float], events: int) -> dict[str, Any]:
    tails = [r["tail"] for r in rows]
    return {
        "events": events,
        "triples": len(rows),
        "per_relation": dict(Counter(r["relation"] for r in rows)),
        "cutoffs": levels,
        "acceptance": {level: (sum(r["kept"][level] for r in rows) / len(rows) if rows else 0.0) for level in levels},
        "distinct_1": distinct_n(tails, 1),
        "distinct_2": distinct_n(tails, 2),
    }


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\n{summary['triples']} triples from {summary['events']} events")
    for relation, count in sorted(summary["per_relation"].items()):
        print(f"  {relation:<11} {count}")
    for level, rate in summary["acceptance"].items():
        print(f"  kept at {level} (cut-off {summary['cutoffs'][level]:.4f}): {rate:.1%}")
    print(f"  distinct-1 {summary['distinct_1']:.3f}, distinct-2 {summary['distinct_2']:.3f} (over tails)")
