"""``crosszone chaos``: chaosblade's command shapes, so the seed's experiments carry over.

    crosszone chaos create network loss --zone us-west-2a --percent 100 --timeout 300
    crosszone chaos create cpu fullload --zone us-west-2b --workers 4 --timeout 180
    crosszone chaos status [UID]
    crosszone chaos destroy UID

Like ``blade``, every command prints one JSON object: ``{"code": 200, "success": true,
"result": ...}``. Errors print a message on stderr instead (never a traceback) and exit 2 for
what the user must change (privileges, zone names, arguments) or 1 for the rest.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from crosszone.chaos.api import Chaos
from crosszone.chaos.experiments import Experiment
from crosszone.chaos.nft import require_root
from crosszone.errors import ChaosPermissionError, ConfigError, CrosszoneError, InvalidExperiment

EXIT_ERROR, EXIT_USAGE = 1, 2

chaos_app = typer.Typer(name="chaos", no_args_is_help=True, add_completion=False,
                        pretty_exceptions_enable=False,
                        help="Chaos experiments (chaosblade-shaped): create, status, destroy.")
create_app = typer.Typer(no_args_is_help=True, help="Create a chaos experiment; prints its UID.")
network_app = typer.Typer(no_args_is_help=True, help="Network faults (nftables; needs root).")
cpu_app = typer.Typer(no_args_is_help=True, help="CPU faults (cgroup cpu controller; root).")
process_app = typer.Typer(no_args_is_help=True, help="Process faults (through the supervisor).")
zone_app = typer.Typer(no_args_is_help=True, help="Whole-zone faults.")
chaos_app.add_typer(create_app, name="create")
for _name, _sub in (("network", network_app), ("cpu", cpu_app), ("process", process_app),
                    ("zone", zone_app)):
    create_app.add_typer(_sub, name=_name)

RunDir = Annotated[Path | None, typer.Option(
    "--run-dir", envvar="CROSSZONE_RUN_DIR", file_okay=False,
    help="run directory (default: $CROSSZONE_RUN_DIR or ./.crosszone)")]
Config = Annotated[Path | None, typer.Option(
    "--config", "-c", dir_okay=False,
    help="topology file (default: the running stack's, else the built-in one)")]
Zone = Annotated[str, typer.Option("--zone", help="zone name, e.g. us-west-2a")]
Timeout = Annotated[float | None, typer.Option(
    "--timeout", help="destroy the experiment after this many seconds")]


def _emit(result: Any) -> None:
    typer.echo(json.dumps({"code": 200, "success": True, "result": result}, indent=None))


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except (ChaosPermissionError, InvalidExperiment, ConfigError) as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    except CrosszoneError as exc:
        raise _fail(str(exc), EXIT_ERROR) from None


def _chaos(run_dir: Path | None, config: Path | None = None) -> Chaos:
    return Chaos(run_dir if run_dir is not None else Path.cwd() / ".crosszone", config=config)


def _create(run_dir: Path | None, config: Path | None, make: Callable[[Chaos], Experiment],
            needs_root: str | None = None) -> None:
    with _errors():
        if needs_root is not None:
            require_root(needs_root)
        _emit(make(_chaos(run_dir, config)).uid)


# --- network -------------------------------------------------------------------------------------


@network_app.command("loss")
def network_loss(
    zone: Zone,
    percent: Annotated[int, typer.Option(help="share of packets dropped; 100 = blackhole")] = 100,
    peer_zone: Annotated[str | None, typer.Option(help="only traffic with this zone")] = None,
    timeout: Timeout = None, run_dir: RunDir = None, config: Config = None,
) -> None:
    """Drop packets to and from a zone (100 %: they vanish; no reset)."""
    _create(run_dir, config, lambda c: c.network_loss(zone, percent, peer_zone, timeout),
            "network faults need root (nftables)")


@network_app.command("partition")
def network_partition(
    zones: Annotated[str, typer.Option(help="comma-separated zones to cut off")],
    from_zones: Annotated[str | None, typer.Option(
        help="comma-separated zones they are cut from (default: all the others)")] = None,
    include_clients: Annotated[bool, typer.Option(
        "--include-clients/--no-include-clients",
        help="also cut them from clients and the load balancer")] = True,
    timeout: Timeout = None, run_dir: RunDir = None, config: Config = None,
) -> None:
    """Cut zones off from the other zones (and from clients and the LB unless told otherwise)."""
    side = [z.strip() for z in zones.split(",") if z.strip()]
    others = [z.strip() for z in from_zones.split(",") if z.strip()] if from_zones else None
    _create(run_dir, config,
            lambda c: c.network_partition(side, others, include_clients, timeout),
            "network faults need root (nftables)")


@network_app.command("delay")
def network_delay(
    zone: Zone,
    time: Annotated[float, typer.Option("--time", help="delay per packet, ms")],
    offset: Annotated[float, typer.Option(help="uniform jitter, ± ms")] = 0.0,
    peer_zone: Annotated[str | None, typer.Option(help="only traffic with this zone")] = None,
    timeout: Timeout = None, run_dir: RunDir = None, config: Config = None,
) -> None:
    """Delay every packet to and from a zone by TIME ± OFFSET ms."""
    _create(run_dir, config, lambda c: c.network_delay(zone, time, offset, peer_zone, timeout),
            "network faults need root (nftables)")


# --- cpu, process, zone --------------------------------------------------------------------------


@cpu_app.command("fullload")
def cpu_fullload(
    zone: Zone,
    workers: Annotated[int, typer.Option("--workers", "--cpu-count",
                                         help="burner processes (CPUs to load)")] = 1,
    cpu_percent: Annotated[int, typer.Option(help="load per burner, %")] = 100,
    timeout: Timeout = None, run_dir: RunDir = None, config: Config = None,
) -> None:
    """Burn CPU inside the zone's processes' cgroup, capped at WORKERS x CPU_PERCENT %."""
    _create(run_dir, config, lambda c: c.cpu_fullload(zone, workers, cpu_percent, timeout),
            "cpu faults need root (cgroup cpu controller)")


Component = Annotated[str, typer.Option(
    help="worker | gateway | controller | store | lb")]
OptionalZone = Annotated[str | None, typer.Option("--zone", help="zone (not needed for lb)")]
Count = Annotated[int | None, typer.Option(help="how many processes (default: all matching)")]


@process_app.command("kill")
def process_kill(
    component: Component, zone: OptionalZone = None, count: Count = None,
    hold: Annotated[bool, typer.Option(
        "--hold/--no-hold", help="keep them down until destroyed (else the supervisor "
                                 "restarts them)")] = True,
    timeout: Timeout = None, run_dir: RunDir = None, config: Config = None,
) -> None:
    """SIGKILL a zone's processes of one component."""
    _create(run_dir, config,
            lambda c: c.process_fault(zone, component, "KILL", count, hold, timeout))


@process_app.command("stop")
def process_stop(
    component: Component, zone: OptionalZone = None, count: Count = None,
    timeout: Timeout = None, run_dir: RunDir = None, config: Config = None,
) -> None:
    """SIGSTOP a zone's processes of one component until destroyed (SIGCONT)."""
    _create(run_dir, config,
            lambda c: c.process_fault(zone, component, "STOP", count, True, timeout))


@zone_app.command("down")
def zone_down(zone: Zone, timeout: Timeout = None, run_dir: RunDir = None,
              config: Config = None) -> None:
    """Kill every process of a zone and keep them down until destroyed."""
    _create(run_dir, config, lambda c: c.zone_down(zone, timeout))


# --- status, destroy -----------------------------------------------------------------------------


def _view(experiment: Experiment) -> dict[str, Any]:
    data = asdict(experiment)
    data.pop("state", None)
    data["spec"] = {k: v for k, v in experiment.spec.items() if k not in ("log", "run_dir")}
    return data


@chaos_app.command("status")
def status(
    uid: Annotated[str | None, typer.Argument(help="one experiment (default: all)")] = None,
    run_dir: RunDir = None,
) -> None:
    """Show experiments (one, or all of this run directory)."""
    with _errors():
        experiments = _chaos(run_dir).status(uid)
        _emit(_view(experiments[0]) if uid is not None else [_view(e) for e in experiments])


@chaos_app.command("destroy")
def destroy(
    uid: Annotated[str, typer.Argument(help="the experiment's UID")],
    run_dir: RunDir = None,
) -> None:
    """Remove an experiment's fault, leaving no rule, process or cgroup behind."""
    with _errors():
        experiment = _chaos(run_dir).destroy(uid)
        _emit({"uid": experiment.uid, "status": experiment.status,
               "description": experiment.description})
