"""Passive signals: gateways and the LB report what their upstream attempts saw to every
controller, and a zone that turns slow while its health checks pass is marked degraded from
those reports and routed around.

In-process gateway (tests/signalutil.py): zones on 127.0.203-205.0/24. The real stack: zones on
127.0.200-202.0/24, LB on 127.0.0.200 (ports 18200, 18640).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from crosszone.config.placement import Placement
from crosszone.runtime import LocalStack
from signalutil import ADMIN, GatewayRig
from stackutil import local_topology, start_stack, wait_until

A, B, C = "us-west-2a", "us-west-2b", "us-west-2c"


@pytest.fixture
async def rig() -> AsyncIterator[GatewayRig]:
    rig = GatewayRig(recorders=(A, B))  # no controller in zone C: its reports are dropped
    try:
        yield await rig.start()
    finally:
        await rig.stop()


async def test_gateway_reports_each_window_to_every_controller(rig: GatewayRig) -> None:
    assert all(r.status == 200 for r in await rig.chat(10))
    recorders = list(rig.controllers.values())
    await rig.wait(lambda: all(c.total(A, "requests") >= 10 for c in recorders))
    await asyncio.sleep(1.2)  # two more windows: nothing is counted twice
    for c in recorders:
        # each report holds its window's deltas: they add up to the attempts made
        assert c.total(A, "requests") == 10 and c.total(A, "errors") == 0
        assert all(r.body["ejected"] == [] for r in c.reports)
        latencies = [r.body["zones"][A]["latency_ms"] for r in c.reports if A in r.body["zones"]]
        assert latencies and all(0 < x < 1000 for x in latencies)
        # sent from the gateway's own address (zone faults apply), with the admin token
        assert {r.peer for r in c.reports} == {rig.host}
        assert {r.headers["Authorization"] for r in c.reports} == {f"Bearer {ADMIN}"}
    assert rig.hop.reporter is not None and rig.hop.reporter.reports >= 1
    assert len(rig.hop.reporter.unreachable) == 1  # zone C's controller: refused, dropped

    # Both local workers answer 500: two failed attempts and two passive ejections, then the
    # request is served in another zone.
    for name in (f"{A}/worker-1", f"{A}/worker-2"):
        rig.workers[name].mode = "500"
    response = (await rig.chat())[0]
    assert response.status == 200 and response.headers["x-crosszone-zone"] != A
    await rig.wait(lambda: all(c.total(A, "errors") == 2 for c in recorders))
    for c in recorders:
        ejected = [e for r in c.reports for e in r.body["ejected"]]
        assert sorted(e["node"] for e in ejected) == [f"{A}/worker-1", f"{A}/worker-2"]
        assert all(e["reason"].startswith("status: ") and "HTTP 500" in e["reason"]
                   for e in ejected)
        assert c.total(A, "requests") == 12


async def test_a_controller_that_never_answers_costs_the_data_path_nothing(
        rig: GatewayRig) -> None:
    rig.controllers[A].silent = True  # accepts the connection, never answers
    reporter = rig.hop.reporter
    assert reporter is not None
    started = time.monotonic()
    for _ in range(3):
        t0 = time.monotonic()
        assert all(r.status == 200 for r in await rig.chat(5))
        assert time.monotonic() - t0 < 1.0
        await asyncio.sleep(0.5)
    await rig.wait(lambda: rig.controllers[B].total(A, "requests") >= 15)
    assert rig.controllers[A].reports == []
    assert len(reporter.unreachable) == 2  # zone A's (silent) and zone C's (absent)
    # a report is abandoned before the next is due: cycles never pile up
    assert reporter.timeout < reporter.interval
    t0 = time.monotonic()
    await rig.chat()
    sentence = await reporter.run_cycle()
    assert time.monotonic() - t0 < reporter.interval + 0.3, sentence
    assert "to 1/3 controllers" in sentence and "no answer within" in sentence
    assert time.monotonic() - started < 10


# -- the real stack --------------------------------------------------------------------------------

FIRST = 200


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LocalStack:
    topo = local_topology(
        FIRST, http_port=18200, https_port=18640, workers=2, decode_ms=2.0,
        control={"gray_failure": {"window_seconds": 3.0, "min_samples": 5},
                 "failover": {"recovery_stable_seconds": 1.0, "failback_delay_seconds": 0.5,
                              "flap_threshold": 50}})
    stack = start_stack(request, tmp_path_factory.mktemp("signals"), topo)
    wait_until(lambda: leader_status(stack), timeout=20, what="an acting leader")
    return stack


def status(stack: LocalStack, zone: str) -> dict[str, Any] | None:
    node = Placement(stack.topology).controller(zone)
    try:
        r = httpx.get(f"{node.url}/control/status", timeout=1.0)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def leader_status(stack: LocalStack) -> dict[str, Any] | None:
    acting = [s for z in (A, B, C) if (s := status(stack, z)) and s["leader"]]
    return acting[0] if len(acting) == 1 else None


def lb_weights(stack: LocalStack) -> dict[str, float]:
    url = stack.lb_url().removesuffix("/v1")
    zones = httpx.get(f"{url}/lb/status", timeout=2.0).json()["zones"]
    return {z: float(v["weight"]) for z, v in zones.items()}


def gateway_weights(stack: LocalStack, zone: str) -> dict[str, Any]:
    url = Placement(stack.topology).gateway(zone).url
    doc: dict[str, Any] = httpx.get(f"{url}/gateway/weights", timeout=2.0).json()
    return doc


class Load:
    """``threads`` clients sending short chat completions through the LB until stopped."""

    def __init__(self, stack: LocalStack, threads: int = 4) -> None:
        self.url = stack.lb_url() + "/chat/completions"
        self.headers = {"Authorization": f"Bearer {stack.api_key}"}
        self.stop = threading.Event()
        self.statuses: list[int] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(timeout=30.0) as client:
            while not self.stop.is_set():
                try:
                    self.statuses.append(client.post(self.url, json=body,
                                                     headers=self.headers).status_code)
                except httpx.HTTPError:
                    self.statuses.append(0)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=35)


@pytest.fixture
def starve() -> Iterator[Any]:
    """``starve(pids)``: from then on the processes run 20 ms of every 100 ms (SIGSTOP/SIGCONT),
    as a zone starved of CPU does; every process is resumed when the test ends."""
    stop = threading.Event()
    threads: list[threading.Thread] = []
    stopped: set[int] = set()

    def cycle(pids: list[int]) -> None:
        try:
            while not stop.is_set():
                for pid in pids:
                    stopped.add(pid)
                    os.kill(pid, signal.SIGSTOP)
                time.sleep(0.08)
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
                time.sleep(0.02)
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def start(pids: list[int]) -> threading.Event:
        thread = threading.Thread(target=cycle, args=(pids,), daemon=True)
        threads.append(thread)
        thread.start()
        return stop

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    for pid in stopped:  # whatever happened to the thread
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def test_signals_from_the_lb_and_gateways_reach_every_controller(stack: LocalStack) -> None:
    def seen() -> list[dict[str, Any]] | None:
        windows = []
        for z in (A, B, C):
            s = status(stack, z)
            if s is None or any(s["gray_failure"][x]["requests"] < 5
                                or s["gray_failure"][x]["request_latency_ms"] is None
                                for x in (A, B, C)):
                return None
            windows.append(s["gray_failure"])
        return windows

    with Load(stack, threads=2) as load:
        windows = wait_until(seen, timeout=15,
                             what="passive signals of every zone at every controller")
    assert load.statuses and set(load.statuses) == {200}
    for gray in windows:  # every controller's window, every zone
        for zone in (A, B, C):
            assert gray[zone]["errors"] == 0 and gray[zone]["request_latency_samples"] >= 1
            assert 0 < gray[zone]["request_latency_ms"] < 5000


def test_a_cpu_starved_zone_is_degraded_by_its_request_latency_and_routed_around(
        stack: LocalStack, starve: Any) -> None:
    wait_until(lambda: lb_weights(stack)[B] > 0, timeout=15, what=f"{B} taking traffic")
    pids = stack.pids()
    zone_b = [pid for name, pid in pids.items()
              if name.startswith(f"{B}/") and name.split("/")[1].startswith(("gateway",
                                                                              "worker"))]
    assert len(zone_b) == 3
    with Load(stack, threads=4) as load:
        time.sleep(1.0)
        started = time.monotonic()
        stop = starve(zone_b)

        def degraded() -> str | None:
            s = leader_status(stack)
            ob = s["zones"][B] if s else None
            if ob and ob["status"] == "degraded" and ob["reason"].startswith("request latency"):
                return str(ob["reason"])
            return None

        reason = wait_until(degraded, timeout=20, what=f"{B} degraded by request latency")
        detected = time.monotonic() - started
        wait_until(lambda: lb_weights(stack)[B] == 0, timeout=10, what=f"the LB drains {B}")
        shifted = time.monotonic() - started
        wait_until(lambda: gateway_weights(stack, A)["weights"][B] == 0, timeout=10,
                   what=f"gateway {A} keeps its fallback off {B}")
        stop.set()
        wait_until(lambda: lb_weights(stack)[B] > 0, timeout=30, what=f"{B} back after the load")
    print(f"{B} degraded after {detected:.1f} s ({reason}); LB drained it after {shifted:.1f} s")
    assert load.statuses and set(load.statuses) == {200}, "requests failed while starved"
    shifts = (leader_status(stack) or {}).get("shifts", [])
    assert not [x for x in shifts if x["zone"] == B]
