"""The OpenAI / vLLM-compatible HTTP front against the real clients that speak it: the `openai` package, and
prime-rl's, ArcticTraining's and ms-swift's teacher requests (reproduced from their source, since those packages are
too heavy for CI), on the tiny teacher; log-probs checked against a float64 reference. TRL's VLLMClient and
ServerDistillationTrainer run in tests/trainers (CI's trainers venv)."""

from __future__ import annotations

import asyncio
import json
import math
import urllib.error
import urllib.request
from typing import Any

import pytest
import torch

from proctor.engine.server.lifecycle import ProctorServer
from tests.conftest import TINY

pytestmark = pytest.mark.asyncio(loop_scope="session")

SEQUENCES = [[5, 17, 99, 3, 250, 41, 7], [300, 12, 12, 80, 9]]
PROMPT_LENGTHS = [3, 2]


def base(server: ProctorServer) -> str:
    assert server.http is not None
    return f"http://127.0.0.1:{server.http.port}"


def call(url: str, body: Any = None) -> tuple[int, Any, dict[str, str]]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, _strict(r.read()), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as err:
        return err.code, _strict(err.read()), {k.lower(): v for k, v in err.headers.items()}


def _strict(data: bytes) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(data, parse_constant=refuse) if data else None


async def test_openai_completions_text_tokens_echo_stream(tiny_server: ProctorServer, reference: Any) -> None:
    import openai

    client = openai.OpenAI(base_url=base(tiny_server) + "/v1", api_key="unused")

    def run() -> None:
        text = client.completions.create(model=TINY, prompt="hello world", max_tokens=4, logprobs=2, seed=3)
        c = text.choices[0]
        assert c.finish_reason in ("length", "stop") and c.logprobs is not None
        assert len(c.logprobs.tokens) == len(c.logprobs.token_logprobs) == len(c.logprobs.top_logprobs) <= 4
        assert all(len(top) <= 3 for top in c.logprobs.top_logprobs if top)  # k + 1 at most, sampled first
        assert text.usage.prompt_tokens > 0 and text.usage.completion_tokens == len(c.logprobs.tokens)
        tokens = client.completions.create(model=TINY, prompt=[[5, 6, 7], [8, 9]], max_tokens=2, n=2)
        assert len(tokens.choices) == 4 and [ch.index for ch in tokens.choices] == [0, 1, 2, 3]
        echo = client.completions.create(model=TINY, prompt=SEQUENCES[0], max_tokens=0, echo=True, logprobs=1)
        lp = echo.choices[0].logprobs
        assert lp is not None and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        ref = reference(SEQUENCES[0])
        expected = ref[:-1].gather(1, torch.tensor(SEQUENCES[0][1:]).unsqueeze(1)).squeeze(1)
        assert torch.allclose(torch.tensor(lp.token_logprobs[1:], dtype=torch.float64), expected, atol=1e-4)
        chunks = list(client.completions.create(model=TINY, prompt="hello", max_tokens=3, n=2, stream=True,
                                                stream_options={"include_usage": True},
                                                extra_body={"return_token_ids": True}))  # fmt: skip
        finished = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        assert sorted(ch.choices[0].index for ch in finished) == [0, 1]
        generated = sum(len(ch.choices[0].token_ids) for ch in finished)  # type: ignore[attr-defined]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == generated
        chat = client.chat.completions.create(
            model=TINY, messages=[{"role": "user", "content": "hi"}], max_tokens=3, logprobs=True, top_logprobs=2
        )
        assert chat.choices[0].message.role == "assistant" and chat.choices[0].logprobs is not None
        assert all(len(t.top_logprobs) == 2 for t in chat.choices[0].logprobs.content)
        streamed = list(client.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "hi"}],
                                                       max_tokens=3, stream=True))  # fmt: skip
        assert streamed[0].choices[0].delta.role == "assistant" and streamed[-1].choices[0].finish_reason

    await asyncio.to_thread(run)


async def test_prime_rl_arctic_and_swift_shapes(tiny_server: ProctorServer, reference: Any) -> None:
    url = base(tiny_server)
    seq = SEQUENCES[0]
    ref = reference(seq)
    expected = ref[:-1].gather(1, torch.tensor(seq[1:]).unsqueeze(1)).squeeze(1).tolist()

    # prime-rl: /health, /v1/models (the id must be its teacher's name), /inference/v1/generate, first entry of each
    # position as the actual token's log-prob
    assert (await asyncio.to_thread(call, url + "/health"))[0] == 200
    _, models, _ = await asyncio.to_thread(call, url + "/v1/models")
    assert models["data"][0]["id"] == TINY and models["data"][0]["max_model_len"] > 0
    body = {"model": TINY, "token_ids": seq,
            "sampling_params": {"max_tokens": 1, "temperature": 1, "top_p": 1, "prompt_logprobs": 1}}  # fmt: skip
    status, out, _ = await asyncio.to_thread(call, url + "/inference/v1/generate", body)
    assert status == 200, out
    prime = [0.0 if lp is None else next(iter(lp.values()))["logprob"] for lp in out["prompt_logprobs"]]
    assert prime[0] == 0.0 and prime[1:] == pytest.approx(expected, abs=1e-4)
    assert len(out["choices"]) == 1 and len(out["choices"][0]["token_ids"]) == 1
    # a generated token's rank counts the whole vocabulary too (vLLM's: ties in)
    body["sampling_params"] |= {"max_tokens": 3, "logprobs": 2, "prompt_logprobs": None}
    status, out, _ = await asyncio.to_thread(call, url + "/inference/v1/generate", body)
    assert status == 200, out
    generated = out["choices"][0]["token_ids"]
    rows = reference(seq + generated)[len(seq) - 1 : -1]
    for step, token, row in zip(out["choices"][0]["logprobs"]["content"], generated, rows, strict=True):
        assert step["token_id"] == token and step["rank"] == int((row >= row[token]).sum()), step

    # ArcticTraining: no model, max_tokens 0, echo, logprobs 1; reads the legacy token_logprobs
    status, out, _ = await asyncio.to_thread(
        call, url + "/v1/completions", {"prompt": seq, "max_tokens": 0, "echo": True, "logprobs": 1}
    )
    assert status == 200, out
    assert out["choices"][0]["logprobs"]["token_logprobs"][3:] == pytest.approx(expected[2:], abs=1e-4)

    # ms-swift 4.6.0: /health, then /infer/ with the reply as token ids in the assistant turn, top-20 prompt
    # log-probs (its own client runs in tests/trainers/test_swift.py; this is what it sends, asdict'ed)
    assert (await asyncio.to_thread(call, url + "/health"))[0] == 200
    reply = [40, 41, 42]
    request = {"images": [], "audios": [], "videos": [], "tools": None, "objects": {}, "chat_template_kwargs": {}}
    config = {"max_tokens": 1, "temperature": 0.0, "top_k": None, "top_p": None, "min_p": None}
    config |= {"repetition_penalty": None, "num_beams": 1, "stop": [], "seed": None, "stream": False}
    config |= {"logprobs": False, "top_logprobs": None, "prompt_logprobs": 20, "n": 1, "best_of": None}
    config |= {"presence_penalty": 0.0, "frequency_penalty": 0.0, "length_penalty": 1.0, "return_details": False}
    body = {
        "infer_requests": [
            {
                "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": reply}],
                **request,
                "data_dict": {},
                "uuid": None,
                "add_eos": None,
            }
        ],
        "request_config": {**config, "structured_outputs_regex": None},
        "metrics": None,
        "use_tqdm": False,
        "adapter_request": None,
    }
    status, out, _ = await asyncio.to_thread(call, url + "/infer/", body)
    assert status == 200, out
    positions = out[0]["prompt_logprobs"]
    assert positions[0] is None
    for token, position in zip(reply, positions[-len(reply) :], strict=True):
        first_id, first = next(iter(position.items()))
        assert int(first_id) == token and set(first) == {"logprob", "rank", "decoded_token"}
        assert 20 <= len(position) <= 21
        assert [e["rank"] for e in list(position.values())[1:]] == sorted(
            e["rank"] for e in list(position.values())[1:]
        )
    for change, field in (
        ({"images": ["x.png"]}, "infer_requests[0].images"),
        ({"messages": [{"role": "assistant", "content": reply}, {"role": "user", "content": "hi"}]}, "messages[0]"),
    ):
        refused = {**body, "infer_requests": [{**body["infer_requests"][0], **change}]}
        status, out, _ = await asyncio.to_thread(call, url + "/infer/", refused)
        assert status == 400 and field in out["error"]["message"], out


async def test_prompt_logprobs_vllm_entry_order_and_ranks(tiny_server: ProctorServer, reference: Any) -> None:
    seq = SEQUENCES[1]
    status, out, _ = await asyncio.to_thread(
        call,
        base(tiny_server) + "/v1/completions",
        {"prompt": seq, "max_tokens": 0, "prompt_logprobs": 3, "echo": True},
    )
    assert status == 200, out
    ref = reference(seq)
    positions = out["choices"][0]["prompt_logprobs"]
    assert positions[0] is None and len(positions) == len(seq)
    for p in range(1, len(seq)):
        entries = list(positions[p].items())
        assert int(entries[0][0]) == seq[p], "the actual token's entry comes first"
        row = ref[p - 1]
        assert entries[0][1]["logprob"] == pytest.approx(row[seq[p]].item(), abs=1e-4)
        assert entries[0][1]["rank"] == int((row >= row[seq[p]]).sum()), "the whole vocabulary, ties in, as vLLM"
        top = row.topk(3)
        rest = {int(k): v for k, v in entries if int(k) != seq[p]}
        for rank, (value, token) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True), 1):
            if token != seq[p]:
                assert rest[token]["rank"] == rank and rest[token]["logprob"] == pytest.approx(value, abs=1e-4)
        assert all(not math.isnan(e["logprob"]) for _, e in entries)
    # prompt_logprobs 0: the actual token alone, still ranked in the whole vocabulary
    status, out, _ = await asyncio.to_thread(
        call,
        base(tiny_server) + "/v1/completions",
        {"prompt": seq, "max_tokens": 0, "prompt_logprobs": 0, "echo": True},
    )
    assert status == 200, out
    for p, position in enumerate(out["choices"][0]["prompt_logprobs"][1:], 1):
        row = ref[p - 1]
        assert list(position) == [str(seq[p])] and position[str(seq[p])]["rank"] == int((row >= row[seq[p]]).sum())


async def test_trls_prompt_logprobs_call_is_one_forward_with_generates_token(
    tiny_server: ProctorServer, reference: Any
) -> None:
    """TRL 1.16's VLLMClient.get_sequence_logprobs body (token-id prompts, max_tokens 1, temperature 1.0,
    prompt_logprobs k): the prompt log-probs are the float64 reference's, and the one token is sampled in the Score
    pass, the very token (and log-prob) the Generate path gives for the same seed."""
    url = base(tiny_server) + "/v1/completions"
    registry = tiny_server.metrics.registry

    def batches(rpc: str) -> float:
        labels = {"model": TINY, "rpc": rpc}
        return registry.get_sample_value("proctor_batch_size_items_count", labels) or 0.0

    trl = {"prompt": SEQUENCES, "max_tokens": 1, "temperature": 1.0, "prompt_logprobs": 3}
    seeded = {**trl, "seed": 11, "logprobs": 2, "return_token_ids": True}
    before = batches("Score"), batches("Generate")
    for body in (trl, seeded):
        status, out, _ = await asyncio.to_thread(call, url, body)
        assert status == 200, out
        assert len(out["choices"]) == len(SEQUENCES) and out["usage"]["completion_tokens"] == len(SEQUENCES)
        for seq, choice in zip(SEQUENCES, out["choices"], strict=True):
            ref = reference(seq)
            actual = [float(next(iter(p.values()))["logprob"]) for p in choice["prompt_logprobs"][1:]]
            expected = ref[torch.arange(len(seq) - 1), torch.tensor(seq[1:])]
            assert torch.allclose(torch.tensor(actual, dtype=torch.float64), expected, atol=1e-4)
    assert batches("Generate") == before[1], "no generation wave: the tokens came from the Score pass"
    assert batches("Score") > before[0]

    one_pass = out
    status, generated, _ = await asyncio.to_thread(
        call, url, {k: v for k, v in seeded.items() if k != "prompt_logprobs"}
    )
    assert status == 200, generated
    assert batches("Generate") > before[1]
    for ours, theirs in zip(one_pass["choices"], generated["choices"], strict=True):
        assert ours["token_ids"] == theirs["token_ids"] and ours["text"] == theirs["text"]
        assert ours["logprobs"]["token_logprobs"] == pytest.approx(theirs["logprobs"]["token_logprobs"], abs=1e-5)
        assert ours["logprobs"]["top_logprobs"][0].keys() == theirs["logprobs"]["top_logprobs"][0].keys()


async def test_bad_bodies_name_the_field(tiny_server: ProctorServer) -> None:
    url = base(tiny_server) + "/v1/completions"
    cases = {
        "n": {"prompt": "hi", "n": "2"},
        "temperature": {"prompt": "hi", "temperature": "hot"},
        "best_of": {"prompt": "hi", "best_of": 2},
        "logit_bias": {"prompt": "hi", "logit_bias": {"1": 5}},
        "suffix": {"prompt": "hi", "suffix": "x"},
        "prompt_logprobs": {"prompt": [1, 2], "max_tokens": 0, "prompt_logprobs": -1},
        "logprobs": {"prompt": "hi", "logprobs": 1.5},
        "prompt": {"prompt": [1] * 3000},
        "max_tokens": {"prompt": "hi", "max_tokens": 0},
        "model": {"prompt": "hi", "model": "gpt-4"},
        "top_p": {"prompt": "hi", "top_p": 0},
        "echo": {"prompt": "hi", "echo": 1},
        "stream": {"prompt": "hi", "stream": "yes"},
    }
    for field, body in cases.items():
        status, out, _ = await asyncio.to_thread(call, url, body)
        assert status in (400, 404), (field, out)
        assert out["error"]["param"] == field and field in out["error"]["message"], (field, out)
    status, out, _ = await asyncio.to_thread(call, url, {"prompt": [1, 999]})
    assert status == 400 and out["error"]["message"].startswith("prompt[1]: token id 999"), out
    for raw in (b'{"prompt": "hi", "temperature": NaN}', b'{"prompt": "hi", "temperature": 1e999}'):
        status, out, _ = await asyncio.to_thread(call, url, raw)  # not JSON numbers: refused, not sampled with
        assert status == 400 and out["error"]["param"] == "temperature", out
    status, out, _ = await asyncio.to_thread(call, url, b'{"prompt": "hi",')
    assert status == 400 and "not valid JSON" in out["error"]["message"], out
    chat = {"messages": [{"role": "user", "content": "hi"}], "tools": []}
    status, out, _ = await asyncio.to_thread(call, base(tiny_server) + "/v1/chat/completions", chat)
    assert status == 400 and out["error"]["param"] == "tools"
    chat = {"messages": [{"role": "user", "content": "hi"}], "chat_template": "{{ 7 * 7 }}"}
    status, out, _ = await asyncio.to_thread(call, base(tiny_server) + "/v1/chat/completions", chat)
    assert status == 400 and out["error"]["param"] == "chat_template", "a request's template runs only if trusted"


async def test_overload_is_429_with_retry_after_and_the_server_stays_healthy(tiny_server: ProctorServer) -> None:
    assert tiny_server.http is not None
    admission = tiny_server.http.contexts["proctor.v1.Teacher"].admission  # the queue gRPC's Score uses too
    saved = admission.used
    admission.used = admission.capacity
    try:
        status, out, headers = await asyncio.to_thread(
            call, base(tiny_server) + "/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 0, "prompt_logprobs": 1}
        )
    finally:
        admission.used = saved
    assert status == 429 and headers["retry-after"] == "1" and "at capacity" in out["error"]["message"]
    assert (await asyncio.to_thread(call, base(tiny_server) + "/health"))[0] == 200
    too_big = {"prompt": [[1, 2]] * 100, "n": 50, "max_tokens": 1}  # 5,000 items > the queue of 4,096: never fits
    status, out, _ = await asyncio.to_thread(call, base(tiny_server) + "/v1/completions", too_big)
    assert status == 400 and "split it" in out["error"]["message"], out
    status, _, _ = await asyncio.to_thread(
        call, base(tiny_server) + "/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 0, "prompt_logprobs": 1}
    )
    assert status == 200
    requests = tiny_server.metrics.requests.labels("proctor.v1.Teacher", "/v1/completions", "429")
    assert requests._value.get() >= 1


async def test_tokenize_messages_is_the_chat_routes_prompt(tiny_server: ProctorServer) -> None:
    """/tokenize with messages renders them as /v1/chat/completions does (same template options, same ids)."""
    url = base(tiny_server)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    for options in (
        {},
        {"add_generation_prompt": False},
        {"continue_final_message": True, "add_generation_prompt": False},
    ):
        status, tokenized, _ = await asyncio.to_thread(call, f"{url}/tokenize", {"messages": messages, **options})
        assert status == 200, tokenized
        chat = {"messages": messages, "max_tokens": 1, "return_token_ids": True, **options}
        status, answer, _ = await asyncio.to_thread(call, f"{url}/v1/chat/completions", chat)
        assert status == 200, answer
        assert tokenized["tokens"] == answer["prompt_token_ids"] and tokenized["count"] == len(tokenized["tokens"])


async def test_chat_and_tokenize_refuse_text_too_long_before_rendering_it(tiny_server: ProctorServer) -> None:
    """The chat template and /tokenize are bounded like every text prompt: a text that cannot fit the prompt limit
    is refused on its length, before the template or the tokenizer runs over it."""
    core = tiny_server.cores.teacher
    assert core is not None
    text = "word " * (core.max_prompt_tokens * 64 // 5 + 1)
    chat = {"messages": [{"role": "user", "content": text}], "max_tokens": 1}
    status, out, _ = await asyncio.to_thread(call, base(tiny_server) + "/v1/chat/completions", chat)
    assert status == 400 and out["error"]["param"] == "messages", out
    assert "cannot fit max_prompt_tokens" in out["error"]["message"]
    status, out, _ = await asyncio.to_thread(call, base(tiny_server) + "/tokenize", {"prompt": text})
    assert status == 400 and out["error"]["param"] == "prompt", out
