"""The zone gateway over real loopback sockets: auth, validation, retries, ejection, streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest

from crosszone.config import Placement, Topology
from crosszone.dataplane.gateway import GATEWAY_HOP, create_gateway_app
from crosszone.dataplane.proxy.hop import ProxyHop
from proxyfakes import (
    API_KEY,
    ZONES,
    AppServer,
    FakeFleet,
    free_port,
    gateway_hosts,
    make_topology,
    worker_hosts,
)

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]}


class Rig:
    """Fake workers in three zones and the gateway of zone ``za``."""

    def __init__(self, topology: Topology, fleet: FakeFleet, server: AppServer,
                 client: aiohttp.ClientSession) -> None:
        self.topology, self.fleet, self.server, self.client = topology, fleet, server, client
        self.hop: ProxyHop = server.app[GATEWAY_HOP]
        self.url = f"http://{server.host}:{server.port}"

    async def post(self, payload: Any = CHAT, *, headers: dict[str, str] | None = None,
                   path: str = "/v1/chat/completions") -> aiohttp.ClientResponse:
        resp = await self.client.post(self.url + path, json=payload,
                                      headers=AUTH if headers is None else headers)
        await resp.read()
        return resp

    def bias_to(self, worker: str) -> None:
        """Make least-outstanding pick ``worker`` first (its zone-mates look busy)."""
        for ep in self.hop.pool.endpoints:
            if ep.zone == worker.split("/")[0] and ep.name != worker:
                ep.outstanding += 100

    async def wait(self, predicate: Callable[[], bool], timeout: float = 3.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig() -> AsyncIterator[RigFactory]:
    started: list[tuple[FakeFleet, AppServer, aiohttp.ClientSession]] = []

    async def factory(**kwargs: Any) -> Rig:
        kwargs.setdefault("check_interval", 5.0)  # passive paths stay deterministic
        port = free_port(*worker_hosts(), *gateway_hosts())
        topology = make_topology(worker_port=port, gateway_port=port, **kwargs)
        fleet = await FakeFleet(port).start()
        node = Placement(topology).gateway("za")
        server = await AppServer(create_gateway_app(topology, node), node.host, node.port).start()
        client = aiohttp.ClientSession()
        started.append((fleet, server, client))
        rig = Rig(topology, fleet, server, client)
        await rig.wait(lambda: all(ep.healthy is not None for ep in rig.hop.pool.endpoints))
        return rig

    yield factory
    for fleet, server, client in started:
        await client.close()
        await server.stop()
        await fleet.stop()


@pytest.fixture
async def rig(make_rig: RigFactory) -> Rig:
    return await make_rig()


async def test_missing_or_wrong_key_is_401_and_health_needs_none(rig: Rig) -> None:
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": API_KEY}):
        resp = await rig.post(headers=headers)
        assert resp.status == 401
        body = await resp.json()
        assert body["error"]["code"] == "invalid_api_key"
        assert body["error"]["type"] == "authentication_error"
    models = await rig.client.get(rig.url + "/v1/models")
    assert models.status == 401
    assert sum(w.requests for w in rig.fleet.workers.values()) == 0
    health = await rig.client.get(rig.url + "/health")
    assert health.status == 200
    assert await health.json() == {"status": "ok", "zone": "za", "healthy_workers": 6,
                                   "local_healthy_workers": 2}
    metrics = await rig.client.get(rig.url + "/metrics")
    assert metrics.status == 200
    assert 'crosszone_gateway_requests_total{path="/v1/chat/completions",status="401"} 3.0' \
        in await metrics.text()


async def test_bad_json_is_400_and_big_body_413(rig: Rig) -> None:
    for raw in (b"{not json", b"", b"[1, 2]"):
        resp = await rig.client.post(rig.url + "/v1/chat/completions", data=raw,
                                     headers={**AUTH, "Content-Type": "application/json"})
        assert resp.status == 400, raw
        assert (await resp.json())["error"]["code"] == "invalid_json"
    big = {**CHAT, "pad": "x" * 4000}
    resp = await rig.post(big)
    assert resp.status == 413
    assert (await resp.json())["error"]["type"] == "invalid_request_error"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: caught while reading
        for _ in range(5):
            yield b" " * 1000

    resp = await rig.client.post(rig.url + "/v1/chat/completions", data=chunks(), headers=AUTH)
    assert resp.status == 413
    assert sum(w.requests for w in rig.fleet.workers.values()) == 0


async def test_relays_within_own_zone_with_headers(rig: Rig) -> None:
    resp = await rig.post(headers={**AUTH, "x-request-id": "rid-123"})
    assert resp.status == 200
    assert resp.headers["x-crosszone-zone"] == "za"
    assert resp.headers["x-crosszone-node"] in ("za/worker-1", "za/worker-2")
    assert resp.headers["x-crosszone-attempts"] == "1"
    assert resp.headers["x-request-id"] == "rid-123"
    served = rig.fleet[resp.headers["x-crosszone-node"]]
    assert served.last_headers["x-request-id"] == "rid-123"
    assert served.last_headers["authorization"] == f"Bearer {API_KEY}"
    assert (await resp.json())["choices"][0]["message"]["content"] == \
        f"hello from {served.name}"
    generated = await rig.post()
    assert len(generated.headers["x-request-id"]) == 32
    models = await rig.client.get(rig.url + "/v1/models", headers=AUTH)
    assert (await models.json())["data"][0]["id"] == "deepseek-chat"


async def test_dead_worker_is_ejected_and_request_retried(rig: Rig) -> None:
    await rig.fleet["za/worker-1"].stop()
    rig.bias_to("za/worker-1")
    resp = await rig.post()
    assert resp.status == 200
    assert resp.headers["x-crosszone-node"] == "za/worker-2"
    assert resp.headers["x-crosszone-attempts"] == "2"
    dead = rig.hop.pool.get("za/worker-1")
    assert dead.ejected and not dead.available
    assert "cannot connect" in (dead.last_error or "")
    text = await (await rig.client.get(rig.url + "/metrics")).text()
    assert 'crosszone_gateway_upstream_ejections_total{reason="connect",upstream="za/worker-1"}' \
        in text
    assert 'crosszone_gateway_upstream_retries_total{reason="connect"} 1.0' in text


async def test_worker_500_is_retried_and_4xx_passed_through(rig: Rig) -> None:
    rig.fleet["za/worker-1"].mode = "500"
    rig.bias_to("za/worker-1")
    resp = await rig.post()
    assert resp.status == 200
    assert resp.headers["x-crosszone-attempts"] == "2"
    assert rig.hop.pool.get("za/worker-1").ejected
    rig.fleet["za/worker-2"].mode = "400"
    resp = await rig.post()
    assert resp.status == 400
    assert resp.headers["x-crosszone-attempts"] == "1"
    assert (await resp.json())["error"]["message"] == "fake 400"
    assert not rig.hop.pool.get("za/worker-2").ejected


async def read_stream(resp: aiohttp.ClientResponse) -> list[str]:
    events: list[str] = []
    buf = b""
    async for chunk in resp.content.iter_any():
        buf += chunk
    for block in buf.split(b"\n\n"):
        if block.startswith(b"data: "):
            events.append(block[6:].decode())
    return events


async def test_stream_cut_after_headers_is_retried_transparently(rig: Rig) -> None:
    rig.fleet["za/worker-1"].mode = "headers_then_close"
    rig.bias_to("za/worker-1")
    async with rig.client.post(rig.url + "/v1/chat/completions", json={**CHAT, "stream": True},
                               headers=AUTH) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["x-crosszone-node"] == "za/worker-2"
        assert resp.headers["x-crosszone-attempts"] == "2"
        events = await read_stream(resp)
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "")
                   for e in events[:-1])
    assert text == "hello from za/worker-2"
    assert events[-1] == "[DONE]"
    assert rig.hop.pool.get("za/worker-1").ejected


async def test_failure_mid_stream_ends_with_an_error_event(make_rig: RigFactory) -> None:
    # Without migration (the fake workers cannot continue a prefix; see
    # test_stream_migration.py for streams that move to another worker).
    rig = await make_rig(max_migrations=0)
    rig.fleet["za/worker-1"].mode = "mid_stream_close"
    rig.bias_to("za/worker-1")
    async with rig.client.post(rig.url + "/v1/chat/completions", json={**CHAT, "stream": True},
                               headers=AUTH) as resp:
        assert resp.status == 200
        events = await read_stream(resp)
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "hello "
    error = json.loads(events[-1])["error"]
    assert error["code"] == "upstream_stream_error"
    assert "[DONE]" not in events
    assert rig.hop.pool.get("za/worker-1").ejected


async def test_stalled_stream_hits_idle_timeout(make_rig: RigFactory) -> None:
    rig = await make_rig(idle_seconds=0.3, max_migrations=0)
    rig.fleet["za/worker-2"].mode = "stall_mid_stream"
    rig.bias_to("za/worker-2")
    async with rig.client.post(rig.url + "/v1/chat/completions", json={**CHAT, "stream": True},
                               headers=AUTH) as resp:
        events = await read_stream(resp)
    assert json.loads(events[-1])["error"]["code"] == "upstream_timeout"


async def test_no_response_headers_in_time_is_retried(make_rig: RigFactory) -> None:
    rig = await make_rig(first_byte_seconds=0.3)
    rig.fleet["za/worker-1"].mode = "hang"
    rig.bias_to("za/worker-1")
    resp = await rig.post()
    assert resp.status == 200
    assert resp.headers["x-crosszone-node"] == "za/worker-2"
    assert "no response headers" in (rig.hop.pool.get("za/worker-1").last_error or "")


async def test_waiting_request_moves_when_its_worker_turns_unhealthy(
        make_rig: RigFactory) -> None:
    rig = await make_rig(check_interval=0.1, first_byte_seconds=10)
    silent = rig.fleet["za/worker-1"]
    silent.mode = "hang"
    rig.bias_to("za/worker-1")
    loop = asyncio.get_running_loop()
    started = loop.time()
    pending = asyncio.create_task(rig.post())
    await rig.wait(lambda: silent.requests == 1)
    silent.health_status = 503  # the active checker notices within about two intervals
    resp = await pending
    assert loop.time() - started < 2.0  # not the 10 s first-byte timeout
    assert resp.status == 200
    assert resp.headers["x-crosszone-node"] == "za/worker-2"
    assert "turned unhealthy while the request waited" in \
        (rig.hop.pool.get("za/worker-1").last_error or "")


async def test_all_workers_dead_is_503(rig: Rig) -> None:
    await rig.fleet.stop()
    first = await rig.post()
    assert first.status == 503
    assert first.headers["x-crosszone-attempts"] == "3"
    assert (await first.json())["error"]["code"] == "no_healthy_upstream"
    await rig.post()  # ejects the other three
    last = await rig.post()
    assert last.status == 503
    assert last.headers["x-crosszone-attempts"] == "0"
    assert (await last.json())["error"]["code"] == "no_healthy_upstream"
    health = await rig.client.get(rig.url + "/health")
    assert health.status == 503
    assert (await health.json())["healthy_workers"] == 0


async def test_cross_zone_fallback_when_own_zone_is_empty(make_rig: RigFactory) -> None:
    rig = await make_rig(check_interval=0.1)
    for worker in rig.fleet.zone("za"):
        worker.health_status = 503
    await rig.wait(lambda: not rig.hop.pool.available("za"))
    zones = set()
    for _ in range(6):
        resp = await rig.post()
        assert resp.status == 200
        assert resp.headers["x-crosszone-attempts"] == "1"
        zones.add(resp.headers["x-crosszone-zone"])
    assert zones <= {"zb", "zc"} and zones
    health = await (await rig.client.get(rig.url + "/health")).json()
    assert health == {"status": "ok", "zone": "za", "healthy_workers": 4,
                      "local_healthy_workers": 0}
    # the zone comes back after healthyThresholdCount successes, and takes the traffic again
    for worker in rig.fleet.zone("za"):
        worker.health_status = 200
    await rig.wait(lambda: len(rig.hop.pool.available("za")) == 2)
    assert (await rig.post()).headers["x-crosszone-zone"] == "za"


@pytest.fixture
async def real_workers_rig() -> AsyncIterator[tuple[Topology, str]]:
    """The gateway of zone ``za`` in front of the real worker app (simulator engine)."""
    from crosszone.dataplane.worker.app import create_worker_app

    port = free_port(*worker_hosts(), *gateway_hosts())
    topology = make_topology(worker_port=port, gateway_port=port)
    placement = Placement(topology)
    servers = [AppServer(create_worker_app(topology, node), node.host, node.port)
               for zone in ZONES for node in placement.workers(zone)]
    node = placement.gateway("za")
    servers.append(AppServer(create_gateway_app(topology, node), node.host, node.port))
    try:
        for server in servers:
            await server.start()
        pool = servers[-1].app[GATEWAY_HOP].pool
        started = [pool.get(n.name) for zone in ZONES for n in placement.workers(zone)]
        async with asyncio.timeout(3):  # scale-out slots, never started, stay unavailable
            while not all(ep.healthy for ep in started):
                await asyncio.sleep(0.02)
        yield topology, f"http://{node.host}:{node.port}/v1"
    finally:
        for server in reversed(servers):
            await server.stop()


async def test_official_openai_client_through_gateway_to_real_worker(
        real_workers_rig: tuple[Topology, str]) -> None:
    _, base_url = real_workers_rig
    client = openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0)
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model="deepseek-chat", messages=[{"role": "user", "content": "hello"}],
            max_tokens=8)
        assert raw.headers["x-crosszone-zone"] == "za"
        completion = raw.parse()
        assert completion.choices[0].message.content
        stream = await client.chat.completions.create(
            model="deepseek-chat", messages=[{"role": "user", "content": "hello"}],
            max_tokens=8, stream=True)
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream
                  if chunk.choices]
        assert "".join(pieces)
        models = await client.models.list()
        assert "deepseek-chat" in [m.id for m in models.data]
        with pytest.raises(openai.AuthenticationError):
            await openai.AsyncOpenAI(base_url=base_url, api_key="sk-bad",
                                     max_retries=0).models.list()
    finally:
        await client.close()
