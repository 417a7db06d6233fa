"""An in-process gateway on real sockets for the passive-signal and gateway-weight tests.

Zones on 127.0.203-205.0/24 (tests/test_passive_signals.py and tests/test_gateway_weights.py run
one after the other, never at once): the gateway of the first zone, scriptable fake workers
(:class:`proxyfakes.FakeWorker`) at every worker address, and optionally a recorder on a zone's
controller address that keeps every ``POST /control/signals`` it is sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from crosszone.config import Placement, Topology, parse_topology
from crosszone.dataplane.gateway import GATEWAY_HOP, create_gateway_app
from crosszone.dataplane.proxy.hop import ProxyHop
from proxyfakes import AppServer, FakeWorker, free_port
from stackutil import ZONES, local_topology

FIRST = 203
API_KEY = "sk-signals"
ADMIN = "adm-signals"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]}


def rig_topology(port: int, api_port: int) -> Topology:
    doc = local_topology(FIRST, gateway_port=port, worker_port=port, workers=2,
                         auth={"api_keys": [API_KEY], "admin_token": ADMIN},
                         control={"api_port": api_port})
    doc["gateway"]["healthCheck"]["intervalSeconds"] = 5.0  # passive paths stay deterministic
    return parse_topology(doc)


@dataclass
class Report:
    at: float
    peer: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class RecordingController:
    """Stands where a zone's controller API would; ``silent`` accepts and never answers."""

    host: str
    port: int
    reports: list[Report] = field(default_factory=list)
    silent: bool = False
    server: AppServer | None = None

    async def start(self) -> RecordingController:
        async def signals(request: web.Request) -> web.Response:
            if self.silent:
                await asyncio.sleep(3600)
            peer = request.transport.get_extra_info("peername")[0] if request.transport else ""
            self.reports.append(Report(asyncio.get_running_loop().time(), peer,
                                       dict(request.headers), await request.json()))
            return web.json_response({"accepted": True})

        app = web.Application()
        app.router.add_post("/control/signals", signals)
        self.server = await AppServer(app, self.host, self.port).start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()

    def total(self, zone: str, key: str) -> float:
        return sum(r.body["zones"].get(zone, {}).get(key) or 0 for r in self.reports)


class GatewayRig:
    """Fake workers in every zone, the first zone's gateway, and the controllers asked for."""

    def __init__(self, recorders: tuple[str, ...] = ()) -> None:
        hosts = [f"127.0.{FIRST + i}.{h}" for i in range(3) for h in (5, 10, 21, 22)]
        self.port = free_port(*hosts)
        api_port = free_port(*hosts)
        self.topology = rig_topology(self.port, api_port)
        placement = Placement(self.topology)
        self.zone = ZONES[0]
        self.workers = {w.name: FakeWorker(w.host, w.port, w.name)
                        for z in ZONES for w in placement.workers(z)}
        self.controllers = {z: RecordingController(placement.controller(z).host, api_port)
                            for z in recorders}
        node = placement.gateway(self.zone)
        self.host = node.host
        self.url = f"http://{node.host}:{node.port}"
        self.server = AppServer(create_gateway_app(self.topology, node), node.host, node.port)
        self.client: aiohttp.ClientSession | None = None

    @property
    def hop(self) -> ProxyHop:
        return self.server.app[GATEWAY_HOP]

    async def start(self) -> GatewayRig:
        await asyncio.gather(*(w.start() for w in self.workers.values()),
                             *(c.start() for c in self.controllers.values()))
        await self.server.start()
        self.client = aiohttp.ClientSession()
        await self.wait(lambda: all(ep.healthy is not None for ep in self.hop.pool.endpoints
                                    if ep.healthy is not False))
        return self

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
        await self.server.stop()
        for part in [*self.workers.values(), *self.controllers.values()]:
            await part.stop()

    async def chat(self, n: int = 1) -> list[aiohttp.ClientResponse]:
        assert self.client is not None
        out = []
        for _ in range(n):
            resp = await self.client.post(self.url + "/v1/chat/completions", json=CHAT,
                                          headers=AUTH)
            await resp.read()
            out.append(resp)
        return out

    async def wait(self, predicate: Callable[[], object], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
