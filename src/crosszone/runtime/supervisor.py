"""The local supervisor: one child process per node, restarted per ``topology.supervision``.

Run as ``python -m crosszone.runtime.supervisor --run-dir D`` (``crosszone up`` does it, detached).
Each tick is one :meth:`Supervisor.run_cycle` (observe exits, decide by policy, act) returning a
sentence saying what it did. Workers belong to their zone's auto-scaling group
(:mod:`crosszone.runtime.groups`): every slot up to ``max_size`` is known, the first
``desired`` run (``desired_capacity`` at start, then what the controllers decide), a dead worker
is always replaced, and with ``health_check_type: ELB`` so is one that fails its health checks.
Children get PR_SET_PDEATHSIG=SIGKILL so none outlives a dead supervisor. On SIGTERM/SIGINT or
``POST /stop`` every child gets SIGCONT and SIGTERM, then SIGKILL after STOP_GRACE_SECONDS.

The load balancer's listening sockets belong to the supervisor (:mod:`crosszone.runtime.listeners`):
bound before its first start, inherited by every incarnation, closed only when none is to run
(held, exited for good, stopping). A SIGTERM sent through :meth:`Supervisor.signal` under
``restart: always`` starts the successor at once, while the old process drains
(:meth:`ManagedProcess.retire`): a restart costs clients no refused connection and little delay.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from typing import Any

from crosszone.config import Placement, Topology
from crosszone.errors import CrosszoneError
from crosszone.runtime.child import ManagedProcess, component_argv, describe_exit
from crosszone.runtime.control import Selector, create_control_app, start_control_server
from crosszone.runtime.groups import WorkerGroups
from crosszone.runtime.listeners import Listeners
from crosszone.runtime.processes import signal_from_name
from crosszone.runtime.rundir import RunDir
from crosszone.runtime.serve import listen_addresses

TICK_SECONDS = 0.1
STOP_GRACE_SECONDS = 5.0
KILL_WAIT_SECONDS = 1.0  # hold(KILL) returns once the processes are gone, or after this
DRAIN_GRACE_SECONDS = 30.0  # a retired process still draining is SIGKILLed after this
# Whose listening sockets the supervisor holds across restarts: the LB's, which no one in front
# retries. A gateway or worker that is down must refuse at once, so that the hop in front
# (LB, gateway) retries another zone or worker instead of waiting in a dead process's backlog;
# stores and monitors must not run twice at once (one writer per database).
HANDOFF_COMPONENTS = frozenset({"lb"})

log = logging.getLogger("crosszone.supervisor")


class Supervisor:
    def __init__(self, topology: Topology, run_dir: RunDir) -> None:
        self.topology = topology
        self.run_dir = run_dir
        self.policy = topology.supervision
        self.state = "running"
        self.started_at = time.time()
        placement = Placement(topology)
        nodes = placement.all_nodes()
        spare = [w for z in topology.zone_names() for w in placement.max_workers(z)
                 if w.index > topology.worker_group_of(z).desired_capacity]
        self.slots = [
            ManagedProcess(node, component_argv(node, run_dir.topology_file, run_dir.path),
                           run_dir.log_for(node.name))
            for node in nodes + spare
        ]
        for proc in self.slots[len(nodes):]:  # scale-out slots: not started until needed
            proc.in_service, proc.state, proc.next_start = False, "stopped", None
        for proc in self.slots:
            if proc.node.component in HANDOFF_COMPONENTS:
                proc.listeners = Listeners(listen_addresses(topology, proc.node))
        self.groups = WorkerGroups(topology)

    @property
    def processes(self) -> list[ManagedProcess]:
        """Every node's process, and the worker slots in service (or still stopping)."""
        return [p for p in self.slots if p.in_service or p.alive]

    # --- the supervision loop ------------------------------------------------------------------

    def run_cycle(self, now: float | None = None) -> str:
        """Reap exited children, resize the worker groups, replace unhealthy workers, schedule
        restarts per policy, and start those whose time has come."""
        now = time.monotonic() if now is None else now
        actions: list[str] = []
        for proc in self.slots:
            actions += proc.reap_draining(now)
            code = proc.reap()
            if code is not None:
                actions.append(self._decide(proc, code, now))
        actions += self._resize(now)
        actions += self._replace_unhealthy()
        for proc in self.slots:
            if proc.state == "backoff" and proc.next_start is not None and now >= proc.next_start:
                actions.append(self._start(proc, now))
            elif proc.popen is None and proc.state != "backoff" and proc.close_listeners():
                actions.append(f"closed the listening sockets of {proc.name} ({proc.state})")
        if actions:
            self.write_state()
            return "; ".join(actions)
        running = sum(p.state == "running" for p in self.processes)
        return f"no change: {running}/{len(self.processes)} running"

    def _decide(self, proc: ManagedProcess, code: int, now: float) -> str:
        how = describe_exit(code)
        if not proc.in_service:
            proc.state, proc.stop_deadline = "stopped", None
            return f"{proc.name} {how}; stopped (scaled in)"
        if proc.held:
            proc.state = "held"
            return f"{proc.name} {how}; held"
        if proc.replacing is not None:
            proc.replacing, proc.backoff = None, 0.0
            proc.state, proc.next_start = "backoff", now
            return f"{proc.name} {how}; starting its replacement"
        restart = self.policy.restart
        if restart == "always" or (restart == "on-failure" and code != 0):
            delay = proc.schedule_restart(now, self.policy.backoff_initial_seconds,
                                          self.policy.backoff_max_seconds)
            return f"{proc.name} {how}; restarting in {delay:.1f}s"
        if proc.node.component == "worker":  # a group replaces its dead workers (EC2 check)
            delay = proc.schedule_restart(now, self.policy.backoff_initial_seconds,
                                          self.policy.backoff_max_seconds)
            return f"{proc.name} {how}; its worker group replaces it in {delay:.1f}s"
        proc.state = "exited"
        proc.next_start = None
        return f"{proc.name} {how}; not restarted (restart: {restart})"

    # --- the auto-scaling groups -----------------------------------------------------------------

    def _resize(self, now: float) -> list[str]:
        """Put worker slots 1..desired of every zone in service, take the others out."""
        actions: list[str] = []
        for zone in self.topology.zone_names():
            desired = self.groups.desired.desired(zone)
            for proc in self.slots:
                if proc.node.zone != zone or proc.node.component != "worker":
                    continue
                wanted = proc.node.index <= desired
                if wanted and not proc.in_service:
                    actions.append(f"{zone} scales out to {desired}: {proc.name} joins")
                    proc.in_service, proc.held, proc.backoff = True, False, 0.0
                    proc.stop_deadline = None
                    if proc.popen is None:
                        proc.state, proc.next_start = "backoff", now
                    else:  # still stopping: it is restarted once it has exited
                        proc.state = "running"
                elif not wanted and proc.in_service:
                    proc.in_service, proc.held, proc.replacing = False, False, None
                    proc.next_start = None
                    if proc.send(signal.SIGTERM):
                        proc.state, proc.stop_deadline = "stopping", now + STOP_GRACE_SECONDS
                        actions.append(f"{zone} scales in to {desired}: stopping {proc.name}")
                    else:
                        proc.state = "stopped"
                        actions.append(f"{zone} scales in to {desired}: {proc.name} leaves")
                if proc.stop_deadline is not None and now >= proc.stop_deadline:
                    proc.stop_deadline = None
                    if proc.send(signal.SIGKILL):
                        actions.append(f"{proc.name} did not stop within "
                                       f"{STOP_GRACE_SECONDS:g}s; killed")
        return actions

    def _replace_unhealthy(self) -> list[str]:
        """Kill the workers their ELB health checks condemned; run_cycle starts new ones."""
        actions: list[str] = []
        for proc in self.slots:
            if proc.replacing is not None or not self.groups.health.eligible(proc,
                                                                               self.gateway_up):
                continue
            reason = self.groups.health.verdict(proc)
            if reason is not None:
                actions.append(f"replacing {proc.name} (pid {proc.pid}): {reason}")
                proc.replacing = reason
                proc.send(signal.SIGKILL)
        return actions

    def gateway_up(self, zone: str) -> bool:
        """The zone's gateway (the workers' load balancer) runs and is not frozen."""
        return any(p.node.zone == zone and p.node.component == "gateway"
                   and p.state == "running" and not p.frozen for p in self.slots)

    def _start(self, proc: ManagedProcess, now: float) -> str:
        verb = "restarted" if proc.starts else "started"
        note = ""
        if proc.listeners is not None:
            try:
                proc.listeners.open()
            except CrosszoneError as exc:  # the child binds itself, and says why it cannot
                note = f" binding its own sockets ({exc})"
        try:
            pid = proc.start(now)
        except OSError as exc:
            delay = proc.schedule_restart(now, self.policy.backoff_initial_seconds,
                                          self.policy.backoff_max_seconds)
            return f"cannot start {proc.name} ({exc}); retrying in {delay:.1f}s"
        return f"{verb} {proc.name} (pid {pid}){note}"

    def _hands_over(self, proc: ManagedProcess) -> bool:
        """Can a successor start now on ``proc``'s sockets while it drains?"""
        return (proc.listeners is not None and proc.listeners.is_open
                and self.policy.restart == "always" and proc.in_service and not proc.held
                and proc.state == "running" and proc.popen is not None)

    def _restart_overlapping(self, proc: ManagedProcess, now: float) -> str:
        """SIGTERM ``proc`` and start its successor at once on the same listening sockets."""
        old = proc.retire(now, DRAIN_GRACE_SECONDS)
        if old is None:
            return f"{proc.name} is not running"
        return f"{proc.name} (pid {old}) drains; {self._start(proc, now)}"

    # --- operator actions (the control API) -----------------------------------------------------

    def select(self, selector: Selector) -> list[ManagedProcess]:
        return [p for p in self.slots if p.in_service and selector.matches(p.node)]

    def hold(self, selector: Selector, signal_name: str) -> list[str]:
        """Signal the matching processes and keep them from being restarted until released."""
        sig = signal_from_name(signal_name)
        matched = self.select(selector)
        for proc in matched:
            proc.held = True
            proc.state = "held"
            proc.next_start = None
            proc.send(sig)
            if sig != signal.SIGSTOP:  # it stops serving now: refuse, do not queue
                proc.close_listeners()
        if sig == signal.SIGKILL:
            # "held" means dead when this returns: a SIGKILLed process still runs until the
            # kernel next schedules it, which on a loaded machine is not at once
            gone_by = time.monotonic() + KILL_WAIT_SECONDS
            for proc in matched:
                proc.wait_exit(max(0.0, gone_by - time.monotonic()))
        if matched:
            log.info("held %s with SIG%s", ", ".join(p.name for p in matched), signal_name)
            self.write_state()
        return [p.name for p in matched]

    def release(self, selector: Selector) -> list[str]:
        """Resume frozen processes, start killed ones now; the backoff starts over."""
        matched = self.select(selector)
        now = time.monotonic()
        for proc in matched:
            proc.reap()
            proc.held = False
            proc.backoff = 0.0
            if proc.pid is not None and proc.popen is not None and proc.popen.poll() is None:
                proc.send(signal.SIGCONT)
                proc.state = "running"
            elif proc.state in ("held", "exited", "backoff"):
                log.info("%s", self._start(proc, now))
        if matched:
            log.info("released %s", ", ".join(p.name for p in matched))
            self.write_state()
        return [p.name for p in matched]

    def signal(self, selector: Selector, signal_name: str) -> list[str]:
        """Send a signal without holding: a process it ends is restarted per policy. A process
        whose sockets the supervisor holds is replaced at once on SIGTERM/SIGINT (restart:
        always) and drains meanwhile."""
        sig = signal_from_name(signal_name)
        matched = self.select(selector)
        now = time.monotonic()
        for proc in matched:
            if sig in (signal.SIGTERM, signal.SIGINT) and self._hands_over(proc):
                log.info("%s", self._restart_overlapping(proc, now))
            else:
                proc.send(sig)
        if matched:
            log.info("sent SIG%s to %s", signal_name, ", ".join(p.name for p in matched))
            self.write_state()
        return [p.name for p in matched]

    # --- state and shutdown ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {"supervisor": {"pid": os.getpid(), "state": self.state,
                               "started_at": self.started_at},
                "updated_at": time.time(),
                "processes": [p.record() for p in self.processes],
                "groups": self.groups.snapshot(self.slots)}

    def write_state(self) -> None:
        try:
            self.run_dir.write_state(self.snapshot())
        except OSError as exc:  # a missing run dir must not kill the supervision loop
            log.error("cannot write %s: %s", self.run_dir.state_file, exc)

    async def stop_all(self, grace: float = STOP_GRACE_SECONDS) -> str:
        """SIGCONT + SIGTERM every child, SIGKILL those still alive after ``grace`` seconds."""
        self.state = "stopping"
        count = len(self.processes)
        for proc in self.slots:
            proc.held = True  # nothing restarts from here on
            proc.close_listeners()
            proc.send_all(signal.SIGCONT)
            proc.send(signal.SIGTERM)  # those draining have had theirs
        self.write_state()
        deadline = time.monotonic() + grace
        while any(p.alive for p in self.slots):
            now = time.monotonic()
            for proc in self.slots:
                proc.reap_draining(now)
                proc.reap()
            if now >= deadline:
                break
            await asyncio.sleep(0.05)
        killed = [p.name for p in self.slots if p.send_all(signal.SIGKILL)]
        for proc in self.slots:
            proc.wait_all()
            proc.state = "exited" if proc.in_service else "stopped"
        self.state = "stopped"
        self.write_state()
        extra = f"; SIGKILLed {', '.join(killed)} after {grace:g}s" if killed else ""
        return f"stopped {count} processes{extra}"


async def supervise(run_dir: RunDir) -> int:
    topology = run_dir.load_topology()
    supervisor = Supervisor(topology, run_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    supervisor.write_state()
    control = await start_control_server(run_dir.socket_path,
                                         create_control_app(supervisor, stop))
    log.info("supervisor pid %d: %d processes, control socket %s", os.getpid(),
             len(supervisor.processes), run_dir.socket_path)
    groups = asyncio.create_task(supervisor.groups.run(lambda: supervisor.processes,
                                                       supervisor.gateway_up),
                                 name="worker-groups")
    try:
        last = ""
        while not stop.is_set():
            sentence = supervisor.run_cycle()
            if sentence != last:
                log.info("%s", sentence)
                last = sentence
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK_SECONDS)
        log.info("stopping")
    finally:
        groups.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await groups
        log.info("%s", await supervisor.stop_all())
        await control.cleanup()
        run_dir.socket_path.unlink(missing_ok=True)
    log.info("supervisor exits")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crosszone.runtime.supervisor")
    parser.add_argument("--run-dir", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s [supervisor] %(message)s")
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        return int(runner(supervise(RunDir.at(args.run_dir))))
    except CrosszoneError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
