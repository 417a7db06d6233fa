"""``crosszone drill``: run a scenario and judge it, or list the scenario library.

    crosszone drill list [DIR]                      # default ./drills
    crosszone drill run drills/zone-killed.yaml     # brings the stack up and down
    crosszone drill run zone-killed --short --attach --run-dir .crosszone

Exit codes of ``run``: 0 every SLO held; 1 an SLO failed; 2 the scenario (or command line) is
invalid; 3 the drill could not run (no stack, a fault could not be created, no root).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from crosszone.drills.scenario import Scenario, has_short, load_scenario
from crosszone.errors import CrosszoneError, ScenarioError
from crosszone.runtime.rundir import default_run_dir

EXIT_SLO, EXIT_SCENARIO, EXIT_DRILL = 1, 2, 3
LIBRARY = Path("drills")

drill_app = typer.Typer(name="drill", no_args_is_help=True, add_completion=False,
                        pretty_exceptions_enable=False,
                        help="DR drills: run a scenario's workload and faults, judge its SLOs.")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def resolve_file(file: str, library: Path = LIBRARY) -> Path:
    """A path, or the name of a scenario in the library (``zone-killed``)."""
    path = Path(file)
    if path.exists():
        return path
    for candidate in (library / file, library / f"{file}.yaml"):
        if candidate.exists():
            return candidate
    return path  # load_scenario reports it cannot be read


@drill_app.command("run")
def run(
    file: Annotated[str, typer.Argument(help="scenario file, or a name in ./drills")],
    run_dir: Annotated[Path | None, typer.Option(
        "--run-dir", envvar="CROSSZONE_RUN_DIR", file_okay=False,
        help="run directory (default: $CROSSZONE_RUN_DIR or ./.crosszone)")] = None,
    attach: Annotated[bool, typer.Option(
        "--attach", help="drill the stack already running in the run directory")] = False,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", file_okay=False,
        help="report directory (default: <run dir>/drills/<name>-<timestamp>)")] = None,
    short: Annotated[bool, typer.Option(
        "--short", help="the scenario's short variant (tens of seconds, for CI)")] = False,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", dir_okay=False,
        help="topology file replacing the scenario's (when the drill starts the stack)")] = None,
) -> None:
    """Run a drill and judge its SLOs; exit 0 only if every SLO held."""
    from crosszone.drills.runner import run_drill  # the runner pulls in the whole stack

    try:
        scenario = load_scenario(resolve_file(file), short=short)
        result = run_drill(scenario, run_dir or default_run_dir(), attach=attach, out=out_dir,
                           short=short, topology=config,
                           progress=lambda m: err.print(f"[dim]drill:[/] {m}"))
    except ScenarioError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_SCENARIO) from None
    except CrosszoneError as exc:
        err.print(f"[bold red]error:[/] the drill could not run: {escape(str(exc))}")
        raise typer.Exit(EXIT_DRILL) from None
    table = Table(title=f"drill {scenario.name}: {'PASSED' if result.passed else 'FAILED'}")
    for column in ("check", "result", "value", "budget"):
        table.add_column(column)
    colors = {"passed": "green", "failed": "bold red", "not applicable": "dim"}
    for v in result.verdicts:
        table.add_row(escape(v.name), f"[{colors[v.status]}]{v.status}[/]", escape(v.value),
                      escape(v.budget))
    out.print(table)
    for v in result.verdicts:
        if v.status == "failed" and v.detail:
            out.print(f"[bold red]{escape(v.name)}:[/] {escape(v.detail)}")
    out.print(f"report: {result.out_dir / 'report.md'}")
    if not result.passed:
        raise typer.Exit(EXIT_SLO)


def _faults(s: Scenario) -> str:
    return "; ".join(f"{f.kind} {f.zone or ','.join(f.zones or []) or f.component or ''}"
                     f"@{f.at:g}s/{f.duration:g}s".replace("  ", " ") for f in s.faults)


def _first_sentence(text: str, limit: int = 70) -> str:
    sentence = " ".join(text.split()).split(". ")[0]
    return sentence if len(sentence) <= limit else sentence[: limit - 1] + "…"


@drill_app.command("list")
def list_scenarios(
    directory: Annotated[Path, typer.Argument(help="where the scenarios are", file_okay=False)
                         ] = LIBRARY,
) -> None:
    """List the scenarios in a directory with their faults and durations (full and short)."""
    files = sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml"))
    if not files:
        err.print(f"no scenario (*.yaml) in {directory}")
        raise typer.Exit(EXIT_SCENARIO)
    table = Table()
    for column in ("scenario", "faults (kind zone @start/duration)", "full", "short",
                   "description"):
        table.add_column(column)
    broken = 0
    for path in files:
        try:
            full = load_scenario(path)
            short = load_scenario(path, short=True) if has_short(path) else None
        except ScenarioError as exc:
            broken += 1
            table.add_row(path.stem, f"[red]invalid: {escape(str(exc))}[/]", "", "", "")
            continue
        table.add_row(full.name, escape(_faults(full)), f"{full.duration:g}s",
                      f"{short.duration:g}s" if short else "-",
                      escape(_first_sentence(full.description)))
    out.print(table)
    if broken:
        raise typer.Exit(EXIT_SCENARIO)
