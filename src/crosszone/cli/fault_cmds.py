"""``crosszone hold``, ``release`` and ``signal``: fail and restore parts of a running stack."""

from __future__ import annotations

from typing import Annotated

import typer

from crosszone.cli.common import RunDirOption, cli_errors, out
from crosszone.runtime import LocalStack

ZoneArg = Annotated[str | None, typer.Argument(help="zone (omit to select by component only)")]
ComponentOption = Annotated[str | None, typer.Option("--component",
                                                     help="worker | gateway | lb")]
IndexOption = Annotated[int | None, typer.Option("--index", help="worker number")]


def hold(
    zone: ZoneArg = None,
    component: ComponentOption = None,
    index: IndexOption = None,
    signal: Annotated[str, typer.Option(help="KILL, TERM, or STOP (freeze)")] = "KILL",
    run_dir: RunDirOption = None,
) -> None:
    """Signal the matching processes and keep them down until released (a zone outage)."""
    with cli_errors():
        names = LocalStack(run_dir).hold(zone, component, index, signal.upper())
        out.print(f"held ({signal.upper()}): {', '.join(names)}")


def release(
    zone: ZoneArg = None,
    component: ComponentOption = None,
    index: IndexOption = None,
    run_dir: RunDirOption = None,
) -> None:
    """Bring held processes back (resume the frozen, restart the killed)."""
    with cli_errors():
        names = LocalStack(run_dir).release(zone, component, index)
        out.print(f"released: {', '.join(names)}")


def signal(
    zone: ZoneArg = None,
    component: ComponentOption = None,
    index: IndexOption = None,
    signal: Annotated[str, typer.Option("--signal", help="KILL, TERM, INT, STOP, CONT, HUP")
                      ] = "KILL",
    run_dir: RunDirOption = None,
) -> None:
    """Send a signal without holding: killed processes are restarted per the policy."""
    with cli_errors():
        names = LocalStack(run_dir).signal(zone, component, index, signal.upper())
        out.print(f"sent SIG{signal.upper()} to: {', '.join(names)}")
