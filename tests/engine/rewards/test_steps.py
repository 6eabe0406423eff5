"""The training step derived from a run's rollouts (engine/rewards/steps.py): in memory, on disk across restarts,
shared by replicas on one state directory, and over gRPC where an explicit T wins."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest

from proctor.engine.errors import ItemError
from proctor.engine.rewards.steps import StepRun, StepTracker
from proctor.v1 import reward_pb2, reward_pb2_grpc
from tests.engine.doors.grpc.test_reward_service import GOOD, NO_ATOMS


def test_t_advances_every_rollouts_per_step() -> None:
    tracker = StepTracker(rollouts_per_step=3)
    assert [tracker.step(StepRun("a")) for _ in range(7)] == [0, 0, 0, 1, 1, 1, 2]
    assert tracker.step(StepRun("b", rollouts_per_step=2)) == 0  # another run has its own count
    assert tracker.step(StepRun("a", observe_only=True)) == 2  # validation: the latest T, not counted
    assert tracker.step(StepRun("c", rollouts_per_step=2, observe_only=True)) == 0  # before any rollout
    assert tracker.step(StepRun("a")) == 2 and tracker.step(StepRun("a")) == 2 and tracker.step(StepRun("a")) == 3


def test_bad_runs_are_errors_naming_the_field() -> None:
    with pytest.raises(ItemError, match=r"run\.rollouts_per_step: required"):
        StepTracker().step(StepRun("a"))
    tracker = StepTracker(rollouts_per_step=4, max_runs=1)
    tracker.step(StepRun("a"))
    with pytest.raises(ItemError, match="counts 4 rollouts per step, this rollout says 8"):
        tracker.step(StepRun("a", rollouts_per_step=8))
    with pytest.raises(ItemError, match=r"run\.key: this server already tracks 1 runs"):
        tracker.step(StepRun("b"))
    for key in ("", "x" * 201, "tab\there"):
        with pytest.raises(ItemError, match=r"run\.key: must be 1\.\.200 printable"):
            tracker.step(StepRun(key))


def test_the_count_survives_a_restart(tmp_path: Path) -> None:
    first = StepTracker(rollouts_per_step=2, state_dir=str(tmp_path))
    assert [first.step(StepRun("exp/1: ../x")) for _ in range(3)] == [0, 0, 1]
    first.close()
    [state] = tmp_path.iterdir()
    assert state.parent == tmp_path  # the key, whatever it holds, is one file name in the directory
    again = StepTracker(rollouts_per_step=2, state_dir=str(tmp_path))
    assert [again.step(StepRun("exp/1: ../x")) for _ in range(3)] == [1, 2, 2]
    with pytest.raises(ItemError, match="counts 2 rollouts per step"):
        again.step(StepRun("exp/1: ../x", rollouts_per_step=3))
    state.write_bytes(b"garbage")
    with pytest.raises(ItemError, match="damaged"):
        again.step(StepRun("exp/1: ../x"))


def test_replicas_on_one_state_directory_share_one_exact_count(tmp_path: Path) -> None:
    """Two trackers (two replicas) take rollouts of one run from many threads at once: every count is taken once."""
    replicas = [StepTracker(rollouts_per_step=10, state_dir=str(tmp_path)) for _ in range(2)]
    steps: list[int] = []
    lock = threading.Lock()

    def trainer_thread(i: int) -> None:
        for _ in range(50):
            t = replicas[i % 2].step(StepRun("run"))
            with lock:
                steps.append(t)

    threads = [threading.Thread(target=trainer_thread, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(steps) == [n // 10 for n in range(400)]  # T = 0 ten times, 1 ten times, ... 39 ten times


@pytest.mark.asyncio(loop_scope="session")
async def test_grpc_derives_t_from_the_run_and_an_explicit_t_wins(target: str) -> None:
    run = reward_pb2.StepRun(key="grpc-anneal", rollouts_per_step=2)
    requests = [
        reward_pb2.RewardRequest(
            id=f"r{i}", question="q", response=NO_ATOMS, gold_answers=["Paris"], total_steps=2, run=run
        )
        for i in range(6)
    ]
    requests.append(
        reward_pb2.RewardRequest(
            id="explicit", question="q", response=GOOD, gold_answers=["Paris"], total_steps=2, run=run, training_step=0
        )
    )
    requests.append(
        reward_pb2.RewardRequest(id="late", question="q", response=NO_ATOMS, gold_answers=["Paris"], run=run)
    )
    async with grpc.aio.insecure_channel(target) as channel:
        stub = reward_pb2_grpc.RewardModelStub(channel)
        out = {r.id: r async for r in stub.Reward(iter(requests))}
    assert [out[f"r{i}"].training_step for i in range(6)] == [0, 0, 1, 1, 2, 2]
    assert [out[f"r{i}"].alpha for i in range(6)] == pytest.approx([0.5, 0.5, 0.25, 0.25, 0.0, 0.0])
    assert out["explicit"].training_step == 0 and out["explicit"].alpha == 0.5  # sent: it wins, nothing counted
    # The 7th counted rollout: T = 3, with the server's T_MAX (100) as this one sends none.
    assert out["late"].training_step == 3 and out["late"].alpha == pytest.approx(0.5 * (1 - 3 / 100))


@pytest.mark.asyncio(loop_scope="session")
async def test_a_restarted_server_continues_the_count(tmp_path: Path) -> None:
    """Rules-only servers on one state directory, one after the other: the second takes T up where the first left."""
    from proctor.engine.config import Config, RewardConfig, ServerConfig, StepsConfig
    from tests.conftest import started

    config = Config(
        server=ServerConfig(port=0, metrics_port=-1),
        reward=RewardConfig(model="", mode="rules", total_steps=9, steps=StepsConfig(state_dir=str(tmp_path))),
    )
    run = reward_pb2.StepRun(key="restart", rollouts_per_step=2)
    seen = []
    for _ in range(2):
        server = await started(config)
        requests = [
            reward_pb2.RewardRequest(id=str(i), question="q", response=NO_ATOMS, gold_answers=["Paris"], run=run)
            for i in range(3)
        ]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            out = {r.id: r async for r in reward_pb2_grpc.RewardModelStub(channel).Reward(iter(requests))}
        seen += [out[str(i)].training_step for i in range(3)]
        await server.drain(grace_s=1)
    assert seen == [0, 0, 1, 1, 2, 2]


def test_only_a_count_in_memory_is_safe_on_an_event_loop(tmp_path: Path) -> None:
    assert not StepTracker().waits
    assert StepTracker(state_dir=str(tmp_path)).waits  # another replica may hold the file's lock
