"""The monitor's own ``/metrics``: the deployment as one monitor sees it, in Prometheus text.

:func:`series_of` turns a :class:`Snapshot` into flat :class:`Series`; the same list is what the
alert rules are evaluated on inside the monitor, and what Prometheus evaluates the exported rules
on after scraping, so both see the same numbers under the same names.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from crosszone.monitoring.view import Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Series:
    name: str  # the sample name as exposed (counters end in _total)
    labels: tuple[tuple[str, str], ...]
    value: float

    def label(self, key: str) -> str:
        return dict(self.labels).get(key, "")


# family name -> (type, help, label names)
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "crosszone_zone_up": ("gauge", "1 unless the zone is unhealthy", ("zone",)),
    "crosszone_zone_degraded": ("gauge", "1 while the zone serves with part of it down",
                                ("zone",)),
    "crosszone_healthy_zones": ("gauge", "Zones not unhealthy", ()),
    "crosszone_node_up": ("gauge", "1 if the node answers GET /health with 200",
                          ("zone", "component", "node")),
    "crosszone_lb_up": ("gauge", "1 if the load balancer answers GET /health with 200", ()),
    "crosszone_traffic_weight": ("gauge", "Share of new requests the LB sends the zone (0..1)",
                                 ("zone",)),
    "crosszone_zone_requests_per_second": ("gauge", "API requests/s through the zone's gateway",
                                           ("zone",)),
    "crosszone_zone_error_ratio": ("gauge", "5xx share of the zone gateway's API requests",
                                   ("zone",)),
    "crosszone_zone_p95_latency_seconds": ("gauge", "p95 request duration at the zone gateway",
                                           ("zone",)),
    "crosszone_service_requests_per_second": ("gauge", "API requests/s at the load balancer",
                                              ()),
    "crosszone_service_error_ratio": ("gauge", "5xx share of the LB's API requests", ()),
    "crosszone_error_budget_burn_rate": ("gauge", "Error ratio over the window / (1 - SLO)",
                                         ("window",)),
    "crosszone_controller_up": ("gauge", "1 if the zone's controller answers", ("zone",)),
    "crosszone_controller_leader": ("gauge", "1 for the zone whose controller leads",
                                    ("zone",)),
    "crosszone_leader_term": ("gauge", "Term (fencing token) of the current leader", ()),
    "crosszone_failover_events": ("counter", "Traffic moves the leader recorded",
                                  ("kind", "success")),
    "crosszone_failovers_recent": ("gauge", "Failover events within the alert window", ()),
    "crosszone_failovers_failed_recent": ("gauge", "Failed failover events within the window",
                                          ()),
    "crosszone_replication_lag_seconds": ("gauge", "Age of the oldest unacknowledged write",
                                          ("zone", "peer_zone")),
    "crosszone_replication_lag_records": ("gauge", "Writes not yet acknowledged by the peer",
                                          ("zone", "peer_zone")),
    "crosszone_prepared_transactions": ("gauge", "Prepared (in-doubt) 2PC transactions",
                                        ("zone",)),
    "crosszone_prepared_transaction_oldest_age_seconds": (
        "gauge", "Age of the oldest prepared 2PC transaction", ("zone",)),
    "crosszone_chaos_experiments_active": ("gauge", "Chaos experiments in place", ()),
    "crosszone_chaos_experiment_info": ("gauge", "One series per active chaos experiment",
                                        ("uid", "kind")),
    "crosszone_cross_zone_latency_seconds": ("gauge", "Last cross-zone probe round trip",
                                             ("zone", "peer_zone")),
    "crosszone_cross_zone_probe_failures": ("counter", "Cross-zone probes without an answer",
                                            ("zone", "peer_zone")),
}


def _s(name: str, value: float, **labels: str) -> Series:
    kind = FAMILIES[name][0]
    exposed = f"{name}_total" if kind == "counter" else name
    return Series(exposed, tuple(sorted(labels.items())), float(value))


def series_of(snap: Snapshot) -> list[Series]:
    out: list[Series] = []
    for zone in snap.zones.values():
        z = zone.name
        out += [_s("crosszone_zone_up", zone.up, zone=z),
                _s("crosszone_zone_degraded", zone.status == "degraded", zone=z),
                _s("crosszone_traffic_weight", zone.weight, zone=z),
                _s("crosszone_zone_requests_per_second", zone.requests_per_second, zone=z)]
        out += [_s("crosszone_node_up", n.up, zone=z, component=n.component, node=n.name)
                for n in zone.nodes]
        if zone.error_rate is not None:
            out.append(_s("crosszone_zone_error_ratio", zone.error_rate, zone=z))
        if zone.p95_ms is not None:
            out.append(_s("crosszone_zone_p95_latency_seconds", zone.p95_ms / 1000, zone=z))
    out.append(_s("crosszone_healthy_zones", len(snap.healthy_zones)))
    out.append(_s("crosszone_lb_up", bool(snap.lb and snap.lb.up)))
    out.append(_s("crosszone_service_requests_per_second", snap.service_requests_per_second))
    if snap.service_error_rate is not None:
        out.append(_s("crosszone_service_error_ratio", snap.service_error_rate))
    out += [_s("crosszone_error_budget_burn_rate", v, window=w) for w, v in snap.burn.items()]
    for z, up in snap.controllers.items():
        out += [_s("crosszone_controller_up", up, zone=z),
                _s("crosszone_controller_leader", z == snap.leader, zone=z)]
    if snap.term is not None:
        out.append(_s("crosszone_leader_term", snap.term))
    out += [_s("crosszone_failover_events", n, kind=k, success=str(ok).lower())
            for (k, ok), n in sorted(snap.failover_counts.items())]
    out += [_s("crosszone_failovers_recent", snap.failovers_recent),
            _s("crosszone_failovers_failed_recent", snap.failovers_failed_recent)]
    for lag in snap.lag:
        out += [_s("crosszone_replication_lag_seconds", lag.seconds, zone=lag.zone,
                   peer_zone=lag.peer_zone),
                _s("crosszone_replication_lag_records", lag.records, zone=lag.zone,
                   peer_zone=lag.peer_zone)]
    for p in snap.prepared:
        out += [_s("crosszone_prepared_transactions", p.count, zone=p.zone),
                _s("crosszone_prepared_transaction_oldest_age_seconds", p.oldest_age_seconds,
                   zone=p.zone)]
    out.append(_s("crosszone_chaos_experiments_active", len(snap.chaos)))
    out += [_s("crosszone_chaos_experiment_info", 1, uid=str(e["uid"]), kind=str(e["kind"]))
            for e in snap.chaos]
    for z, peers in snap.latency_ms.items():
        out += [_s("crosszone_cross_zone_latency_seconds", ms / 1000, zone=z, peer_zone=p)
                for p, ms in peers.items()]
    for z, failed in snap.probe_failures.items():
        out += [_s("crosszone_cross_zone_probe_failures", n, zone=z, peer_zone=p)
                for p, n in failed.items()]
    return out


class SnapshotCollector(Collector):
    """Renders the latest series at scrape time (no state of its own beyond them)."""

    def __init__(self) -> None:
        self.series: list[Series] = []

    def collect(self) -> Iterator[Metric]:
        by_family: dict[str, list[Series]] = {}
        for s in self.series:
            family = s.name.removesuffix("_total") if s.name.endswith("_total") else s.name
            by_family.setdefault(family, []).append(s)
        for family, items in by_family.items():
            kind, help_text, names = FAMILIES[family]
            metric: GaugeMetricFamily | CounterMetricFamily
            if kind == "counter":
                metric = CounterMetricFamily(family, help_text, labels=list(names))
            else:
                metric = GaugeMetricFamily(family, help_text, labels=list(names))
            for s in items:
                metric.add_metric([s.label(n) for n in names], s.value)
            yield metric


class MonitorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = SnapshotCollector()
        self.registry.register(self.collector)

    def update(self, series: Iterable[Series]) -> None:
        self.collector.series = list(series)

    def render(self) -> bytes:
        return generate_latest(self.registry)
