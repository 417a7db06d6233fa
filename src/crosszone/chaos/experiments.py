"""Experiments: a UID per fault, persisted, destroyable from any process, expiring on their own.

``<run_dir>/chaos/experiments.json`` holds every experiment with its fault's spec and state, and
is rewritten (atomically, under a lock) whenever either changes — including mid-apply, before each
step that creates something — so ``chaos destroy UID`` removes the fault after the CLI that
created it crashed. An experiment with a timeout gets a detached watchdog process
(:mod:`crosszone.chaos.watchdog`) that destroys it when the time is up even if nothing else runs;
its helpers (burners, delayer) also stop by themselves shortly after.

Statuses: ``creating`` → ``active`` → ``destroyed``; ``failed`` when applying raised (what had been
applied was removed again).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crosszone.chaos import cpu, network, process  # noqa: F401  (registers the fault kinds)
from crosszone.chaos.base import FaultInjector, injector_from_record
from crosszone.chaos.procs import helper_argv, is_helper, spawn_detached, stop_helpers
from crosszone.errors import ChaosError, ExperimentNotFound, InvalidExperiment

HELPER_GRACE_SECONDS = 15.0  # helpers outlive a timed experiment by this much at most
LIVE = ("creating", "active")


def new_uid() -> str:
    return secrets.token_hex(8)


@dataclass
class Experiment:
    uid: str
    kind: str
    description: str
    spec: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)
    status: str = "creating"
    created_at: float = field(default_factory=time.time)
    timeout: float | None = None
    expires_at: float | None = None
    destroyed_at: float | None = None
    watchdog_pid: int | None = None
    error: str | None = None

    def injector(self) -> FaultInjector:
        return injector_from_record(self.uid, {"kind": self.kind, "spec": self.spec,
                                               "state": self.state})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Experiment:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


class ExperimentStore:
    """The run directory's experiments file."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir) / "chaos"
        self.path = self.dir / "experiments.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ChaosError(f"cannot use {self.dir}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> dict[str, Experiment]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ChaosError(f"cannot read {self.path}: {exc}") from exc
        items = data.get("experiments", []) if isinstance(data, dict) else []
        try:
            return {e["uid"]: Experiment.from_json(e) for e in items if isinstance(e, dict)}
        except (KeyError, TypeError) as exc:
            raise ChaosError(f"{self.path} holds a malformed experiment: {exc}") from exc

    def _write(self, experiments: dict[str, Experiment]) -> None:
        text = json.dumps({"experiments": [e.to_json() for e in experiments.values()]}, indent=2)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(text + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ChaosError(f"cannot write {self.path}: {exc.strerror}") from exc

    def all(self) -> list[Experiment]:
        with self._locked():
            return list(self._read().values())

    def get(self, uid: str) -> Experiment:
        with self._locked():
            found = self._read().get(uid)
        if found is None:
            raise ExperimentNotFound(f"no chaos experiment {uid!r} in {self.path}")
        return found

    def put(self, experiment: Experiment) -> None:
        with self._locked():
            experiments = self._read()
            experiments[experiment.uid] = experiment
            self._write(experiments)

    def update(self, uid: str, change: Callable[[Experiment], None]) -> Experiment:
        with self._locked():
            experiments = self._read()
            if uid not in experiments:
                raise ExperimentNotFound(f"no chaos experiment {uid!r} in {self.path}")
            change(experiments[uid])
            self._write(experiments)
            return experiments[uid]


class ExperimentRunner:
    """Create, list and destroy experiments of one run directory."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir).absolute()
        self.store = ExperimentStore(self.run_dir)

    def log_path(self, uid: str) -> Path:
        return self.store.dir / f"{uid}.log"

    def create(self, injector: FaultInjector, timeout: float | None = None) -> Experiment:
        """Apply ``injector`` as a new experiment; with ``timeout`` it destroys itself."""
        if timeout is not None and timeout <= 0:
            raise InvalidExperiment(f"--timeout must be positive (got {timeout:g})")
        now = time.time()
        expires = now + timeout if timeout is not None else None
        if expires is not None:
            injector.spec["until"] = expires + HELPER_GRACE_SECONDS
        injector.spec["log"] = str(self.log_path(injector.uid))
        experiment = Experiment(injector.uid, injector.kind, injector.describe(), injector.spec,
                                created_at=now, timeout=timeout, expires_at=expires)
        self.store.put(experiment)

        def save(fault: FaultInjector) -> None:
            self.store.update(fault.uid, lambda e: setattr(e, "state", dict(fault.state)))

        injector.on_checkpoint = save
        try:
            injector.apply()
            watchdog = self._start_watchdog(injector) if expires is not None else None
        except BaseException as exc:
            error = str(exc) or type(exc).__name__

            def failed(e: Experiment) -> None:
                e.status, e.error, e.state = "failed", error, dict(injector.state)
            with contextlib.suppress(ChaosError):
                self.store.update(injector.uid, failed)
            raise

        def activated(e: Experiment) -> None:
            e.state, e.watchdog_pid = dict(injector.state), watchdog
            if e.status == "creating":  # not destroyed meanwhile
                e.status = "active"
        experiment = self.store.update(injector.uid, activated)
        if experiment.status != "active":
            injector.remove()
        return experiment

    def _start_watchdog(self, injector: FaultInjector) -> int:
        argv = helper_argv("watchdog", injector.uid, "--run-dir", str(self.run_dir))
        try:
            return spawn_detached(argv, self.log_path(injector.uid))
        except OSError as exc:
            injector.remove()  # a timed fault without its watchdog must not stay
            raise ChaosError(f"cannot start the watchdog of {injector.uid}: {exc}") from exc

    def status(self, uid: str | None = None) -> list[Experiment]:
        if uid is not None:
            return [self.store.get(uid)]
        return sorted(self.store.all(), key=lambda e: e.created_at)

    def is_active(self, uid: str) -> bool:
        """Whether any part of the fault is in place right now (asks the system, not the file)."""
        return self.store.get(uid).injector().is_active()

    def destroy(self, uid: str) -> Experiment:
        """Remove the fault (idempotent) and mark the experiment destroyed."""
        experiment = self.store.get(uid)
        injector = experiment.injector()
        try:
            injector.remove()
        except ChaosError as exc:
            error = f"destroy failed: {exc}"
            self.store.update(uid, lambda e: setattr(e, "error", error))
            raise
        watchdog = experiment.watchdog_pid
        if watchdog is not None and watchdog != os.getpid() and is_helper(watchdog, "watchdog",
                                                                           uid):
            stop_helpers([watchdog], "watchdog", uid)

        def destroyed(e: Experiment) -> None:
            if e.status != "destroyed":
                e.status, e.destroyed_at = "destroyed", time.time()
        return self.store.update(uid, destroyed)

    def destroy_all(self) -> list[Experiment]:
        """Destroy every experiment not yet destroyed (drills end with this)."""
        return [self.destroy(e.uid) for e in self.status() if e.status != "destroyed"]

    def reap_expired(self, now: float | None = None) -> list[str]:
        """Destroy live experiments past their expiry (in case their watchdog was killed)."""
        now = time.time() if now is None else now
        expired = [e.uid for e in self.status() if e.status in LIVE
                   and e.expires_at is not None and now >= e.expires_at + 1.0]
        for uid in expired:
            self.destroy(uid)
        return expired
