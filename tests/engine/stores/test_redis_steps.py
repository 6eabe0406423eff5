"""Step counts in a real Redis (engine/stores/redis_steps.py): the T of engine/rewards/steps.py, one exact count for
two processes sharing one Redis, a clear error when Redis is not there at start, item errors while it is down and
the count going on after it is back. Needs `redis-server` (Debian's package); CI sets PROCTOR_REQUIRE_REDIS=1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from proctor.engine.config import ConfigError, RewardConfig, StepsConfig
from proctor.engine.errors import ItemError
from proctor.engine.rewards.steps import StepRun, StepTracker
from proctor.engine.stores.redis_steps import RedisStepStore
from tests.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parents[3]


def test_t_in_redis_is_the_t_of_the_state_directory(redis_server: RedisServer) -> None:
    tracker = StepTracker(rollouts_per_step=3, store=RedisStepStore.connect(redis_server.url))
    assert tracker.waits  # a network round trip: off the event loop
    assert [tracker.step(StepRun("a")) for _ in range(7)] == [0, 0, 0, 1, 1, 1, 2]
    assert tracker.step(StepRun("b", rollouts_per_step=2)) == 0  # another run has its own count
    assert tracker.step(StepRun("a", observe_only=True)) == 2  # validation: the latest T, not counted
    assert tracker.step(StepRun("c", rollouts_per_step=2, observe_only=True)) == 0  # before any rollout
    with pytest.raises(ItemError, match="counts 2 rollouts per step, this rollout says 5"):
        tracker.step(StepRun("c", rollouts_per_step=5))  # observe_only fixed the new run's rate, as on disk
    with pytest.raises(ItemError, match="counts 3 rollouts per step, this rollout says 8"):
        tracker.step(StepRun("a", rollouts_per_step=8))  # refused, and not counted:
    assert tracker.step(StepRun("a")) == 2 and tracker.step(StepRun("a")) == 2 and tracker.step(StepRun("a")) == 3
    tracker.close()
    # a restarted server (a new tracker on the same Redis) takes the count up where it was
    again = StepTracker(rollouts_per_step=3, store=RedisStepStore.connect(redis_server.url))
    assert again.step(StepRun("a")) == 3
    again.close()


def test_a_retried_call_counts_once(redis_server: RedisServer) -> None:
    """The client retries a call whose reply was lost; the attempt's key gives the retry the first answer."""
    store = RedisStepStore.connect(redis_server.url)
    keys = ["proctor:steps:run:retried", "proctor:steps:attempt:one"]
    assert [list(store._take(keys=keys, args=[4, 1, 60])) for _ in range(3)] == [[0, 0]] * 3
    assert store.take("retried", 4, False) == (1, 4)
    store.close()


_REPLICA = textwrap.dedent(
    """
    import json, sys, threading, time
    from pathlib import Path
    from proctor.engine.rewards.steps import StepRun, StepTracker
    from proctor.engine.stores.redis_steps import RedisStepStore

    url, go = sys.argv[1], Path(sys.argv[2])
    tracker = StepTracker(rollouts_per_step=10, store=RedisStepStore.connect(url))
    steps, lock = [], threading.Lock()

    def trainer_thread():
        for _ in range(50):
            t = tracker.step(StepRun("shared"))
            with lock:
                steps.append(t)

    while not go.exists():
        time.sleep(0.01)
    threads = [threading.Thread(target=trainer_thread) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(steps))
    """
)


def test_two_processes_sharing_one_redis_give_one_exact_count(redis_server: RedisServer, tmp_path: Path) -> None:
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    replicas = [
        subprocess.Popen([sys.executable, "-c", _REPLICA, redis_server.url, str(go)], stdout=subprocess.PIPE, env=env)
        for _ in range(2)
    ]
    time.sleep(1)  # both connected and waiting
    go.touch()
    steps = []
    for replica in replicas:
        out, _ = replica.communicate(timeout=120)
        assert replica.returncode == 0
        steps += json.loads(out)
    assert sorted(steps) == [n // 10 for n in range(400)]  # each count taken once: T = 0 ten times, ... 39 ten times


def test_redis_down_fails_items_and_counting_resumes_when_it_is_back(redis_server: RedisServer) -> None:
    store = RedisStepStore.connect(redis_server.url, timeout_s=0.5, cooldown_s=0.5)
    tracker = StepTracker(rollouts_per_step=2, store=store)
    assert [tracker.step(StepRun("run")) for _ in range(3)] == [0, 0, 1]
    redis_server.kill()
    failed_in = []
    for _ in range(3):
        began = time.monotonic()
        with pytest.raises(
            ItemError, match=r"the step store \(Redis at redis://127\.0\.0\.1:\d+/0\) does not answer"
        ) as err:
            tracker.step(StepRun("run"))
        failed_in.append(time.monotonic() - began)
        assert err.value.code == "UNAVAILABLE"
    assert max(failed_in[1:]) < 0.05, failed_in  # within the cool-down: at once, not after the client's retries
    redis_server.start()  # the same port and append-only file: the count is where it was
    time.sleep(0.5)  # the cool-down
    assert [tracker.step(StepRun("run")) for _ in range(3)] == [1, 2, 2]
    tracker.close()


def test_redis_not_there_at_start_is_a_config_error_without_the_password() -> None:
    pytest.importorskip("redis", reason="the Redis client: pip install 'proctor[redis]'")
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    with pytest.raises(
        ConfigError, match=r"reward\.steps\.store: Redis at redis://:\*\*\*@127\.0\.0\.1:\d+/0 does not"
    ) as err:
        RedisStepStore.connect(url, timeout_s=0.5)
    assert "hunter2" not in str(err.value)


def test_the_store_setting_is_checked() -> None:
    assert RewardConfig(mode="rules", steps=StepsConfig(store="redis://redis:6379/0")).steps.store
    for wrong in ("redis:6379", "localhost:6379", "redis:///0", "unix://"):
        with pytest.raises(ConfigError, match=rf"reward\.steps\.store: '{wrong}' is not a redis://host:port/db"):
            StepsConfig(store=wrong)
    with pytest.raises(ConfigError, match="set store or state_dir, not both"):
        StepsConfig(store="redis://redis:6379/0", state_dir="/var/lib/proctor")
