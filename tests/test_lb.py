"""The load balancer in front of three real zone gateways (over fake workers), HTTP and HTTPS."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import stat
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import openai
import pytest
from cryptography import x509

from crosszone.config import Placement, Topology
from crosszone.config.topology import Tls
from crosszone.dataplane.gateway import create_gateway_app
from crosszone.dataplane.lb import LB_HOP, certificate_path, create_lb_app, ensure_certificate
from crosszone.dataplane.proxy.hop import ProxyHop
from crosszone.errors import ConfigError
from proxyfakes import (
    API_KEY,
    LB_HOST,
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


class Stack:
    def __init__(self, topology: Topology, fleet: FakeFleet, gateways: dict[str, AppServer],
                 lb: AppServer, https_port: int, run_dir: Path,
                 client: aiohttp.ClientSession) -> None:
        self.topology, self.fleet, self.gateways, self.lb = topology, fleet, gateways, lb
        self.client, self.run_dir = client, run_dir
        self.hop: ProxyHop = lb.app[LB_HOP]
        self.url = f"http://{LB_HOST}:{lb.port}"
        self.https_url = f"https://{LB_HOST}:{https_port}"

    async def chat(self, **extra: Any) -> aiohttp.ClientResponse:
        resp = await self.client.post(self.url + "/v1/chat/completions", json=CHAT,
                                      headers={**AUTH, **extra})
        await resp.read()
        return resp

    async def status(self) -> dict[str, Any]:
        resp = await self.client.get(self.url + "/lb/status")
        assert resp.status == 200
        result: dict[str, Any] = await resp.json()
        return result

    async def wait(self, predicate: Callable[[], bool], timeout: float = 3.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def make_stack(tmp_path: Path) -> AsyncIterator[StackFactory]:
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def factory(**kwargs: Any) -> Stack:
        port = free_port(*worker_hosts(), *gateway_hosts())
        http_port, https_port = free_port(LB_HOST), free_port(LB_HOST)
        while https_port == http_port:
            https_port = free_port(LB_HOST)
        topology = make_topology(worker_port=port, gateway_port=port, http_port=http_port,
                                 https_port=https_port, **kwargs)
        fleet = await FakeFleet(port).start()
        cleanups.append(fleet.stop)
        gateways: dict[str, AppServer] = {}
        for node in Placement(topology).gateways():
            server = AppServer(create_gateway_app(topology, node), node.host, node.port)
            gateways[node.zone or ""] = await server.start()
            cleanups.append(server.stop)
        lb = await AppServer(create_lb_app(topology), LB_HOST, http_port).start()
        cleanups.append(lb.stop)
        await lb.add_site(https_port, ensure_certificate(topology, tmp_path))
        client = aiohttp.ClientSession()
        cleanups.append(client.close)
        stack = Stack(topology, fleet, gateways, lb, https_port, tmp_path, client)
        await stack.wait(lambda: all(ep.healthy is not None for ep in stack.hop.pool.endpoints))
        return stack

    yield factory
    for cleanup in reversed(cleanups):
        await cleanup()


async def test_active_backup_survives_losing_the_primary_zone(make_stack: StackFactory) -> None:
    stack = await make_stack(mode="active-backup")
    for _ in range(10):
        resp = await stack.chat()
        assert resp.status == 200
        assert resp.headers["x-crosszone-gateway-zone"] == "za"
        assert resp.headers["x-crosszone-zone"] == "za"

    statuses: list[int] = []
    zones: list[str] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        while not stop.is_set():
            resp = await stack.chat()
            statuses.append(resp.status)
            zones.append(resp.headers.get("x-crosszone-gateway-zone", "?"))
            await asyncio.sleep(0.005)

    runner = asyncio.create_task(traffic())
    await asyncio.sleep(0.1)
    await stack.gateways["za"].stop()  # zone za's gateway dies
    await stack.wait(lambda: stack.hop.pool.get("za").healthy is False)
    await asyncio.sleep(0.1)
    stop.set()
    await runner
    assert len(statuses) >= 5 and set(statuses) == {200}
    assert zones[-1] == "zb"
    assert set(zones) <= {"za", "zb"}
    status = await stack.status()
    assert status["zones"]["za"]["healthy"] is False
    assert status["zones"]["zb"]["healthy"] is True
    assert status["zones"]["za"]["url"] == stack.hop.pool.get("za").url
    metrics = await (await stack.client.get(stack.url + "/lb/metrics")).text()
    assert 'crosszone_lb_upstream_healthy{upstream="za",zone="za"} 0.0' in metrics


async def test_status_follows_health_and_request_ids_pass_through(
        make_stack: StackFactory) -> None:
    stack = await make_stack(mode="active-active")
    status = await stack.status()
    assert status["mode"] == "active-active" and status["panic"] is False
    assert {z: (s["healthy"], s["ejected"], s["weight"]) for z, s in status["zones"].items()} == {
        z: (True, False, 1.0) for z in ZONES}
    health = await stack.client.get(stack.url + "/health")
    assert health.status == 200
    assert (await health.json())["healthy_zones"] == list(ZONES)

    resp = await stack.chat(**{"x-request-id": "lb-rid-1"})
    assert resp.headers["x-request-id"] == "lb-rid-1"
    assert stack.fleet[resp.headers["x-crosszone-node"]].last_headers["x-request-id"] \
        == "lb-rid-1"

    # zone zb loses all its workers: its gateway still serves (cross-zone) and stays healthy
    for worker in stack.fleet.zone("zb"):
        worker.health_status = 503
    # zone zc's gateway goes away: the LB sees it
    await stack.gateways["zc"].stop()
    await stack.wait(lambda: stack.hop.pool.get("zc").healthy is False)
    status = await stack.status()
    assert status["zones"]["zc"]["healthy"] is False
    assert status["zones"]["zb"]["healthy"] is True
    seen: Counter[str] = Counter()
    for _ in range(12):
        resp = await stack.chat()
        assert resp.status == 200
        seen[resp.headers["x-crosszone-gateway-zone"]] += 1
    assert set(seen) <= {"za", "zb"}


async def test_weights_pushed_at_runtime(make_stack: StackFactory) -> None:
    stack = await make_stack(mode="active-active")
    put = await stack.client.put(stack.url + "/lb/weights",
                                 json={"weights": {"za": 0, "zb": 1, "zc": 0}})
    assert put.status == 200
    assert (await put.json())["zones"]["zb"]["weight"] == 1.0
    zones = {(await stack.chat()).headers["x-crosszone-gateway-zone"] for _ in range(8)}
    assert zones == {"zb"}
    for bad in ({"weights": {"nowhere": 1}}, {"weights": {"za": -1}}, {"za": 1},
                {"weights": {"zb": 0}}):
        resp = await stack.client.put(stack.url + "/lb/weights", json=bad)
        assert resp.status == 400, bad
        assert (await resp.json())["error"]["code"] == "invalid_weights"
    assert (await stack.status())["zones"]["zb"]["weight"] == 1.0


async def test_fails_open_when_no_target_looks_healthy(make_stack: StackFactory) -> None:
    stack = await make_stack(mode="active-backup", lb_check_path="/no-such-path",
                             check_interval=0.3)
    await stack.wait(lambda: not stack.hop.pool.available())
    health = await stack.client.get(stack.url + "/health")
    assert health.status == 503
    assert (await stack.status())["panic"] is True
    resp = await stack.chat()
    assert resp.status == 200
    assert resp.headers["x-crosszone-gateway-zone"] == "za"


async def test_a_request_no_zone_can_serve_yet_waits_for_one_instead_of_failing(
        make_stack: StackFactory) -> None:
    """Every gateway down (a mass restart): the LB retries rounds with backoff, and the
    request succeeds once one gateway is back, within the LB's patience."""
    stack = await make_stack()
    for server in stack.gateways.values():
        await server.stop()
    await stack.wait(lambda: not stack.hop.pool.available(), timeout=5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    pending = asyncio.create_task(stack.chat())
    await asyncio.sleep(1.0)
    assert not pending.done()  # still waiting: no 503 after the first round
    node = next(n for n in Placement(stack.topology).gateways() if n.zone == "zb")
    back = await AppServer(create_gateway_app(stack.topology, node), node.host,
                           node.port).start()
    try:
        resp = await asyncio.wait_for(pending, 10)
        assert resp.status == 200, await resp.text()
        assert resp.headers["x-crosszone-gateway-zone"] == "zb"
        assert 1.0 <= loop.time() - started < 8.0
    finally:
        await back.stop()  # nothing comes back now: a clear 503 after the patience
    started = loop.time()
    resp = await stack.chat()
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "no_healthy_upstream"
    assert loop.time() - started >= 7.0


async def test_what_a_zone_answered_beats_a_later_cannot_connect(
        make_stack: StackFactory) -> None:
    """The primary zone answers 500 (every worker fails) and the backups' gateways are gone
    before the LB's checks notice: the client gets the zone's own answer, not "cannot connect
    to zc" from the last attempt, which says nothing about why the request failed."""
    stack = await make_stack(mode="active-backup", check_interval=5.0)
    stack.hop.forwarder.patience_seconds = 0.0  # one round: what matters is which error wins
    for worker in stack.fleet.workers.values():
        worker.mode = "500"
    for zone in ("zb", "zc"):
        await stack.gateways[zone].stop()
    resp = await stack.chat()
    assert resp.headers["x-crosszone-lb-attempts"] == "3"  # za, then zb and zc refused
    assert resp.status == 500, await resp.text()
    assert (await resp.json())["error"]["message"] == "fake 500"


@pytest.mark.filterwarnings("ignore:`verify=<str>` is deprecated:DeprecationWarning")
async def test_https_listener_with_the_official_openai_client(make_stack: StackFactory) -> None:
    stack = await make_stack(mode="active-backup")
    cert = certificate_path(stack.run_dir)

    def call() -> tuple[str, str, str]:
        with httpx.Client(verify=str(cert)) as http:
            client = openai.OpenAI(base_url=stack.https_url + "/v1", api_key=API_KEY,
                                   http_client=http, max_retries=0)
            done = client.chat.completions.create(
                model="deepseek-chat", messages=[{"role": "user", "content": "hi"}])
            pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
                model="deepseek-chat", messages=[{"role": "user", "content": "hi"}],
                stream=True)]
            denied = ""
            try:
                openai.OpenAI(base_url=stack.https_url + "/v1", api_key="sk-nope",
                              http_client=http, max_retries=0).models.list()
            except openai.AuthenticationError as exc:
                denied = exc.code or ""
            return done.choices[0].message.content or "", "".join(pieces), denied

    content, streamed, denied = await asyncio.to_thread(call)
    assert content in ("hello from za/worker-1", "hello from za/worker-2")
    assert streamed.startswith("hello from za/worker-")
    assert denied == "invalid_api_key"


async def test_certificate_is_made_once_private_and_strictly_valid(
        make_stack: StackFactory) -> None:
    stack = await make_stack(mode="active-backup")
    cert = certificate_path(stack.run_dir)
    key = stack.run_dir / "tls" / "key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = cert.read_bytes()
    ensure_certificate(stack.topology, stack.run_dir)
    assert cert.read_bytes() == before  # reused, not made again
    loaded = x509.load_pem_x509_certificate(before)
    san = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address(LB_HOST)}
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    # Python 3.13 verifies with VERIFY_X509_STRICT by default: the certificate must pass it
    strict = ssl.create_default_context(cafile=str(cert))
    strict.verify_flags |= ssl.VERIFY_X509_STRICT
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=strict)) as session:
        resp = await session.get(stack.https_url + "/lb/status")
        assert resp.status == 200


def test_configured_certificate_is_used_and_a_bad_one_is_a_config_error(tmp_path: Path) -> None:
    topology = make_topology(worker_port=9000)
    made = tmp_path / "made"
    ensure_certificate(topology, made)
    lb = topology.load_balancer
    configured = topology.model_copy(update={"load_balancer": lb.model_copy(update={"tls": Tls(
        cert_file=str(certificate_path(made)), key_file=str(made / "tls" / "key.pem"))})})
    assert isinstance(ensure_certificate(configured, tmp_path / "other"), ssl.SSLContext)
    assert not (tmp_path / "other").exists()
    broken = topology.model_copy(update={"load_balancer": lb.model_copy(update={"tls": Tls(
        cert_file=str(tmp_path / "missing.pem"), key_file=str(tmp_path / "missing.key"))})})
    with pytest.raises(ConfigError, match=r"load_balancer\.tls\.cert_file"):
        ensure_certificate(broken, tmp_path)


def test_certificate_is_made_again_for_a_new_address(tmp_path: Path) -> None:
    topology = make_topology(worker_port=9000)
    ensure_certificate(topology, tmp_path)
    first = certificate_path(tmp_path).read_bytes()
    moved = topology.model_copy(update={"load_balancer": topology.load_balancer.model_copy(
        update={"address": "127.0.102.9"})})
    ensure_certificate(moved, tmp_path)
    again = x509.load_pem_x509_certificate(certificate_path(tmp_path).read_bytes())
    assert certificate_path(tmp_path).read_bytes() != first
    san = again.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.102.9") in san.get_values_for_type(x509.IPAddress)
