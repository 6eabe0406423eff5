"""The Python client library that trainers import."""

from proctor.clients.reward import AsyncRewardClient, RewardClient, reward_request
from proctor.clients.streaming import ItemFailed, raise_for_error
from proctor.clients.teacher import (
    AsyncTeacherClient,
    TeacherClient,
    generate_request,
    score_group_request,
    score_request,
)

__all__ = [
    "AsyncRewardClient",
    "AsyncTeacherClient",
    "ItemFailed",
    "RewardClient",
    "TeacherClient",
    "generate_request",
    "raise_for_error",
    "reward_request",
    "score_group_request",
    "score_request",
]
