"""Inject and heal a scenario's faults on schedule, recording when each really happened.

Every fault is a :class:`~crosszone.chaos.api.Chaos` experiment (created with a timeout a little
past its scheduled heal, so its watchdog heals it even if the drill dies) or, for the composite
kinds, a sequence of them (``flap``: zone down/up cycles) or of supervisor actions
(``rolling-restart``: one process at a time, each back and healthy before the next). The chaos
API is synchronous, so calls run in a thread while the workload keeps going.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from crosszone.chaos.api import Chaos
from crosszone.chaos.experiments import Experiment
from crosszone.drills.scenario import COMPONENTS, FaultSpec
from crosszone.errors import CrosszoneError, DrillError
from crosszone.runtime.stack import LocalStack
from crosszone.workload.product import sleep_until

WATCHDOG_MARGIN_SECONDS = 30.0
RESTART_WAIT_SECONDS = 30.0
RESTART_ORDER = ("worker", "store", "gateway", "controller", "lb")


@dataclass
class FaultRecord:
    index: int
    kind: str
    description: str = ""
    zones: list[str] = field(default_factory=list)
    start: float | None = None  # drill seconds
    end: float | None = None
    uids: list[str] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)  # sub-steps
    error: str | None = None

    @property
    def label(self) -> str:
        where = f" {','.join(self.zones)}" if self.zones else ""
        return f"#{self.index} {self.kind}{where}"

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "kind": self.kind, "description": self.description,
                "zones": self.zones, "start": _r(self.start), "end": _r(self.end),
                "uids": self.uids, "error": self.error,
                "events": [{"at": _r(t), "what": w} for t, w in self.events]}


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class FaultRunner:
    """Runs one fault of the scenario against a stack."""

    def __init__(self, index: int, spec: FaultSpec, stack: LocalStack, chaos: Chaos,
                 now: Callable[[], float], stop: asyncio.Event,
                 resolve_zone: Callable[[str], tuple[str, str | None]]) -> None:
        self.spec = spec
        self.stack = stack
        self.chaos = chaos
        self.now = now
        self.stop = stop
        self.resolve_zone = resolve_zone  # "@leader" -> (zone, note)
        self.record = FaultRecord(index, spec.kind)
        self._live: list[str] = []  # uids not yet destroyed

    async def run(self) -> FaultRecord:
        spec = self.spec
        if not await sleep_until(self.now, spec.at, self.stop):
            self.record.error = "not injected: the drill stopped first"
            return self.record
        try:
            if spec.kind == "flap":
                await self._flap()
            elif spec.kind == "rolling-restart":
                await self._rolling_restart()
            else:
                await self._inject(self._create)
                await sleep_until(self.now, spec.end, self.stop)
        except CrosszoneError as exc:
            self.record.error = str(exc)
        finally:
            await asyncio.shield(self._heal())
        return self.record

    # --- one experiment --------------------------------------------------------------------------

    def _zone(self, name: str | None) -> str:
        if name is None:
            raise DrillError(f"fault #{self.record.index} ({self.spec.kind}) needs a zone")
        zone, note = self.resolve_zone(name)
        if note:
            self.record.events.append((self.now(), note))
        return zone

    def _create(self) -> Experiment:
        s, c = self.spec, self.chaos
        timeout = max(s.end - self.now(), 1.0) + WATCHDOG_MARGIN_SECONDS
        if s.kind == "network-partition":
            zones = [self._zone(z) for z in (s.zones or [s.zone or ""])]
            self.record.zones = zones
            return c.network_partition(zones, None, s.include_clients, timeout)
        if s.kind in ("process-kill", "process-stop"):
            zone = self._zone(s.zone) if s.zone else None
            self.record.zones = [zone] if zone else []
            signal = "KILL" if s.kind == "process-kill" else "STOP"
            return c.process_fault(zone, s.component or "", signal, s.count, True, timeout)
        zone = self._zone(s.zone)
        self.record.zones = [zone]
        if s.kind == "network-loss":
            return c.network_loss(zone, s.percent, s.peer_zone, timeout)
        if s.kind == "network-delay":
            return c.network_delay(zone, s.time_ms or 0.0, s.offset_ms, s.peer_zone, timeout)
        if s.kind == "cpu-fullload":
            return c.cpu_fullload(zone, s.workers, s.cpu_percent, timeout)
        if s.kind == "zone-down":
            return c.zone_down(zone, timeout)
        raise DrillError(f"fault kind {s.kind!r} is not a single experiment")

    async def _inject(self, create: Callable[[], Experiment]) -> Experiment:
        at = self.now()
        experiment = await asyncio.to_thread(create)
        self._live.append(experiment.uid)
        self.record.uids.append(experiment.uid)
        if self.record.start is None:
            self.record.start = at
            self.record.description = experiment.description
        return experiment

    async def _heal(self) -> None:
        for uid in list(self._live):
            try:
                await asyncio.to_thread(self.chaos.destroy, uid)
            except CrosszoneError as exc:
                self.record.error = self.record.error or f"heal of {uid} failed: {exc}"
                continue
            self._live.remove(uid)
        if self.record.start is not None and self.record.end is None:
            self.record.end = self.now()

    # --- composites ------------------------------------------------------------------------------

    async def _flap(self) -> None:
        s = self.spec
        zone = self._zone(s.zone)
        self.record.zones = [zone]
        cycles = 0
        while self.now() < s.end and not self.stop.is_set():
            down_until = min(self.now() + s.down_seconds, s.end)
            experiment = await self._inject(
                lambda: self.chaos.zone_down(zone, s.down_seconds + WATCHDOG_MARGIN_SECONDS))
            self.record.events.append((self.now(), f"{zone} down"))
            await sleep_until(self.now, down_until, self.stop)
            await asyncio.to_thread(self.chaos.destroy, experiment.uid)
            self._live.remove(experiment.uid)
            self.record.events.append((self.now(), f"{zone} up"))
            cycles += 1
            await sleep_until(self.now, min(self.now() + s.up_seconds, s.end), self.stop)
        self.record.description = (f"zone {zone} flapping: down {s.down_seconds:g}s / up "
                                   f"{s.up_seconds:g}s, {cycles} cycle(s)")

    async def _rolling_restart(self) -> None:
        s = self.spec
        wanted = s.components or list(COMPONENTS)
        snapshot = await asyncio.to_thread(self.stack.snapshot)
        targets = [r for r in snapshot.get("processes", []) if isinstance(r, dict)
                   and r.get("component") in wanted and r.get("state") == "running"]
        targets.sort(key=lambda r: (RESTART_ORDER.index(str(r["component"]))
                                    if r["component"] in RESTART_ORDER else 99,
                                    int(r.get("index") or 0), str(r.get("zone"))))
        if s.count is not None:  # at most this many of each component, spread over the zones
            kept: dict[str, int] = {}
            for r in list(targets):
                kept[r["component"]] = kept.get(r["component"], 0) + 1
                if kept[r["component"]] > s.count:
                    targets.remove(r)
        self.record.start = self.now()
        self.record.zones = sorted({str(r["zone"]) for r in targets if r.get("zone")})
        done = 0
        for target in targets:
            if self.stop.is_set() or self.now() >= s.end:
                break
            await self._restart_one(target)
            done += 1
        self.record.description = (f"rolling restart (SIG{s.signal}) of {done} of "
                                   f"{len(targets)} processes, one at a time")
        if done < len(targets):
            self.record.error = (f"only {done} of {len(targets)} processes restarted within "
                                 f"{s.duration:g}s")

    async def _restart_one(self, target: dict[str, Any]) -> None:
        name, old = str(target["name"]), target.get("pid")
        selector = {"zone": target.get("zone"), "component": target.get("component"),
                    "index": target.get("index") if target.get("component") == "worker"
                    else None}
        await asyncio.to_thread(self.stack.signal, signal=self.spec.signal, **selector)
        self.record.events.append((self.now(), f"restart {name}"))
        deadline = time.monotonic() + RESTART_WAIT_SECONDS
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            with contextlib.suppress(CrosszoneError):
                snapshot = await asyncio.to_thread(self.stack.snapshot)
                now = next((r for r in snapshot.get("processes", []) if r.get("name") == name),
                           None)
                if now and now.get("state") == "running" and now.get("pid") not in (None, old):
                    if target.get("component") == "controller":
                        return
                    await asyncio.to_thread(self.stack.wait_healthy, RESTART_WAIT_SECONDS,
                                            [name])
                    return
        raise DrillError(f"{name} did not come back within {RESTART_WAIT_SECONDS:g}s "
                         f"of its restart")
