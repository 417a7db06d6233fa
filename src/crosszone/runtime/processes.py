"""Process primitives: liveness by pid, signals by name, children that die with their parent.

Processes are only ever addressed by pid, never by name. Before a pid recorded earlier is
signalled, its command line is checked to still be a crosszone process, so a pid the kernel has
since reused for something else is left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Callable, Iterable

PR_SET_PDEATHSIG = 1

SIGNALS: dict[str, signal.Signals] = {
    "KILL": signal.SIGKILL,
    "TERM": signal.SIGTERM,
    "INT": signal.SIGINT,
    "STOP": signal.SIGSTOP,
    "CONT": signal.SIGCONT,
    "HUP": signal.SIGHUP,
}


def signal_from_name(name: str) -> signal.Signals:
    """``"KILL"``, ``"SIGKILL"`` or ``"kill"`` -> SIGKILL; ValueError for anything else."""
    key = name.upper().removeprefix("SIG")
    if key not in SIGNALS:
        raise ValueError(f"unknown signal {name!r} (one of {', '.join(SIGNALS)})")
    return SIGNALS[key]


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return True  # no procfs: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def is_crosszone_process(pid: int) -> bool:
    """True if ``pid`` is alive and its command line is crosszone's (guards against pid reuse)."""
    if not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except OSError:
        return True  # no procfs: cannot tell, trust the record
    return b"crosszone" in cmdline


def send_signal(pid: int, sig: signal.Signals) -> bool:
    """Signal ``pid`` if it is still a crosszone process; False if it is gone."""
    if not is_crosszone_process(pid):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pids: Iterable[int], timeout: float,
              reap: Callable[[], object] | None = None) -> list[int]:
    """Wait until every pid is gone; return those still alive after ``timeout`` seconds."""
    remaining = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        if reap is not None:
            reap()
        remaining = [pid for pid in remaining if pid_alive(pid)]
        if not remaining or time.monotonic() >= deadline:
            return remaining
        time.sleep(0.05)


def _load_prctl() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return prctl


def die_with_parent(sig: signal.Signals = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child receive ``sig`` when the process that spawns it dies.

    Linux delivers the signal when the spawning *thread* exits, so spawn from a thread that lives
    as long as the parent. None where prctl is unavailable.
    """
    prctl = _load_prctl()  # resolved before fork: the child only makes the call
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


def kill_quietly(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
