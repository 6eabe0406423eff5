"""An OpenRLHF-compatible remote reward endpoint, served beside gRPC (`reward.http_port`).

OpenRLHF's `--remote_rm_url` POSTs `{"query": [...], "prompts": [...], "labels": [...]}` (query = prompt +
response) and reads `{"rewards": [...], "scores": [...], "extra_logs": {...}}`. OpenRLHF sends no training step:
give it as `training_step` (and optionally `total_steps`) in the body or the URL's query string
(e.g. `--remote_rm_url http://host:8000/reward?training_step=0`), or the request is refused with 400.
A rollout that cannot be scored (bad input, RRM failure) fails the whole POST with 422 and the item's reason:
this protocol has no per-item errors, and a made-up reward would be worse.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from proctor.engine.errors import ItemError
from proctor.engine.reward import RewardScorer, RolloutInput

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    pass


def parse_body(body: Any, query: dict[str, list[str]]) -> list[RolloutInput]:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with query, prompts and labels")
    queries, prompts, labels = body.get("query"), body.get("prompts"), body.get("labels")
    for name, value in (("query", queries), ("prompts", prompts), ("labels", labels)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadRequest(f"{name}: must be a list of strings")
    assert isinstance(queries, list) and isinstance(prompts, list) and isinstance(labels, list)
    if not len(queries) == len(prompts) == len(labels):
        raise BadRequest(f"query, prompts and labels differ in length ({len(queries)}, {len(prompts)}, {len(labels)})")

    def number(name: str) -> int | None:
        value = body.get(name, query.get(name, [None])[0])
        if value is None:
            return None
        try:
            return int(value)
        except (TypeError, ValueError):
            raise BadRequest(f"{name}: must be an integer, got {value!r}") from None

    step = number("training_step")
    if step is None:
        raise BadRequest("training_step: required (in the body or as ?training_step=N in the URL)")
    total = number("total_steps")
    items = []
    for i, (full, prompt, label) in enumerate(zip(queries, prompts, labels, strict=True)):
        if not full.startswith(prompt):
            raise BadRequest(f"query[{i}]: does not start with prompts[{i}]")
        items.append(RolloutInput(prompt, full[len(prompt) :], [label], step, total))
    return items


class OpenRLHFEndpoint:
    def __init__(self, scorer: RewardScorer, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        self.scorer = scorer
        self.loop = loop
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                url = urlparse(self.path)
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
                    items = parse_body(body, parse_qs(url.query))
                except (BadRequest, json.JSONDecodeError) as exc:
                    self._send(400, {"error": str(exc)})
                    return
                future = asyncio.run_coroutine_threadsafe(endpoint.score(items), endpoint.loop)
                status, payload = future.result()
                self._send(status, payload)

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug(format, *args)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.port = self.server.server_port
        self._thread = threading.Thread(target=self.server.serve_forever, name="proctor-openrlhf", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    async def score(self, items: list[RolloutInput]) -> tuple[int, dict[str, Any]]:
        outcomes = await asyncio.gather(*(self.scorer.score(item) for item in items), return_exceptions=True)
        failures = [
            {"index": i, "field": o.field, "message": o.message}
            for i, o in enumerate(outcomes)
            if isinstance(o, ItemError)
        ]
        unexpected = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, ItemError)]
        if unexpected:
            log.error("OpenRLHF endpoint: scoring failed: %r", unexpected[0])
            return 500, {"error": f"internal error: {unexpected[0]!r}"}
        if failures:
            return 422, {"error": "some rollouts could not be scored", "items": failures}
        rewards = [o.reward for o in outcomes if not isinstance(o, BaseException)]
        ok = [o for o in outcomes if not isinstance(o, BaseException)]
        return 200, {
            "rewards": rewards,
            "scores": rewards,
            "extra_logs": {
                "r_f1": [o.r_f1 for o in ok],
                "r_atom": [o.r_atom if o.r_atom is not None else float("nan") for o in ok],
                "alpha": [o.alpha for o in ok],
                "format_ok": [float(o.format_ok) for o in ok],
            },
        }
