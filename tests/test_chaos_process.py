"""Process faults through a real supervisor (zones on 127.0.115.0/24 and 127.0.116.0/24)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from crosszone.chaos import Chaos
from crosszone.chaos.cli import chaos_app
from crosszone.chaos.cpu import GROUP_PARENT, cgroup_of, cpu_cgroup_root
from crosszone.chaos.procs import alive
from crosszone.runtime import LocalStack
from stackutil import local_topology, start_stack, wait_until


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          ) -> LocalStack:
    return start_stack(request, tmp_path_factory.mktemp("chaos-process-run"),
                       local_topology(first_octet=115, http_port=18715, https_port=18716,
                                      workers=2, zones=("pa", "pb")))


@pytest.fixture
def chaos(stack: LocalStack) -> Any:
    chaos = Chaos(stack.run_dir.path)
    yield chaos
    chaos.destroy_all()
    wait_until(lambda: all(r["state"] == "running" for r in records(stack).values()),
               what="every process running again")


def records(stack: LocalStack) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in stack.snapshot()["processes"]}


def proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_kill_count_holds_exactly_that_many_until_destroyed(stack: LocalStack,
                                                            chaos: Chaos) -> None:
    before = records(stack)
    exp = chaos.process_fault("pa", "worker", "KILL", count=1)
    after = records(stack)
    assert after["pa/worker-1"]["state"] == "held"
    assert not alive(before["pa/worker-1"]["pid"])
    assert after["pa/worker-2"]["pid"] == before["pa/worker-2"]["pid"]
    assert after["pb/worker-1"]["state"] == "running"
    assert chaos.is_active(exp.uid)

    chaos.destroy(exp.uid)
    restarted = wait_until(lambda: (r := records(stack)["pa/worker-1"])["state"] == "running"
                           and r, what="pa/worker-1 restarted")
    assert restarted["pid"] != before["pa/worker-1"]["pid"]
    assert not chaos.is_active(exp.uid)


def test_stop_freezes_until_destroyed(stack: LocalStack, chaos: Chaos) -> None:
    pid = records(stack)["pa/gateway"]["pid"]
    exp = chaos.process_fault("pa", "gateway", "STOP")
    wait_until(lambda: proc_state(pid) == "T", what="gateway stopped")
    chaos.destroy(exp.uid)
    wait_until(lambda: proc_state(pid) != "T", what="gateway resumed")
    assert records(stack)["pa/gateway"]["pid"] == pid


def test_zone_down_and_lb_kill(stack: LocalStack, chaos: Chaos) -> None:
    zone = chaos.zone_down("pb")
    pb = [r for r in records(stack).values() if r["zone"] == "pb"]
    assert pb and all(r["state"] == "held" for r in pb)
    assert all(r["state"] == "running" for r in records(stack).values() if r["zone"] == "pa")
    lb = chaos.process_fault(None, "lb", "KILL")
    assert records(stack)["lb"]["state"] == "held"
    chaos.destroy(zone.uid)
    chaos.destroy(lb.uid)
    wait_until(lambda: all(r["state"] == "running" for r in records(stack).values()),
               what="zone pb and the LB back")


def test_kill_without_hold_is_restarted_by_the_supervisor(stack: LocalStack,
                                                          chaos: Chaos) -> None:
    pid = records(stack)["pb/worker-2"]["pid"]
    exp = chaos.process_fault("pb", "worker", "KILL", count=2, hold=False)
    assert not chaos.is_active(exp.uid)  # nothing is held: nothing to undo
    wait_until(lambda: (r := records(stack)["pb/worker-2"])["state"] == "running"
               and r["pid"] != pid, what="pb/worker-2 restarted by its policy")


def test_cpu_fullload_loads_the_zones_own_processes(stack: LocalStack, chaos: Chaos) -> None:
    if os.geteuid() != 0:
        pytest.skip("cpu faults need root (cgroup cpu controller)")
    root = cpu_cgroup_root()
    pids = {n: r["pid"] for n, r in records(stack).items() if r["zone"] == "pa"}
    origins = {n: cgroup_of(p, root) for n, p in pids.items()}
    exp = chaos.cpu_fullload("pa", workers=1, cpu_percent=20, timeout=30)
    group = root / GROUP_PARENT / exp.uid
    assert all(cgroup_of(p, root) == group for p in pids.values())
    assert all(cgroup_of(r["pid"], root) != group
               for r in records(stack).values() if r["zone"] == "pb")
    chaos.destroy(exp.uid)
    assert {n: cgroup_of(p, root) for n, p in pids.items()} == origins
    assert not group.exists()


def test_cli_create_status_destroy(stack: LocalStack, chaos: Chaos) -> None:
    runner = CliRunner()
    run_dir = str(stack.run_dir.path)
    created = runner.invoke(chaos_app, ["create", "process", "stop", "--zone", "pa",
                                        "--component", "worker", "--count", "1",
                                        "--run-dir", run_dir])
    assert created.exit_code == 0, created.output
    answer = json.loads(created.stdout)
    assert answer["success"] is True and answer["code"] == 200
    uid = answer["result"]

    shown = runner.invoke(chaos_app, ["status", uid, "--run-dir", run_dir])
    assert shown.exit_code == 0, shown.output
    status = json.loads(shown.stdout)["result"]
    assert status["status"] == "active" and status["kind"] == "process"
    assert "freeze" in status["description"]

    destroyed = runner.invoke(chaos_app, ["destroy", uid, "--run-dir", run_dir])
    assert destroyed.exit_code == 0, destroyed.output
    assert json.loads(destroyed.stdout)["result"]["status"] == "destroyed"

    missing = runner.invoke(chaos_app, ["create", "process", "kill", "--zone", "nowhere",
                                        "--component", "worker", "--run-dir", run_dir])
    assert missing.exit_code == 2
    assert "no such zone" in missing.stderr and "Traceback" not in missing.output
