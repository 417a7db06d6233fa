"""LocalStack: a whole deployment on this machine, driven from Python (CLI, demo, tests).

    with LocalStack(tmp_path) as stack:
        stack.up(topology_dict)
        client = OpenAI(base_url=stack.lb_url(), api_key=stack.api_key)
        stack.hold(zone="us-west-2a")      # the zone's processes are killed and stay down
        stack.release(zone="us-west-2a")
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from crosszone.config import Node, Placement, Topology, load_topology, localize, parse_topology
from crosszone.errors import RuntimeStateError
from crosszone.runtime.control import ControlClient, Selector
from crosszone.runtime.health import Probe, probe_nodes
from crosszone.runtime.processes import (
    die_with_parent,
    is_crosszone_process,
    send_signal,
    wait_gone,
)
from crosszone.runtime.report import build_status, ca_cert_path, node_of
from crosszone.runtime.rundir import RunDir, tail

TopologySource = str | Path | Mapping[str, Any] | Topology | None

CRASH_LOOP_RESTARTS = 3  # a node restarted this often while starting up will not come up
LOG_TAIL_LINES = 12


class StackAlreadyRunningError(RuntimeStateError):
    """``up`` found a supervisor alive in the run directory."""


class NothingRunningError(RuntimeStateError):
    """No stack runs in the run directory."""


class StackStartError(RuntimeStateError):
    """The stack did not become healthy; the message names the nodes and shows their logs."""


@dataclass(frozen=True)
class StartProgress:
    healthy: int
    total: int
    waiting: list[str]
    elapsed: float


def resolve_topology(source: TopologySource) -> Topology:
    """A file path, a parsed document, a Topology, or None for the built-in default."""
    if isinstance(source, Topology):
        return source
    if isinstance(source, Mapping):
        return parse_topology(dict(source), "<topology dict>")
    return load_topology(source)


def with_credentials(topology: Topology) -> Topology:
    """Generate an API key and an admin token where the topology has none."""
    auth = topology.auth
    update: dict[str, Any] = {}
    if not auth.api_keys:
        update["api_keys"] = [f"sk-cz-{secrets.token_urlsafe(24)}"]
    if not auth.admin_token:
        update["admin_token"] = f"cz-admin-{secrets.token_urlsafe(24)}"
    if not update:
        return topology
    return topology.model_copy(update={"auth": auth.model_copy(update=update)})


class LocalStack:
    def __init__(self, run_dir: str | Path | None = None) -> None:
        self.run_dir = RunDir.at(run_dir)
        self.notes: list[str] = []  # what localize() moved, from the last up()
        self._topology: Topology | None = None
        self._supervisor: subprocess.Popen[bytes] | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def up(self, topology: TopologySource = None, *, timeout: float = 60.0,
           attached: bool = False,
           progress: Callable[[StartProgress], None] | None = None) -> None:
        """Start every node under a detached supervisor and wait until all answer /health.

        ``attached``: the supervisor (and so every node) gets SIGTERM when the calling thread
        ends; tests use it so nothing outlives a killed test run. Raises ConfigError,
        StackAlreadyRunningError, or StackStartError (after stopping whatever had started).
        """
        resolved, self.notes = localize(resolve_topology(topology))
        if self.is_running():
            raise StackAlreadyRunningError(
                f"a crosszone stack is already running in {self.run_dir.path} (supervisor pid "
                f"{self.supervisor_pid()}); stop it first with "
                f"`crosszone down --run-dir {self.run_dir.path}`")
        resolved = with_credentials(resolved)
        self.run_dir.prepare()
        self.run_dir.write_topology(resolved)
        self._topology = resolved
        self._supervisor = self._spawn_supervisor(attached)
        try:
            self._await_start(timeout, progress)
        except BaseException:
            self.down()
            raise

    def _spawn_supervisor(self, attached: bool) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "crosszone.runtime.supervisor",
                "--run-dir", str(self.run_dir.path)]
        with self.run_dir.supervisor_log.open("ab") as out:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=die_with_parent(signal.SIGTERM) if attached else None,
            )

    def _await_start(self, timeout: float,
                     progress: Callable[[StartProgress], None] | None) -> None:
        nodes = Placement(self.topology).all_nodes()
        started = time.monotonic()
        while True:
            probes = probe_nodes(self.topology, nodes, timeout=0.5)
            waiting = [name for name, p in probes.items() if not p.healthy]
            if progress is not None:
                progress(StartProgress(len(nodes) - len(waiting), len(nodes), waiting,
                                       time.monotonic() - started))
            if not waiting:
                return
            code = self._supervisor.poll() if self._supervisor is not None else None
            if code is not None:
                raise StackStartError(self._diagnosis(
                    f"the supervisor exited with code {code} before the stack was up", probes,
                    [("supervisor", self.run_dir.supervisor_log)]))
            looping = [r["name"] for r in self._records()
                       if r["name"] in waiting and r.get("restarts", 0) >= CRASH_LOOP_RESTARTS]
            if looping:
                verb = "keeps" if len(looping) == 1 else "keep"
                raise StackStartError(self._diagnosis(
                    f"{', '.join(looping)} {verb} crashing while starting", probes))
            if time.monotonic() - started >= timeout:
                raise StackStartError(self._diagnosis(
                    f"{len(waiting)} of {len(nodes)} nodes not healthy after {timeout:g}s",
                    probes))
            time.sleep(0.2)

    def _diagnosis(self, title: str, probes: dict[str, Probe],
                   extra_logs: list[tuple[str, Path]] | None = None) -> str:
        lines = [title + ":"]
        logs = list(extra_logs or [])
        for name, probe in probes.items():
            if not probe.healthy:
                lines.append(f"  {name} ({probe.url}): {probe.describe()}")
                logs.append((name, self.run_dir.log_for(name)))
        for name, path in logs:
            last = tail(path, LOG_TAIL_LINES)
            lines.append(f"--- last lines of {path}" if last else f"--- {name}: no log at {path}")
            lines += [f"  | {line}" for line in last]
        return "\n".join(lines)

    def down(self, timeout: float = 15.0) -> list[str]:
        """Stop the supervisor and every process it recorded; what was stopped ([] if nothing)."""
        targets: dict[int, str] = {}
        sup = self.supervisor_pid()
        if sup is not None and is_crosszone_process(sup):
            targets[sup] = "supervisor"
        for record in self._records():
            pid = record.get("pid")
            if isinstance(pid, int) and is_crosszone_process(pid):
                targets[pid] = str(record["name"])
        if targets:
            self._ask_to_stop(sup if sup in targets else None, list(targets))
            left = wait_gone(targets, timeout, reap=self._reap)
            for pid in left:  # by recorded pid, after checking it is still ours
                send_signal(pid, signal.SIGKILL)
            left = wait_gone(left, 3.0, reap=self._reap)
            if left:
                raise RuntimeStateError(f"could not stop pids {left} in {self.run_dir.path}")
        self._reap()
        self._mark_stopped()
        return [f"{name} (pid {pid})" for pid, name in targets.items()]

    def _ask_to_stop(self, supervisor: int | None, pids: list[int]) -> None:
        """The supervisor stops its children; orphans (a dead supervisor) get SIGTERM here."""
        if supervisor is None:
            for pid in pids:
                send_signal(pid, signal.SIGCONT)
                send_signal(pid, signal.SIGTERM)
            return
        try:
            ControlClient(self.run_dir.socket_path, timeout=2.0).stop()
        except RuntimeStateError:
            send_signal(supervisor, signal.SIGTERM)

    def _reap(self) -> None:
        if self._supervisor is not None and self._supervisor.poll() is not None:
            self._supervisor = None

    def _mark_stopped(self) -> None:
        self.run_dir.socket_path.unlink(missing_ok=True)
        try:
            state = self.run_dir.read_state()
        except RuntimeStateError:
            state = None
        if state is None or state.get("supervisor", {}).get("state") == "stopped":
            return
        state["supervisor"] = {**state.get("supervisor", {}), "state": "stopped"}
        for record in state.get("processes", []):
            record.update(pid=None, state="exited", frozen=False)
        self.run_dir.write_state(state)

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.down()

    # --- observation ----------------------------------------------------------------------------

    def supervisor_pid(self) -> int | None:
        if self._supervisor is not None and self._supervisor.poll() is None:
            return self._supervisor.pid
        try:
            state = self.run_dir.read_state()
        except RuntimeStateError:
            return None
        pid = (state or {}).get("supervisor", {}).get("pid")
        return pid if isinstance(pid, int) else None

    def is_running(self) -> bool:
        pid = self.supervisor_pid()
        return pid is not None and is_crosszone_process(pid)

    def snapshot(self) -> dict[str, Any]:
        """The supervisor's view (GET /status, else state.json); NothingRunningError if none."""
        if not self.is_running():
            raise NothingRunningError(f"nothing running in {self.run_dir.path}")
        try:
            return ControlClient(self.run_dir.socket_path, timeout=2.0).status()
        except RuntimeStateError:
            state = self.run_dir.read_state()
            if state is None:
                raise NothingRunningError(f"nothing running in {self.run_dir.path}") from None
            return state

    def _records(self) -> list[dict[str, Any]]:
        try:
            state = self.run_dir.read_state()
        except RuntimeStateError:
            return []
        return list((state or {}).get("processes", []))

    def health(self, timeout: float = 1.0) -> dict[str, Probe]:
        """Probe every node of the topology now."""
        return probe_nodes(self.topology, Placement(self.topology).all_nodes(), timeout)

    def status(self) -> dict[str, Any]:
        """Processes, health per process and zone, LB URLs, API key, CA cert path."""
        snapshot = self.snapshot()
        nodes = [node_of(r) for r in snapshot.get("processes", [])]
        probes = probe_nodes(self.topology, nodes, timeout=1.0)
        return build_status(self.run_dir.path, self.topology, snapshot, probes)

    def wait_healthy(self, timeout: float = 30.0, names: list[str] | None = None) -> None:
        """Wait until the named nodes (default: all) answer /health 200."""
        nodes = [n for n in Placement(self.topology).all_nodes()
                 if names is None or n.name in names]
        deadline = time.monotonic() + timeout
        while True:
            probes = probe_nodes(self.topology, nodes, timeout=0.5)
            if all(p.healthy for p in probes.values()):
                return
            if time.monotonic() >= deadline:
                raise RuntimeStateError(self._diagnosis(f"not healthy after {timeout:g}s", probes))
            time.sleep(0.1)

    def pids(self) -> dict[str, int]:
        """Live pids by node name, plus ``"supervisor"``."""
        snapshot = self.snapshot()
        out = {str(r["name"]): int(r["pid"]) for r in snapshot.get("processes", [])
               if isinstance(r.get("pid"), int)}
        sup = snapshot.get("supervisor", {}).get("pid")
        if isinstance(sup, int):
            out["supervisor"] = sup
        return out

    # --- operator actions -----------------------------------------------------------------------

    def _control(self) -> ControlClient:
        if not self.is_running():
            raise NothingRunningError(f"nothing running in {self.run_dir.path}")
        return ControlClient(self.run_dir.socket_path)

    def hold(self, zone: str | None = None, component: str | None = None,
             index: int | None = None, signal: str = "KILL") -> list[str]:
        """Signal the matching processes (KILL, TERM or STOP) and keep them down."""
        return self._control().hold(Selector(zone, component, index), signal)

    def release(self, zone: str | None = None, component: str | None = None,
                index: int | None = None) -> list[str]:
        """Resume held processes (SIGCONT the frozen, restart the killed)."""
        return self._control().release(Selector(zone, component, index))

    def signal(self, zone: str | None = None, component: str | None = None,
               index: int | None = None, signal: str = "KILL") -> list[str]:
        """Signal the matching processes without holding them: the policy restarts them."""
        return self._control().signal(Selector(zone, component, index), signal)

    # --- what clients need ----------------------------------------------------------------------

    @property
    def topology(self) -> Topology:
        """The resolved topology the stack runs (localized, with generated credentials)."""
        if self._topology is None:
            self._topology = self.run_dir.load_topology()
        return self._topology

    @property
    def api_key(self) -> str:
        return self.topology.auth.api_keys[0]

    @property
    def admin_token(self) -> str | None:
        return self.topology.auth.admin_token

    def lb_url(self, protocol: str = "http") -> str:
        """The OpenAI base URL on the LB listener, e.g. ``http://127.0.0.1:8000/v1``."""
        urls = Placement(self.topology).lb_urls()
        try:
            return urls[protocol.lower()]
        except KeyError:
            raise RuntimeStateError(
                f"the load balancer has no {protocol.upper()} listener "
                f"(listeners: {', '.join(urls) or 'none'})") from None

    @property
    def ca_cert(self) -> Path | None:
        return ca_cert_path(self.topology, self.run_dir.path)

    def node(self, name: str) -> Node:
        return Placement(self.topology).find(name)

    def __repr__(self) -> str:
        running = "running" if self.is_running() else "stopped"
        return f"<LocalStack {self.run_dir.path} {running}>"
