"""The HTTP front's routes of each hosted service, mounted in one place."""

from __future__ import annotations

from proctor.engine.config import RewardConfig
from proctor.engine.cores.reward import RewardCore
from proctor.engine.cores.teacher import TeacherCore
from proctor.engine.doors.http import openrlhf, teacher_front
from proctor.engine.doors.http.app import HttpFront


def mount(front: HttpFront, teacher: TeacherCore | None, reward: RewardCore | None, rc: RewardConfig | None) -> None:
    if teacher is not None:
        teacher_front.mount(front, teacher)
    if reward is not None and rc is not None:
        on_error, fallback = rc.openrlhf.on_error, rc.openrlhf.fallback_reward
        front.include(openrlhf.router(front, reward, on_error, fallback), reward.svc)
