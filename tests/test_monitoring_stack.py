"""Monitoring a real local stack: every component's metrics parse and move with traffic and
faults, and a zone kill fires alerts (log and webhook) that resolve once the zone is back.

Addresses: zones on 127.0.160-162.0/24, the LB on 127.0.0.160 (ports 18160/18600), the
monitors on host .7 of each zone, the webhook receiver on 127.0.160.250.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from crosszone.cli.report_cmds import report_app
from crosszone.config import Placement, Topology
from crosszone.runtime import LocalStack
from monitorutil import MonitorHarness, fast_settings, wait_for
from stackutil import local_topology, start_stack

pytestmark = [pytest.mark.integration]

LB = "http://127.0.0.160:18160"
ZONE_A = "us-west-2a"
Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Env:
    def __init__(self, stack: LocalStack, topology: Topology, monitors: MonitorHarness) -> None:
        self.stack = stack
        self.topology = topology
        self.monitors = monitors
        self.placement = Placement(topology)


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Env]:
    run_dir = tmp_path_factory.mktemp("monitoring-run")
    stack = start_stack(request, run_dir, local_topology(160, http_port=18160,
                                                          https_port=18600))
    topology = stack.run_dir.load_topology()
    monitors = MonitorHarness(topology, stack.run_dir.path, fast_settings(),
                              webhook_host="127.0.160.250")
    request.addfinalizer(monitors.stop)
    monitors.start()
    yield Env(stack, topology, monitors)


def scrape(url: str) -> Values:
    resp = httpx.get(url, timeout=5)
    assert resp.status_code == 200, url
    families = list(text_string_to_metric_families(resp.text))
    assert families, f"{url} exposes no metric"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in families for s in f.samples}


def running(urls: list[str]) -> dict[str, Values]:
    """Scrapes of the targets that answer (a worker not started refuses the connection)."""
    found = {}
    for url in urls:
        try:
            found[url] = scrape(url)
        except httpx.ConnectError:
            continue
    return found


def total(values: Values, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in values.items()
               if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))


def chat(env: Env, base: str = LB) -> int:
    key = env.topology.auth.api_keys[0]
    resp = httpx.post(f"{base}/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": "deepseek-chat",
                            "messages": [{"role": "user", "content": "hello"}]})
    return resp.status_code


def status(env: Env, zone: str = ZONE_A) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(f"{env.monitors.urls()[zone]}/api/status", timeout=5).json()
    return doc


def test_metrics_parse_and_move_with_traffic(env: Env) -> None:
    p = env.placement
    zones = env.topology.zone_names()
    # Every worker the autoscaler may have started; the ones not running are left out.
    workers = [f"{w.url}/metrics" for z in zones for w in p.max_workers(z)]
    gateways = [f"{p.gateway(z).url}/metrics" for z in zones]
    stores = [f"{p.store(z).url}/metrics" for z in zones]
    monitors = [f"{u}/metrics" for u in env.monitors.urls().values()]
    before = {u: scrape(u) for u in [*gateways, *stores, f"{LB}/lb/metrics"]}
    before |= running(workers)
    assert [chat(env) for _ in range(12)] == [200] * 12
    put = httpx.put(f"{p.store(ZONE_A).url}/kv/monitoring/k1", json={"value": {"n": 1}})
    assert put.status_code == 200, put.text
    after = {u: scrape(u) for u in before if u not in workers} | running(workers)
    steady = [u for u in workers if u in before and u in after]  # not restarted meanwhile

    def grew(urls: list[str], name: str, **labels: str) -> float:
        return sum(total(after[u], name, **labels) - total(before[u], name, **labels)
                   for u in urls)

    served = grew(steady, "crosszone_worker_requests_total", status="200")
    assert served >= 12 or (served > 0 and len(steady) < len(before.keys() & set(workers)))
    assert grew(gateways, "crosszone_gateway_requests_total",
                path="/v1/chat/completions") >= 12
    assert grew([f"{LB}/lb/metrics"], "crosszone_lb_requests_total",
                path="/v1/chat/completions", status="200") == 12
    assert grew(stores[:1], "crosszone_store_outbox_sequence", bound="head") >= 1
    assert all(total(after[u], "crosszone_store_prepared_transactions") == 0 for u in stores)
    # A fault: one worker fails every request; the gateways retry elsewhere, and it shows.
    faulty = p.workers(ZONE_A)[0].url
    admin = {"Authorization": f"Bearer {env.topology.auth.admin_token}"}
    assert httpx.post(f"{faulty}/admin/faults", json={"error_rate": 1.0},
                      headers=admin).status_code == 200
    try:
        before_fault = scrape(f"{faulty}/metrics")
        # Straight to zone a's gateway, which picks between its two workers: 24 requests all
        # missing the faulty one would take odds of 2^-24.
        gateway = p.gateway(ZONE_A).url
        codes = [chat(env, gateway) for _ in range(24)]
        assert codes.count(200) >= 22  # retried on healthy workers
        errors = total(scrape(f"{faulty}/metrics"), "crosszone_worker_requests_total") - \
            total(before_fault, "crosszone_worker_requests_total")
        assert errors >= 1, "the faulty worker answered nothing"
        assert total(scrape(f"{faulty}/metrics"), "crosszone_worker_requests_total",
                     status="500") >= 1
    finally:
        httpx.delete(f"{faulty}/admin/faults", headers=admin)
    assert total(after[stores[0]], "crosszone_store_replication_lag_records") >= 0
    # The monitors saw the traffic (requests/s per zone) and report the whole deployment.
    wait_for(lambda: any(z["rps"] > 0 for h in status(env)["history"]
                         for z in h["zones"].values()), 15, "the monitor to see requests/s")
    for url in monitors:
        values = wait_for(lambda u=url: (v := scrape(u)) and
                          total(v, "crosszone_healthy_zones") == 3 and v, 20,
                          f"{url} to report three healthy zones")
        nodes = {dict(ls)["node"] for (n, ls) in values if n == "crosszone_node_up"}
        assert {f"{z}/{c}" for z in zones for c in ("gateway", "store", "worker-1")} <= nodes
        assert {dict(ls)["peer_zone"] for (n, ls) in values
                if n == "crosszone_cross_zone_latency_seconds"} and \
            total(values, "crosszone_lb_up") == 1


def _notified(env: Env, state: str) -> list[dict[str, Any]]:
    return env.monitors.notifications(state, "ZoneUnhealthy", lambda ls: ls["zone"] == ZONE_A)


def test_zone_kill_fires_alerts_that_resolve(env: Env) -> None:
    runner = CliRunner()
    run_dir = str(env.stack.run_dir.path)
    monitor_b = f"{env.monitors.urls()['us-west-2b']}/metrics"
    env.stack.hold(zone=ZONE_A, signal="KILL")
    try:
        fired = wait_for(lambda: _notified(env, "firing"), 30, "ZoneUnhealthy to fire")
        # Sent by the notifier: the first monitor in zone order that answers (zone a's here,
        # which the test runs outside the stack; another only if a's answer timed out).
        assert fired[0]["generatorURL"] in env.monitors.urls().values()
        assert fired[0]["annotations"]["summary"] == f"Zone {ZONE_A} is unhealthy"
        # Any monitor answers, and comes to the same conclusion within a cycle or two.
        values = wait_for(lambda: (v := scrape(monitor_b)) and
                          total(v, "crosszone_zone_up", zone=ZONE_A) == 0 and v, 10,
                          "monitor us-west-2b to see the zone down")
        assert total(values, "crosszone_node_up", node=f"{ZONE_A}/gateway") == 0
        assert total(values, "crosszone_node_up", zone=ZONE_A) == 0
        doc = wait_for(lambda: (d := status(env, "us-west-2c"))["snapshot"]["zones"][ZONE_A][
            "status"] == "unhealthy" and d, 10, "monitor us-west-2c to see the zone down")
        assert any(a["alertname"] == "ZoneUnhealthy" and a["state"] == "firing"
                   for a in doc["alerts"])
        assert f"{ZONE_A} unhealthy" in doc["sentence"]  # what the cycle said it saw
        harness_url = env.monitors.urls()["us-west-2b"]  # this test's monitors, 1 s probes
        result = runner.invoke(report_app, ["latency", "--json", "--url", harness_url])
        assert result.exit_code == 0, result.output
        rows = json.loads(result.output)["rows"]
        assert {"us-west-2b", "us-west-2c"} <= {r["zone"] for r in rows}
        assert all(r["p95_latency"] > 0 and r["avg_latency"] > 0 for r in rows)
    finally:
        env.stack.release(zone=ZONE_A)
    wait_for(lambda: _notified(env, "resolved"), 60, "ZoneUnhealthy to resolve")
    wait_for(lambda: total(scrape(monitor_b), "crosszone_zone_up", zone=ZONE_A) == 1, 30,
             "the zone to be up again")
    _check_failovers(env, runner, run_dir)


def _check_failovers(env: Env, runner: CliRunner, run_dir: str) -> None:
    """When the control plane runs in the stack, the failovers it recorded reach the seed's
    success-rate query."""
    table = Path(run_dir) / "control" / "failover_events.sqlite"
    if not table.exists():
        return
    with sqlite3.connect(f"file:{table}?mode=ro", uri=True) as db:
        recorded = db.execute("SELECT COUNT(*), SUM(success) FROM failover_events").fetchone()
    if not recorded[0]:
        return

    def imported() -> dict[str, Any] | None:
        result = runner.invoke(report_app, ["failovers", "--json", "--url",
                                            env.monitors.urls()["us-west-2b"]])
        doc: dict[str, Any] = json.loads(result.output)
        return doc if len(doc["events"]) >= recorded[0] else None

    doc = wait_for(imported, 20, "the failover events to be imported")
    assert doc["success_rate"] == pytest.approx(100.0 * (recorded[1] or 0) / len(doc["events"]))
