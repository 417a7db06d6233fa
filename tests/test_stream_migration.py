"""Mid-stream migration through a real stack (LB -> gateways -> simulator workers, real
processes on 127.0.130-132.0/24, LB on 127.0.0.130): streams that lose their worker or their
whole zone continue elsewhere, and the client reads the uninterrupted answer exactly once.
In-process at the end: a gateway in front of scripted fake workers (an error event mid-stream, a
backend that refuses a prefix), and hedged first tokens (fake gateways behind a real LB)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import openai
import pytest
from aiohttp import web
from hypothesis import example, given, settings
from hypothesis import strategies as st

from crosszone.config import Placement
from crosszone.config.placement import Node
from crosszone.dataplane.gateway import GATEWAY_HOP, create_gateway_app
from crosszone.dataplane.lb import LB_HOP, create_lb_app
from crosszone.runtime import LocalStack
from proxyfakes import (
    API_KEY,
    LB_HOST,
    AppServer,
    FakeFleet,
    free_port,
    gateway_hosts,
    make_topology,
    worker_hosts,
)
from stackutil import local_topology, start_stack, wait_until

FIRST = 130
IDLE = 1.0  # gateway idle timeout; the LB waits IDLE + 1 s before it gives up on a gateway
REASONING = 10


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> LocalStack:
    topo = local_topology(
        FIRST, http_port=18130, https_port=18570, decode_ms=5.0,
        gateway={"timeouts": {"idle_seconds": IDLE}},
        inference={"simulator": {"min_output_tokens": 12, "max_output_tokens": 30,
                                 "reasoning_tokens": REASONING}})
    return start_stack(request, tmp_path_factory.mktemp("migration"), topo)


# -- helpers -------------------------------------------------------------------------------------

@dataclass
class Stream:
    """What one streamed request delivered to the client."""

    headers: dict[str, str] = field(default_factory=dict)
    events: list[Any] = field(default_factory=list)

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [e for e in self.events if isinstance(e, dict) and "error" not in e]

    @property
    def texts(self) -> tuple[str, str]:
        reasoning = content = ""
        for event in self.chunks:
            for choice in event["choices"]:
                delta = choice.get("delta") or {}
                reasoning += delta.get("reasoning_content") or ""
                content += delta.get("content") or choice.get("text") or ""
        return reasoning, content

    @property
    def tokens(self) -> int:
        return sum(1 for e in self.chunks for c in e["choices"]
                   if (c.get("delta") or {}).get("content") or c.get("text")
                   or (c.get("delta") or {}).get("reasoning_content"))

    @property
    def finishes(self) -> list[str]:
        return [c["finish_reason"] for e in self.chunks for c in e["choices"]
                if c.get("finish_reason")]

    @property
    def usage(self) -> list[dict[str, Any]]:
        return [e["usage"] for e in self.chunks if e.get("usage")]

    @property
    def roles(self) -> int:
        return sum(1 for e in self.chunks for c in e["choices"] if "role" in (c.get("delta") or {}))

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [e["error"] for e in self.events if isinstance(e, dict) and "error" in e]

    @property
    def envelopes(self) -> set[tuple[str, int, str]]:
        return {(e["id"], e["created"], e["model"]) for e in self.chunks}


def request_body(api: str, prompt: str) -> tuple[str, dict[str, Any]]:
    options = {"stream": True, "stream_options": {"include_usage": True}}
    if api == "completions":
        return "/completions", {"model": "deepseek-chat", "prompt": prompt, **options}
    model = "deepseek-reasoner" if api == "reasoner" else "deepseek-chat"
    return "/chat/completions", {"model": model, **options,
                                 "messages": [{"role": "user", "content": prompt}]}


def stream(stack: LocalStack, path: str, body: dict[str, Any], *,
           on_headers: Callable[[dict[str, str]], None] | None = None,
           after: int | None = None, then: Callable[[Stream], None] | None = None) -> Stream:
    """Stream a request; ``then(stream)`` runs once ``after`` tokens have arrived."""
    got = Stream()
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    with httpx.Client(timeout=30) as http, \
            http.stream("POST", stack.lb_url() + path, json=body, headers=headers) as resp:
        assert resp.status_code == 200, resp.read()
        got.headers = dict(resp.headers)
        if on_headers is not None:
            on_headers(got.headers)
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            got.events.append("[DONE]" if data == "[DONE]" else json.loads(data))
            if then is not None and after is not None and got.tokens == after:
                then(got)
                then = None
    return got


def workers(stack: LocalStack) -> list[Node]:
    placement = Placement(stack.topology)
    return [w for zone in stack.topology.zone_names() for w in placement.workers(zone)]


def set_faults(stack: LocalStack, faults: dict[str, Any] | None,
               nodes: list[Node] | None = None) -> None:
    auth = {"Authorization": f"Bearer {stack.admin_token}"}
    for node in nodes if nodes is not None else workers(stack):
        if faults is None:
            resp = httpx.delete(f"{node.url}/admin/faults", headers=auth, timeout=2)
        else:
            resp = httpx.post(f"{node.url}/admin/faults", json=faults, headers=auth, timeout=2)
        resp.raise_for_status()


def settle(stack: LocalStack) -> None:
    """Every process up, every worker back in every gateway's pool, every zone in the LB's."""
    stack.wait_healthy(timeout=30)
    gateways = Placement(stack.topology).gateways()
    total = len(workers(stack))
    lb = stack.lb_url().removesuffix("/v1")

    def ready() -> bool:
        try:
            if not all(httpx.get(f"{g.url}/health", timeout=1).json()["healthy_workers"] == total
                       for g in gateways):
                return False
            zones = httpx.get(f"{lb}/lb/status", timeout=1).json()["zones"].values()
            return all(z["available"] for z in zones)
        except (httpx.HTTPError, KeyError, ValueError):
            return False

    wait_until(ready, timeout=30, what="every worker and zone back in the pools")
    set_faults(stack, None)


def metric(stack: LocalStack, name: str, **labels: str) -> float:
    """Sum of one counter over the LB (``crosszone_lb_*``) or every gateway."""
    nodes = ([stack.lb_url().removesuffix("/v1") + "/lb"] if name.startswith("crosszone_lb")
             else [g.url for g in Placement(stack.topology).gateways()])
    total = 0.0
    for url in nodes:
        for line in httpx.get(f"{url}/metrics", timeout=2).text.splitlines():
            if line.startswith((name + "{", name + " ")) and all(
                    f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def assert_seamless(got: Stream, base: Stream) -> None:
    assert got.errors == []
    assert got.texts == base.texts
    assert got.finishes == base.finishes
    assert got.usage == base.usage and len(got.usage) == 1
    assert got.events.count("[DONE]") == 1 and got.events[-1] == "[DONE]"
    assert len(got.envelopes) == 1
    assert got.roles == base.roles


# -- the property --------------------------------------------------------------------------------

@settings(max_examples=8, deadline=None)
@given(api=st.sampled_from(["chat", "reasoner", "completions"]),
       kill=st.sampled_from(["crash", "sigkill", "stall"]),
       prompt=st.text(st.characters(codec="utf-8"), max_size=24),
       where=st.floats(0, 1, exclude_max=True))
@example(api="reasoner", kill="sigkill", prompt="think first", where=0.05)  # reasoning phase
@example(api="reasoner", kill="stall", prompt="think later", where=0.8)  # content phase
@example(api="chat", kill="crash", prompt="hello", where=0.5)
@example(api="completions", kill="stall", prompt="once upon", where=0.3)
def test_a_stream_that_loses_its_worker_reads_as_the_uninterrupted_run(
        stack: LocalStack, api: str, kill: str, prompt: str, where: float) -> None:
    settle(stack)
    path, body = request_body(api, prompt)
    base = stream(stack, path, body)
    total = base.tokens
    before = metric(stack, "crosszone_gateway_stream_migrations_total", outcome="resumed")
    if kill == "crash":
        # Every worker crashes after k tokens of each request: k >= T/3 keeps the stream
        # within the default limit of 2 migrations.
        low = math.ceil(total / 3)
        k = low + int(where * (total - low))
        set_faults(stack, {"crash_after_tokens": k})
        got = stream(stack, path, body)
        migrations = math.ceil(total / k) - 1
    elif kill == "sigkill":
        k = 1 + int(where * (total - 1))

        def sigkill(s: Stream) -> None:
            os.kill(stack.pids()[s.headers["x-crosszone-node"]], signal.SIGKILL)

        got = stream(stack, path, body, after=k, then=sigkill)
        migrations = 0  # a worker that was done before the kill needs no migration
    else:
        k = 1 + int(where * (total - 1))
        set_faults(stack, {"stall_after_tokens": k, "stall_seconds": 5})

        def spare_the_others(headers: dict[str, str]) -> None:
            set_faults(stack, None, [w for w in workers(stack)
                                     if w.name != headers["x-crosszone-node"]])

        got = stream(stack, path, body, on_headers=spare_the_others)
        migrations = 1
    assert_seamless(got, base)
    # (at least: on a loaded machine the LB may also lose patience with a gateway that is busy
    # migrating, and hand the stream to another zone, which is seamless too)
    assert metric(stack, "crosszone_gateway_stream_migrations_total",
                  outcome="resumed") >= before + migrations


# -- whole zones (seen by the load balancer) -----------------------------------------------------

def test_a_frozen_zone_is_left_after_the_idle_timeout(stack: LocalStack) -> None:
    settle(stack)
    path, body = request_body("reasoner", "a zone that stops")
    base = stream(stack, path, body)
    frozen: list[str] = []
    before = metric(stack, "crosszone_lb_stream_migrations_total", reason="timeout",
                    outcome="resumed")

    def freeze(s: Stream) -> None:
        zone = s.headers["x-crosszone-gateway-zone"]
        stack.hold(zone=zone, signal="STOP")
        frozen.append(zone)

    try:
        got = stream(stack, path, body, after=REASONING // 2, then=freeze)
    finally:
        for zone in frozen:
            stack.release(zone=zone)
    assert_seamless(got, base)
    assert metric(stack, "crosszone_lb_stream_migrations_total", reason="timeout",
                  outcome="resumed") == before + 1


def test_a_killed_zone_is_left_at_once(stack: LocalStack) -> None:
    settle(stack)
    path, body = request_body("completions", "a zone that dies")
    base = stream(stack, path, body)
    killed: list[str] = []

    def kill(s: Stream) -> None:
        zone = s.headers["x-crosszone-gateway-zone"]
        stack.hold(zone=zone, signal="KILL")
        killed.append(zone)

    try:
        got = stream(stack, path, body, after=base.tokens // 2, then=kill)
    finally:
        for zone in killed:
            stack.release(zone=zone)
    assert_seamless(got, base)
    assert metric(stack, "crosszone_lb_reprefilled_tokens_total") >= base.tokens // 2


# -- limits and the official client -------------------------------------------------------------

def test_the_migration_limit_ends_the_stream_with_an_error_event(stack: LocalStack) -> None:
    settle(stack)
    path, body = request_body("chat", "too many failures")
    base = stream(stack, path, body)
    assert base.tokens > 9
    lb_before = metric(stack, "crosszone_lb_stream_migrations_total")
    set_faults(stack, {"crash_after_tokens": 3})
    got = stream(stack, path, body)
    # 3 tokens from each of three workers (two migrations), then the limit: exactly once each.
    assert got.tokens == 9
    assert base.texts[1].startswith(got.texts[1]) and len(got.texts[1].split()) == 9
    assert "[DONE]" not in got.events and got.usage == []
    [error] = got.errors
    assert error["code"] == "migration_limit_reached"
    assert "after 2 migration(s); the limit is 2" in error["message"]
    assert metric(stack, "crosszone_gateway_stream_migrations_total", outcome="limit") >= 1
    # The LB passed the gateway's verdict on: it did not try a third time itself.
    assert metric(stack, "crosszone_lb_stream_migrations_total") == lb_before


def test_the_official_openai_client_sees_one_seamless_stream(stack: LocalStack) -> None:
    settle(stack)
    client = openai.OpenAI(base_url=stack.lb_url(), api_key=stack.api_key, max_retries=0)
    messages: Any = [{"role": "user", "content": "tell me a story"}]
    whole = client.chat.completions.create(model="deepseek-chat", messages=messages)
    assert whole.usage is not None
    total = whole.usage.completion_tokens
    set_faults(stack, {"crash_after_tokens": math.ceil(total / 2)})
    text, ids, usages, finishes = "", set(), [], []
    for chunk in client.chat.completions.create(
            model="deepseek-chat", messages=messages, stream=True,
            stream_options={"include_usage": True}):
        ids.add(chunk.id)
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            if chunk.choices[0].finish_reason:
                finishes.append(chunk.choices[0].finish_reason)
        if chunk.usage is not None:
            usages.append(chunk.usage)
    assert text == whole.choices[0].message.content
    assert finishes == [whole.choices[0].finish_reason]
    assert len(ids) == 1
    [usage] = usages
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        whole.usage.prompt_tokens, whole.usage.completion_tokens, whole.usage.total_tokens)
    assert metric(stack, "crosszone_gateway_reprefilled_tokens_total") > 0

    settle(stack)  # the crashed worker is back (without faults)
    set_faults(stack, {"crash_after_tokens": 2})
    with pytest.raises(openai.APIError, match="limit is 2"):
        for _ in client.chat.completions.create(model="deepseek-chat", messages=messages,
                                                stream=True):
            pass


# -- hedged first token (in-process: fake gateways behind the real LB) -------------------------

class FakeGateway:
    """Streams "<zone> says hi" after ``delay`` seconds; counts requests and cancellations."""

    def __init__(self, zone: str, delay: float = 0.0) -> None:
        self.zone, self.delay = zone, delay
        self.requests = self.cancelled = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", lambda r: web.json_response({"status": "ok"}))
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if request.transport is None or request.transport.is_closing():
            self.cancelled += 1
            return web.Response(status=499)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for word in (f"{self.zone} ", "says ", "hi"):
            event = {"id": "chatcmpl-h", "object": "chat.completion.chunk", "created": 1,
                     "model": "m", "choices": [{"index": 0, "delta": {"content": word},
                                                "finish_reason": None}]}
            await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response


@pytest.fixture
async def hedge_rig() -> AsyncIterator[Callable[..., Any]]:
    servers: list[AppServer] = []

    async def make(budget: float, delays: dict[str, float]) -> tuple[str, Any, Any]:
        port = free_port(LB_HOST, *gateway_hosts())
        topology = make_topology(worker_port=port, gateway_port=port, http_port=port,
                                 mode="active-backup")
        gw = topology.gateway
        topology = topology.model_copy(update={"gateway": gw.model_copy(update={
            "migration": gw.migration.model_copy(update={
                "hedge_first_token_ms": 100.0, "hedge_budget_percent": budget})})})
        fakes = {zone: FakeGateway(zone, delay) for zone, delay in delays.items()}
        for zone, fake in fakes.items():
            node = Placement(topology).gateway(zone)
            servers.append(await AppServer(fake.app(), node.host, port).start())
        lb = await AppServer(create_lb_app(topology), LB_HOST, port).start()
        servers.append(lb)
        hop = lb.app[LB_HOP]
        async with asyncio.timeout(3):
            while not all(ep.healthy for ep in hop.pool.endpoints):
                await asyncio.sleep(0.02)
        return f"http://{LB_HOST}:{port}/v1/chat/completions", fakes, hop

    yield make
    for server in reversed(servers):
        await server.stop()


async def _hedged_call(url: str) -> tuple[str, str, float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    async with aiohttp.ClientSession() as http, \
            http.post(url, json=body, headers={"Authorization": f"Bearer {API_KEY}"}) as resp:
        text = (await resp.read()).decode()
    words = "".join(json.loads(line[6:])["choices"][0]["delta"]["content"]
                    for line in text.split("\n\n") if line.startswith("data: {"))
    return resp.headers["x-crosszone-gateway-zone"], words, loop.time() - started


async def test_a_slow_first_token_is_hedged_to_another_zone(hedge_rig: Any) -> None:
    url, fakes, hop = await hedge_rig(100.0, {"za": 2.0, "zb": 0.0, "zc": 0.0})
    zone, words, took = await _hedged_call(url)
    assert (zone, words) == ("zb", "zb says hi")
    assert took < 1.0  # not the 2 s the primary zone takes
    assert 'crosszone_lb_hedges_total{outcome="won"} 1.0' in hop.metrics.render(hop.pool).decode()
    async with asyncio.timeout(3):
        while not fakes["za"].cancelled:
            await asyncio.sleep(0.02)
    assert not hop.pool.get("za").ejected  # a slow zone lost the race; it did not fail


async def test_hedges_stay_within_the_budget(hedge_rig: Any) -> None:
    url, fakes, hop = await hedge_rig(0.0, {"za": 0.3, "zb": 0.0, "zc": 0.0})
    zone, words, took = await _hedged_call(url)
    assert (zone, words) == ("za", "za says hi") and took >= 0.3
    assert fakes["zb"].requests == 0
    assert 'crosszone_lb_hedges_total{outcome="denied"} 1.0' in \
        hop.metrics.render(hop.pool).decode()


# -- a gateway in front of scripted workers (in-process) ---------------------------------------

@pytest.fixture
async def fake_workers_gateway() -> AsyncIterator[tuple[FakeFleet, str, Any]]:
    port = free_port(*worker_hosts(), *gateway_hosts())
    topology = make_topology(worker_port=port, gateway_port=port, check_interval=5.0)
    fleet = await FakeFleet(port).start()
    node = Placement(topology).gateway("za")
    server = await AppServer(create_gateway_app(topology, node), node.host, port).start()
    hop = server.app[GATEWAY_HOP]
    try:
        async with asyncio.timeout(3):
            while not all(ep.healthy is not None for ep in hop.pool.endpoints):
                await asyncio.sleep(0.02)
        for ep in hop.pool.endpoints:  # za/worker-1 first, then za/worker-2
            ep.outstanding += {"za/worker-1": 0, "za/worker-2": 50}.get(ep.name, 100)
        yield fleet, f"http://{node.host}:{port}/v1/chat/completions", hop
    finally:
        await server.stop()
        await fleet.stop()


async def _post_stream(url: str) -> list[str]:
    body = {"model": "deepseek-chat", "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http, \
            http.post(url, json=body, headers={"Authorization": f"Bearer {API_KEY}"}) as resp:
        assert resp.status == 200
        raw = (await resp.read()).decode()
    return [block[6:] for block in raw.split("\n\n") if block.startswith("data: ")]


async def test_an_error_event_mid_stream_moves_the_stream(
        fake_workers_gateway: tuple[FakeFleet, str, Any]) -> None:
    fleet, url, hop = fake_workers_gateway
    fleet["za/worker-1"].mode = "mid_stream_error"
    events = await _post_stream(url)
    assert "engine failed" not in "".join(events)  # the worker's error never reaches the client
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    # (the fake workers ignore the prefix, so only the plumbing is checked here)
    assert fleet["za/worker-2"].requests == 1
    sent = json.loads(fleet["za/worker-2"].last_body)
    assert sent["messages"][-1] == {"role": "assistant", "content": "hello ", "prefix": True}
    assert fleet["za/worker-2"].last_headers["x-crosszone-migrations"] == "1"
    assert fleet["za/worker-2"].last_headers["x-crosszone-prefix-tokens"] == "1"
    assert hop.pool.get("za/worker-1").ejected
    text = hop.metrics.render(hop.pool).decode()
    assert 'stream_migrations_total{outcome="resumed",reason="stream_error"} 1.0' in text
    assert "crosszone_gateway_reprefilled_tokens_total 1.0" in text


async def test_a_backend_that_cannot_continue_ends_the_stream_with_an_error_event(
        fake_workers_gateway: tuple[FakeFleet, str, Any]) -> None:
    fleet, url, hop = fake_workers_gateway
    fleet["za/worker-1"].mode = "mid_stream_close"
    fleet["za/worker-2"].mode = "400"
    events = await _post_stream(url)
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "hello "
    error = json.loads(events[-1])["error"]
    assert error["code"] == "continuation_unsupported"
    assert "za/worker-2 cannot continue the stream: HTTP 400: fake 400" in error["message"]
    assert "[DONE]" not in events
    assert not hop.pool.get("za/worker-2").ejected  # refusing is an answer, not a failure
