"""The teacher's HTTP routes on the front: vLLM's OpenAI-compatible ones and ms-swift's /infer/."""

from __future__ import annotations

from pathlib import Path

from proctor.engine.backends.base import Generator
from proctor.engine.config import ConfigError, TeacherConfig
from proctor.engine.services.http import swift
from proctor.engine.services.http.app import HttpFront
from proctor.engine.services.http.openai_routes import OpenAIRoutes
from proctor.engine.services.http.teacher_calls import TeacherCalls
from proctor.engine.services.http.vocab import Vocab
from proctor.engine.services.streams import ServiceContext


def mount(front: HttpFront, backend: Generator, config: TeacherConfig, svc: ServiceContext) -> None:
    http = front.config
    template = http.chat_template
    if template and "{" not in template:  # a file's path, not a template
        try:
            template = Path(template).read_text()
        except OSError as exc:
            raise ConfigError(f"http.chat_template: cannot read {template} ({exc.strerror})") from None
    name = http.served_model_name or config.model  # the model id clients see (/v1/models) and send as `model`
    routes = OpenAIRoutes(
        front, TeacherCalls(backend, config, svc), Vocab(backend, template or None), name, config.model
    )
    front.include(routes.router(), svc)
    front.include(swift.router(routes), svc)
