"""Every scenario of the library (``drills/*.yaml``), short variant, against a real stack with real
chaos, judged by its own SLOs. The stacks run the built-in topology moved onto this file's
addresses: zones 127.0.150-152.0/24 (LB 127.0.0.150, ports 18150/18590), shared by the scenarios
that leave the stack as they found it (each drill attaches to it); zones 127.0.154-156.0/24 (LB
127.0.0.154, ports 18154/18594) for the two that disturb it most (two zones down, a restart of
every component), each of which brings its own stack up and down (through the CLI for one), so
the orphan check after ``down`` runs too.

A scenario that fails only because of a product gap recorded in KNOWN_GAPS is reported as an
expected failure naming the gap and what the drill measured; the SLOs themselves are never
relaxed. Any other failed SLO fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from crosszone.config.load import default_document_at
from crosszone.drills import load_scenario, run_drill
from crosszone.drills.cli import drill_app
from crosszone.runtime import LocalStack
from needs import missing
from stackutil import start_stack, stop_stack, write_topology_file

pytestmark = pytest.mark.integration

LIBRARY = Path(__file__).resolve().parent.parent / "drills"
DESTRUCTIVE = ("two-zones-down", "rolling-restart")
NEEDS_NFT = shutil.which("nft") is not None or os.path.exists("/usr/sbin/nft")

# Product gaps found by these drills (see each reason). A scenario listed here may fail exactly
# these SLOs and nothing else; it then reports as xfail with what was measured. None is open:
# the drills' earlier findings (strong writes blocked while a zone was out of the 2PC
# membership, the LB readmitting a zone before it could serve, a CPU-starved zone never routed
# around, LB restarts refusing connections) are fixed and each scenario must now pass.
KNOWN_GAPS: dict[str, tuple[str, set[str]]] = {}


def _scenarios(destructive: bool) -> list[str]:
    names = sorted(p.stem for p in LIBRARY.glob("*.yaml"))
    return [n for n in names if (n in DESTRUCTIVE) == destructive]


def drill_topology(first: int) -> dict[str, Any]:
    """The built-in topology on 127.0.<first..first+2>.0/24, LB 127.0.0.<first>."""
    return default_document_at(first)


@pytest.fixture(scope="class")
def shared_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> LocalStack:
    # stopped (by pid if need be) when the class is done
    return start_stack(request, tmp_path_factory.mktemp("drills"), drill_topology(150), 90)


def _scenario_or_skip(name: str) -> None:
    needs = load_scenario(LIBRARY / f"{name}.yaml", short=True).needs_root()
    if needs and os.geteuid() != 0:
        pytest.skip(f"{', '.join(needs)} needs root (nftables / cgroups); CI runs as root")
    if any(k.startswith("network") for k in needs) and not NEEDS_NFT:
        missing("nft is not installed (apt-get install nftables)")


def _judge(name: str, out: Path) -> None:
    assert (out / "report.md").exists() and (out / "history.jsonl").exists()
    assert (out / "timeline.png").stat().st_size > 10_000
    report = json.loads((out / "report.json").read_text())
    assert report["scenario"]["name"] == name and report["short"] is True
    failed = {v["name"]: v for v in report["verdicts"] if v["status"] == "failed"}
    if not failed:
        assert report["passed"]
        return
    measured = "; ".join(f"{n}: {v['value']} ({v['detail'][:300]})" for n, v in failed.items())
    gap = KNOWN_GAPS.get(name)
    if gap is not None and set(failed) <= gap[1]:
        pytest.xfail(f"product gap: {gap[0]}. Measured: {measured}")
    pytest.fail(f"drill {name} failed: {measured}\nreport: {out / 'report.md'}")


class TestSharedStack:
    @pytest.mark.parametrize("name", _scenarios(destructive=False))
    def test_short_scenario_meets_its_slos(self, name: str, shared_stack: LocalStack,
                                           tmp_path: Path) -> None:
        _scenario_or_skip(name)
        scenario = load_scenario(LIBRARY / f"{name}.yaml", short=True)
        result = run_drill(scenario, shared_stack.run_dir.path, attach=True,
                           out=tmp_path / name, short=True)
        assert result.out_dir == tmp_path / name
        _judge(name, result.out_dir)


@pytest.mark.parametrize("name", _scenarios(destructive=True))
def test_short_scenario_on_its_own_stack(name: str, tmp_path: Path,
                                         request: pytest.FixtureRequest) -> None:
    """The drill brings the stack up and down itself; the CLI runs one of them."""
    _scenario_or_skip(name)
    run_dir = tmp_path / "run"
    request.addfinalizer(lambda: stop_stack(LocalStack(run_dir)))  # if the drill did not
    topology = drill_topology(154)
    if name == "two-zones-down":
        config = write_topology_file(tmp_path / "topology.json", topology)
        answer = CliRunner().invoke(drill_app, [
            "run", str(LIBRARY / f"{name}.yaml"), "--short", "--run-dir", str(run_dir),
            "--config", str(config), "--out", str(tmp_path / name)])
        assert answer.exit_code in (0, 1), answer.output
        report = json.loads((tmp_path / name / "report.json").read_text())
        assert answer.exit_code == (0 if report["passed"] else 1)
    else:
        run_drill(load_scenario(LIBRARY / f"{name}.yaml", short=True), run_dir,
                  out=tmp_path / name, short=True, topology=topology)
    assert not LocalStack(run_dir).is_running()
    _judge(name, tmp_path / name)
