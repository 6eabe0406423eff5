"""The Python client library that trainers import."""

from proctor.clients.teacher import (
    AsyncTeacherClient,
    ItemFailed,
    TeacherClient,
    generate_request,
    raise_for_error,
    score_request,
)

__all__ = [
    "AsyncTeacherClient",
    "ItemFailed",
    "TeacherClient",
    "generate_request",
    "raise_for_error",
    "score_request",
]
