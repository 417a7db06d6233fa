"""Alert rules and notifications, the exported Prometheus/Grafana files, the monitor's own
``/metrics``, and ``crosszone report`` read from the database when no monitor runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from crosszone.cli.report_cmds import monitoring_app, report_app
from crosszone.config import parse_topology
from crosszone.errors import MonitoringError
from crosszone.monitoring.alerts import (
    Alert,
    AlertEvaluator,
    AlertManager,
    Notifier,
    Rule,
    WebhookNotifier,
)
from crosszone.monitoring.duckdb import DuckDBMetricsStore
from crosszone.monitoring.export import (
    grafana_dashboard,
    panel_expressions,
    rules_document,
    rules_yaml,
    scrape_config,
)
from crosszone.monitoring.exported import MonitorMetrics, Series, series_of
from crosszone.monitoring.rules import default_rules
from crosszone.monitoring.settings import MonitoringSettings, duckdb_path
from crosszone.monitoring.store import FailoverRecord, LatencySample
from crosszone.monitoring.view import Lag, NodeState, Prepared, Snapshot, ZoneState, zone_status
from crosszone.runtime.rundir import RunDir
from needs import missing
from stackutil import local_topology

PROMTOOL = shutil.which("promtool")
NO_PROMTOOL = "promtool not installed (apt-get install prometheus)"


def _up(zone: str, value: float) -> Series:
    return Series("crosszone_zone_up", (("zone", zone),), value)


# --- evaluation -----------------------------------------------------------------------------


def test_rule_fires_after_its_for_duration_and_resolves() -> None:
    rule = Rule("ZoneUnhealthy", "crosszone_zone_up", "==", 0, "critical", "Zone {zone} down",
                "d", for_seconds=2.0)
    ev = AlertEvaluator([rule])
    assert ev.evaluate([_up("a", 0), _up("b", 1)], 100.0).fired == []  # pending
    assert ev.active[("ZoneUnhealthy", (("zone", "a"),))].state == "pending"
    fired = ev.evaluate([_up("a", 0), _up("b", 1)], 102.0).fired
    assert [(a.labels, a.summary) for a in fired] == [({"zone": "a"}, "Zone a down")]
    assert ev.evaluate([_up("a", 0)], 103.0).fired == []  # still firing: no new edge
    resolved = ev.evaluate([_up("a", 1)], 104.0).resolved
    assert [a.resolved_at for a in resolved] == [104.0]
    assert ev.firing() == []


def test_a_condition_shorter_than_for_never_fires() -> None:
    rule = Rule("X", "crosszone_zone_up", "==", 0, "warning", "s", "d", for_seconds=5)
    ev = AlertEvaluator([rule])
    ev.evaluate([_up("a", 0)], 0.0)
    changes = ev.evaluate([_up("a", 1)], 3.0)
    assert changes.fired == [] and changes.resolved == [] and ev.active == {}


def test_label_matchers_select_series() -> None:
    rules = {r.name: r for r in default_rules(MonitoringSettings())}
    burn = [Series("crosszone_error_budget_burn_rate", (("window", "short"),), 20.0),
            Series("crosszone_error_budget_burn_rate", (("window", "long"),), 2.0)]
    fired = AlertEvaluator([rules["ErrorBudgetBurnFast"], rules["ErrorBudgetBurnSlow"]]
                           ).evaluate(burn, 0.0).fired
    assert [a.rule.name for a in fired] == ["ErrorBudgetBurnFast"]
    assert rules["ErrorBudgetBurnFast"].expr() == \
        'crosszone_error_budget_burn_rate{window="short"} > 14.4'


class Recorder(Notifier):
    def __init__(self, fail: int = 0) -> None:
        self.sent: list[tuple[str, list[str]]] = []
        self.fail = fail

    async def notify(self, status: Any, alerts: Any) -> None:
        if self.fail:
            self.fail -= 1
            raise MonitoringError("receiver down")
        self.sent.append((status, [a.describe() for a in alerts]))


async def test_only_the_notifier_sends_and_a_new_notifier_catches_up() -> None:
    rule = Rule("ZoneUnhealthy", "crosszone_zone_up", "==", 0, "critical", "s", "d")
    quiet, spare = Recorder(), Recorder()
    first = AlertManager([rule], [quiet], "a")
    second = AlertManager([rule], [spare], "b")
    said = await first.run([_up("a", 0)], 1.0, notify=True)
    assert "fired" in said and "notified 1 firing" in said
    await second.run([_up("a", 0)], 1.0, notify=False)  # not the notifier: logs only
    assert spare.sent == []
    # The first monitor's zone is gone: the second takes over and announces what fires.
    await second.run([_up("a", 0)], 2.0, notify=True)
    assert spare.sent == [("firing", ["ZoneUnhealthy{zone=a}"])]
    await second.run([_up("a", 1)], 3.0, notify=True)
    assert spare.sent[-1] == ("resolved", ["ZoneUnhealthy{zone=a}"])
    assert quiet.sent == [("firing", ["ZoneUnhealthy{zone=a}"])]


async def test_a_failed_notification_is_retried() -> None:
    rule = Rule("NoHealthyZone", "crosszone_healthy_zones", "==", 0, "critical", "s", "d")
    flaky = Recorder(fail=1)
    manager = AlertManager([rule], [flaky], "a")
    series = [Series("crosszone_healthy_zones", (), 0.0)]
    assert "retrying next cycle" in await manager.run(series, 1.0, notify=True)
    await manager.run(series, 2.0, notify=True)
    assert flaky.sent == [("firing", ["NoHealthyZone{}"])]


async def test_webhook_posts_alertmanager_format_with_resolve(unused_tcp_port: int) -> None:
    got: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.164.250", unused_tcp_port).start()
    notifier = WebhookNotifier([f"http://127.0.164.250:{unused_tcp_port}/hook"],
                               "http://127.0.164.7:9100")
    rule = default_rules(MonitoringSettings())[0]
    alert = Alert(rule, {"zone": "us-west-2a"}, 0.0, time.time(), "firing", time.time())
    try:
        await notifier.notify("firing", [alert])
        alert.resolved_at = time.time()
        await notifier.notify("resolved", [alert])
    finally:
        await notifier.close()
        await runner.cleanup()
    assert [p["status"] for p in got] == ["firing", "resolved"]
    first = got[0]["alerts"][0]
    assert first["labels"] == {"alertname": "ZoneUnhealthy", "severity": "critical",
                               "zone": "us-west-2a"}
    assert first["annotations"]["summary"] == "Zone us-west-2a is unhealthy"
    assert first["endsAt"] == "0001-01-01T00:00:00Z"
    assert got[1]["alerts"][0]["endsAt"].endswith("Z") and got[1]["version"] == "4"
    with pytest.raises(MonitoringError, match="webhook not delivered"):
        await WebhookNotifier([f"http://127.0.164.250:{unused_tcp_port}/hook"], "x",
                              timeout=0.5).notify("firing", [alert])


# --- zone status ----------------------------------------------------------------------------


def _zone(up: dict[str, bool], name: str = "z") -> ZoneState:
    return ZoneState(name, nodes=[NodeState(n, name, n.split("-")[0], "", ok)
                                  for n, ok in up.items()])


@pytest.mark.parametrize(("up", "controller", "status"), [
    ({"gateway": True, "worker-1": True, "worker-2": True, "store": True}, None, "healthy"),
    ({"gateway": False, "worker-1": True, "worker-2": True, "store": True}, None, "unhealthy"),
    ({"gateway": True, "worker-1": False, "worker-2": False, "store": True}, None, "unhealthy"),
    ({"gateway": True, "worker-1": False, "worker-2": True, "store": True}, None, "degraded"),
    ({"gateway": True, "worker-1": True, "worker-2": True, "store": False}, None, "degraded"),
    ({"gateway": True, "worker-1": True, "worker-2": True, "store": True},
     {"status": "unhealthy", "reason": "p95 outlier"}, "degraded"),
])
def test_zone_status(up: dict[str, bool], controller: dict[str, str] | None,
                     status: str) -> None:
    zone = _zone(up)
    zone_status(zone, controller)
    assert zone.status == status
    assert bool(zone.reasons) == (status != "healthy")


# --- the monitor's /metrics -----------------------------------------------------------------


def test_monitor_metrics_parse() -> None:
    snap = Snapshot(time=0.0, monitor="a", zones={"a": _zone({"gateway": False}, "a")},
                    lb=NodeState("lb", "", "lb", "", True), leader="b", term=4,
                    controllers={"a": False, "b": True},
                    lag=[Lag("a", "b", 1.5, 3)], prepared=[Prepared("a", 1, 42.0)],
                    chaos=[{"uid": "u1", "kind": "network-loss"}],
                    latency_ms={"a": {"b": 2.0}}, probe_failures={"a": {"b": 1}},
                    failover_counts={("failover", True): 2}, burn={"short": 0.5})
    zone_status(snap.zones["a"], None)
    metrics = MonitorMetrics()
    metrics.update(series_of(snap))
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for f in families.values() for s in f.samples}
    assert value[("crosszone_zone_up", (("zone", "a"),))] == 0.0
    assert value[("crosszone_healthy_zones", ())] == 0.0
    assert value[("crosszone_leader_term", ())] == 4.0
    assert value[("crosszone_controller_leader", (("zone", "b"),))] == 1.0
    assert value[("crosszone_failover_events_total",
                  (("kind", "failover"), ("success", "true")))] == 2.0
    assert families["crosszone_failover_events"].type == "counter"
    assert value[("crosszone_replication_lag_seconds",
                  (("peer_zone", "b"), ("zone", "a")))] == 1.5
    assert value[("crosszone_prepared_transaction_oldest_age_seconds", (("zone", "a"),))] == 42
    assert value[("crosszone_chaos_experiments_active", ())] == 1.0
    assert value[("crosszone_cross_zone_latency_seconds",
                  (("peer_zone", "b"), ("zone", "a")))] == 0.002


# --- exported files -------------------------------------------------------------------------


def _promtool(*args: str, cwd: Path) -> None:
    if PROMTOOL is None:
        missing(NO_PROMTOOL)
    proc = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    rules = default_rules(MonitoringSettings())
    path = tmp_path / "crosszone-rules.yml"
    path.write_text(rules_yaml(rules), encoding="utf-8")
    _promtool("check", "rules", str(path), cwd=tmp_path)
    doc = yaml.safe_load(path.read_text())
    names = [r["alert"] for r in doc["groups"][0]["rules"]]
    assert {"ZoneUnhealthy", "ZoneDegraded", "NoHealthyZone", "FailoverHappened",
            "ReplicationLagHigh", "InDoubtTransactionStuck", "ErrorBudgetBurnFast"} <= set(names)
    lag = next(r for r in doc["groups"][0]["rules"] if r["alert"] == "ReplicationLagHigh")
    assert lag["expr"] == "crosszone_replication_lag_seconds > 30"
    assert "{{ $labels.peer_zone }}" in lag["annotations"]["summary"]


def test_promtool_accepts_the_scrape_config_and_dashboard_queries(tmp_path: Path) -> None:
    topology = parse_topology(local_topology(164), "test")
    (tmp_path / "crosszone-rules.yml").write_text(
        rules_yaml(default_rules(MonitoringSettings())), encoding="utf-8")
    config = scrape_config(topology, MonitoringSettings())
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    _promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["crosszone-monitor"]["static_configs"][0] == {
        "targets": ["127.0.164.7:9100"], "labels": {"zone": "us-west-2a"}}
    assert jobs["crosszone-lb"]["metrics_path"] == "/lb/metrics"
    # Every Grafana query is valid PromQL: promtool checks them as recording rules.
    recording = {"groups": [{"name": "panels", "rules": [
        {"record": f"crosszone:panel_{i}", "expr": e}
        for i, e in enumerate(panel_expressions())]}]}
    (tmp_path / "panels.yml").write_text(yaml.safe_dump(recording), encoding="utf-8")
    _promtool("check", "rules", "panels.yml", cwd=tmp_path)


def test_grafana_dashboard_is_importable() -> None:
    dash = json.loads(json.dumps(grafana_dashboard()))
    assert dash["uid"] == "crosszone-overview" and dash["id"] is None
    assert dash["__inputs"][0]["name"] == "DS_PROMETHEUS"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    for panel in dash["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"])


def test_export_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    rd = RunDir.at(tmp_path / "run")
    rd.path.mkdir()
    rd.write_topology(parse_topology(local_topology(164), "test"))
    result = runner.invoke(monitoring_app, ["export-rules", "--run-dir", str(rd.path)])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output) == rules_document(default_rules(MonitoringSettings()))
    out = tmp_path / "dash.json"
    result = runner.invoke(monitoring_app, ["export-grafana", "-o", str(out)])
    assert result.exit_code == 0 and json.loads(out.read_text())["panels"]
    result = runner.invoke(monitoring_app, ["export-prometheus", "--run-dir", str(rd.path)])
    assert result.exit_code == 0 and "127.0.165.10:8080" in result.output


# --- crosszone report without a monitor -----------------------------------------------------


def test_report_reads_the_database_when_no_monitor_answers(tmp_path: Path) -> None:
    rd = RunDir.at(tmp_path / "run")
    rd.path.mkdir()
    rd.write_topology(parse_topology(local_topology(164), "test"))  # monitors at .7: not running
    now = time.time()
    with DuckDBMetricsStore(str(duckdb_path(rd.path, "us-west-2b"))) as store:
        store.add_latency([LatencySample(now - 10 * i, "us-west-2a", "us-west-2b", float(v))
                           for i, v in enumerate([4, 1, 3, 2])])
        store.add_failover_events([FailoverRecord(now - 60, "failover", "us-west-2a",
                                                  "us-west-2b", "zone down", 900.0, 100.0,
                                                  True)])
    runner = CliRunner()
    result = runner.invoke(report_app, ["latency", "--json", "--run-dir", str(rd.path)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["source"] == "database" and doc["monitor"] == "us-west-2b"
    assert doc["rows"] == [{"zone": "us-west-2a", "avg_latency": 2.5,
                            "p95_latency": pytest.approx(3.85)}]
    result = runner.invoke(report_app, ["latency", "--run-dir", str(rd.path)])
    assert "us-west-2a" in result.output and "3.85" in result.output
    result = runner.invoke(report_app, ["failovers", "--run-dir", str(rd.path)])
    assert result.exit_code == 0 and "100.0%" in result.output and "1000.00" in result.output
    result = runner.invoke(report_app, ["slo", "--json", "--run-dir", str(rd.path)])
    assert json.loads(result.output)["failovers"][0]["rto_ms"] == 1000.0
    result = runner.invoke(report_app, ["latency", "--run-dir", str(tmp_path / "empty")])
    assert result.exit_code == 1 and "no monitor answered" in result.output
    assert "Traceback" not in result.output
