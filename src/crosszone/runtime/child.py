"""One supervised process: its node, its current OS process, and its restart bookkeeping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from crosszone.config import Node
from crosszone.runtime.processes import die_with_parent, kill_quietly

STABLE_RUN_SECONDS = 10.0  # a run this long resets the restart backoff


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

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def restarts(self) -> int:
        return max(0, self.starts - 1)

    def start(self, now: float) -> int:
        """Spawn the process, output appended to its log; it dies with the supervisor."""
        with self.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"--- {stamp} crosszone supervisor: starting {self.name} "
                      f"(start #{self.starts + 1})\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=die_with_parent(signal.SIGKILL),
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
                "log": str(self.log_path)}

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} {self.state} pid={self.pid} restarts={self.restarts}>"
