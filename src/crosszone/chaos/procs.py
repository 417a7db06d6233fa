"""Helper processes of experiments (burners, the delayer, the watchdog): spawn, check, end.

They are started detached (own session, no terminal, stdio to a log) so they outlive the CLI
that created them, and are only ever addressed by pid. Before a recorded pid is signalled its
command line must still name the helper module and the experiment UID, so a pid the kernel has
reused for something else is left alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from crosszone.runtime.processes import pid_alive

_children: set[int] = set()  # helpers this process spawned and has not reaped yet


def reap_children() -> None:
    """Collect helpers of ours that ended, so none lingers as a zombie."""
    for pid in list(_children):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _children.discard(pid)


def helper_argv(module: str, uid: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"crosszone.chaos.{module}", "--uid", uid, *args]


def spawn_detached(argv: list[str], log: Path | None = None,
                   pass_fds: tuple[int, ...] = ()) -> int:
    """Start ``argv`` in its own session; return its pid."""
    out = subprocess.DEVNULL if log is None else log.open("ab")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                close_fds=True, pass_fds=pass_fds)
    finally:
        if log is not None and not isinstance(out, int):
            out.close()
    # Detached on purpose: reap_children() collects it, so Popen must not warn or wait.
    proc.returncode = 0
    _children.add(proc.pid)
    reap_children()
    return proc.pid


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie counts as gone); the runtime's definition."""
    return pid_alive(pid)


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_helper(pid: int, module: str, uid: str) -> bool:
    """``pid`` is alive and is the ``module`` helper of experiment ``uid``."""
    argv = cmdline(pid)
    return (alive(pid) and f"crosszone.chaos.{module}" in argv
            and "--uid" in argv and uid in argv)


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait for ``pids`` to end (reaping our own children); the ones still alive after it."""
    remaining = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        reap_children()
        remaining = [pid for pid in remaining if alive(pid)]
        if not remaining or time.monotonic() >= deadline:
            return remaining
        time.sleep(0.02)


def stop_helpers(pids: Iterable[int], module: str, uid: str, grace: float = 2.0) -> list[int]:
    """SIGTERM the experiment's helpers, SIGKILL what survives ``grace``; pids left alive."""
    ours = [pid for pid in pids if is_helper(pid, module, uid)]
    for pid in ours:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    left = wait_gone(ours, grace)
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return wait_gone(left, 2.0)
