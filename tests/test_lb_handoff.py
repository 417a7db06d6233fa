"""Restarting the load balancer refuses no connection: the supervisor holds its listening sockets.

Real processes throughout. Addresses: zones on 127.0.240-242.0/24, the LB on 127.0.0.240:18240
(HTTP) and :18680 (HTTPS); the supervision unit test binds only 127.0.0.240's ports. Every
stack is stopped in a finalizer, by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from crosszone.config import Placement, parse_topology
from crosszone.errors import RuntimeStateError
from crosszone.runtime import LocalStack, RunDir
from crosszone.runtime.control import Selector
from crosszone.runtime.listeners import ENV_VAR, Listeners, inherited_listeners
from crosszone.runtime.processes import pid_alive
from crosszone.runtime.serve import serve
from crosszone.runtime.supervisor import DRAIN_GRACE_SECONDS, Supervisor
from stackutil import local_topology, start_stack, stop_stack, wait_until

LB_HOST, HTTP_PORT, HTTPS_PORT = "127.0.0.240", 18240, 18680
CHAT = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]}
MAX_REQUESTS = 100  # per client
MAX_SECONDS = 30.0


def topology() -> dict[str, Any]:
    # 25 ms a token: a request takes 0.1-0.4 s, so a restart always finds some in flight
    return local_topology(240, http_port=HTTP_PORT, https_port=HTTPS_PORT, workers=1,
                          decode_ms=25.0)


# --- the sockets themselves -------------------------------------------------------------------

def test_listeners_pass_through_the_environment() -> None:
    listeners = Listeners([(LB_HOST, HTTP_PORT), (LB_HOST, HTTPS_PORT)])
    try:
        listeners.open()
        listeners.open()  # idempotent
        env = listeners.environment()
        assert env[ENV_VAR] == ",".join(f"{LB_HOST}:{port}={sock.fileno()}" for port, sock in
                                        zip((HTTP_PORT, HTTPS_PORT),
                                            listeners.sockets.values(), strict=True))
        # what a child finds: the same sockets (dup'd here, as fork would), variable removed
        dups = {k: str(os.dup(int(v))) for k, v in
                (item.rsplit("=", 1) for item in env[ENV_VAR].split(","))}
        environ = {ENV_VAR: ",".join(f"{k}={v}" for k, v in dups.items())}
        found = inherited_listeners(environ)
        assert ENV_VAR not in environ
        assert sorted(found) == [(LB_HOST, HTTP_PORT), (LB_HOST, HTTPS_PORT)]
        with socket.create_connection((LB_HOST, HTTP_PORT), timeout=2):
            pass  # queued in the shared backlog although no one accepts
        for sock in found.values():
            sock.close()
        assert listeners.close() and not listeners.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((LB_HOST, HTTP_PORT), timeout=2)
    finally:
        listeners.close()


def test_a_bad_inherited_fd_is_a_clear_error(tmp_path: Path) -> None:
    with (tmp_path / "f").open("w") as fh:
        for spec, message in [(f"{LB_HOST}:{HTTP_PORT}={fh.fileno()}", "is not usable"),
                              (f"{LB_HOST}:x=3", "cannot read"),
                              (f"{LB_HOST}:{HTTP_PORT}=99999", "is not usable")]:
            with pytest.raises(RuntimeStateError, match=message):
                inherited_listeners({ENV_VAR: spec})
    listeners = Listeners([(LB_HOST, HTTP_PORT)])
    other = Listeners([(LB_HOST, HTTPS_PORT)])
    try:
        listeners.open()
        other.open()
        fd = os.dup(other.fds()[0])  # listening, but on the other port
        with pytest.raises(RuntimeStateError, match="not a TCP socket listening there"):
            inherited_listeners({ENV_VAR: f"{LB_HOST}:{HTTP_PORT}={fd}"})
        with pytest.raises(RuntimeStateError, match=f"cannot bind {LB_HOST}:{HTTP_PORT}: "
                                                    "address already in use"):
            Listeners([(LB_HOST, HTTPS_PORT + 1), (LB_HOST, HTTP_PORT)]).open()
    finally:
        listeners.close()
        other.close()


async def test_an_lb_run_alone_binds_its_own_sockets(tmp_path: Path) -> None:
    """``crosszone run lb`` without a supervisor: no variable, so it binds as before."""
    assert ENV_VAR not in os.environ
    topo = parse_topology(topology())
    stop = asyncio.Event()
    task = asyncio.create_task(serve(topo, Placement(topo).lb(), tmp_path, stop=stop))
    try:
        for _ in range(200):
            if task.done() or _listening_inodes():
                break
            await asyncio.sleep(0.05)
        assert len(_listening_inodes()) == 2 and _holds(os.getpid(), _listening_inodes())
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert not _listening_inodes()


# --- supervision bookkeeping on stand-in processes ----------------------------------------------

# Stand-ins for the LB: exit 3 unless both listening sockets were inherited, say so, then wait
# (the stubborn one ignoring SIGTERM, as a process that never finishes draining).
STAND_IN = ("import signal, sys, time\n"
            "from crosszone.runtime.listeners import inherited_listeners\n"
            "sys.exit(3) if len(inherited_listeners()) != 2 else None\n"
            "{ignore}print('ready', flush=True)\n"
            "time.sleep(60)\n")
STUBBORN = STAND_IN.format(ignore="signal.signal(signal.SIGTERM, signal.SIG_IGN)\n")


async def test_sigterm_starts_the_successor_at_once_and_the_old_one_drains(
        tmp_path: Path) -> None:
    run_dir = RunDir.at(tmp_path)
    run_dir.prepare()
    supervisor = Supervisor(parse_topology(topology()), run_dir)
    lb = next(p for p in supervisor.slots if p.node.component == "lb")
    for proc in supervisor.slots:  # the others bind nothing
        proc.argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    lb.argv = [sys.executable, "-c", STAND_IN.format(ignore="")]
    lb_only = Selector(component="lb")

    def ready(count: int) -> bool:
        return lb.log_path.read_text().count("ready") >= count

    try:
        now = time.monotonic()
        assert "started lb (pid " in supervisor.run_cycle(now)
        first = lb.pid
        assert first is not None and lb.listeners is not None and lb.listeners.is_open
        wait_until(lambda: ready(1), 20, what="the stand-in LB")
        assert supervisor.signal(lb_only, "TERM") == ["lb"]
        second = lb.pid
        assert second not in (None, first) and lb.restarts == 1 and lb.state == "running"
        assert [d.popen.pid for d in lb.draining] == [first]
        state = json.loads(run_dir.state_file.read_text())
        record = next(r for r in state["processes"] if r["name"] == "lb")
        assert record["pid"] == second and record["draining_pids"] == [first]
        wait_until(lambda: not pid_alive(first), 10, what="the predecessor to end")
        sentence = supervisor.run_cycle(now + 1)
        assert f"lb's predecessor (pid {first}) was killed by SIGTERM after draining" in sentence
        assert lb.draining == [] and lb.pid == second and lb.exit_code is None
        wait_until(lambda: ready(2), 20, what="the successor")
        # held with KILL: nothing is to serve, so connections are refused, not queued
        supervisor.hold(lb_only, "KILL")
        assert not lb.listeners.is_open
        wait_until(lambda: not pid_alive(second), 10, what="the held LB to die")
        assert "lb was killed by SIGKILL; held" in supervisor.run_cycle()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((LB_HOST, HTTP_PORT), timeout=2)
        lb.argv = [sys.executable, "-c", STUBBORN]
        supervisor.release(lb_only)
        third = lb.pid
        assert lb.listeners.is_open and third not in (None, first, second)
        wait_until(lambda: ready(3), 20, what="the released LB")
        # a predecessor still draining after DRAIN_GRACE_SECONDS is killed
        supervisor.signal(lb_only, "TERM")
        assert [d.popen.pid for d in lb.draining] == [third]
        assert "did not finish draining in time; killed" in supervisor.run_cycle(
            time.monotonic() + DRAIN_GRACE_SECONDS + 1)
        assert third is not None
        wait_until(lambda: not pid_alive(third), 10, what="the stubborn predecessor to die")
        assert f"lb's predecessor (pid {third}) was killed by SIGKILL after draining" in \
            supervisor.run_cycle()
        # ...and stop_all stops predecessors still draining too
        wait_until(lambda: ready(4), 20, what="the fourth LB")
        fourth = lb.pid
        supervisor.signal(lb_only, "TERM")
        assert [d.popen.pid for d in lb.draining] == [fourth] and lb.pid not in (None, fourth)
        pids = [fourth, lb.pid]
    finally:
        result = await supervisor.stop_all(grace=1)
    assert result.startswith("stopped ") and result.endswith("; SIGKILLed lb after 1s")
    assert not any(pid_alive(pid) for pid in pids)
    assert not lb.alive and not lb.listeners.is_open
    state = json.loads(run_dir.state_file.read_text())
    assert state["supervisor"]["state"] == "stopped"
    record = next(r for r in state["processes"] if r["name"] == "lb")
    assert record["pid"] is None and record["draining_pids"] == []


# --- a whole stack under load -----------------------------------------------------------------

@dataclass
class Client:
    """A client sending chat completions in a loop; every failure is recorded."""

    name: str
    client: httpx.Client
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    ok_times: list[float] = field(default_factory=list)

    def run(self, stop: threading.Event, deadline: float) -> None:
        with self.client:
            while not stop.is_set() and time.monotonic() < deadline \
                    and self.ok + len(self.failures) < MAX_REQUESTS:
                try:
                    response = self.client.post("/chat/completions", json=CHAT)
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                if response.status_code != 200:
                    self.failures.append(f"HTTP {response.status_code}: {response.text[:200]}")
                else:
                    self.ok += 1
                    self.ok_times.append(time.monotonic())


def _clients(stack: LocalStack) -> list[Client]:
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection for every request
    timeout = httpx.Timeout(20.0)
    ca = ssl.create_default_context(cafile=str(stack.ca_cert))
    return [
        Client("http, new connections", httpx.Client(
            base_url=stack.lb_url("http"), headers=headers, limits=fresh, timeout=timeout)),
        Client("https, new connections", httpx.Client(
            base_url=stack.lb_url("https"), headers=headers, limits=fresh, timeout=timeout,
            verify=ca)),
        Client("http, keep-alive", httpx.Client(
            base_url=stack.lb_url("http"), headers=headers, timeout=timeout)),
    ]


def _listening_inodes() -> set[str]:
    """The inodes of the LB's two listening sockets (/proc/net/tcp, state 0A)."""
    ip = socket.inet_aton(LB_HOST)[::-1].hex().upper()
    wanted = {f"{ip}:{port:04X}" for port in (HTTP_PORT, HTTPS_PORT)}
    with open("/proc/net/tcp", encoding="ascii") as fh:
        rows = [line.split() for line in fh.readlines()[1:]]
    return {row[9] for row in rows if row[1] in wanted and row[3] == "0A"}


def _holds(pid: int, inodes: set[str]) -> bool:
    """``pid`` has an fd on one of the sockets (False once it is gone)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    links = set()
    for fd in fds:
        with contextlib.suppress(OSError):  # closed meanwhile (the listing's own, say)
            links.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return any(f"socket:[{inode}]" in links for inode in inodes)


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = start_stack(request, tmp_path_factory.mktemp("run"), topology(), timeout=120)
    yield stack
    stop_stack(stack)


def _lb_record(stack: LocalStack) -> dict[str, object]:
    return next(p for p in stack.snapshot()["processes"] if p["component"] == "lb")


@pytest.mark.integration
@pytest.mark.parametrize("how", ["supervisor", "kill"])
def test_restarting_the_lb_under_load_refuses_nothing(stack: LocalStack, how: str) -> None:
    """``supervisor``: SIGTERM through the supervisor, which starts the successor at once;
    ``kill``: SIGTERM from outside, the supervisor restarts it once it has exited."""
    stack.wait_healthy(60)
    before = _lb_record(stack)
    old = before["pid"]
    assert isinstance(old, int)
    inodes = _listening_inodes()
    assert len(inodes) == 2 and _holds(old, inodes) and _holds(stack.pids()["supervisor"], inodes)
    clients = _clients(stack)
    stop = threading.Event()
    deadline = time.monotonic() + MAX_SECONDS
    threads = [threading.Thread(target=c.run, args=(stop, deadline), name=c.name)
               for c in clients]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: all(c.ok >= 3 for c in clients) or any(c.failures for c in clients),
                   20, what="the clients to get going")
        assert not any(c.failures for c in clients)
        if how == "supervisor":
            assert stack.signal(component="lb", signal="TERM") == ["lb"]
        else:
            os.kill(old, signal.SIGTERM)
        restarted_at = time.monotonic()
        # the old process stops accepting at once (its copy closed) while the sockets live on
        wait_until(lambda: not _holds(old, inodes), 2, 0.02, "the old LB to close its sockets")
        assert _listening_inodes() == inodes
        wait_until(lambda: not pid_alive(old), 15, what="the old LB to finish draining")
        new = wait_until(lambda: (r := _lb_record(stack))["pid"] not in (None, old)
                         and r["state"] == "running" and r["pid"], 15, what="a new LB")
        assert isinstance(new, int)
        served_after = time.monotonic()
        wait_until(lambda: all(sum(t > served_after for t in c.ok_times) >= 3
                               for c in clients) or any(c.failures for c in clients), 20,
                   what="every client to be served by the new LB")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    failures = {c.name: c.failures for c in clients if c.failures}
    assert failures == {}, f"failed requests across the restart: {failures}"
    assert all(c.ok > 0 for c in clients)
    assert _holds(new, inodes) and _listening_inodes() == inodes
    after = _lb_record(stack)
    assert after["restarts"] == int(str(before["restarts"])) + 1
    assert after["draining_pids"] == []
    gap = max((b - a for c in clients
               for a, b in zip(c.ok_times, c.ok_times[1:], strict=False)
               if a >= restarted_at - 1), default=0.0)
    print(f"{how}: longest wait between answers {gap:.2f}s; "
          + ", ".join(f"{c.name}: {c.ok} ok" for c in clients))


@pytest.mark.integration
def test_held_lb_refuses_and_down_stops_every_incarnation(stack: LocalStack) -> None:
    stack.wait_healthy(60)
    assert stack.hold(component="lb", signal="KILL") == ["lb"]
    wait_until(lambda: _lb_record(stack)["pid"] is None, 10, what="the held LB to die")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((LB_HOST, HTTP_PORT), timeout=2)
    assert stack.release(component="lb") == ["lb"]
    stack.wait_healthy(60, names=["lb"])
    # a restart through the supervisor may leave a draining predecessor: down stops it too
    old = _lb_record(stack)["pid"]
    assert isinstance(old, int)
    stack.signal(component="lb", signal="TERM")
    assert _lb_record(stack)["pid"] not in (None, old)
    pids = [*stack.pids().values(), old]
    stack.down()
    assert not any(pid_alive(pid) for pid in pids)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((LB_HOST, HTTP_PORT), timeout=2)


