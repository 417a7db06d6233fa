"""``crosszone report latency|failovers|slo`` and ``crosszone monitoring export-*``.

Reports come from a running monitor (the first zone's that answers, or ``--url``); when none
answers, from the metrics database itself (the newest DuckDB file of the run directory, opened
read-only, or the configured PostgreSQL database).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from crosszone.cli.common import ConfigOption, RunDirOption, cli_errors, out, plain
from crosszone.config import Topology, load_topology
from crosszone.errors import ConfigError, ConfigProblem, MetricsStoreError, MonitorUnavailable
from crosszone.runtime.rundir import RunDir

report_app = typer.Typer(help="The seed's monitoring queries and the SLO, from the monitors.",
                         no_args_is_help=True)
monitoring_app = typer.Typer(help="Export the alert rules, a Prometheus scrape configuration "
                                  "and a Grafana dashboard.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
UrlOption = Annotated[str | None, typer.Option("--url", help="ask this monitor "
                                                              "(http://host:port)")]
OutputOption = Annotated[Path | None, typer.Option("--output", "-o", dir_okay=False,
                                                   help="write here instead of stdout")]
ASK_TIMEOUT_SECONDS = 2.0


def _topology(config: Path | None, run_dir: Path | None) -> tuple[Topology, RunDir]:
    rd = RunDir.at(run_dir)
    if config is not None:
        if not config.exists():
            raise ConfigError(str(config), [ConfigProblem("--config", str(config),
                                                          "no such file")])
        return load_topology(config), rd
    if rd.topology_file.exists():
        return rd.load_topology(), rd
    return load_topology(None), rd


def fetch_report(kind: str, topology: Topology, run_dir: Path, url: str | None = None,
                 days: float = 30.0) -> dict[str, Any]:
    """The report from a monitor, else from the metrics database; MonitorUnavailable if
    neither can be had."""
    from crosszone.monitoring.addresses import monitor_nodes
    from crosszone.monitoring.settings import monitoring_settings

    settings = monitoring_settings(topology)
    urls = [url] if url else [n.url for n in monitor_nodes(topology, settings)]
    tried = []
    for base in urls:
        try:
            resp = httpx.get(f"{base.rstrip('/')}/api/report/{kind}", params={"days": days},
                             timeout=ASK_TIMEOUT_SECONDS)
        except httpx.HTTPError as exc:
            tried.append(f"{base} ({type(exc).__name__})")
            continue
        if resp.status_code == 200:
            doc: dict[str, Any] = resp.json()
            return doc
        tried.append(f"{base} (HTTP {resp.status_code})")
    if url:
        raise MonitorUnavailable(f"the monitor at {url} did not answer: {', '.join(tried)}")
    try:
        return _from_database(kind, topology, run_dir, days)
    except MetricsStoreError as exc:
        raise MonitorUnavailable(f"no monitor answered ({', '.join(tried)}) and the metrics "
                                 f"database could not be read: {exc}") from exc


def _from_database(kind: str, topology: Topology, run_dir: Path,
                   days: float) -> dict[str, Any]:
    from crosszone.monitoring.monitor import run_report
    from crosszone.monitoring.settings import duckdb_path, monitoring_settings
    from crosszone.monitoring.store import make_metrics_store

    settings = monitoring_settings(topology)
    zone: str | None = None
    if settings.backend == "duckdb":
        found = [(duckdb_path(run_dir, z).stat().st_mtime, z) for z in topology.zone_names()
                 if duckdb_path(run_dir, z).exists()]
        if not found:
            raise MetricsStoreError(f"no metrics database in {run_dir / 'monitoring'}")
        zone = max(found)[1]
    store = make_metrics_store(settings, zone or topology.zone_names()[0], run_dir,
                               read_only=True)
    try:
        doc = asyncio.run(run_report(store, settings, kind, days, zone))
    finally:
        store.close()
    return {"monitor": zone, "source": "database", **doc}


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def _print_latency(doc: dict[str, Any]) -> None:
    table = Table(title=f"cross-zone latency, last {doc.get('window', '1 hour')}")
    for column in ("zone", "avg_latency (ms)", "p95_latency (ms)"):
        table.add_column(column, justify="left" if column == "zone" else "right")
    for row in doc["rows"]:
        table.add_row(plain(row["zone"]), _ms(row["avg_latency"]), _ms(row["p95_latency"]))
    out.print(table if doc["rows"] else "no cross-zone latency samples in the last hour")


def _print_failovers(doc: dict[str, Any]) -> None:
    rate = doc.get("success_rate")
    out.print(f"failover success rate, last {doc.get('window', '7 days')}: "
              + ("no failover events" if rate is None else f"{rate:.1f}%"))
    if doc["events"]:
        table = Table()
        for column in ("time", "kind", "from", "to", "success", "RTO (ms)", "reason"):
            table.add_column(column)
        for e in doc["events"]:
            table.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"])),
                          plain(e["kind"]), plain(e["from_zone"]), plain(e["to_zone"]),
                          "yes" if e["success"] else "NO", _ms(e["rto_ms"]), plain(e["reason"]))
        out.print(table)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.3f}%"


def _print_slo(doc: dict[str, Any]) -> None:
    days = doc["window_seconds"] / 86400
    out.print(f"SLO {_pct(doc['target'])} over {days:g} day(s)")
    out.print(f"  availability by requests: {_pct(doc['availability_by_requests'])} "
              f"({doc['errors']:g} errors in {doc['requests']:g} requests)")
    out.print(f"  availability by time:     {_pct(doc['availability_by_time'])}")
    out.print(f"  error budget spent:       {_pct(doc['error_budget_spent'])}, "
              f"remaining {_pct(doc['error_budget_remaining'])}")
    burn = ", ".join(f"{w} window {'-' if v is None else f'{v:.2f}x'}"
                     for w, v in doc["burn_rates"].items())
    out.print(f"  burn rate:                {burn}")
    for f in doc["failovers"]:
        out.print(f"  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(f['time']))} "
                  f"{plain(f['kind'])} {plain(f['from_zone'])} -> {plain(f['to_zone'])}: "
                  f"RTO {_ms(f['rto_ms'])} ms (detection {_ms(f['detection_ms'])}, "
                  f"action {_ms(f['action_ms'])})" + ("" if f["success"] else " FAILED"))


def _report(kind: str, as_json: bool, url: str | None, config: Path | None,
            run_dir: Path | None, days: float = 30.0) -> None:
    with cli_errors():
        topology, rd = _topology(config, run_dir)
        doc = fetch_report(kind, topology, rd.path, url, days)
        if as_json:
            typer.echo(json.dumps(doc, indent=2))
            return
        {"latency": _print_latency, "failovers": _print_failovers, "slo": _print_slo}[kind](doc)


@report_app.command()
def latency(as_json: JsonOption = False, url: UrlOption = None, config: ConfigOption = None,
            run_dir: RunDirOption = None) -> None:
    """Average and p95 cross-zone latency per zone over the last hour (the seed's query)."""
    _report("latency", as_json, url, config, run_dir)


@report_app.command()
def failovers(as_json: JsonOption = False, url: UrlOption = None, config: ConfigOption = None,
              run_dir: RunDirOption = None) -> None:
    """Failover success rate over the last 7 days (the seed's query), and those events."""
    _report("failovers", as_json, url, config, run_dir)


@report_app.command()
def slo(as_json: JsonOption = False, url: UrlOption = None,
        days: Annotated[float, typer.Option(help="window in days", min=0.001)] = 30.0,
        config: ConfigOption = None, run_dir: RunDirOption = None) -> None:
    """Availability, error budget and burn rates, and the RTO of each failover."""
    _report("slo", as_json, url, config, run_dir, days)


def _write(text: str, output: Path | None) -> None:
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError("--output", [ConfigProblem("--output", str(output),
                                                     f"cannot write: {exc.strerror}")]) from exc
    out.print(f"wrote {plain(output)}")


@monitoring_app.command("export-rules")
def export_rules(output: OutputOption = None, config: ConfigOption = None,
                 run_dir: RunDirOption = None) -> None:
    """The alert rules as a Prometheus rules file (`promtool check rules` accepts it)."""
    from crosszone.monitoring.export import rules_yaml
    from crosszone.monitoring.rules import default_rules
    from crosszone.monitoring.settings import monitoring_settings

    with cli_errors():
        topology, _ = _topology(config, run_dir)
        _write(rules_yaml(default_rules(monitoring_settings(topology))), output)


@monitoring_app.command("export-grafana")
def export_grafana(output: OutputOption = None) -> None:
    """A Grafana dashboard (JSON, asks for its Prometheus data source on import)."""
    from crosszone.monitoring.export import grafana_dashboard

    with cli_errors():
        _write(json.dumps(grafana_dashboard(), indent=2) + "\n", output)


@monitoring_app.command("export-prometheus")
def export_prometheus(output: OutputOption = None,
                      rules_file: Annotated[str, typer.Option(
                          help="rules file the configuration loads")] = "crosszone-rules.yml",
                      config: ConfigOption = None, run_dir: RunDirOption = None) -> None:
    """A prometheus.yml scraping every component, each target labelled with its zone."""
    import yaml

    from crosszone.monitoring.export import scrape_config
    from crosszone.monitoring.settings import monitoring_settings

    with cli_errors():
        topology, _ = _topology(config, run_dir)
        doc = scrape_config(topology, monitoring_settings(topology), rules_file)
        _write(yaml.safe_dump(doc, sort_keys=False), output)
