"""The worker's HTTP API, spoken to by the official openai client and by raw HTTP."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import openai
import pytest

from crosszone.config import parse_topology
from crosszone.config.load import default_document
from crosszone.config.topology import Topology
from crosszone.dataplane.worker.local import serve_worker

HOST = "127.0.101.5"


def make_topology(**simulator: Any) -> Topology:
    doc = default_document()
    doc["inference"]["simulator"].update({"decode_ms_per_token": 1, "prefill_ms_per_token": 0,
                                          "reasoning_tokens": 5, "min_output_tokens": 8,
                                          "max_output_tokens": 20, **simulator})
    doc["gateway"]["max_body_bytes"] = 4096
    return parse_topology(doc)


@pytest.fixture
async def worker() -> AsyncIterator[str]:
    async with serve_worker(make_topology(), HOST) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def sse_events(resp: aiohttp.ClientResponse) -> list[Any]:
    events: list[Any] = []
    async for line in resp.content:
        if line.startswith(b"data: "):
            data = line[6:].strip()
            events.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return events


# -- the official client ------------------------------------------------------------------------


async def test_openai_client_chat_non_streaming(worker: str) -> None:
    client = openai.OpenAI(base_url=worker + "/v1", api_key="x")
    resp = await asyncio.to_thread(client.chat.completions.create, model="deepseek-chat",
                                   messages=[{"role": "user", "content": "hi"}], seed=1)
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")
    assert resp.model == "deepseek-chat"
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.completion_tokens == len(choice.message.content.split())
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    client.close()


async def test_openai_client_chat_streaming_with_usage(worker: str) -> None:
    client = openai.AsyncOpenAI(base_url=worker + "/v1", api_key="x")
    whole = await client.chat.completions.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "hi"}], seed=1)
    stream = await client.chat.completions.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "hi"}], seed=1, stream=True,
        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(text.split())
    assert len({c.id for c in chunks}) == 1
    await client.close()


async def test_reasoning_content_reaches_the_openai_client(worker: str) -> None:
    client = openai.AsyncOpenAI(base_url=worker + "/v1", api_key="x")
    stream = await client.chat.completions.create(
        model="deepseek-reasoner", messages=[{"role": "user", "content": "think"}], stream=True)
    reasoning, content = "", ""
    async for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta
            reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
            content += delta.content or ""
    assert len(reasoning.split()) == 5 and content
    whole = await client.chat.completions.create(
        model="deepseek-reasoner", messages=[{"role": "user", "content": "think"}])
    message = whole.choices[0].message
    assert (message.model_extra or {})["reasoning_content"] == reasoning
    assert message.content == content
    assert whole.usage is not None and whole.usage.completion_tokens_details is not None
    assert whole.usage.completion_tokens_details.reasoning_tokens == 5
    await client.close()


async def test_openai_client_completions(worker: str) -> None:
    client = openai.AsyncOpenAI(base_url=worker + "/v1", api_key="x")
    whole = await client.completions.create(model="deepseek-chat", prompt="Once upon")
    assert whole.object == "text_completion" and whole.choices[0].finish_reason == "stop"
    stream = await client.completions.create(model="deepseek-chat", prompt="Once upon",
                                             stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage == whole.usage
    limited = await client.completions.create(model="deepseek-chat", prompt=["Once upon"],
                                              max_tokens=2)
    assert limited.choices[0].finish_reason == "length"
    assert limited.choices[0].text == " ".join(whole.choices[0].text.split()[:2]) + " "
    await client.close()


# -- wire format ----------------------------------------------------------------------------------


async def test_stream_wire_format(worker: str, http: aiohttp.ClientSession) -> None:
    body = {"model": "deepseek-reasoner", "stream": True, "max_tokens": 7,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    async with http.post(worker + "/v1/chat/completions", json=body,
                         headers={"x-request-id": "abc123"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["x-crosszone-node"] == "us-west-2a/worker-1"
        events = await sse_events(resp)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["id"] for c in chunks} == {"chatcmpl-abc123"}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["created"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tokens = chunks[1:-1]
    assert len(tokens) == 7
    assert all(set(t["choices"][0]["delta"]) == {"reasoning_content", "content"}
               and t["choices"][0]["delta"]["content"] is None for t in tokens[:5])
    assert all(set(t["choices"][0]["delta"]) == {"content"} for t in tokens[5:])
    assert chunks[-1]["choices"] == [{"index": 0, "delta": {}, "logprobs": None,
                                      "finish_reason": "length"}]
    assert "usage" not in chunks[-1]


async def test_non_streaming_body(worker: str, http: aiohttp.ClientSession) -> None:
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "x"}]}
    async with http.post(worker + "/v1/chat/completions", json=body) as resp:
        data = await resp.json()
    assert set(data) == {"id", "object", "created", "model", "system_fingerprint", "choices",
                         "usage"}
    assert data["choices"][0]["logprobs"] is None
    assert set(data["choices"][0]["message"]) == {"role", "content"}
    assert set(data["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens",
                                  "completion_tokens_details"}
    assert data["usage"]["completion_tokens_details"] == {"reasoning_tokens": 0}


async def test_prefix_continuation_over_http(worker: str, http: aiohttp.ClientSession) -> None:
    msgs = [{"role": "user", "content": "continue me"}]
    async with http.post(worker + "/v1/chat/completions",
                         json={"model": "deepseek-chat", "messages": msgs}) as resp:
        full = (await resp.json())["choices"][0]["message"]["content"]
    head = " ".join(full.split()[:3]) + " "
    cont = [*msgs, {"role": "assistant", "content": head, "prefix": True}]
    async with http.post(worker + "/v1/chat/completions",
                         json={"model": "deepseek-chat", "messages": cont}) as resp:
        data = await resp.json()
    assert head + data["choices"][0]["message"]["content"] == full
    assert data["usage"]["completion_tokens"] == len(full.split()) - 3
    # vLLM's spelling of the same request.
    vllm = [*msgs, {"role": "assistant", "content": head}]
    async with http.post(worker + "/v1/chat/completions",
                         json={"model": "deepseek-chat", "messages": vllm,
                               "continue_final_message": True,
                               "add_generation_prompt": False}) as resp:
        assert head + (await resp.json())["choices"][0]["message"]["content"] == full
    # Completions continue with crosszone_prefix.
    async with http.post(worker + "/v1/completions",
                         json={"model": "deepseek-chat", "prompt": "p"}) as resp:
        text = (await resp.json())["choices"][0]["text"]
    head = " ".join(text.split()[:4]) + " "
    async with http.post(worker + "/v1/completions",
                         json={"model": "deepseek-chat", "prompt": "p",
                               "crosszone_prefix": head}) as resp:
        assert head + (await resp.json())["choices"][0]["text"] == text


# -- bad requests ---------------------------------------------------------------------------------

_MSGS = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(("body", "status", "param", "code"), [
    (b"{not json", 400, None, "invalid_json"),
    (b"[1, 2]", 400, None, "invalid_json"),
    ({"model": "deepseek-chat"}, 400, "messages", "missing_required_parameter"),
    ({"messages": _MSGS}, 400, "model", "missing_required_parameter"),
    ({"model": 5, "messages": _MSGS}, 400, "model", "invalid_type"),
    ({"model": "deepseek-chat", "messages": "hi"}, 400, "messages", "invalid_type"),
    ({"model": "deepseek-chat", "messages": []}, 400, "messages", "invalid_type"),
    ({"model": "deepseek-chat", "messages": [{"role": "robot", "content": "x"}]}, 400,
     "messages[0].role", "invalid_value"),
    ({"model": "deepseek-chat", "messages": [{"role": "user", "content": 3}]}, 400,
     "messages[0].content", "invalid_type"),
    ({"model": "deepseek-chat", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     400, "messages[0].content[0]", "invalid_type"),
    ({"model": "deepseek-chat", "messages": [{"role": "user", "content": "x", "prefix": True}]},
     400, "messages[0].prefix", "invalid_value"),
    ({"model": "deepseek-chat", "messages": _MSGS, "n": 2}, 400, "n", "unsupported_value"),
    ({"model": "deepseek-chat", "messages": _MSGS, "max_tokens": 0}, 400, "max_tokens",
     "invalid_value"),
    ({"model": "deepseek-chat", "messages": _MSGS, "max_tokens": "9"}, 400, "max_tokens",
     "invalid_type"),
    ({"model": "deepseek-chat", "messages": _MSGS, "max_completion_tokens": True}, 400,
     "max_completion_tokens", "invalid_type"),
    ({"model": "deepseek-chat", "messages": _MSGS, "stream": "yes"}, 400, "stream",
     "invalid_type"),
    ({"model": "gpt-5", "messages": _MSGS}, 404, "model", "model_not_found"),
    ({"model": "deepseek-chat", "messages": [{"role": "user", "content": "x" * 5000}]}, 413,
     None, "body_too_large"),
])
async def test_bad_chat_requests(worker: str, http: aiohttp.ClientSession, body: Any,
                                 status: int, param: str | None, code: str) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(worker + "/v1/chat/completions", data=data,
                         headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == status
        err = (await resp.json())["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and err["code"] == code and err["message"]


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "deepseek-chat"}, "prompt"),
    ({"model": "deepseek-chat", "prompt": ["a", "b"]}, "prompt"),
    ({"model": "deepseek-chat", "prompt": [1, 2, 3]}, "prompt"),
    ({"model": "deepseek-chat", "prompt": "a", "crosszone_prefix": 3}, "crosszone_prefix"),
])
async def test_bad_completions_requests(worker: str, http: aiohttp.ClientSession,
                                        body: Any, param: str) -> None:
    async with http.post(worker + "/v1/completions", json=body) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["param"] == param


async def test_the_openai_client_sees_errors(worker: str) -> None:
    client = openai.AsyncOpenAI(base_url=worker + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(model="nope", messages=[{"role": "user",
                                                                      "content": "x"}])
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="deepseek-chat", messages=_MSGS, n=2)  # type: ignore[arg-type]
    await client.close()


# -- operations ---------------------------------------------------------------------------------


async def test_models_health_metrics(worker: str, http: aiohttp.ClientSession) -> None:
    async with http.get(worker + "/v1/models") as resp:
        models = await resp.json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["deepseek-chat", "deepseek-reasoner"]
    assert all(m["object"] == "model" and m["owned_by"] == "crosszone" for m in models["data"])
    async with http.get(worker + "/health") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok", "node": "us-west-2a/worker-1",
                                     "zone": "us-west-2a", "running": 0, "queued": 0}
    async with http.post(worker + "/v1/chat/completions",
                         json={"model": "deepseek-chat", "messages": _MSGS,
                               "max_tokens": 3}) as resp:
        assert resp.status == 200
    async with http.get(worker + "/metrics") as resp:
        text = await resp.text()
    assert ('crosszone_worker_requests_total{endpoint="chat",model="deepseek-chat",status="200"} '
            "1.0") in text
    assert 'crosszone_worker_tokens_generated_total{model="deepseek-chat"} 3.0' in text
    assert "crosszone_worker_time_to_first_token_seconds_count" in text
    assert "crosszone_worker_queue_length 0.0" in text
    assert "crosszone_worker_in_flight_requests 0.0" in text


async def test_queue_full_over_http(http: aiohttp.ClientSession) -> None:
    topology = make_topology(max_num_seqs=1, max_queue=0, decode_ms_per_token=20)
    async with serve_worker(topology, HOST) as url:
        body = {"model": "deepseek-chat", "messages": _MSGS}
        busy = asyncio.create_task(http.post(url + "/v1/chat/completions", json=body))
        await asyncio.sleep(0.05)
        async with http.post(url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 429
            assert (await resp.json())["error"]["code"] == "queue_full"
        (await busy).close()


async def test_client_disconnect_frees_the_batch_slot(http: aiohttp.ClientSession) -> None:
    topology = make_topology(decode_ms_per_token=20, min_output_tokens=40, max_output_tokens=40)
    async with serve_worker(topology, HOST) as url:
        body = {"model": "deepseek-chat", "messages": _MSGS, "stream": True}
        resp = await http.post(url + "/v1/chat/completions", json=body)
        await resp.content.readline()
        async with http.get(url + "/health") as h:
            assert (await h.json())["running"] == 1
        resp.close()
        for _ in range(50):
            await asyncio.sleep(0.02)
            async with http.get(url + "/health") as h:
                if (await h.json())["running"] == 0:
                    break
        else:
            raise AssertionError("the abandoned stream still holds its slot")


async def test_completions_id_follows_x_request_id(worker: str,
                                                   http: aiohttp.ClientSession) -> None:
    async with http.post(worker + "/v1/completions", headers={"x-request-id": "r-9"},
                         json={"model": "deepseek-chat", "prompt": "p", "stream": True}) as resp:
        events = await sse_events(resp)
    assert {e["id"] for e in events[:-1]} == {"cmpl-r-9"}
    assert {e["object"] for e in events[:-1]} == {"text_completion"}
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


# -- fault injection ----------------------------------------------------------------------------


async def test_error_rate_fault(worker: str, http: aiohttp.ClientSession) -> None:
    async with http.post(worker + "/admin/faults", json={"error_rate": 1}) as resp:
        assert resp.status == 200 and (await resp.json())["error_rate"] == 1
    for stream in (False, True):
        body = {"model": "deepseek-chat", "messages": _MSGS, "stream": stream}
        async with http.post(worker + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 500
            assert resp.headers["Content-Type"].startswith("application/json")
            assert (await resp.json())["error"]["type"] == "server_error"
    async with http.delete(worker + "/admin/faults") as resp:
        assert (await resp.json())["error_rate"] == 0
    async with http.post(worker + "/v1/chat/completions",
                         json={"model": "deepseek-chat", "messages": _MSGS}) as resp:
        assert resp.status == 200
    async with http.post(worker + "/admin/faults", json={"error_rate": 2}) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["param"] == "error_rate"
    async with http.post(worker + "/admin/faults", json={"bogus": 1}) as resp:
        assert resp.status == 400


async def test_stall_fault(worker: str, http: aiohttp.ClientSession) -> None:
    await (await http.post(worker + "/admin/faults",
                           json={"stall_after_tokens": 3, "stall_seconds": 0.4})).release()
    body = {"model": "deepseek-chat", "messages": _MSGS, "stream": True}
    stamps: list[float] = []
    async with http.post(worker + "/v1/chat/completions", json=body) as resp:
        async for line in resp.content:
            if line.startswith(b"data: {"):
                stamps.append(time.monotonic())
    # role chunk, tokens 1..3, then the stall before token 4
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert gaps[3] >= 0.39
    assert max(gaps[:3]) < 0.2


async def test_admin_token_guards_faults() -> None:
    doc = default_document()
    doc["auth"] = {"admin_token": "s3cret"}
    async with serve_worker(parse_topology(doc), HOST) as url, aiohttp.ClientSession() as http:
        async with http.post(url + "/admin/faults", json={"error_rate": 1}) as resp:
            assert resp.status == 401
        async with http.post(url + "/admin/faults", json={"error_rate": 1},
                             headers={"Authorization": "Bearer s3cret"}) as resp:
            assert resp.status == 200


# -- crash: the worker process dies after N tokens reached the client -----------------------------

_RUN_WORKER = """
import sys
from aiohttp import web
from crosszone.config import parse_topology
from crosszone.config.placement import Node
from crosszone.dataplane.worker.app import create_worker_app
import json
doc = json.loads(sys.argv[1]); host = sys.argv[2]; port = int(sys.argv[3])
node = Node(zone="us-west-2a", component="worker", index=1, host=host, port=port)
web.run_app(create_worker_app(parse_topology(doc), node), host=host, port=port, print=None)
"""


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture
def worker_process() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    doc = default_document()
    doc["inference"]["simulator"].update({"decode_ms_per_token": 5, "min_output_tokens": 30,
                                          "max_output_tokens": 30})
    host = "127.0.101.6"
    port = _free_port(host)
    proc = subprocess.Popen([sys.executable, "-c", _RUN_WORKER, json.dumps(doc), host, str(port)])
    try:
        yield f"http://{host}:{port}", proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


async def _wait_healthy(http: aiohttp.ClientSession, url: str) -> None:
    for _ in range(200):
        try:
            async with http.get(url + "/health") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"worker at {url} never became healthy")


async def test_crash_after_tokens_kills_the_process(
        worker_process: tuple[str, subprocess.Popen[bytes]], http: aiohttp.ClientSession) -> None:
    url, proc = worker_process
    await _wait_healthy(http, url)
    async with http.post(url + "/admin/faults", json={"crash_after_tokens": 5}) as resp:
        assert resp.status == 200
    body = {"model": "deepseek-chat", "messages": _MSGS, "stream": True}
    tokens: list[str] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(url + "/v1/chat/completions", json=body) as resp:
            async for line in resp.content:
                if line.startswith(b"data: {"):
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    if delta.get("content"):
                        tokens.append(delta["content"])
    assert len(tokens) == 5
    code = await asyncio.to_thread(proc.wait, 10)
    assert code == -signal.SIGKILL
