"""``crosszone rpo``: the RPO drill (``crosszone.tools.rpo``) as a command.

Register in ``cli/main.py``: ``app.command(rich_help_panel="Faults")(rpo_cmd.rpo)``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from crosszone.cli.common import ConfigOption, cli_errors, out, plain


def rpo(
    run_dir: Annotated[Path | None, typer.Option(
        "--run-dir", help="drill a running stack (default: start one, drill it, stop it)",
        file_okay=False)] = None,
    config: ConfigOption = None,
    conversations: Annotated[str | None, typer.Option(
        help="sync or async: conversations.consistency of the stack started here")] = None,
    seconds: Annotated[float, typer.Option(help="load before the kill (it lands in the "
                                           "second half)")] = 4.0,
    down: Annotated[float, typer.Option(help="load on the survivors while the zone is down")
                    ] = 2.0,
    concurrency: Annotated[int, typer.Option(help="concurrent clients")] = 8,
    zone: Annotated[str | None, typer.Option(help="zone to kill (default: random)")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of the random choices")] = None,
    first_octet: Annotated[int, typer.Option(help="stack started here: zones on "
                                             "127.0.N..N+2.0/24")] = 176,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Write under load, kill a zone at a random moment, heal, and count lost writes."""
    from crosszone.tools.rpo import DrillOptions, drill

    if conversations not in (None, "sync", "async"):
        raise typer.BadParameter("must be sync or async", param_hint="--conversations")
    with cli_errors():
        report = drill(run_dir, config, conversations,
                       DrillOptions(seconds, down, concurrency, zone, seed), first_octet)
    if as_json:
        out.print(json.dumps(asdict(report), indent=2), markup=False)
    else:
        for line in report.lines():
            out.print(plain(line))
    if not report.ok:
        raise typer.Exit(3)
