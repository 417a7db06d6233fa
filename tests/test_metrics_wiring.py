"""Metrics that need wiring across components (issue 6): the workers' inter-token and queue-time
histograms, the load balancer's requests per zone and routing weights, and the monitors
following the auto-scaling groups' worker slots.

Addresses: zones on 127.0.210-212.0/24, the stack's LB on 127.0.0.210 (HTTP 18210, HTTPS
18660), the stack's own monitors on host .7 of each zone, and a second load balancer run by this
test on 127.0.0.211:18211 (no controller pushes weights to it). Everything is stopped in
finalizers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from crosszone.config import Placement, Topology, parse_topology
from crosszone.dataplane.lb.app import GATEWAY_ZONE_HEADER, create_lb_app
from crosszone.dataplane.worker.metrics import LoopHistogram
from crosszone.monitoring.addresses import monitor_node
from crosszone.monitoring.export import panel_expressions, scrape_config
from crosszone.monitoring.settings import MonitoringSettings
from crosszone.monitoring.slots import WorkerSlots
from crosszone.runtime import LocalStack
from stackutil import local_topology, start_stack, wait_until

A, B, C = "us-west-2a", "us-west-2b", "us-west-2c"
CHAT = "/v1/chat/completions"
SIDE_LB = ("127.0.0.211", 18211)
Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Values:
    resp = httpx.get(url, timeout=5)
    assert resp.status_code == 200, url
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(resp.text) for s in f.samples}


def total(values: Values, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in values.items()
               if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))


# --- without processes ------------------------------------------------------------------------

def test_loop_histogram_renders_like_a_prometheus_histogram() -> None:
    bounds = (0.001, 0.01, 0.1, 1.0)
    values = [0.0, 0.001, 0.0011, 0.05, 0.1, 0.7, 3.0, 3.0]
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopHistogram("gap_seconds", "gaps", ["endpoint"], bounds, ours)
    reference = Histogram("gap_seconds", "gaps", ["endpoint"], buckets=bounds,
                          registry=theirs)
    cells = loop.labels("chat")
    for v in values:
        cells.observe(v)
        reference.labels("chat").observe(v)

    def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        text = generate_latest(registry).decode()
        return {(s.name, s.labels.get("le", "")): s.value
                for f in text_string_to_metric_families(text) for s in f.samples
                if not s.name.endswith("_created")}

    assert samples(ours) == samples(theirs)
    assert loop.count("chat") == len(values) and loop.count("completions") == 0


def _topology(**overrides: Any) -> Topology:
    return parse_topology(local_topology(210, http_port=18210, https_port=18660, **overrides),
                          "test")


def test_worker_slots_follow_the_groups_desired_capacity() -> None:
    topology = _topology()  # 2 workers of at most 4 per zone
    slots = WorkerSlots(topology, grace_seconds=10.0)
    worker = Placement(topology).worker
    assert len(slots.nodes()) == 12 and slots.desired(A) == 2
    # The initial group is taken as running: a silent slot in it is down at once.
    assert slots.classify(worker(A, 2), False, now=0.0) == "down"
    assert slots.classify(worker(A, 3), False, now=0.0) == "absent"
    assert slots.classify(worker(A, 3), True, now=0.0) == "up"  # running beyond the group
    answer = {A: {"desired": 3, "version": [2, 100.0], "reason": "operator setting"},
              B: {"desired": 1, "version": [2, 100.0], "reason": "operator setting"}}
    changes = slots.update([answer, None, "not a document"], now=100.0)
    assert changes == [f"{A} desired 2 -> 3 (controllers, term 2: operator setting)",
                       f"{B} desired 2 -> 1 (controllers, term 2: operator setting)"]
    assert slots.classify(worker(A, 3), False, now=105.0) == "starting"  # within its grace
    assert slots.classify(worker(A, 3), False, now=111.0) == "down"  # grace over
    assert slots.classify(worker(B, 2), False, now=105.0) == "absent"  # scaled in: not down
    # An older answer (a deposed leader's) changes nothing; no answer keeps the last one.
    stale = {A: {"desired": 1, "version": [1, 500.0], "reason": "old"}}
    assert slots.update([stale], now=120.0) == [] and slots.desired(A) == 3
    assert slots.update([], now=130.0) == [] and slots.desired(A) == 3
    # A slot that joined and answered once is a member like any other.
    slots.update([{A: {"desired": 4, "version": [3, 200.0], "reason": "load"}}], now=200.0)
    assert slots.classify(worker(A, 4), True, now=201.0) == "up"
    assert slots.classify(worker(A, 4), False, now=202.0) == "down"


def test_exports_scrape_every_slot_and_chart_the_new_metrics() -> None:
    topology = _topology()
    config = scrape_config(topology, MonitoringSettings())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    targets = jobs["crosszone-worker"]["static_configs"][0]["targets"]
    assert targets == [f"127.0.210.{21 + i}:9000" for i in range(4)]  # max_size slots
    exprs = " ".join(panel_expressions())
    for name in ("crosszone_lb_zone_requests_total", "crosszone_lb_zone_weight",
                 "crosszone_worker_inter_token_seconds_bucket",
                 "crosszone_worker_queue_time_seconds_bucket"):
        assert name in exprs


# --- a real stack -----------------------------------------------------------------------------

class SideLoadBalancer:
    """A load balancer app of the stack's topology on its own address, served from a thread
    of the test process, so that only this test sets its weights."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="side-lb",
                                       daemon=True)
        self.runner: web.AppRunner | None = None
        self.url = f"http://{SIDE_LB[0]}:{SIDE_LB[1]}"

    def _call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> SideLoadBalancer:
        self.thread.start()
        self._call(self._start())
        return self

    async def _start(self) -> None:
        self.runner = web.AppRunner(create_lb_app(self.topology), access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, *SIDE_LB, reuse_address=True).start()

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        try:
            if self.runner is not None:
                self._call(self.runner.cleanup())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)


class Env:
    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.topology = stack.topology
        self.placement = Placement(self.topology)
        self.lb = f"{stack.lb_url().removesuffix('/v1')}"
        self.auth = {"Authorization": f"Bearer {stack.api_key}"}
        token = stack.admin_token
        self.admin = {"Authorization": f"Bearer {token}"} if token else {}

    def monitor_status(self, zone: str = A) -> dict[str, Any]:
        url = monitor_node(self.topology, zone).url
        doc: dict[str, Any] = httpx.get(f"{url}/api/status", timeout=5).json()
        return doc


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Env]:
    topo = local_topology(
        210, http_port=18210, https_port=18660, decode_ms=2.0,
        # two sequences per batch: concurrent streams to one worker have to queue
        inference={"simulator": {"max_num_seqs": 2, "min_output_tokens": 8,
                                 "max_output_tokens": 16}},
        control={"scaling": {"enabled": False, "poll_seconds": 0.3,
                             "health_check_grace_seconds": 30.0}})
    stack = start_stack(request, tmp_path_factory.mktemp("metrics-wiring"), topo, timeout=120)
    yield Env(stack)


def _stream(client: httpx.Client, url: str) -> int:
    """One streamed chat completion; its completion tokens."""
    body = {"model": "deepseek-chat", "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"count to ten {time.monotonic_ns()}"}]}
    tokens = 0
    with client.stream("POST", url, json=body, timeout=30) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                usage = orjson.loads(line[6:]).get("usage")
                if usage:
                    tokens = int(usage["completion_tokens"])
    assert tokens > 1
    return tokens


def test_streams_fill_the_inter_token_and_queue_time_histograms(env: Env) -> None:
    worker = env.placement.worker(A, 1)
    metrics = f"{worker.url}/metrics"
    before = scrape(metrics)
    streams = 8  # four times the batch size: six of them wait for a slot
    results: list[int] = []
    with httpx.Client() as client:
        threads = [threading.Thread(target=lambda: results.append(
            _stream(client, f"{worker.url}{CHAT}"))) for _ in range(streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert len(results) == streams
    after = scrape(metrics)

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    # one gap per token after the first of each stream
    assert grew("crosszone_worker_inter_token_seconds_count", endpoint="chat") == \
        sum(n - 1 for n in results)
    assert grew("crosszone_worker_inter_token_seconds_sum", endpoint="chat") > 0
    assert grew("crosszone_worker_queue_time_seconds_count") == streams
    # a request that waited for a whole sequence (>= 8 decode steps of 2 ms) to finish
    waited = grew("crosszone_worker_queue_time_seconds_count") - \
        grew("crosszone_worker_queue_time_seconds_bucket", le="0.01")
    assert waited >= 1, "no stream waited for a batch slot"
    assert total(after, "crosszone_worker_info", zone=A, node=f"{A}/worker-1") == 1


def test_lb_counts_requests_per_zone_as_the_answers_say(env: Env) -> None:
    metrics = f"{env.lb}/lb/metrics"
    before = scrape(metrics)
    served: dict[str, int] = {}
    with httpx.Client() as client:
        for i in range(15):
            body = {"model": "deepseek-chat",
                    "messages": [{"role": "user", "content": f"hello {i}"}]}
            resp = client.post(f"{env.lb}{CHAT}", json=body, headers=env.auth, timeout=30)
            assert resp.status_code == 200, resp.text
            zone = resp.headers[GATEWAY_ZONE_HEADER]
            served[zone] = served.get(zone, 0) + 1
    after = scrape(metrics)
    counted = {z: total(after, "crosszone_lb_zone_requests_total", zone=z, path=CHAT,
                        status="200") -
               total(before, "crosszone_lb_zone_requests_total", zone=z, path=CHAT,
                     status="200") for z in (A, B, C)}
    assert counted == {z: float(served.get(z, 0)) for z in (A, B, C)}
    assert len(served) >= 2, f"15 requests, all to one zone of an active-active LB: {served}"
    assert {dict(ls)["zone"] for (n, ls) in after if n == "crosszone_lb_zone_weight"} == \
        {A, B, C}


def test_lb_weight_gauges_follow_put_weights_and_routing(env: Env,
                                                         request: pytest.FixtureRequest) -> None:
    side = SideLoadBalancer(env.topology)
    request.addfinalizer(side.stop)
    side.start()
    wait_until(lambda: httpx.get(f"{side.url}/health", timeout=2).json()["healthy_zones"]
               == [A, B, C], 20, what="the side LB to see every zone")
    metrics = f"{side.url}/lb/metrics"
    assert {z: total(scrape(metrics), "crosszone_lb_zone_weight", zone=z)
            for z in (A, B, C)} == {A: 1.0, B: 1.0, C: 1.0}
    put = httpx.put(f"{side.url}/lb/weights", json={"weights": {A: 0, B: 3}},
                    headers=env.admin, timeout=5)
    assert put.status_code == 200, put.text
    before = scrape(metrics)
    assert {z: total(before, "crosszone_lb_zone_weight", zone=z) for z in (A, B, C)} == \
        {A: 0.0, B: 3.0, C: 1.0}
    with httpx.Client() as client:
        for i in range(8):
            resp = client.post(f"{side.url}{CHAT}", headers=env.auth, timeout=30,
                               json={"model": "deepseek-chat",
                                     "messages": [{"role": "user", "content": f"hi {i}"}]})
            assert resp.status_code == 200 and resp.headers[GATEWAY_ZONE_HEADER] != A
    after = scrape(metrics)
    grew = {z: total(after, "crosszone_lb_zone_requests_total", zone=z) -
            total(before, "crosszone_lb_zone_requests_total", zone=z) for z in (A, B, C)}
    assert grew[A] == 0 and grew[B] + grew[C] == 8  # a drained zone takes no traffic


def _scale(env: Env, zone: str, desired: int) -> None:
    for node in env.placement.controllers():
        try:
            resp = httpx.put(f"{node.url}/control/scaling", json={"zone": zone,
                                                                 "desired": desired},
                             headers=env.admin, timeout=2)
        except httpx.HTTPError:
            continue
        if resp.status_code == 200:
            return
    pytest.fail(f"no controller took desired {desired} for {zone}")


def _watch(env: Env, until: Callable[[dict[str, Any]], bool], what: str,
           seen: list[dict[str, Any]], timeout: float = 40.0) -> dict[str, Any]:
    """Poll monitor A's view of zone A, keeping every view, until ``until`` holds."""
    def look() -> dict[str, Any] | None:
        snap = env.monitor_status()["snapshot"]
        if snap is None:
            return None
        zone: dict[str, Any] = snap["zones"][A]
        seen.append(zone)
        return zone if until(zone) else None

    found: dict[str, Any] = wait_until(look, timeout, interval=0.2, what=what)
    return found


def _workers(zone: dict[str, Any]) -> dict[str, bool]:
    return {n["name"]: n["up"] for n in zone["nodes"] if n["component"] == "worker"}


def test_monitor_follows_autoscaled_worker_slots(env: Env, tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    _watch(env, lambda z: _workers(z) == {f"{A}/worker-1": True, f"{A}/worker-2": True}
           and z["status"] == "healthy", "monitor a to see zone a's two workers", seen)
    seen.clear()
    started = time.time()
    try:
        _scale(env, A, 3)
        zone = _watch(env, lambda z: _workers(z).get(f"{A}/worker-3") is True,
                      "the monitor to see the autoscaled worker-3", seen)
        assert zone["workers_desired"] == 3
        wait_until(lambda: total(scrape(f"{monitor_node(env.topology, B).url}/metrics"),
                                 "crosszone_node_up", node=f"{A}/worker-3") == 1, 10,
                   what="monitor b to export worker-3 as up")
        _scale(env, A, 1)
        zone = _watch(env, lambda z: _workers(z) == {f"{A}/worker-1": True},
                      "the monitor to drop the stopped workers", seen)
        assert zone["workers_desired"] == 1 and zone["status"] == "healthy"
        time.sleep(2.5)  # a few cycles more: the stopped slots stay absent, not down
        seen.append(env.monitor_status()["snapshot"]["zones"][A])
        assert _workers(seen[-1]) == {f"{A}/worker-1": True}
    finally:
        _scale(env, A, 2)
    _watch(env, lambda z: _workers(z) == {f"{A}/worker-1": True, f"{A}/worker-2": True},
           "zone a back at two workers", seen)
    # Never did a scale-out or scale-in make the zone look broken.
    broken = [z["reasons"] for z in seen if any("worker" in r for r in z["reasons"])]
    assert not broken, broken
    alerts = httpx.get(f"{monitor_node(env.topology, A).url}/api/alerts", timeout=5).json()
    since = [a for a in alerts["history"] if a["time"] >= started]
    about_a = [a for a in alerts["firing"] + since
               if a["alertname"].startswith("Zone") and a["labels"].get("zone") == A]
    assert not about_a, about_a
