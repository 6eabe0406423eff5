"""The teacher's HTTP routes on the front: vLLM's OpenAI-compatible ones and ms-swift's /infer/."""

from __future__ import annotations

from pathlib import Path

from proctor.engine.config import ConfigError
from proctor.engine.cores.teacher import TeacherCore
from proctor.engine.doors.http import swift
from proctor.engine.doors.http.app import HttpFront
from proctor.engine.doors.http.openai_routes import OpenAIRoutes
from proctor.engine.doors.http.teacher_calls import TeacherCalls
from proctor.engine.doors.http.vocab import Vocab


def mount(front: HttpFront, core: TeacherCore) -> None:
    http = front.config
    template = http.chat_template
    if template and "{" not in template:  # a file's path, not a template
        try:
            template = Path(template).read_text()
        except OSError as exc:
            raise ConfigError(f"http.chat_template: cannot read {template} ({exc.strerror})") from None
    model = core.config.model
    name = http.served_model_name or model  # the model id clients see (/v1/models) and send as `model`
    routes = OpenAIRoutes(front, TeacherCalls(core), Vocab(core.backend, template or None), name, model)
    front.include(routes.router(), core.svc)
    front.include(swift.router(routes), core.svc)
