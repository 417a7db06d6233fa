"""CLI commands of the control plane, ready to register on the ``crosszone`` typer app.

    from crosszone.control.commands import register
    register(app)   # adds `crosszone shift start|list|cancel` and `crosszone scale`
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from crosszone.cli.common import ConfigOption, RunDirOption, cli_errors, out, plain
from crosszone.config.load import load_topology, localize
from crosszone.config.topology import Topology
from crosszone.control.client import ControlClient

ZoneOption = Annotated[str, typer.Option("--zone", "-z", help="zone to move traffic away from")]


def _topology(config: Path | None, run_dir: Path | None) -> Topology:
    """The running stack's topology when there is one, else the given (or default) file."""
    if config is None:
        from crosszone.runtime import LocalStack

        stack = LocalStack(run_dir)
        if stack.is_running():
            return stack.topology
    return localize(load_topology(config))[0]


def _client(config: Path | None, run_dir: Path | None) -> ControlClient:
    return ControlClient.from_topology(_topology(config, run_dir))


def shift_start(
    zone: ZoneOption,
    expires: Annotated[str, typer.Option("--expires", help="e.g. 30m, 2h, 1d (required)")],
    reason: Annotated[str, typer.Option("--reason", help="why (required, shown in the list)")],
    config: ConfigOption = None,
    run_dir: RunDirOption = None,
) -> None:
    """Move traffic away from a zone until the shift expires (guardrails still apply)."""
    with cli_errors():
        shift = _client(config, run_dir).start_shift(zone, expires, reason)
        out.print(f"started {shift['id']}: traffic moves away from {shift['zone']} for "
                  f"{shift['expires_at'] - shift['started_at']:.0f} s ({plain(shift['reason'])})")


def shift_list(config: ConfigOption = None, run_dir: RunDirOption = None) -> None:
    """List live zonal shifts: operator shifts and autoshifts."""
    with cli_errors():
        shifts = _client(config, run_dir).list_shifts()
        if not shifts:
            out.print("no zonal shifts")
            return
        now = time.time()
        for s in shifts:
            until = ("until the zone recovers" if s["expires_at"] is None
                     else f"{max(0.0, s['expires_at'] - now):.0f} s left")
            out.print(f"{s['id']:<24} {s['kind']:<9} {s['zone']:<14} {until:<24} "
                      f"{plain(s['reason'])}")


def shift_cancel(
    ref: Annotated[str, typer.Argument(help="shift id, or a zone to cancel all its shifts")],
    config: ConfigOption = None,
    run_dir: RunDirOption = None,
) -> None:
    """End a zonal shift now (an autoshift of a still-failing zone starts again)."""
    with cli_errors():
        gone = _client(config, run_dir).cancel_shift(ref)
        out.print("cancelled: " + ", ".join(s["id"] for s in gone))


def scale(
    zone: Annotated[str, typer.Option("--zone", "-z", help="zone whose group to resize")],
    desired: Annotated[int, typer.Option("--desired", help="desired_capacity, within min..max")],
    config: ConfigOption = None,
    run_dir: RunDirOption = None,
) -> None:
    """Set a zone's auto-scaling group desired capacity (now, and as its baseline: load may
    add workers above it, never remove below it)."""
    with cli_errors():
        _client(config, run_dir).scale(zone, desired)
        out.print(f"{zone}: desired capacity {desired}")


def register(app: typer.Typer) -> None:
    """Add ``shift start|list|cancel`` and ``scale`` to the crosszone app."""
    shift = typer.Typer(help="Zonal shifts: move traffic away from a zone until an expiry.",
                        no_args_is_help=True)
    shift.command("start")(shift_start)
    shift.command("list")(shift_list)
    shift.command("cancel")(shift_cancel)
    app.add_typer(shift, name="shift", rich_help_panel="Control plane")
    app.command("scale", rich_help_panel="Control plane")(scale)
