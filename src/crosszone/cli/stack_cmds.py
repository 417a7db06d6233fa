"""``crosszone up``, ``down`` and ``status``: the local stack's lifecycle."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from crosszone.cli.common import (
    EXIT_ERROR,
    ConfigOption,
    RunDirOption,
    cli_errors,
    err,
    out,
    plain,
)
from crosszone.config import Placement, load_topology, localize
from crosszone.runtime import LocalStack, NothingRunningError, StartProgress


def up(
    config: ConfigOption = None,
    run_dir: RunDirOption = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for every node to be healthy")
                       ] = 60.0,
) -> None:
    """Start every zone's workers and gateway and the load balancer on this machine."""
    with cli_errors():
        topology, notes = localize(load_topology(config))
        for note in notes:
            err.print(f"note: {plain(note)}")
        stack = LocalStack(run_dir)
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task("starting the supervisor", total=None)

            def show(p: StartProgress) -> None:
                waiting = ", ".join(p.waiting[:3]) + (" ..." if len(p.waiting) > 3 else "")
                text = f"waiting for {waiting}" if p.waiting else "all healthy"
                bar.update(task, total=p.total, completed=p.healthy, description=plain(text))

            stack.up(topology, timeout=timeout, progress=show)
        nodes = stack.topology.zone_names()
        out.print(f"crosszone is up: {len(nodes)} zones ({', '.join(nodes)}), "
                  f"run dir {plain(stack.run_dir.path)}")
        urls = Placement(stack.topology).lb_urls()
        for protocol, url in urls.items():
            out.print(f"  {protocol:<8} {url}")
        out.print(f"  {'API key':<8} {stack.api_key}")
        if stack.ca_cert is not None:
            out.print(f"  {'CA cert':<8} {plain(stack.ca_cert)}")
        url = urls.get("http") or next(iter(urls.values()))
        out.print(f"try: curl -s {url}/models -H 'Authorization: Bearer {stack.api_key}'"
                  + (f" --cacert {plain(stack.ca_cert)}" if url.startswith("https") and
                     stack.ca_cert else ""))


def down(run_dir: RunDirOption = None) -> None:
    """Stop the supervisor and every process of the stack."""
    with cli_errors():
        stack = LocalStack(run_dir)
        stopped = stack.down()
        if not stopped:
            out.print(f"nothing running in {plain(stack.run_dir.path)}")
            return
        out.print(f"stopped {len(stopped)} processes in {plain(stack.run_dir.path)}:")
        for item in stopped:
            out.print(f"  {plain(item)}")


def status(
    run_dir: RunDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Every process with its state and health, per-zone health, URLs and credentials."""
    with cli_errors():
        stack = LocalStack(run_dir)
        try:
            report = stack.status()
        except NothingRunningError as exc:
            if as_json:
                typer.echo(json.dumps({"run_dir": str(stack.run_dir.path), "running": False}))
            err.print(plain(exc))
            raise typer.Exit(EXIT_ERROR) from None
        if as_json:
            typer.echo(json.dumps(report, indent=2))
            return
        render_status(report)


def render_status(report: dict[str, Any]) -> None:
    if not out.is_terminal:  # piped: no 80-column default that would cut addresses
        out.width = 160
    table = Table(title=f"crosszone stack in {plain(report['run_dir'])}", title_justify="left")
    for column in ("zone", "component", "address", "pid", "state", "restarts", "health"):
        table.add_column(column, justify="right" if column in ("pid", "restarts") else "left")
    for p in report["processes"]:
        component = p["component"] + (f"-{p['index']}" if p["component"] == "worker" else "")
        health = p["health"]
        colour = "green" if p["healthy"] else "red"
        state = p["state"] + (" (frozen)" if p.get("frozen") else "")
        table.add_row(p["zone"] or "-", component, p["address"], str(p["pid"] or "-"), state,
                      str(p["restarts"]), f"[{colour}]{plain(health)}[/]")
    out.print(table)
    for zone, z in report["zones"].items():
        verdict = "[green]healthy[/]" if z["healthy"] else "[red]unhealthy[/]"
        gateway = "up" if z["gateway"] else "down"
        group = report.get("groups", {}).get(zone)
        sizing = (f", group desired {group['desired']} of {group['min_size']}.."
                  f"{group['max_size']} ({group['health_check_type']})" if group else "")
        out.print(f"zone {zone}: {verdict} (gateway {gateway}, "
                  f"{z['workers_healthy']}/{z['workers']} workers{sizing})")
    lb = "[green]healthy[/]" if report["lb"]["healthy"] else "[red]unhealthy[/]"
    out.print(f"load balancer: {lb}")
    for protocol, url in report["urls"].items():
        out.print(f"  {protocol:<8} {url}")
    out.print(f"  {'API key':<8} {report['api_key']}")
    if report.get("ca_cert"):
        out.print(f"  {'CA cert':<8} {plain(report['ca_cert'])}")
