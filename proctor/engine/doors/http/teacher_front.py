"""The Teacher's routes for the HTTP front over its core: vLLM's OpenAI-compatible ones and ms-swift's /infer/."""

from __future__ import annotations

from pathlib import Path

from proctor.engine.config import ConfigError
from proctor.engine.cores.teacher import TeacherCore
from proctor.engine.doors.http.app import HttpFront
from proctor.engine.doors.http.openai_routes import OpenAIRoutes
from proctor.engine.doors.http.teacher_calls import TeacherCalls
from proctor.engine.doors.http.vocab import Vocab


def teacher_routes(front: HttpFront, core: TeacherCore) -> OpenAIRoutes:
    """The routes with the server's chat template and the model name clients see."""
    http = front.config
    template = http.chat_template
    if template and "{" not in template:  # a file's path, not a template
        try:
            template = Path(template).read_text()
        except OSError as exc:
            raise ConfigError(f"http.chat_template: cannot read {template} ({exc.strerror})") from None
    model = core.config.model
    name = http.served_model_name or model  # the model id clients see (/v1/models) and send as `model`
    return OpenAIRoutes(front, TeacherCalls(core), Vocab(core.backend, template or None), name, model)
