"""One monitor's look at the whole deployment: every node's health, the gateways' and the load
balancer's metrics, the stores' replication lag and in-doubt transactions, the controllers'
leader, term, zone view and worker groups, and the run directory's chaos experiments.

Every worker slot a group may use is probed; which of them count is :mod:`.slots`' business.

Every request of a look goes out at once, each bounded by ``scrape_timeout_seconds``, so one
look takes one timeout at most however many nodes are down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from pathlib import Path
from typing import Any

from crosszone.config import Node, Placement, Topology
from crosszone.errors import ChaosError
from crosszone.monitoring.scrape import Deltas, Fetched, Scraper, buckets, parse_samples, quantile
from crosszone.monitoring.settings import MonitoringSettings
from crosszone.monitoring.slots import WorkerSlots
from crosszone.monitoring.view import (
    Lag,
    NodeState,
    Prepared,
    Snapshot,
    ZoneState,
    leader_of,
    traffic_shares,
    zone_status,
)

GATEWAY_REQUESTS = "crosszone_gateway_requests_total"
GATEWAY_DURATION = "crosszone_gateway_request_duration_seconds"
LB_REQUESTS = "crosszone_lb_requests_total"
log = logging.getLogger("crosszone.monitor")


def _is_api(labels: Any) -> bool:
    return str(labels.get("path", "")).startswith("/v1/")


def _is_error(labels: Any) -> bool:
    return _is_api(labels) and str(labels.get("status", "")).startswith("5")


def controller_urls(topology: Topology) -> dict[str, str]:
    """Each zone's controller API, when the control plane is installed."""
    try:
        from crosszone.control.addresses import controller_nodes
    except ImportError:
        return {}
    return {z: n.api_url for z, n in controller_nodes(topology).items()}


def lb_base_url(topology: Topology) -> str:
    node = Placement(topology).lb()
    protocols = {lst.port: lst.protocol for lst in topology.load_balancer.listeners}
    return f"{protocols.get(node.port, 'HTTP').lower()}://{node.host}:{node.port}"


def chaos_active(run_dir: Path) -> list[dict[str, Any]]:
    """Live experiments of the run directory (``crosszone chaos status``)."""
    try:
        from crosszone.chaos import Chaos

        experiments = Chaos(run_dir).status()
    except (ChaosError, ImportError, OSError):
        return []
    return [{"uid": e.uid, "kind": e.kind, "description": e.description, "status": e.status,
             "created_at": e.created_at, "expires_at": e.expires_at}
            for e in experiments if e.status in ("creating", "active")]


class Observer:
    def __init__(self, topology: Topology, zone: str, run_dir: Path,
                 settings: MonitoringSettings, scraper: Scraper) -> None:
        self.topology = topology
        self.zone = zone
        self.run_dir = run_dir
        self.settings = settings
        self.scraper = scraper
        placement = Placement(topology)
        self.slots = WorkerSlots(topology)
        self.zone_nodes: dict[str, list[Node]] = {
            z: [placement.gateway(z), *self.slots.slots[z], placement.store(z)]
            for z in topology.zone_names()}
        self.lb_url = lb_base_url(topology)
        self.controllers = controller_urls(topology)
        self.deltas = Deltas()
        self.window: deque[tuple[float, float, float]] = deque()  # (time, requests, errors)
        self.last_time: float | None = None
        self.controller_events: list[Any] = []  # /control/events documents of the last look

    def __repr__(self) -> str:
        return f"<Observer from {self.zone}: {sum(map(len, self.zone_nodes.values()))} nodes>"

    def _urls(self) -> list[str]:
        urls = [f"{self.lb_url}/health", f"{self.lb_url}/lb/status", f"{self.lb_url}/lb/metrics"]
        for nodes in self.zone_nodes.values():
            for node in nodes:
                urls.append(f"{node.url}/health")
                if node.component == "gateway":
                    urls.append(f"{node.url}/metrics")
                if node.component == "store":
                    urls += [f"{node.url}/replication/lag", f"{node.url}/tx/prepared"]
        for url in self.controllers.values():
            urls += [f"{url}/control/status", f"{url}/control/events?limit=200",
                     f"{url}/control/scaling"]
        return urls

    async def observe(self) -> Snapshot:
        now = time.time()
        got, chaos = await asyncio.gather(self.scraper.get_all(self._urls()),
                                          asyncio.to_thread(chaos_active, self.run_dir))
        dt = max(1e-3, now - self.last_time) if self.last_time is not None else None
        self.last_time = now
        lb_health = got[f"{self.lb_url}/health"]
        lb_status = got[f"{self.lb_url}/lb/status"].json()
        shares = traffic_shares(lb_status if isinstance(lb_status, dict) else None)
        snap = Snapshot(time=now, monitor=self.zone, zones={}, chaos=chaos,
                        mode=self.topology.failover.mode,
                        lb=NodeState("lb", "", "lb", self.lb_url, lb_health.ok,
                                     lb_health.describe()))
        statuses = {z: doc for z, url in self.controllers.items()
                    if isinstance(doc := got[f"{url}/control/status"].json(), dict)}
        snap.controllers = {z: z in statuses for z in self.controllers}
        snap.leader, snap.term, leader_view = leader_of(statuses)
        self.controller_events = [got[f"{url}/control/events?limit=200"].json()
                                  for url in self.controllers.values()]
        for change in self.slots.update(got[f"{url}/control/scaling"].json()
                                        for url in self.controllers.values()):
            log.info("worker groups: %s", change)
        for zone, nodes in self.zone_nodes.items():
            state = ZoneState(zone, weight=shares.get(zone, 0.0))
            lb_zone = (lb_status or {}).get("zones", {}).get(zone) \
                if isinstance(lb_status, dict) else None
            state.lb_available = bool(lb_zone.get("available")) \
                if isinstance(lb_zone, dict) else None
            state.workers_desired = self.slots.desired(zone)
            for node in nodes:
                health = got[f"{node.url}/health"]
                if node.component == "worker":
                    slot = self.slots.classify(node, health.ok)
                    if slot == "starting":
                        state.workers_starting.append(node.name)
                    if slot in ("starting", "absent"):
                        continue
                state.nodes.append(NodeState(node.name, zone, node.component, node.url,
                                             health.ok, health.describe()))
                if node.component == "gateway":
                    self._rates(state, got[f"{node.url}/metrics"], dt)
                if node.component == "store":
                    self._store(snap, zone, got, node, now)
            if zone in self.controllers:
                url = self.controllers[zone]
                answer = got[f"{url}/control/status"]
                state.nodes.append(NodeState(f"{zone}/controller", zone, "controller", url,
                                             zone in statuses, answer.describe()))
            view = (leader_view or {}).get(zone)
            zone_status(state, view if isinstance(view, dict) else None)
            snap.zones[zone] = state
        self._service(snap, got[f"{self.lb_url}/lb/metrics"], now, dt)
        return snap

    def _rates(self, state: ZoneState, page: Fetched, dt: float | None) -> None:
        if not page.ok:
            return
        samples = parse_samples(page.body)
        key = f"gw:{state.name}"
        requests = self.deltas.increase(f"{key}:req", sum(
            s.value for s in samples if s.name == GATEWAY_REQUESTS and _is_api(s.labels)))
        errors = self.deltas.increase(f"{key}:err", sum(
            s.value for s in samples if s.name == GATEWAY_REQUESTS and _is_error(s.labels)))
        spread = self.deltas.bucket_increase(f"{key}:dur", buckets(samples, GATEWAY_DURATION))
        if dt is None:
            return
        state.requests, state.errors = requests, errors
        state.requests_per_second = requests / dt
        state.error_rate = errors / requests if requests > 0 else None
        p95 = quantile(0.95, spread)
        state.p95_ms = None if p95 is None else p95 * 1000.0

    def _store(self, snap: Snapshot, zone: str, got: dict[str, Fetched], node: Node,
               now: float) -> None:
        lag = got[f"{node.url}/replication/lag"].json()
        if isinstance(lag, dict) and isinstance(lag.get("lag"), list):
            for row in lag["lag"]:
                if isinstance(row, dict):
                    snap.lag.append(Lag(str(row.get("origin", zone)),
                                        str(row.get("destination", "")),
                                        float(row.get("seconds", 0.0)),
                                        int(row.get("records", 0))))
        prepared = got[f"{node.url}/tx/prepared"].json()
        if isinstance(prepared, dict) and isinstance(prepared.get("prepared"), list):
            times = [float(p["prepared_at"]) for p in prepared["prepared"]
                     if isinstance(p, dict) and "prepared_at" in p]
            snap.prepared.append(Prepared(zone, len(times),
                                          max(0.0, now - min(times)) if times else 0.0))

    def _service(self, snap: Snapshot, page: Fetched, now: float, dt: float | None) -> None:
        """Service-wide rates at the load balancer, and the error-budget burn rates."""
        samples = parse_samples(page.body) if page.ok else []
        requests = self.deltas.increase("lb:req", sum(
            s.value for s in samples if s.name == LB_REQUESTS and _is_api(s.labels)))
        errors = self.deltas.increase("lb:err", sum(
            s.value for s in samples if s.name == LB_REQUESTS and _is_error(s.labels)))
        if dt is not None:
            snap.service_requests, snap.service_errors = requests, errors
            snap.service_requests_per_second = requests / dt
            snap.service_error_rate = errors / requests if requests > 0 else None
        self.window.append((now, requests, errors))
        s = self.settings
        while self.window and self.window[0][0] < now - s.long_window_seconds:
            self.window.popleft()
        budget = 1.0 - s.slo_target
        for label, seconds in (("short", s.short_window_seconds),
                               ("long", s.long_window_seconds)):
            inside = [(r, e) for t, r, e in self.window if t >= now - seconds]
            req = sum(r for r, _ in inside)
            err = sum(e for _, e in inside)
            snap.burn[label] = (err / req) / budget if req > 0 else 0.0
