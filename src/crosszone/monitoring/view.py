"""What one monitor cycle saw: a :class:`Snapshot`, and the pure rules that derive it.

A zone is ``unhealthy`` when its gateway or every one of its workers does not answer the
monitor; ``degraded`` when it still serves but part of it is down (a worker, its store), the load
balancer has taken it out, or the control plane's leader judges it degraded or unhealthy (a gray
failure the monitor's own checks do not see).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ZoneStatus = Literal["healthy", "degraded", "unhealthy"]


@dataclass(frozen=True)
class NodeState:
    name: str
    zone: str
    component: str  # gateway | worker | store | lb | controller | monitor
    url: str
    up: bool
    detail: str = "ok"


@dataclass
class ZoneState:
    name: str
    status: ZoneStatus = "healthy"
    reasons: list[str] = field(default_factory=list)
    nodes: list[NodeState] = field(default_factory=list)
    lb_available: bool | None = None  # None: the load balancer did not answer
    weight: float = 0.0  # share of new traffic the load balancer sends here (0..1)
    requests_per_second: float = 0.0
    error_rate: float | None = None  # None: no request in the interval
    p95_ms: float | None = None
    requests: float = 0.0  # in the last interval
    errors: float = 0.0
    controller_status: str | None = None
    workers_desired: int | None = None  # the group's desired capacity as the controllers say
    workers_starting: list[str] = field(default_factory=list)  # joined, not answered yet

    @property
    def up(self) -> bool:
        return self.status != "unhealthy"


@dataclass(frozen=True)
class Lag:
    zone: str  # origin
    peer_zone: str  # destination
    seconds: float
    records: int


@dataclass(frozen=True)
class Prepared:
    zone: str
    count: int
    oldest_age_seconds: float


@dataclass
class Snapshot:
    time: float
    monitor: str
    zones: dict[str, ZoneState]
    lb: NodeState | None = None
    mode: str = "active-active"
    service_requests_per_second: float = 0.0
    service_error_rate: float | None = None
    service_requests: float = 0.0  # API requests at the load balancer in the last interval
    service_errors: float = 0.0
    leader: str | None = None  # zone of the leading controller
    term: int | None = None
    controllers: dict[str, bool] = field(default_factory=dict)  # zone -> answered
    lag: list[Lag] = field(default_factory=list)
    prepared: list[Prepared] = field(default_factory=list)
    chaos: list[dict[str, Any]] = field(default_factory=list)  # active experiments
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # zone -> peer -> ms
    probe_failures: dict[str, dict[str, int]] = field(default_factory=dict)
    failover_counts: dict[tuple[str, bool], int] = field(default_factory=dict)
    failovers_recent: int = 0
    failovers_failed_recent: int = 0
    burn: dict[str, float] = field(default_factory=dict)  # window label -> burn rate

    @property
    def healthy_zones(self) -> list[str]:
        return [z.name for z in self.zones.values() if z.up]

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["failover_counts"] = [{"kind": k, "success": s, "count": n}
                                  for (k, s), n in sorted(self.failover_counts.items())]
        doc["healthy_zones"] = self.healthy_zones
        return doc


def zone_status(zone: ZoneState, controller: Mapping[str, Any] | None) -> None:
    """Set ``zone.status`` and ``zone.reasons`` from its nodes, the LB and the controller."""
    gateways = [n for n in zone.nodes if n.component == "gateway"]
    workers = [n for n in zone.nodes if n.component == "worker"]
    stores = [n for n in zone.nodes if n.component == "store"]
    bad: list[str] = []
    worse: list[str] = []
    for gw in gateways:
        if not gw.up:
            bad.append(f"gateway {gw.detail}")
    if workers and not any(w.up for w in workers):
        bad.append("no worker answers")
    ctl = None if controller is None else str(controller.get("status") or "") or None
    zone.controller_status = ctl
    down_workers = [w.name for w in workers if not w.up]
    if down_workers and len(down_workers) < len(workers):
        worse.append(f"{len(down_workers)}/{len(workers)} workers down")
    worse += [f"store {s.detail}" for s in stores if not s.up]
    worse += [f"controller {c.detail}" for c in zone.nodes
              if c.component == "controller" and not c.up]
    if zone.lb_available is False and not bad:
        worse.append("taken out by the load balancer")
    if ctl in ("unhealthy", "degraded") and not bad and controller is not None:
        # The leader's verdict without direct evidence here (a gray failure, or a check that
        # timed out on its side): the zone answers us, so it is degraded, not down.
        worse.append(f"control plane says {ctl}: {controller.get('reason') or 'no reason'}")
    zone.status = "unhealthy" if bad else "degraded" if worse else "healthy"
    zone.reasons = bad + worse


def traffic_shares(lb_status: Mapping[str, Any] | None) -> dict[str, float]:
    """Share of new requests the LB sends each zone, from ``GET /lb/status``."""
    if not lb_status or not isinstance(lb_status.get("zones"), dict):
        return {}
    zones: dict[str, Any] = lb_status["zones"]
    live = {z: d for z, d in zones.items() if isinstance(d, dict) and d.get("available")}
    shares = dict.fromkeys(zones, 0.0)
    if not live:  # fail open: the LB tries every zone in order
        return shares
    if lb_status.get("mode") == "active-backup":
        first = min(live, key=lambda z: float(live[z].get("priority", 0)))
        shares[first] = 1.0
        return shares
    weights = {z: max(0.0, float(d.get("weight", 1.0))) for z, d in live.items()}
    if sum(weights.values()) <= 0:  # every live zone drained: the LB uses them all anyway
        weights = dict.fromkeys(live, 1.0)
    total = sum(weights.values())
    shares.update({z: w / total for z, w in weights.items()})
    return shares


def leader_of(statuses: Mapping[str, Mapping[str, Any]]) -> tuple[str | None, int | None,
                                                                   Mapping[str, Any] | None]:
    """(leader zone, term, leader's zone view) from every answering controller's status."""
    best: tuple[str | None, int | None, Mapping[str, Any] | None] = (None, None, None)
    for zone, status in statuses.items():
        term = status.get("term")
        if status.get("leader") and isinstance(term, int) and (best[1] is None or term > best[1]):
            zones = status.get("zones")
            best = (zone, term, zones if isinstance(zones, dict) else None)
    if best[0] is None:  # nobody claims it right now: the newest leader anybody knows of
        for status in statuses.values():
            known = status.get("known_leader")
            if isinstance(known, dict) and isinstance(known.get("term"), int):
                node = str(known.get("node", ""))
                known_zone = node.split("/")[0] if "/" in node else node or None
                if best[1] is None or known["term"] > best[1]:
                    best = (known_zone, int(known["term"]), None)
    return best
