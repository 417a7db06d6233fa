"""One supervised process: its node, its current OS process, and its restart bookkeeping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crosszone.config import Node
from crosszone.runtime.listeners import Listeners
from crosszone.runtime.processes import die_with_parent, kill_quietly

STABLE_RUN_SECONDS = 10.0  # a run this long resets the restart backoff


def describe_exit(code: int) -> str:
    """``exited with 1`` or ``was killed by SIGKILL`` (a negative code is the signal)."""
    return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"


@dataclass
class Draining:
    """A predecessor finishing its requests while its successor already serves."""

    popen: subprocess.Popen[bytes]
    deadline: float  # monotonic: SIGKILLed after it


def component_argv(node: Node, topology_file: Path, run_dir: Path) -> list[str]:
    """``crosszone run ...`` for ``node``: what a one-component-per-host deployment runs."""
    where = ["--zone", node.zone, "--index", str(node.index)] if node.zone is not None else []
    return [sys.executable, "-m", "crosszone", "run", node.component, *where,
            "-c", str(topology_file), "--run-dir", str(run_dir)]


class ManagedProcess:
    """A node's process as the supervisor sees it.

    ``state`` is one of running, held (the operator holds it: not restarted), backoff (waiting to
    restart) and exited (gone, and the policy does not restart it); a worker slot its auto-scaling
    group does not use (``in_service`` False) is stopping (SIGTERM sent) or stopped.

    ``listeners`` (None: the process binds its own) are the node's listening sockets, which the
    supervisor holds across restarts and every incarnation inherits. A process restarted with
    :meth:`retire` goes on draining in ``draining`` while its successor serves.
    """

    def __init__(self, node: Node, argv: list[str], log_path: Path) -> None:
        self.node = node
        self.argv = argv
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None
        self.state = "backoff"
        self.held = False
        self.frozen = False  # SIGSTOPped
        self.starts = 0
        self.started_at: float | None = None  # wall clock, for people
        self.started_mono = 0.0
        self.next_start: float | None = 0.0  # monotonic; None: no start scheduled
        self.backoff = 0.0
        self.exit_code: int | None = None
        self.in_service = True  # worker slots: part of the zone's auto-scaling group now
        self.replacing: str | None = None  # why the group killed it: start a new one at once
        self.stop_deadline: float | None = None  # monotonic: SIGKILL a stopping slot after it
        self.listeners: Listeners | None = None
        self.draining: list[Draining] = []

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def restarts(self) -> int:
        return max(0, self.starts - 1)

    @property
    def alive(self) -> bool:
        """The process, or a predecessor still draining, has not been reaped yet."""
        return self.popen is not None or bool(self.draining)

    def start(self, now: float) -> int:
        """Spawn the process, output appended to its log; it dies with the supervisor.

        It inherits the listening sockets that are open (:meth:`Listeners.open` is the caller's).
        """
        inherited = self.listeners if self.listeners is not None else Listeners([])
        with self.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"--- {stamp} crosszone supervisor: starting {self.name} "
                      f"(start #{self.starts + 1})\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **inherited.environment()},
                pass_fds=inherited.fds(), preexec_fn=die_with_parent(signal.SIGKILL),
            )
        self.starts += 1
        self.state = "running"
        self.frozen = False
        self.exit_code = None
        self.started_at = time.time()
        self.started_mono = now
        self.next_start = None
        return self.popen.pid

    def reap(self) -> int | None:
        """The exit code if the process ended since the last call (negative: killed by signal)."""
        if self.popen is None:
            return None
        code = self.popen.poll()
        if code is None:
            return None
        self.popen = None
        self.frozen = False
        self.exit_code = code
        return code

    def retire(self, now: float, grace: float) -> int | None:
        """SIGTERM the process and keep it draining (SIGKILL after ``grace`` seconds), leaving
        the slot free for its successor; its pid, None if it is not running."""
        popen = self.popen
        if popen is None or not self.send(signal.SIGTERM):
            return None
        self.draining.append(Draining(popen, now + grace))
        self.popen, self.frozen = None, False
        return popen.pid

    def reap_draining(self, now: float) -> list[str]:
        """Forget the predecessors that have exited, SIGKILL those past their deadline."""
        actions: list[str] = []
        for old in list(self.draining):
            code = old.popen.poll()
            if code is not None:
                self.draining.remove(old)
                actions.append(f"{self.name}'s predecessor (pid {old.popen.pid}) "
                               f"{describe_exit(code)} after draining")
            elif now >= old.deadline:
                kill_quietly(old.popen.pid, signal.SIGKILL)
                old.deadline = float("inf")
                actions.append(f"{self.name}'s predecessor (pid {old.popen.pid}) did not "
                               "finish draining in time; killed")
        return actions

    def send_all(self, sig: signal.Signals) -> bool:
        """Signal the process and its draining predecessors; False if none was running."""
        sent = self.send(sig)
        for old in self.draining:
            if old.popen.poll() is None:
                kill_quietly(old.popen.pid, sig)
                sent = True
        return sent

    def wait_all(self) -> None:
        """Wait for the process and its predecessors (after SIGKILL: not long) and reap them."""
        for old in self.draining:
            old.popen.wait()
        self.draining.clear()
        if self.popen is not None:
            self.popen.wait()
            self.reap()

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the process to end (after SIGKILL: a few ms), without
        reaping it; True if it is gone."""
        if self.popen is None:
            return True
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def close_listeners(self) -> bool:
        """Stop holding the node's listening sockets; False if none were open."""
        return self.listeners is not None and self.listeners.close()

    def send(self, sig: signal.Signals) -> bool:
        if self.popen is None or self.popen.poll() is not None:
            return False
        kill_quietly(self.popen.pid, sig)
        if sig == signal.SIGSTOP:
            self.frozen = True
        elif sig == signal.SIGCONT:
            self.frozen = False
        elif self.frozen and sig != signal.SIGKILL:
            kill_quietly(self.popen.pid, signal.SIGCONT)  # a frozen process cannot act on TERM
            self.frozen = False
        return True

    def schedule_restart(self, now: float, initial: float, maximum: float) -> float:
        """Exponential backoff; a run longer than STABLE_RUN_SECONDS starts it over."""
        if now - self.started_mono > STABLE_RUN_SECONDS or self.backoff <= 0:
            self.backoff = initial
        delay = self.backoff
        self.backoff = min(max(self.backoff * 2, initial), maximum)
        self.state = "backoff"
        self.next_start = now + delay
        return delay

    def record(self) -> dict[str, Any]:
        node = self.node
        return {"name": node.name, "zone": node.zone, "component": node.component,
                "index": node.index, "host": node.host, "port": node.port, "pid": self.pid,
                "state": self.state, "frozen": self.frozen, "restarts": self.restarts,
                "started_at": self.started_at, "exit_code": self.exit_code,
                "in_service": self.in_service,
                "draining_pids": [old.popen.pid for old in self.draining],
                "log": str(self.log_path)}

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} {self.state} pid={self.pid} restarts={self.restarts}>"
