"""Process faults through the supervisor: kill or freeze a zone's processes, or the whole zone.

The supervisor owns the processes, so faults go through its control API
(:class:`crosszone.runtime.stack.LocalStack`): ``hold`` signals them (SIGKILL, or SIGSTOP) and
keeps them from being restarted; removal is ``release`` with the same selectors (SIGCONT for the
frozen, a start for the killed). With ``hold`` off, ``kill`` is a one-shot SIGKILL that the
supervisor's restart policy answers, and there is nothing to remove.

The selectors are recorded before any signal is sent, so ``chaos destroy`` releases exactly
what was held even after the CLI crashed. A stack that is no longer running has nothing left to
release.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from crosszone.chaos.base import FaultInjector
from crosszone.errors import ChaosError, InvalidExperiment, RuntimeStateError

COMPONENTS = ("worker", "gateway", "controller", "store", "lb")
SIGNALS = ("KILL", "STOP")


class ProcessControl(Protocol):
    """What process faults need from the supervisor (LocalStack has it)."""

    def is_running(self) -> bool: ...
    def snapshot(self) -> dict[str, Any]: ...
    def hold(self, zone: str | None = None, component: str | None = None,
             index: int | None = None, signal: str = "KILL") -> list[str]: ...
    def release(self, zone: str | None = None, component: str | None = None,
                index: int | None = None) -> list[str]: ...
    def signal(self, zone: str | None = None, component: str | None = None,
               index: int | None = None, signal: str = "KILL") -> list[str]: ...


def supervisor_control(run_dir: str | Path) -> ProcessControl:
    from crosszone.runtime.stack import LocalStack  # the runtime is only needed here

    return LocalStack(run_dir)


def _selector(zone: object, component: object, index: object) -> dict[str, Any]:
    return {"zone": zone if isinstance(zone, str) else None,
            "component": component if isinstance(component, str) else None,
            "index": index if isinstance(index, int) else None}


class ProcessFault(FaultInjector):
    """SIGKILL or SIGSTOP ``count`` (default: all) processes of a component in a zone."""

    kind = "process"

    def __init__(self, uid: str, spec: dict[str, Any]) -> None:
        super().__init__(uid, spec)
        self.run_dir = str(spec.get("run_dir") or "")
        self.zone = spec.get("zone") if isinstance(spec.get("zone"), str) else None
        self.component = spec.get("component") if isinstance(spec.get("component"), str) \
            else None
        self.signal = str(spec.get("signal", "KILL")).upper().removeprefix("SIG")
        count = spec.get("count")
        self.count = count if isinstance(count, int) else None
        self.hold = bool(spec.get("hold", True))
        if not self.run_dir:
            raise InvalidExperiment("process faults need the run directory of a running stack")
        if self.component is not None and self.component not in COMPONENTS:
            raise InvalidExperiment(f"--component must be one of {', '.join(COMPONENTS)} "
                             f"(got {self.component!r})")
        if self.signal not in SIGNALS:
            raise InvalidExperiment(f"process faults send KILL or STOP (got {self.signal!r})")
        if self.zone is None and self.component is None:
            raise InvalidExperiment("select processes by --zone and/or --component")
        if self.count is not None and self.count < 1:
            raise InvalidExperiment(f"--count must be at least 1 (got {self.count})")

    def control(self) -> ProcessControl:
        return supervisor_control(self.run_dir)

    def _targets(self, control: ProcessControl) -> list[dict[str, Any]]:
        records = [r for r in control.snapshot().get("processes", []) if isinstance(r, dict)]
        matching = [r for r in records
                    if (self.zone is None or r.get("zone") == self.zone)
                    and (self.component is None or r.get("component") == self.component)
                    and r.get("state") == "running"]
        if not matching:
            raise ChaosError(f"no running process matches {self._what()}")
        if self.count is None:
            return [_selector(self.zone, self.component, None)]
        matching.sort(key=lambda r: (str(r.get("zone")), str(r.get("component")),
                                     int(r.get("index") or 0)))
        return [_selector(r.get("zone"), r.get("component"), r.get("index"))
                for r in matching[: self.count]]

    def _apply(self) -> None:
        control = self.control()
        targets = self._targets(control)
        self.state["selectors"] = targets if self.hold else []
        self.checkpoint()
        names: list[str] = []
        for sel in targets:
            if self.hold:
                names += control.hold(signal=self.signal, **sel)
            else:
                names += control.signal(signal=self.signal, **sel)
        self.state["names"] = names
        self.checkpoint()

    def _selectors(self) -> list[dict[str, Any]]:
        saved = self.state.get("selectors") or []
        return [_selector(s.get("zone"), s.get("component"), s.get("index"))
                for s in saved if isinstance(s, dict)] if isinstance(saved, list) else []

    def _remove(self) -> None:
        selectors = self._selectors()
        if not selectors:
            return
        control = self.control()
        if not control.is_running():
            return  # the stack is down: the processes it held went with it
        for sel in selectors:
            try:
                control.release(**sel)
            except RuntimeStateError as exc:
                if control.is_running():
                    raise ChaosError(f"cannot release {sel}: {exc}") from exc

    def _active(self) -> bool:
        selectors = self._selectors()
        if not selectors:
            return False
        control = self.control()
        if not control.is_running():
            return False
        records = [r for r in control.snapshot().get("processes", []) if isinstance(r, dict)]
        return any(r.get("state") == "held" and all(
            v is None or r.get(k) == v for k, v in sel.items()) for sel in selectors
            for r in records)

    def _what(self) -> str:
        parts = [f"zone {self.zone}" if self.zone else "", self.component or "every component"]
        return " ".join(p for p in parts if p)

    def _describe(self) -> str:
        how = {"KILL": "kill", "STOP": "freeze (SIGSTOP)"}[self.signal]
        count = f"{self.count} of " if self.count else "all of "
        held = ", held down until destroyed" if self.hold else ", restarted by the supervisor"
        return f"{how} {count}{self._what()}{held}"


class ZoneDown(ProcessFault):
    """Every process of a zone, killed and held down."""

    kind = "zone-down"

    def __init__(self, uid: str, spec: dict[str, Any]) -> None:
        super().__init__(uid, {**spec, "component": None, "count": None, "hold": True})
        if self.zone is None:
            raise InvalidExperiment("zone down needs --zone")

    def _describe(self) -> str:
        how = "frozen" if self.signal == "STOP" else "killed"
        return f"zone {self.zone} down: every process {how} and held until destroyed"
