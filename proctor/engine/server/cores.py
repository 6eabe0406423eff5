"""Config -> the cores of the hosted services, each with its backends and its service context (queue, limits)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from proctor.engine.backends.base import Backend, Generator
from proctor.engine.backends.builtin_models import resolve_model
from proctor.engine.config import Config, ServiceLimits
from proctor.engine.cores.context import CRITIC, REWARD, TEACHER, Admission, Lifecycle, ServiceContext
from proctor.engine.cores.critic import CriticCore
from proctor.engine.cores.metrics import Metrics
from proctor.engine.cores.remote_critic import RemoteCritic
from proctor.engine.cores.reward import RewardCore
from proctor.engine.cores.teacher import TeacherCore
from proctor.engine.rewards.pipeline import RewardScorer
from proctor.engine.rewards.steps import StepTracker
from proctor.engine.server.wiring import BackendSet
from proctor.engine.skd.critic_scoring import CriticScorer
from proctor.engine.skd.triples import Critic
from proctor.engine.stores.redis_steps import RedisStepStore


@dataclass
class Cores:
    """The hosted services' cores (None: not hosted), and what each service waits for before it is SERVING."""

    teacher: TeacherCore | None = None
    critic: CriticCore | None = None
    reward: RewardCore | None = None
    needs: dict[str, list[Backend]] = field(default_factory=dict)
    steps: StepTracker | None = None
    remote_critic: RemoteCritic | None = None

    async def close(self) -> None:
        if self.remote_critic is not None:
            await self.remote_critic.close()
        if self.steps is not None:
            self.steps.close()


def build_cores(config: Config, backends: BackendSet, metrics: Metrics, lifecycle: Lifecycle) -> Cores:
    def context(name: str, limits: ServiceLimits) -> ServiceContext:
        return ServiceContext(
            name=name,
            metrics=metrics,
            lifecycle=lifecycle,
            admission=Admission(limits.max_queued_items),
            stream_window=limits.stream_window,
            max_items_per_stream=limits.max_items_per_stream,
            stream_window_bytes=limits.stream_window_bytes,
            max_message_bytes=config.server.max_message_bytes,
        )

    cores = Cores()
    if config.critic is not None:
        cc = config.critic
        classifier = backends.classifier(cc)
        cores.needs[CRITIC] = [classifier]
        metrics.watch_queue(CRITIC, classifier.queue_depth)
        scorer = CriticScorer(classifier, cc, lambda: Path(resolve_model(cc.model)))
        cores.critic = CriticCore(scorer, context(CRITIC, cc.limits))
    if config.teacher is not None:
        tc = config.teacher
        backend, cores.needs[TEACHER] = backends.generator("teacher", tc)
        metrics.watch_queue(TEACHER, backend.queue_depth)
        triples_critic: Critic | None = None
        if tc.critic == "local":
            triples_critic = cores.critic.scorer if cores.critic is not None else None
        elif tc.critic:
            cores.remote_critic = triples_critic = RemoteCritic(tc.critic, tc.remote_critic)
        cores.teacher = TeacherCore(backend, tc, context(TEACHER, tc.limits), triples_critic)
    if config.reward is not None:
        rc = config.reward
        judge: Generator | None = None
        cores.needs[REWARD] = []
        if rc.model:
            judge, cores.needs[REWARD] = backends.generator("reward", rc)
        # the judge's queue; a rules-only service has none, and says so with a 0 rather than no series
        metrics.watch_queue(REWARD, judge.queue_depth if judge is not None else lambda: 0)
        store = RedisStepStore.connect(rc.steps.store) if rc.steps.store else None
        cores.steps = StepTracker(rc.steps.rollouts_per_step, rc.steps.state_dir, rc.steps.max_runs, store)
        cores.reward = RewardCore(RewardScorer(rc, judge, cores.steps), judge, context(REWARD, rc.limits))
    return cores
