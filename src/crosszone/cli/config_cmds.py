"""``crosszone validate`` and ``crosszone schema``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from crosszone.cli.common import cli_errors, out, plain
from crosszone.config import Topology, load_topology, topology_schema
from crosszone.config.load import DEFAULT_SOURCE
from crosszone.errors import ConfigError, ConfigProblem


def summary(topology: Topology) -> str:
    """One line saying what a valid topology describes."""
    zones = topology.zone_names()
    groups = {(g.min_size, g.desired_capacity, g.max_size)
              for g in (topology.worker_group_of(z) for z in zones)}
    if len(groups) == 1:
        lo, desired, hi = groups.pop()
        workers = f"{desired} workers per zone (min {lo}, max {hi})"
    else:
        workers = "workers per zone: " + ", ".join(
            f"{z} {topology.worker_group_of(z).desired_capacity}" for z in zones)
    lb = topology.load_balancer
    listeners = ", ".join(f"{lst.protocol} {lst.port}->{lst.target_port}" for lst in lb.listeners)
    return (f"{len(zones)} zones ({', '.join(zones)}), {workers}, "
            f"load balancer {lb.address} [{listeners}], failover {topology.failover.mode} "
            f"({' > '.join(topology.zone_order())}), inference {topology.inference.backend}")


def validate(
    file: Annotated[Path | None, typer.Argument(
        help="topology file (default: the built-in local topology)", dir_okay=False)] = None,
) -> None:
    """Check a topology file and report every problem (exit 2 if there is any)."""
    with cli_errors():
        if file is not None and not file.exists():
            raise ConfigError(str(file), [ConfigProblem("<file>", str(file), "no such file")])
        topology = load_topology(file)
        source = str(file) if file is not None else DEFAULT_SOURCE
        out.print(f"ok: {plain(summary(topology))} — {plain(source)}")


def schema(
    output: Annotated[Path | None, typer.Option("--output", "-o", dir_okay=False,
                                                help="write here instead of stdout")] = None,
) -> None:
    """Print the JSON Schema of the topology file (for editors and CI)."""
    text = json.dumps(topology_schema(), indent=2) + "\n"
    if output is None:
        typer.echo(text, nl=False)
        return
    with cli_errors():
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            problem = ConfigProblem("--output", str(output), f"cannot write: {exc.strerror}")
            raise ConfigError(str(output), [problem]) from None
    typer.echo(f"wrote {output}", err=True)
