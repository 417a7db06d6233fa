"""The load balancer's metrics per zone, next to the hop's own (same registry, ``/lb/metrics``).

* ``crosszone_lb_zone_requests_total{zone, path, status}``: requests answered, by the zone whose
  gateway sent the response headers (``none`` when no zone could answer). A stream that migrates
  mid-way counts for the zone it started on.
* ``crosszone_lb_zone_weight{zone}`` and ``crosszone_lb_zone_priority{zone}``: the routing
  weight and tier of each zone, read from the pool when ``/lb/metrics`` is scraped, so a
  ``PUT /lb/weights`` shows on the next scrape.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from crosszone.dataplane.proxy.metrics import path_label
from crosszone.dataplane.proxy.pool import UpstreamPool

NO_ZONE = "none"


class _RoutingCollector(Collector):
    """The pool's weights and priorities, at scrape time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        weight = GaugeMetricFamily("crosszone_lb_zone_weight",
                                   "Routing weight of the zone (0: drained)", labels=["zone"])
        priority = GaugeMetricFamily("crosszone_lb_zone_priority",
                                     "Routing tier of the zone (lowest available tier serves; "
                                     "active-backup order)", labels=["zone"])
        for ep in self.pool.endpoints:
            weight.add_metric([ep.zone], ep.weight)
            priority.add_metric([ep.zone], ep.priority)
        yield weight
        yield priority


class ZoneMetrics:
    """Per-zone request counts and routing gauges of the load balancer."""

    def __init__(self, registry: CollectorRegistry, pool: UpstreamPool) -> None:
        self.requests = Counter("crosszone_lb_zone_requests",
                                "Requests answered, by the zone whose gateway answered, path "
                                "and status", ["zone", "path", "status"], registry=registry)
        registry.register(_RoutingCollector(pool))
        # labelled children cached: ``labels()`` takes a lock and builds a tuple per call
        self._children: dict[tuple[str, str, int], Counter] = {}

    def count(self, zone: str | None, path: str, status: int) -> None:
        key = (zone or NO_ZONE, path, status)
        child = self._children.get(key)
        if child is None:
            child = self.requests.labels(key[0], path_label(path), str(status))
            if len(self._children) < 1024:
                self._children[key] = child
        child.inc()
