"""``crosszone run`` (one component in the foreground) and ``crosszone demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crosszone.cli.common import ConfigOption, RunDirOption, cli_errors
from crosszone.config import load_topology
from crosszone.runtime import default_run_dir


def run(
    component: Annotated[str, typer.Argument(help="worker | gateway | lb")],
    zone: Annotated[str | None, typer.Option("--zone", "-z",
                                             help="the node's zone (not for lb)")] = None,
    index: Annotated[int, typer.Option("--index", "-i", help="worker number, from 1")] = 1,
    config: ConfigOption = None,
    run_dir: RunDirOption = None,
) -> None:
    """Run one component in the foreground, as on its own host; SIGTERM drains and stops it."""
    from crosszone.runtime.serve import resolve_node, run_component

    with cli_errors():
        topology = load_topology(config)
        node = resolve_node(topology, component, zone, index)
        run_component(topology, node, (run_dir or default_run_dir()).absolute())


def demo(
    config: ConfigOption = None,
    run_dir: RunDirOption = None,
    duration: Annotated[float, typer.Option(help="seconds of load")] = 30.0,
    concurrency: Annotated[int, typer.Option(help="concurrent clients")] = 8,
    kill_zone: Annotated[str | None, typer.Option(
        help="zone to fail halfway through (default: the primary)")] = None,
) -> None:
    """Start a stack, drive load through the LB, fail a zone, and show that service continued."""
    from crosszone.cli.demo import run_demo

    with cli_errors():
        code = run_demo(config, Path(run_dir or default_run_dir()).absolute(), duration,
                        concurrency, kill_zone)
    raise typer.Exit(code)
