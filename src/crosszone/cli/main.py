"""The ``crosszone`` command: typer app assembled from the command modules."""

from __future__ import annotations

from typing import Annotated

import typer

from crosszone import __version__
from crosszone.chaos.cli import chaos_app
from crosszone.cli import config_cmds, fault_cmds, rpo_cmd, run_cmds, stack_cmds
from crosszone.cli.common import EXIT_CONFIG, EXIT_ERROR, err, plain
from crosszone.cli.report_cmds import monitoring_app, report_app
from crosszone.control.commands import register as register_control
from crosszone.drills.cli import drill_app
from crosszone.errors import ConfigError, CrosszoneError

app = typer.Typer(
    name="crosszone",
    help="Keep an OpenAI/DeepSeek-compatible LLM API serving across availability zones.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command(rich_help_panel="Topology")(config_cmds.validate)
app.command(rich_help_panel="Topology")(config_cmds.schema)
app.command(rich_help_panel="Local stack")(stack_cmds.up)
app.command(rich_help_panel="Local stack")(stack_cmds.down)
app.command(rich_help_panel="Local stack")(stack_cmds.status)
app.command(rich_help_panel="Local stack")(run_cmds.demo)
app.command(rich_help_panel="Faults")(fault_cmds.hold)
app.command(rich_help_panel="Faults")(fault_cmds.release)
app.command("signal", rich_help_panel="Faults")(fault_cmds.signal)
app.command(rich_help_panel="Deployment")(run_cmds.run)
app.add_typer(chaos_app, name="chaos", rich_help_panel="Faults")
register_control(app)
app.add_typer(drill_app, name="drill", rich_help_panel="Faults")
app.command(rich_help_panel="Faults")(rpo_cmd.rpo)
app.add_typer(report_app, name="report", rich_help_panel="Monitoring")
app.add_typer(monitoring_app, name="monitoring", rich_help_panel="Monitoring")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"crosszone {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """Keep an OpenAI/DeepSeek-compatible LLM API serving across availability zones."""


def main() -> None:
    """Console-script entry point; commands already turn crosszone errors into exit codes."""
    try:
        app()
    except ConfigError as exc:  # raised outside a command (should not happen): still no traceback
        err.print(f"error: {plain(exc)}")
        raise SystemExit(EXIT_CONFIG) from None
    except CrosszoneError as exc:
        err.print(f"error: {plain(exc)}")
        raise SystemExit(EXIT_ERROR) from None
