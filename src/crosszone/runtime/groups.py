"""The auto-scaling groups' actuator in the local runtime: how many workers, and which to replace.

The supervisor runs every worker slot a zone's group may use (``max_size``); this module tells it
how many should run and which running ones to replace:

* :class:`DesiredCapacity` reads ``GET /control/scaling`` from every zone's controller, takes the
  newest answer per zone (by ``[fencing term, updated_at]``, never going back to an older one) and
  keeps the last value it got while no controller answers (static stability). It starts from the
  topology's ``desired_capacity``.
* :class:`ElbHealth` is the ELB health check of ``health_check_type: ELB`` groups: it probes the
  in-service workers as their gateway does (``gateway.healthCheck``); one that fails
  ``unhealthyThresholdCount`` checks in a row, and keeps failing for
  ``control.scaling.unhealthy_replace_seconds``, is to be replaced. Checks count once the worker
  has answered (or after ``health_check_grace_seconds``), only while the zone's gateway runs (no
  load balancer, no ELB verdict), and never for a process an operator holds. With ``EC2`` only a
  dead process is replaced, which the supervisor sees by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from crosszone.config import Placement, Topology
from crosszone.runtime.child import ManagedProcess

log = logging.getLogger("crosszone.supervisor")


@dataclass(frozen=True)
class Target:
    """One zone's desired capacity as the supervisor applies it."""

    desired: int
    version: tuple[int, float] = (0, 0.0)  # (fencing term, updated_at) of the answer
    source: str = "desired_capacity of the topology"


class DesiredCapacity:
    """The desired worker count per zone, from the controllers (the last known one if none answers).
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.urls = [f"{n.url}/control/scaling" for n in Placement(topology).controllers()]
        self.targets = {z: Target(topology.worker_group_of(z).desired_capacity)
                        for z in topology.zone_names()}
        self.last_answer: float | None = None  # wall time a controller last answered

    def desired(self, zone: str) -> int:
        return self.targets[zone].desired

    def apply(self, answers: Iterable[Mapping[str, Any]]) -> list[str]:
        """Adopt the newest valid answer per zone; what changed."""
        changes: list[str] = []
        docs = list(answers)
        for zone, current in self.targets.items():
            group = self.topology.worker_group_of(zone)
            best = current
            for doc in docs:
                entry = _entry(doc, zone)
                if entry is not None and entry[1] > best.version:
                    desired, version, reason = entry
                    desired = max(group.min_size, min(group.max_size, desired))
                    best = Target(desired, version, f"controllers, term {version[0]}: {reason}")
            if best is not current:
                self.targets[zone] = best
                if best.desired != current.desired:
                    changes.append(f"{zone} desired {current.desired} -> {best.desired} "
                                   f"({best.source})")
        return changes

    async def poll(self, session: aiohttp.ClientSession, timeout: float) -> list[str]:
        """Ask every controller at once; apply what answered."""
        answers = await asyncio.gather(*(self._ask(session, url, timeout) for url in self.urls))
        docs = [doc for doc in answers if doc is not None]
        if not docs:
            return []
        self.last_answer = time.time()
        return self.apply(docs)

    async def _ask(self, session: aiohttp.ClientSession, url: str,
                   timeout: float) -> dict[str, Any] | None:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                if resp.status != 200:
                    return None
                doc = await resp.json()
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None


def _entry(doc: Mapping[str, Any], zone: str) -> tuple[int, tuple[int, float], str] | None:
    """(desired, version, reason) of one zone in a controller's answer; None if malformed."""
    entry = doc.get(zone)
    if not isinstance(entry, dict):
        return None
    try:
        term, updated = entry.get("version") or (0, 0.0)
        return int(entry["desired"]), (int(term), float(updated)), str(entry.get("reason", ""))
    except (KeyError, TypeError, ValueError):
        return None


@dataclass
class _Checks:
    pid: int
    answered: bool = False
    failures: int = 0
    failing_since: float = 0.0  # monotonic time of the streak's first counted failure
    last_error: str = ""


class ElbHealth:
    """Consecutive failed health checks of each running in-service worker (ELB groups only)."""

    def __init__(self, topology: Topology, grace_seconds: float,
                 replace_after_seconds: float = 0.0) -> None:
        self.topology = topology
        self.check = topology.gateway.health_check
        self.grace_seconds = grace_seconds
        self.replace_after_seconds = replace_after_seconds
        self.checks: dict[str, _Checks] = {}

    def eligible(self, proc: ManagedProcess, gateway_up: Callable[[str], bool]) -> bool:
        node = proc.node
        return (node.component == "worker" and node.zone is not None and proc.in_service
                and proc.state == "running" and not proc.held and proc.pid is not None
                and self.topology.worker_group_of(node.zone).health_check_type == "ELB"
                and gateway_up(node.zone))

    def record(self, proc: ManagedProcess, error: str | None) -> None:
        pid = proc.pid
        if pid is None:
            return
        checks = self.checks.get(proc.name)
        if checks is None or checks.pid != pid:
            checks = self.checks[proc.name] = _Checks(pid)
        if error is None:
            checks.answered, checks.failures, checks.last_error = True, 0, ""
            return
        now = time.monotonic()
        if checks.answered or now - proc.started_mono >= self.grace_seconds:
            if checks.failures == 0:
                checks.failing_since = now
            checks.failures += 1
            checks.last_error = error

    def verdict(self, proc: ManagedProcess, now: float | None = None) -> str | None:
        """Why ``proc`` must be replaced, or None."""
        checks = self.checks.get(proc.name)
        if checks is None or checks.pid != proc.pid:
            return None
        now = time.monotonic() if now is None else now
        failing = now - checks.failing_since
        if checks.failures < self.check.unhealthy_threshold_count or \
                failing < self.replace_after_seconds:
            return None
        return (f"ELB health check failed {checks.failures} times in a row for "
                f"{failing:.1f} s (last: {checks.last_error})")

    async def probe(self, session: aiohttp.ClientSession,
                    procs: list[ManagedProcess]) -> None:
        errors = await asyncio.gather(*(self._probe(session, p) for p in procs))
        for proc, error in zip(procs, errors, strict=True):
            self.record(proc, error)

    async def _probe(self, session: aiohttp.ClientSession, proc: ManagedProcess) -> str | None:
        timeout = self.check.timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                async with session.get(proc.node.url + self.check.path) as resp:
                    await resp.read()
                    status = resp.status
        except TimeoutError:
            return f"no answer within {timeout:g}s"
        except (aiohttp.ClientError, OSError) as exc:
            return type(exc).__name__
        return None if 200 <= status < 300 else f"HTTP {status}"


class WorkerGroups:
    """Both loops (desired capacity, ELB checks) for one supervisor."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.settings = topology.control.scaling
        self.desired = DesiredCapacity(topology)
        self.health = ElbHealth(topology, self.settings.health_check_grace_seconds,
                                self.settings.unhealthy_replace_seconds)

    async def run(self, processes: Callable[[], list[ManagedProcess]],
                  gateway_up: Callable[[str], bool]) -> None:
        """Poll the controllers and probe the workers until cancelled."""
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            tasks = [asyncio.create_task(self._poll_forever(session)),
                     asyncio.create_task(self._probe_forever(session, processes, gateway_up))]
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*tasks, return_exceptions=True)

    async def _poll_forever(self, session: aiohttp.ClientSession) -> None:
        every = self.settings.poll_seconds
        while True:
            for change in await self.desired.poll(session, timeout=min(1.0, max(every, 0.3))):
                log.info("worker groups: %s", change)
            await asyncio.sleep(every)

    async def _probe_forever(self, session: aiohttp.ClientSession,
                             processes: Callable[[], list[ManagedProcess]],
                             gateway_up: Callable[[str], bool]) -> None:
        every = self.health.check.interval_seconds
        while True:
            started = time.monotonic()
            procs = [p for p in processes() if self.health.eligible(p, gateway_up)]
            if procs:
                await self.health.probe(session, procs)
            await asyncio.sleep(max(0.0, every - (time.monotonic() - started)))

    def snapshot(self, processes: list[ManagedProcess]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for zone, target in self.desired.targets.items():
            group = self.topology.worker_group_of(zone)
            mine = [p for p in processes if p.node.zone == zone and p.node.component == "worker"]
            out[zone] = {"desired": target.desired, "min_size": group.min_size,
                         "max_size": group.max_size,
                         "health_check_type": group.health_check_type,
                         "source": target.source, "version": list(target.version),
                         "in_service": sum(p.in_service for p in mine),
                         "running": sum(p.in_service and p.state == "running" for p in mine)}
        return out
