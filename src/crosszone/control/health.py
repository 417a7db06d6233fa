"""The HealthChecker: active probes of every node, passive signals, and the zone roll-up.

Every node gets its own probe task (the seed's concurrent pings), so a node that hangs costs only
its own timeout. A node changes state after ``unhealthyThresholdCount`` failed or
``healthyThresholdCount`` successful probes in a row (the seed's and ELB's parameters); a passive
ejection reported by a gateway or the LB marks it unhealthy at once (Envoy), and active probes
re-admit it. Zones roll up from their nodes; a zone whose error rate or latency is an outlier
against the other zones is *degraded* even while every health endpoint answers.

Workers belong to their zone's auto-scaling group: :meth:`HealthChecker.set_group` says how many
slots are in service. Slots out of service are neither probed nor counted; a slot that has just
entered service counts only once it has answered (ELB's "initial" state), so a scale-out never
looks like an outage. Workers' ``/health`` answers also carry their load (``running``,
``queued``), which :meth:`HealthChecker.loads` sums per zone for the scaling policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiohttp

from crosszone.config.placement import Node
from crosszone.config.topology import HealthCheck
from crosszone.control.grayfailure import SampleWindow, ZoneStats, find_outliers
from crosszone.control.model import ZoneObservation
from crosszone.control.scaling import ZoneLoad
from crosszone.control.settings import GrayFailureSettings


@dataclass
class NodeHealth:
    """One node's state under the seed's thresholds.

    A node starts healthy and, like every later change, needs ``unhealthyThresholdCount``
    failures in a row to be declared unhealthy, so a controller that starts (or takes over)
    while its event loop is still busy does not mistake slow first probes for an outage.
    """

    node: Node
    healthy: bool = True
    ok_streak: int = 0
    fail_streak: int = 0
    failing_since: float | None = None  # wall time of the first failure of the current streak
    last_error: str = ""
    in_service: bool = True  # workers: the slot is part of its zone's group
    pending: bool = False  # entered service and not answered yet: left out of the roll-up
    load: tuple[int, int, float] | None = None  # running, queued, wall time of the report
    answered: bool = False  # a probe has succeeded at least once

    def observe(self, ok: bool, error: str, started: float, check: HealthCheck) -> bool:
        """Apply one probe result; True when the node's state changed."""
        before = self.healthy
        if ok and self.pending:  # a new worker's first answer: it joins the roll-up healthy
            self.pending, self.healthy = False, True
        if ok:
            self.answered = True
            self.ok_streak, self.fail_streak = self.ok_streak + 1, 0
            if self.ok_streak >= check.healthy_threshold_count:
                self.healthy = True
            if self.healthy:
                self.failing_since, self.last_error = None, ""
        else:
            self.ok_streak, self.fail_streak = 0, self.fail_streak + 1
            self.last_error = error
            if self.failing_since is None:
                self.failing_since = started
            if self.fail_streak >= check.unhealthy_threshold_count:
                self.healthy = False
        return before != self.healthy

    def eject(self, reason: str, now: float) -> None:
        self.healthy, self.ok_streak = False, 0
        self.last_error = f"ejected: {reason}"
        if self.failing_since is None:
            self.failing_since = now


class HealthChecker:
    """Probes ``nodes`` (workers and gateways of every zone) and rolls them up per zone."""

    def __init__(self, nodes: Iterable[Node], check: HealthCheck, gray: GrayFailureSettings, *,
                 min_healthy_fraction: float = 0.5,
                 clock: Callable[[], float] = time.time) -> None:
        self.check = check
        self.gray = gray
        self.min_healthy_fraction = min_healthy_fraction
        self.clock = clock
        self.nodes = {n.name: NodeHealth(n) for n in nodes}
        self.zones = sorted({n.node.zone for n in self.nodes.values() if n.node.zone})
        self.windows = {z: SampleWindow(gray.window_seconds) for z in self.zones}
        self._outlier_since: dict[str, float] = {}
        self.probes = 0

    # -- inputs ------------------------------------------------------------------------------------

    def record_probe(self, name: str, ok: bool, latency_ms: float | None, error: str,
                     started: float, load: tuple[int, int] | None = None) -> None:
        health = self.nodes[name]
        health.observe(ok, error, started, self.check)
        if ok and load is not None:
            health.load = (load[0], load[1], started)
        zone = health.node.zone
        if zone in self.windows and ok:  # failures count through the node's thresholds
            self.windows[zone].add(started, 0, 0, latency_ms)

    def record_passive(self, zone: str, requests: int, errors: int,
                       latency_ms: float | None = None) -> None:
        """Request outcomes a gateway or the LB saw for ``zone`` since its last report: each
        report holds that window's deltas (never running totals), and is added as it comes."""
        if zone in self.windows and requests > 0:
            self.windows[zone].add(self.clock(), requests, errors, latency_ms, passive=True)

    def eject(self, name: str, reason: str) -> bool:
        """A passive ejection (a gateway or the LB gave up on this node); False if unknown."""
        if name not in self.nodes:
            return False
        self.nodes[name].eject(reason, self.clock())
        return True

    # -- probing -----------------------------------------------------------------------------------

    def set_group(self, zone: str, count: int) -> None:
        """Worker slots 1..count of ``zone`` are in service, the others out."""
        for h in self.nodes.values():
            if h.node.zone != zone or h.node.component != "worker":
                continue
            wanted = h.node.index <= count
            if wanted and not h.in_service:
                h.in_service, h.pending, h.healthy = True, True, False
                h.ok_streak, h.fail_streak, h.failing_since, h.load = 0, 0, None, None
            elif not wanted and h.in_service:
                h.in_service, h.pending, h.load = False, False, None

    def loads(self, now: float, max_age: float) -> dict[str, ZoneLoad]:
        """Per zone: the latest load of its in-service workers that reported within max_age."""
        sums: dict[str, list[int]] = {z: [0, 0, 0] for z in self.zones}
        for h in self.nodes.values():
            zone = h.node.zone
            if zone not in sums or not h.in_service or h.load is None:
                continue
            running, queued, at = h.load
            if now - at <= max_age:
                totals = sums[zone]
                totals[0], totals[1], totals[2] = totals[0] + 1, totals[1] + running, \
                    totals[2] + queued
        return {z: ZoneLoad(n, running, queued) for z, (n, running, queued) in sums.items()}

    def established(self) -> set[str]:
        """Zones whose gateway and a worker have answered at least once: a zone that is down
        before it ever came up is starting, not lost."""
        up: dict[str, set[str]] = {}
        for h in self.nodes.values():
            if h.answered and h.node.zone is not None:
                up.setdefault(h.node.zone, set()).add(h.node.component)
        return {z for z, parts in up.items() if {"gateway", "worker"} <= parts}

    async def probe(self, session: aiohttp.ClientSession, health: NodeHealth) -> None:
        started, t0 = self.clock(), time.monotonic()
        ok, error = False, ""
        load: tuple[int, int] | None = None
        try:
            async with session.get(health.node.url + self.check.path,
                                   timeout=aiohttp.ClientTimeout(
                                       total=self.check.timeout_seconds)) as resp:
                body = await resp.read()
                ok = 200 <= resp.status < 300
                error = "" if ok else f"HTTP {resp.status}"
                if ok and health.node.component == "worker":
                    load = _load_of(body)
        except TimeoutError:
            error = f"no answer within {self.check.timeout_seconds:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            error = type(exc).__name__
        self.probes += 1
        self.record_probe(health.node.name, ok, (time.monotonic() - t0) * 1000, error, started,
                          load)

    async def _probe_forever(self, session: aiohttp.ClientSession, health: NodeHealth) -> None:
        interval = self.check.interval_seconds
        next_at = time.monotonic()
        while True:
            if health.in_service:
                await self.probe(session, health)
            next_at = max(next_at + interval, time.monotonic())
            await asyncio.sleep(next_at - time.monotonic())

    async def run(self) -> None:
        """Probe every node on its own schedule until cancelled."""
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            tasks = [asyncio.create_task(self._probe_forever(session, h))
                     for h in self.nodes.values()]
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*tasks, return_exceptions=True)

    # -- roll-up -----------------------------------------------------------------------------------

    def window_stats(self, now: float | None = None) -> dict[str, ZoneStats]:
        """Every zone's gray-failure window: passive request outcomes and latencies."""
        now = self.clock() if now is None else now
        return {z: w.stats(now) for z, w in self.windows.items()}

    def snapshot(self, now: float | None = None) -> dict[str, ZoneObservation]:
        now = self.clock() if now is None else now
        outliers = find_outliers(self.window_stats(now), self.gray)
        for z in list(self._outlier_since):
            if z not in outliers:
                del self._outlier_since[z]
        out: dict[str, ZoneObservation] = {}
        for zone in self.zones:
            members = [h for h in self.nodes.values()
                       if h.node.zone == zone and h.in_service and not h.pending]
            out[zone] = self._zone(zone, members, outliers.get(zone), now)
        return out

    def _zone(self, zone: str, members: list[NodeHealth], outlier: str | None,
              now: float) -> ZoneObservation:
        up = [h for h in members if h.healthy]
        fraction = len(up) / len(members) if members else 0.0
        down = [h for h in members if not h.healthy]
        since = min((h.failing_since for h in down if h.failing_since is not None), default=None)
        first_trouble = min((h.failing_since for h in members if h.failing_since is not None),
                            default=now)
        gateways_down = [h for h in down if h.node.component == "gateway"]
        if gateways_down:
            h = gateways_down[0]
            return ZoneObservation("unhealthy", f"gateway {h.node.name} down ({h.last_error})",
                                   since, fraction)
        if fraction < self.min_healthy_fraction:
            return ZoneObservation("unhealthy", f"{len(up)}/{len(members)} nodes healthy",
                                   since, fraction)
        if outlier is not None:
            started = self._outlier_since.setdefault(zone, now)
            return ZoneObservation("degraded", outlier, min(started, first_trouble), fraction)
        return ZoneObservation("healthy", "", None, fraction)

    def __repr__(self) -> str:
        up = sum(1 for h in self.nodes.values() if h.healthy)
        return f"<HealthChecker {up}/{len(self.nodes)} nodes healthy, {self.probes} probes>"


def _load_of(body: bytes) -> tuple[int, int] | None:
    """``running`` and ``queued`` from a worker's /health answer (None if it has no such)."""
    try:
        doc = json.loads(body)
        return int(doc.get("running", 0)), int(doc.get("queued", 0))
    except (ValueError, TypeError, AttributeError):
        return None
