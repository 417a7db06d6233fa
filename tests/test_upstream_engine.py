"""The upstream engine (backend: openai): request bodies, streaming, error translation."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from multidict import CIMultiDict

from crosszone.config import parse_topology
from crosszone.config.load import default_document
from crosszone.config.topology import Upstream
from crosszone.dataplane.engines.base import ChatMessage, Delta, GenerationRequest
from crosszone.dataplane.engines.upstream import UpstreamEngine, flatten_chat
from crosszone.dataplane.sse import DONE, encode_event
from crosszone.dataplane.worker.local import serve_app, serve_worker
from crosszone.errors import EngineError

HOST = "127.0.101.7"


class Recorder:
    """A scripted OpenAI-compatible server that records what it was sent."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, CIMultiDict[str], Any]] = []
        self.status = 200
        self.error: bytes = b""
        self.events: list[bytes] = [
            encode_event({"choices": [{"index": 0, "delta": {"role": "assistant",
                                                             "content": ""}}]}),
            encode_event({"choices": [{"index": 0, "delta": {"reasoning_content": "hm "}}]}),
            encode_event({"choices": [{"index": 0, "delta": {"content": "one "}}]}),
            encode_event({"choices": [{"index": 0, "delta": {"content": "two "}}]}),
            encode_event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            encode_event({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3,
                                                   "total_tokens": 8,
                                                   "completion_tokens_details":
                                                       {"reasoning_tokens": 1}}}),
            DONE,
        ]
        self.gap = 0.0
        self.peers: list[int] = []
        self.whole: dict[str, Any] | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/{tail:.*}", self.handle)
        app.router.add_get("/v1/models", self.models)
        return app

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "ds-v3", "object": "model"},
                                                             {"id": "other", "object": "model"}]})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, CIMultiDict(request.headers), await request.json()))
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.peers.append(peer[1] if peer else 0)
        if self.whole is not None:
            return web.json_response(self.whole)
        if self.status != 200:
            return web.Response(status=self.status, body=self.error,
                                content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in self.events:
            await resp.write(event)
            if self.gap:
                await asyncio.sleep(self.gap)
        return resp


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    rec = Recorder()
    async with serve_app(rec.app(), HOST) as url:
        yield rec, url + "/v1"


async def started(config: Upstream) -> UpstreamEngine:
    engine = UpstreamEngine(config)
    await engine.start()
    return engine


async def collect(engine: UpstreamEngine, request: GenerationRequest) -> list[Delta]:
    return [d async for d in engine.generate(request)]


PROMPT = [ChatMessage("system", "sys"), ChatMessage("user", "hi")]
PREFIX = ChatMessage("assistant", "one ", reasoning_content="hm ", prefix=True)


async def test_plain_chat_request_and_stream(recorder: tuple[Recorder, str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    rec, url = recorder
    monkeypatch.setenv("CZ_TEST_KEY", "sk-test")
    engine = await started(Upstream(base_url=url, api_key_env="CZ_TEST_KEY",
                                    model_map={"deepseek-chat": "ds-v3"}))
    try:
        assert engine.models() == ["deepseek-chat", "other"]
        out = await collect(engine, GenerationRequest("deepseek-chat", PROMPT, max_tokens=9,
                                                      seed=3, stop=["x"], request_id="r1"))
    finally:
        await engine.close()
    assert out[:3] == [Delta(reasoning="hm "), Delta(content="one "), Delta(content="two ")]
    assert out[3].finish_reason == "stop" and out[3].usage is not None
    assert (out[3].usage.prompt_tokens, out[3].usage.completion_tokens,
            out[3].usage.reasoning_tokens) == (5, 3, 1)
    path, headers, body = rec.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-test"
    assert headers["x-request-id"] == "r1"
    assert body == {"model": "ds-v3", "messages": [{"role": "system", "content": "sys"},
                                                   {"role": "user", "content": "hi"}],
                    "max_tokens": 9, "seed": 3, "stop": ["x"], "stream": True,
                    "stream_options": {"include_usage": True}}


@pytest.mark.parametrize("mode", ["deepseek-prefix", "vllm-continue", "completions"])
async def test_continuation_request_bodies(recorder: tuple[Recorder, str], mode: str) -> None:
    rec, url = recorder
    if mode == "completions":
        rec.events = [encode_event({"choices": [{"index": 0, "text": "two "}]}),
                      encode_event({"choices": [{"index": 0, "text": "",
                                                 "finish_reason": "length"}]}), DONE]
    engine = await started(Upstream(base_url=url, models=["deepseek-chat"], continuation=mode))
    try:
        out = await collect(engine, GenerationRequest("deepseek-chat", [*PROMPT, PREFIX]))
    finally:
        await engine.close()
    path, _, body = rec.requests[0]
    history = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
    if mode == "deepseek-prefix":
        assert path == "/v1/chat/completions"
        assert body["messages"] == [*history, {"role": "assistant", "content": "one ",
                                               "reasoning_content": "hm ", "prefix": True}]
        assert "continue_final_message" not in body
    elif mode == "vllm-continue":
        assert path == "/v1/chat/completions"
        assert body["messages"] == [*history, {"role": "assistant", "content": "one ",
                                               "reasoning_content": "hm "}]
        assert body["continue_final_message"] is True
        assert body["add_generation_prompt"] is False
    else:
        assert path == "/v1/completions"
        assert body["prompt"] == flatten_chat(PROMPT) + "one "
        assert body["prompt"].endswith("Assistant: one ")
        assert out[0] == Delta(content="two ") and out[-1].finish_reason == "length"
        assert out[-1].usage is not None and out[-1].usage.completion_tokens == 1
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_raw_completion_with_prefix_appends(recorder: tuple[Recorder, str]) -> None:
    _rec, url = recorder
    engine = await started(Upstream(base_url=url, models=["m"]))
    try:
        path, body = engine.build_request(
            GenerationRequest("m", [ChatMessage("assistant", "done ", prefix=True)],
                              prompt="Once "))
    finally:
        await engine.close()
    assert path == "/completions" and body["prompt"] == "Once done "


@pytest.mark.parametrize(("status", "error", "code"), [
    (400, b'{"error": {"message": "bad thing", "type": "invalid_request_error",'
          b' "code": "invalid_value"}}', "invalid_value"),
    (429, b'{"error": {"message": "slow down"}}', "upstream_error"),
    (503, b"overloaded", "upstream_error"),
])
async def test_upstream_http_errors(recorder: tuple[Recorder, str], status: int, error: bytes,
                                    code: str) -> None:
    rec, url = recorder
    rec.status, rec.error = status, error
    engine = await started(Upstream(base_url=url, models=["m"]))
    try:
        with pytest.raises(EngineError) as info:
            await collect(engine, GenerationRequest("m", PROMPT))
    finally:
        await engine.close()
    assert info.value.status == status and info.value.code == code
    assert ("bad thing" if status == 400 else "slow down" if status == 429 else "overloaded") \
        in str(info.value)


async def test_connection_refused_is_502() -> None:
    with socket_port() as port:
        engine = await started(Upstream(base_url=f"http://{HOST}:{port}/v1", models=["m"]))
    try:
        with pytest.raises(EngineError) as info:
            await collect(engine, GenerationRequest("m", PROMPT))
    finally:
        await engine.close()
    assert info.value.status == 502 and info.value.code == "upstream_unavailable"


async def test_models_fetch_failure_is_engine_error() -> None:
    with socket_port() as port:
        engine = UpstreamEngine(Upstream(base_url=f"http://{HOST}:{port}/v1"))
    with pytest.raises(EngineError):
        await engine.start()
    await engine.close()


async def test_cut_stream_and_error_event(recorder: tuple[Recorder, str]) -> None:
    rec, url = recorder
    engine = await started(Upstream(base_url=url, models=["m"]))
    try:
        rec.events = rec.events[:3]  # no finish, no [DONE]: never a silent truncation
        with pytest.raises(EngineError) as info:
            await collect(engine, GenerationRequest("m", PROMPT))
        assert info.value.status == 502
        rec.events = [rec.events[1], encode_event({"error": {"message": "boom",
                                                             "code": "overloaded"}})]
        out: list[Delta] = []
        with pytest.raises(EngineError) as info:
            async for d in engine.generate(GenerationRequest("m", PROMPT)):
                out.append(d)
        assert out == [Delta(reasoning="hm ")]
        assert "boom" in str(info.value) and info.value.code == "overloaded"
    finally:
        await engine.close()


async def test_worker_turns_midstream_upstream_error_into_error_event(
        recorder: tuple[Recorder, str]) -> None:
    rec, url = recorder
    rec.events = [rec.events[2], encode_event({"error": {"message": "boom"}})]
    async with serve_worker(_upstream_topology(url, models=["deepseek-chat"]), HOST) as worker, \
            aiohttp.ClientSession() as http:
        body = {"model": "deepseek-chat", "stream": True,
                "messages": [{"role": "user", "content": "x"}]}
        async with http.post(worker + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            lines = [line async for line in resp.content if line.startswith(b"data: ")]
    assert json.loads(lines[1][6:])["choices"][0]["delta"] == {"content": "one "}
    last = json.loads(lines[-1][6:])
    assert last["error"]["message"].endswith("boom") and last["error"]["type"] == "server_error"
    assert b"[DONE]" not in b"".join(lines)


async def test_one_keepalive_connection_for_sequential_requests(
        recorder: tuple[Recorder, str]) -> None:
    rec, url = recorder
    engine = await started(Upstream(base_url=url, models=["m"]))
    try:
        for _ in range(3):
            await collect(engine, GenerationRequest("m", PROMPT))
    finally:
        await engine.close()
    assert len(set(rec.peers)) == 1


async def test_non_streamed_answer_is_accepted(recorder: tuple[Recorder, str]) -> None:
    rec, url = recorder
    rec.whole = {"choices": [{"index": 0, "finish_reason": "length",
                              "message": {"role": "assistant", "content": "all of it"}}],
                 "usage": {"prompt_tokens": 2, "completion_tokens": 3}}
    engine = await started(Upstream(base_url=url, models=["m"]))
    try:
        out = await collect(engine, GenerationRequest("m", PROMPT))
    finally:
        await engine.close()
    assert out[0] == Delta(content="all of it") and out[1].finish_reason == "length"
    assert out[1].usage is not None and out[1].usage.completion_tokens == 3


async def test_deltas_stream_as_they_arrive(recorder: tuple[Recorder, str]) -> None:
    rec, url = recorder
    rec.gap = 0.1
    engine = await started(Upstream(base_url=url, models=["m"]))
    try:
        stamps = [time.monotonic() async for _ in engine.generate(GenerationRequest("m", PROMPT))]
    finally:
        await engine.close()
    # 7 events 0.1 s apart: each delta arrives on its own, not all at the end.
    assert stamps[-1] - stamps[0] > 0.25


# -- a worker in front of a simulator worker --------------------------------------------------


def _sim_document() -> dict[str, Any]:
    doc: dict[str, Any] = default_document()
    doc["inference"]["simulator"].update({"decode_ms_per_token": 1, "prefill_ms_per_token": 0,
                                          "reasoning_tokens": 4})
    return doc


def _upstream_topology(base_url: str, **upstream: Any) -> Any:
    doc = _sim_document()
    doc["inference"]["backend"] = "openai"
    doc["inference"]["upstream"] = {"base_url": base_url, **upstream}
    return parse_topology(doc)


async def test_worker_over_simulator_worker_is_identical() -> None:
    async with serve_worker(parse_topology(_sim_document()), "127.0.101.8") as sim, \
            serve_worker(_upstream_topology(sim + "/v1"), "127.0.101.9") as front:
        direct = openai.AsyncOpenAI(base_url=sim + "/v1", api_key="x")
        proxied = openai.AsyncOpenAI(base_url=front + "/v1", api_key="x")
        try:
            assert [m.id async for m in proxied.models.list()] == ["deepseek-chat",
                                                                   "deepseek-reasoner"]
            for model in ("deepseek-chat", "deepseek-reasoner"):
                kw: dict[str, Any] = {"model": model, "seed": 5,
                                      "messages": [{"role": "user", "content": "same?"}]}
                a = await direct.chat.completions.create(**kw)
                b = await proxied.chat.completions.create(**kw)
                assert a.choices[0].message == b.choices[0].message
                assert a.usage == b.usage
                sa = [c async for c in await direct.chat.completions.create(stream=True, **kw)]
                sb = [c async for c in await proxied.chat.completions.create(stream=True, **kw)]
                assert [c.choices[0].delta for c in sa] == [c.choices[0].delta for c in sb]
            ca = await direct.completions.create(model="deepseek-chat", prompt="p", max_tokens=5)
            cb = await proxied.completions.create(model="deepseek-chat", prompt="p", max_tokens=5)
            assert ca.choices[0].text == cb.choices[0].text
            assert cb.choices[0].finish_reason == "length"
        finally:
            await direct.close()
            await proxied.close()


class socket_port:  # noqa: N801 - used like a function
    """A port on HOST with nothing listening (bound, never listened, closed on exit)."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind((HOST, 0))
        return int(self._sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._sock.close()
