"""The monitor of one zone: one observe-record-evaluate-notify pass per cycle (:class:`Monitor`).

``run_cycle`` looks at every component (:mod:`.observer`), probes cross-zone latency on its own
interval and pulls the other zones' probes (:mod:`.probes`), copies new failover events
(:mod:`.failovers`), publishes the series on ``/metrics``, evaluates the alert rules and
notifies (:mod:`.alerts`), keeps time series in the metrics database, and returns a sentence
saying what it saw and did. The metrics database failing costs the records of that cycle, never
the observation or the alerts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from crosszone.config import Node, Placement, Topology
from crosszone.errors import MetricsStoreError
from crosszone.monitoring.addresses import monitor_nodes
from crosszone.monitoring.alerts import AlertManager, Notifier, Rule, WebhookNotifier
from crosszone.monitoring.exported import MonitorMetrics, series_of
from crosszone.monitoring.failovers import FailoverImporter
from crosszone.monitoring.observer import Observer
from crosszone.monitoring.probes import LatencyProber
from crosszone.monitoring.rules import default_rules
from crosszone.monitoring.scrape import Scraper
from crosszone.monitoring.settings import (
    MonitoringSettings,
    failover_events_path,
    monitoring_settings,
)
from crosszone.monitoring.store import FailoverRecord, MetricsStore, SeriesPoint
from crosszone.monitoring.view import Snapshot

log = logging.getLogger("crosszone.monitor")
T = TypeVar("T")
HISTORY_POINTS = 120  # in-memory points per dashboard sparkline
PRUNE_EVERY_SECONDS = 600.0
_STATUS_VALUE = {"healthy": 2.0, "degraded": 1.0, "unhealthy": 0.0}


class Monitor:
    def __init__(self, topology: Topology, node: Node, run_dir: Path, *,
                 settings: MonitoringSettings | None = None, store: MetricsStore | None = None,
                 rules: list[Rule] | None = None, notifiers: list[Notifier] | None = None
                 ) -> None:
        if node.zone is None:
            raise ValueError(f"a monitor belongs to a zone; node {node.name} has none")
        from crosszone.monitoring.store import make_metrics_store

        self.zone = node.zone
        self.node = node
        self.topology = topology
        self.settings = s = settings or monitoring_settings(topology)
        self.store = store or make_metrics_store(s, self.zone, run_dir)
        self.scraper = Scraper(s.scrape_timeout_seconds, source_host=node.host)
        self.observer = Observer(topology, self.zone, run_dir, s, self.scraper)
        monitors = monitor_nodes(topology, s)
        self.monitor_order = [(m.zone or "", m.url) for m in monitors]
        placement = Placement(topology)
        peers = [z for z in topology.zone_names() if z != self.zone]
        self.prober = LatencyProber(
            self.zone, {p: f"{placement.gateway(p).url}/health" for p in peers},
            {m.zone or "": m.url for m in monitors if m.zone != self.zone},
            self.scraper, self.store, s.probe_timeout_seconds)
        self.importer = FailoverImporter(self.store, failover_events_path(run_dir))
        self.rules = rules if rules is not None else default_rules(s)
        self.alerts = AlertManager(self.rules, notifiers if notifiers is not None else
                                   [WebhookNotifier(s.webhooks, node.url)], self.zone)
        self.metrics = MonitorMetrics()
        self.snapshot: Snapshot | None = None
        self.sentence = "not started"
        self.cycles = 0
        self.last_cycle_at: float | None = None  # monotonic time of the last complete cycle
        self.notifier: str | None = None
        self.recent_failovers: list[FailoverRecord] = []
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_POINTS)
        self._last_probe = self._last_series = self._last_prune = 0.0
        self._pending = {"requests": 0.0, "errors": 0.0}

    def __repr__(self) -> str:
        return f"<Monitor {self.zone} cycle {self.cycles}: {self.sentence[:80]!r}>"

    async def _db(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(call, *args)

    async def _safely(self, what: str, step: Awaitable[str], said: list[str]) -> None:
        try:
            text = await step
        except MetricsStoreError as exc:
            said.append(f"{what} failed: {exc}")
            return
        if text:
            said.append(text)

    async def run_cycle(self) -> str:
        now = time.time()
        snap = await self.observer.observe()
        said: list[str] = []
        if now - self._last_probe >= self.settings.probe_interval_seconds:
            self._last_probe = now
            await self._safely("latency probes", self._probe(), said)
        snap.latency_ms = {self.zone: dict(self.prober.latest)}
        snap.probe_failures = {self.zone: dict(self.prober.failures)}
        await self._safely("failover import", self._failovers(snap, now), said)
        series = series_of(snap)
        self.metrics.update(series)
        self.notifier = await self._notifier()
        alerts = await self.alerts.run(series, now, notify=self.notifier == self.zone)
        self._accumulate(snap, now)
        if now - self._last_series >= self.settings.series_interval_seconds:
            self._last_series = now
            await self._safely("recording series", self._record(snap, now), said)
        if now - self._last_prune >= PRUNE_EVERY_SECONDS:
            self._last_prune = now
            await self._safely("pruning", self._prune(now), said)
        self.snapshot = snap
        self.cycles += 1
        self.sentence = "; ".join([_health(snap), *said, f"alerts: {alerts}"])
        return self.sentence

    async def _probe(self) -> str:
        round_ = await self.prober.probe()
        await self.prober.pull(round_)
        return round_.describe()

    async def _failovers(self, snap: Snapshot, now: float) -> str:
        new = await self.importer.run(self.observer.controller_events)
        snap.failover_counts = await self._db(self.store.failover_counts)
        window = now - self.settings.alerts.failover_window_seconds
        recent = await self._db(self.store.failover_events, now - 7 * 86400.0, 50)
        self.recent_failovers = recent
        inside = [e for e in recent if e.time > window]
        snap.failovers_recent = len(inside)
        snap.failovers_failed_recent = sum(1 for e in inside if not e.success)
        return f"{new} failover event(s) imported" if new else ""

    async def _notifier(self) -> str:
        """The first zone, in failover order, whose monitor answers; this one always does."""
        for zone, url in self.monitor_order:
            if zone == self.zone:
                return zone
            if (await self.scraper.get(f"{url}/health")).ok:
                return zone
        return self.zone

    def _accumulate(self, snap: Snapshot, now: float) -> None:
        self._pending["requests"] += snap.service_requests
        self._pending["errors"] += snap.service_errors
        self.history.append({"time": now, "zones": {
            z.name: {"status": z.status, "rps": z.requests_per_second,
                     "error_rate": z.error_rate, "p95_ms": z.p95_ms, "weight": z.weight}
            for z in snap.zones.values()}})

    async def _record(self, snap: Snapshot, now: float) -> str:
        me = self.zone
        up = bool(snap.lb and snap.lb.up) and bool(snap.healthy_zones)
        points = [SeriesPoint(now, "service_up", float(up), monitor=me),
                  SeriesPoint(now, "service_requests", self._pending["requests"], monitor=me),
                  SeriesPoint(now, "service_errors", self._pending["errors"], monitor=me)]
        self._pending = {"requests": 0.0, "errors": 0.0}
        for z in snap.zones.values():
            values = {"zone_status": _STATUS_VALUE[z.status], "traffic_weight": z.weight,
                      "requests_per_second": z.requests_per_second,
                      "error_rate": z.error_rate, "p95_ms": z.p95_ms}
            points += [SeriesPoint(now, name, float(v), z.name, monitor=me)
                       for name, v in values.items() if v is not None]
        points += [SeriesPoint(now, "replication_lag_seconds", lag.seconds, lag.zone,
                               lag.peer_zone, me) for lag in snap.lag]
        await self._db(self.store.add_series, points)
        return ""

    async def _prune(self, now: float) -> str:
        await self._db(self.store.prune, now - self.settings.retention_hours * 3600)
        return ""

    async def run(self, stop: asyncio.Event) -> None:
        """Cycle until ``stop`` is set; logs each sentence whose health or alerts changed."""
        said_before = ""
        while not stop.is_set():
            started = time.monotonic()
            try:
                sentence = await self.run_cycle()
            except Exception as exc:  # the loop outlives one bad answer
                sentence = self.sentence = f"cycle failed: {type(exc).__name__}: {exc}"
                if _stable(sentence) != said_before:
                    log.exception("monitor cycle failed")
            else:
                self.last_cycle_at = time.monotonic()
            stable = _stable(sentence)
            if stable != said_before:
                log.info("%s", sentence)
                said_before = stable
            pause = self.settings.cycle_seconds - (time.monotonic() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, pause))

    def stale(self) -> bool:
        """True when cycles stopped completing (the loop is stuck or failing)."""
        if self.last_cycle_at is None:
            return False
        limit = max(10.0, 5 * self.settings.cycle_seconds)
        return time.monotonic() - self.last_cycle_at > limit

    async def open(self) -> None:
        await self._db(self.store.open)

    async def close(self) -> None:
        await self.alerts.close()
        await self.scraper.close()
        await self._db(self.store.close)


def _health(snap: Snapshot) -> str:
    zones = list(snap.zones.values())
    text = f"{len(snap.healthy_zones)}/{len(zones)} zones up"
    bad = [f"{z.name} {z.status} ({', '.join(z.reasons)})" for z in zones
           if z.status != "healthy"]
    return text + (": " + "; ".join(bad) if bad else "")


def _stable(sentence: str) -> str:
    """The parts of a sentence worth a log line when they change (not probe counts)."""
    parts = sentence.split("; ")
    return "; ".join(p for p in parts if "probe" not in p and "pulled" not in p)
