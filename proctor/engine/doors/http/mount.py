"""Every route of the HTTP front, mounted in this one place: an APIRouter per protocol, included with the service
whose readiness and queue it uses (the front's own /health aside)."""

from __future__ import annotations

from proctor.engine.config import CriticConfig, RewardConfig
from proctor.engine.cores.critic import CriticCore
from proctor.engine.cores.reward import RewardCore
from proctor.engine.cores.teacher import TeacherCore
from proctor.engine.doors.http import classify, openrlhf, sglang, slime, swift, teacher_front
from proctor.engine.doors.http.app import HttpFront


def mount(
    front: HttpFront,
    *,
    teacher: TeacherCore | None,
    critic: CriticCore | None,
    cc: CriticConfig | None,
    reward: RewardCore | None,
    rc: RewardConfig | None,
) -> None:
    """The routes of every hosted service (a core None: not hosted)."""
    if teacher is not None:
        openai = teacher_front.teacher_routes(front, teacher)
        front.include(openai.router(), teacher.svc)
        front.include(swift.router(openai), teacher.svc)
        front.include(sglang.router(openai), teacher.svc)
    if reward is not None and rc is not None:
        on_error, fallback = rc.openrlhf.on_error, rc.openrlhf.fallback_reward
        front.include(openrlhf.router(front, reward, on_error, fallback), reward.svc)
        front.include(slime.router(front, reward, on_error, fallback), reward.svc)  # the same rollout policy
    if critic is not None and cc is not None:  # vLLM's pooling /classify
        front.include(classify.router(front, critic, cc.model), critic.svc)
