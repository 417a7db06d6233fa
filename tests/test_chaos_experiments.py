"""Experiments: UIDs, persistence across a crashed CLI, the timeout watchdog, the CLI's errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from crosszone.chaos import Chaos, FaultInjector
from crosszone.chaos.cli import chaos_app
from crosszone.chaos.experiments import ExperimentRunner, new_uid
from crosszone.chaos.nft import NftTable, addresses, loopback_net
from crosszone.chaos.procs import alive
from crosszone.errors import ChaosError, ExperimentNotFound, InvalidExperiment

IS_ROOT = os.geteuid() == 0
HAS_NFT = shutil.which("nft") is not None or os.path.exists("/usr/sbin/nft")
needs_nft_root = pytest.mark.skipif(not (IS_ROOT and HAS_NFT),
                                    reason="network faults need root and nft; CI is root")
TOPOLOGY = {"zones": [{"name": "z117", "subnet": "127.0.117.0/24"},
                      {"name": "z118", "subnet": "127.0.118.0/24"}]}


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    """A run directory whose experiments are all destroyed afterwards, whatever happened."""
    path = tmp_path / "run"
    path.mkdir()
    (tmp_path / "topology.json").write_text(json.dumps(TOPOLOGY))
    yield path
    runner = ExperimentRunner(path)
    for experiment in runner.status():
        runner.destroy(experiment.uid)
    if IS_ROOT and HAS_NFT:
        assert not {e.uid for e in runner.status()} & NftTable().experiment_uids()


def cli(*args: str, run_dir: Path) -> subprocess.CompletedProcess[str]:
    """``crosszone chaos ...`` in a fresh interpreter, as a user would run it."""
    code = "from crosszone.chaos.cli import chaos_app; chaos_app()"
    config = run_dir.parent / "topology.json"
    return subprocess.run([sys.executable, "-c", code, *args, "--run-dir", str(run_dir),
                           *(["--config", str(config)] if args[0] == "create" else [])],
                          capture_output=True, text=True, timeout=60, check=False)


# --- safety and validation (no root needed) -------------------------------------------------------


@pytest.mark.parametrize("subnet", ["10.0.1.0/24", "192.168.0.0/24", "127.0.0.0/8",
                                    "127.0.0.0/24", "0.0.0.0/0", "not-a-subnet"])
def test_rules_never_name_addresses_outside_zone_loopback_subnets(subnet: str) -> None:
    with pytest.raises(ChaosError):
        loopback_net(subnet)
    with pytest.raises(ChaosError):
        addresses(["127.0.117.0/24", subnet])


def test_invalid_parameters_are_refused_before_anything_is_applied(tmp_path: Path) -> None:
    from crosszone.config import parse_topology

    chaos = Chaos(tmp_path, topology=parse_topology(TOPOLOGY))
    bad: list[tuple[Callable[[], object], type[Exception]]] = [
        (lambda: chaos.network_loss("z117", percent=0), InvalidExperiment),
        (lambda: chaos.network_loss("z117", peer_zone="z117"), InvalidExperiment),
        (lambda: chaos.network_delay("z117", time_ms=0), InvalidExperiment),
        (lambda: chaos.network_partition(["z117"], other_zones=[], include_clients=False),
         InvalidExperiment),
        (lambda: chaos.cpu_fullload("z117", workers=0, pids=[]), InvalidExperiment),
        (lambda: chaos.process_fault("z117", "database"), InvalidExperiment),
        (lambda: chaos.network_loss("z117", timeout=-1), InvalidExperiment),
        (lambda: chaos.network_loss("nowhere"), InvalidExperiment),
    ]
    for make, error in bad:
        with pytest.raises(error):
            make()
    assert chaos.status() == []


class Exploding(FaultInjector):
    """A test injector whose second step fails."""

    kind = "test-exploding"
    removed: ClassVar[list[str]] = []

    def _apply(self) -> None:
        self.state["step"] = 1
        self.checkpoint()
        raise ChaosError("step 2 failed")

    def _remove(self) -> None:
        Exploding.removed.append(self.uid)

    def _active(self) -> bool:
        return False

    def _describe(self) -> str:
        return "explodes"


def test_a_failed_apply_is_removed_and_recorded_as_failed(tmp_path: Path) -> None:
    runner = ExperimentRunner(tmp_path)
    injector = Exploding(new_uid(), {})
    with pytest.raises(ChaosError, match="step 2 failed"):
        runner.create(injector)
    assert Exploding.removed == [injector.uid]
    [record] = runner.status()
    assert record.status == "failed" and record.state == {"step": 1}
    assert "step 2 failed" in (record.error or "")
    with pytest.raises(ExperimentNotFound):
        runner.destroy("0123456789abcdef")


def test_network_faults_without_root_say_so_and_exit_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    runner = CliRunner()
    for args in (["network", "loss", "--zone", "z117", "--percent", "100"],
                 ["network", "partition", "--zones", "z117"],
                 ["network", "delay", "--zone", "z117", "--time", "100"]):
        result = runner.invoke(chaos_app, ["create", *args, "--run-dir", str(tmp_path)])
        assert result.exit_code == 2, result.output
        assert "network faults need root (nftables)" in result.stderr
        assert "Traceback" not in result.output
    result = runner.invoke(chaos_app, ["create", "cpu", "fullload", "--zone", "z117",
                                       "--run-dir", str(tmp_path)])
    assert result.exit_code == 2 and "cpu faults need root" in result.stderr
    assert not (tmp_path / "chaos" / "experiments.json").exists()


def test_status_of_an_unknown_experiment_is_a_message(tmp_path: Path) -> None:
    result = CliRunner().invoke(chaos_app, ["destroy", "feedfacecafebeef",
                                            "--run-dir", str(tmp_path)])
    assert result.exit_code == 1 and "no chaos experiment" in result.stderr
    result = CliRunner().invoke(chaos_app, ["status", "--run-dir", str(tmp_path)])
    assert result.exit_code == 0 and json.loads(result.stdout)["result"] == []


# --- persistence and timeouts (root) --------------------------------------------------------------


@needs_nft_root
def test_destroy_works_from_another_process_after_the_creator_is_gone(run_dir: Path) -> None:
    created = cli("create", "network", "loss", "--zone", "z117", "--percent", "100",
                  run_dir=run_dir)
    assert created.returncode == 0, created.stderr
    uid = json.loads(created.stdout)["result"]
    assert uid in NftTable().experiment_uids()

    shown = cli("status", run_dir=run_dir)
    [listed] = json.loads(shown.stdout)["result"]
    assert listed["uid"] == uid and listed["status"] == "active"
    assert "blackhole" in listed["description"]

    destroyed = cli("destroy", uid, run_dir=run_dir)
    assert destroyed.returncode == 0, destroyed.stderr
    assert uid not in NftTable().experiment_uids()
    assert ExperimentRunner(run_dir).status(uid)[0].status == "destroyed"


CRASH_MID_APPLY = """
import os, sys
from crosszone.chaos import Chaos
from crosszone.chaos.network import NetworkDelay
from crosszone.config import parse_topology
import json
chaos = Chaos(sys.argv[1], topology=parse_topology(json.loads(sys.argv[2])))
fault = NetworkDelay(sys.argv[3], {"zone": "z117", "subnets": ["127.0.117.0/24"],
                                   "time_ms": 50})
original = NetworkDelay.checkpoint
def crash_once_the_delayer_runs(self):
    original(self)
    if "queue" in self.state:
        os._exit(9)  # the CLI dies between starting the delayer and adding the rules
fault.checkpoint = crash_once_the_delayer_runs.__get__(fault)
chaos.create(fault)
"""


@needs_nft_root
def test_a_crash_half_way_through_create_is_still_destroyable(run_dir: Path) -> None:
    uid = new_uid()
    proc = subprocess.run([sys.executable, "-c", CRASH_MID_APPLY, str(run_dir),
                           json.dumps(TOPOLOGY), uid], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 9, proc.stderr
    record = ExperimentRunner(run_dir).status(uid)[0]
    assert record.status == "creating"
    delayer = record.state["delayer_pid"]
    assert alive(delayer), "the delayer outlives the crashed CLI"

    destroyed = cli("destroy", uid, run_dir=run_dir)
    assert destroyed.returncode == 0, destroyed.stderr
    deadline = time.monotonic() + 3
    while alive(delayer) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(delayer)
    assert uid not in NftTable().experiment_uids()


@needs_nft_root
def test_timeout_destroys_the_experiment_with_nothing_else_running(run_dir: Path) -> None:
    created = cli("create", "network", "delay", "--zone", "z118", "--time", "30",
                  "--offset", "5", "--timeout", "1.5", run_dir=run_dir)
    assert created.returncode == 0, created.stderr
    uid = json.loads(created.stdout)["result"]
    record = ExperimentRunner(run_dir).status(uid)[0]
    assert record.status == "active" and record.expires_at is not None
    watchdog, delayer = record.watchdog_pid, record.state["delayer_pid"]
    assert watchdog is not None and alive(watchdog) and alive(delayer)

    deadline = time.monotonic() + 8
    while ExperimentRunner(run_dir).status(uid)[0].status != "destroyed":
        assert time.monotonic() < deadline, "the watchdog did not destroy the experiment"
        time.sleep(0.1)
    assert uid not in NftTable().experiment_uids()
    deadline = time.monotonic() + 3
    while (alive(watchdog) or alive(delayer)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(watchdog) and not alive(delayer)
    log = (run_dir / "chaos" / f"{uid}.log").read_text()
    assert "timeout 1.5s reached: destroyed" in log
