"""The local runtime with real processes: up, status, restarts, holds, down, bind failures.

Addresses: zones on 127.0.103-105.0/24, LB on 127.0.0.103:18000 (HTTP) and :18443 (HTTPS).
Every test stops what it started in a finalizer, by pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crosszone.config import parse_topology
from crosszone.runtime import LocalStack, RunDir, StackStartError
from crosszone.runtime.supervisor import Supervisor
from stackutil import (
    all_gone,
    local_topology,
    start_stack,
    stop_stack,
    wait_until,
    write_topology_file,
)

pytestmark = pytest.mark.integration


ZONE_A, ZONE_B, ZONE_C = "us-west-2a", "us-west-2b", "us-west-2c"


def crosszone(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crosszone", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def record(status: dict[str, object], name: str) -> dict[str, object]:
    processes = status["processes"]
    assert isinstance(processes, list)
    return next(p for p in processes if p["name"] == name)


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    """A socket listening on 127.0.103.24:9000 (worker 4 of zone a, never started by a stack)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT of earlier runs
    sock.bind(("127.0.103.24", 9000))
    sock.listen()
    yield sock
    sock.close()


# --- supervision logic on stand-in processes (needs no component app) -----------------------------

async def test_run_cycle_starts_restarts_and_respects_policy(tmp_path: Path) -> None:
    topology = parse_topology(local_topology(workers=1, restart="on-failure"))
    run_dir = RunDir.at(tmp_path)
    run_dir.prepare()
    supervisor = Supervisor(topology, run_dir)
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    for proc in supervisor.processes:
        proc.argv = sleeper
    by_name = {proc.name: proc for proc in supervisor.processes}
    clean_exit = by_name["us-west-2a/gateway"]
    clean_exit.argv = [sys.executable, "-c", "pass"]
    try:
        now = time.monotonic()
        first = supervisor.run_cycle(now)
        assert first.count("started ") == len(supervisor.processes)
        worker = by_name["us-west-2a/worker-1"]
        old_pid = worker.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        worker.popen.wait() if worker.popen else None
        clean_exit.popen.wait() if clean_exit.popen else None
        sentence = supervisor.run_cycle(now + 1)
        assert "us-west-2a/worker-1 was killed by SIGKILL; restarting in 0.1s" in sentence
        assert "us-west-2a/gateway exited with 0; not restarted (restart: on-failure)" in sentence
        assert supervisor.run_cycle(now + 1.05).startswith("no change")
        assert supervisor.run_cycle(now + 1.2).startswith("restarted us-west-2a/worker-1 (pid ")
        assert worker.pid != old_pid and worker.restarts == 1
        state = json.loads(run_dir.state_file.read_text())
        by_name = {p["name"]: p for p in state["processes"]}
        assert by_name["us-west-2a/worker-1"]["pid"] == worker.pid
        assert by_name["us-west-2a/gateway"]["state"] == "exited"
        # a quick second death doubles the backoff
        os.kill(worker.pid, signal.SIGKILL)
        worker.popen.wait() if worker.popen else None
        assert "restarting in 0.2s" in supervisor.run_cycle(now + 2)
    finally:
        await supervisor.stop_all(grace=2)
    assert all(p.pid is None for p in supervisor.processes)
    assert json.loads(run_dir.state_file.read_text())["supervisor"]["state"] == "stopped"


# --- whole stacks --------------------------------------------------------------------------------

def test_cli_up_status_refuse_second_up_and_down(tmp_path: Path,
                                                 request: pytest.FixtureRequest) -> None:
    run_dir = tmp_path / "run"
    topo = write_topology_file(tmp_path / "topology.json", local_topology())
    request.addfinalizer(lambda: stop_stack(LocalStack(run_dir)))

    up = crosszone("up", "-c", str(topo), "--run-dir", str(run_dir), "--timeout", "90")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "http://127.0.0.103:18000/v1" in up.stdout
    assert "https://127.0.0.103:18443/v1" in up.stdout
    assert "sk-cz-" in up.stdout and "CA cert" in up.stdout

    result = crosszone("status", "--json", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert sorted(status["zones"]) == [ZONE_A, ZONE_B, ZONE_C]
    assert all(z["healthy"] for z in status["zones"].values()), status["zones"]
    assert status["healthy"] is True
    assert status["urls"]["http"] == "http://127.0.0.103:18000/v1"
    assert status["api_key"].startswith("sk-cz-")
    assert status["ca_cert"]
    assert len(status["processes"]) == 3 * 6 + 1  # 4 services + 2 workers per zone; LB
    assert all(isinstance(p["pid"], int) and p["healthy"] for p in status["processes"])
    pids = [p["pid"] for p in status["processes"]] + [status["supervisor"]["pid"]]

    table = crosszone("status", "--run-dir", str(run_dir))
    assert table.returncode == 0 and "us-west-2b" in table.stdout

    again = crosszone("up", "-c", str(topo), "--run-dir", str(run_dir))
    assert again.returncode == 1
    assert "already running" in again.stderr

    down = crosszone("down", "--run-dir", str(run_dir))
    assert down.returncode == 0, down.stderr
    assert "supervisor" in down.stdout and "us-west-2c/worker-2" in down.stdout
    assert all_gone(pids)
    assert not (run_dir / "supervisor.sock").exists()

    assert "nothing running" in crosszone("down", "--run-dir", str(run_dir)).stdout
    assert crosszone("status", "--run-dir", str(run_dir)).returncode == 1


def test_killed_processes_are_restarted_and_down_stops_all(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    stack = start_stack(request, tmp_path / "run", local_topology())
    name = f"{ZONE_A}/worker-1"
    old = stack.pids()[name]
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: stack.pids().get(name, old) != old, what="a new worker pid")
    stack.wait_healthy(timeout=20, names=[name])
    assert record(stack.status(), name)["restarts"] == 1

    # a signal without hold: the policy (always) restarts it
    gateway = f"{ZONE_B}/gateway"
    old_gateway = stack.pids()[gateway]
    assert stack.signal(zone=ZONE_B, component="gateway", signal="KILL") == [gateway]
    wait_until(lambda: stack.pids().get(gateway, old_gateway) != old_gateway,
               what="a new gateway pid")
    stack.wait_healthy(timeout=20)

    pids = stack.pids()
    stopped = stack.down()
    assert any(s.startswith("supervisor (pid ") for s in stopped)
    assert len(stopped) == len(pids)
    assert all_gone(pids)
    assert not stack.run_dir.socket_path.exists()
    assert not stack.is_running()
    assert stack.down() == []


def test_hold_keeps_a_zone_down_until_release(tmp_path: Path,
                                              request: pytest.FixtureRequest) -> None:
    stack = start_stack(request, tmp_path / "run", local_topology())
    before = stack.pids()
    held = stack.hold(zone=ZONE_B)
    assert sorted(held) == [f"{ZONE_B}/controller", f"{ZONE_B}/gateway", f"{ZONE_B}/monitor",
                            f"{ZONE_B}/store", f"{ZONE_B}/worker-1", f"{ZONE_B}/worker-2"]
    wait_until(lambda: all_gone([before[n] for n in held]), what="zone b's processes to die")
    time.sleep(1.5)  # well past the restart backoff: still down
    status = stack.status()
    for name in held:
        assert record(status, name)["state"] == "held"
        assert record(status, name)["pid"] is None
    assert not status["zones"][ZONE_B]["healthy"]
    assert status["zones"][ZONE_A]["healthy"] and status["zones"][ZONE_C]["healthy"]

    assert sorted(stack.release(zone=ZONE_B)) == sorted(held)
    stack.wait_healthy(timeout=30)
    after = stack.pids()
    assert all(after[n] != before[n] for n in held)
    assert stack.status()["zones"][ZONE_B]["healthy"]

    # STOP freezes without killing; release resumes the same process
    frozen = f"{ZONE_C}/worker-1"
    pid = after[frozen]
    assert stack.hold(zone=ZONE_C, component="worker", index=1, signal="STOP") == [frozen]
    wait_until(lambda: _proc_state(pid) == "T", what="the worker to be stopped")
    rec = record(stack.status(), frozen)
    assert rec["state"] == "held" and rec["frozen"] is True and rec["pid"] == pid
    assert rec["healthy"] is False
    stack.release(zone=ZONE_C, component="worker", index=1)
    stack.wait_healthy(timeout=20, names=[frozen])
    assert stack.pids()[frozen] == pid

    # the supervisor's death takes every child with it (PR_SET_PDEATHSIG)
    children = {n: p for n, p in stack.pids().items() if n != "supervisor"}
    os.kill(stack.pids()["supervisor"], signal.SIGKILL)
    wait_until(lambda: all_gone(children), timeout=10, what="orphans to die")


def _proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


def test_run_with_a_port_taken_fails_clearly(tmp_path: Path, listening: socket.socket) -> None:
    topo = write_topology_file(tmp_path / "topology.json", local_topology())
    result = crosszone("run", "worker", "--zone", ZONE_A, "--index", "4", "-c", str(topo),
                       "--run-dir", str(tmp_path / "run"), timeout=60)
    assert result.returncode == 1, result.stderr
    assert "cannot bind 127.0.103.24:9000: address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_up_fails_and_cleans_up_when_a_node_cannot_bind(tmp_path: Path,
                                                        listening: socket.socket) -> None:
    stack = LocalStack(tmp_path / "run")
    try:
        with pytest.raises(StackStartError) as info:
            stack.up(local_topology(workers=4), timeout=60, attached=True)
        assert "us-west-2a/worker-4" in str(info.value)
        assert "cannot bind 127.0.103.24:9000: address already in use" in str(info.value)
        assert not stack.is_running()
        state = json.loads(stack.run_dir.state_file.read_text())
        assert all(p["pid"] is None for p in state["processes"])
    finally:
        stop_stack(stack)
