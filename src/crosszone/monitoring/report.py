"""The reports ``crosszone report`` prints, computed from a metrics database.

``latency`` and ``failovers`` are the seed's two queries (run verbatim by the store);
``slo`` adds availability over a window (by requests at the load balancer, and by time the
service answered), how much of the error budget that spent, the burn rates, and the recovery
time (RTO) of each failover: first bad evidence -> traffic moved.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from crosszone.monitoring.store import MetricsStore

DAY = 86400.0
FAILOVER_DAYS = 7  # the seed's window


def latency_report(store: MetricsStore) -> dict[str, Any]:
    """Seed 5.2: average and p95 cross-zone latency per zone over the last hour (ms)."""
    return {"window": "1 hour", "rows": [asdict(r) for r in store.latency_by_zone()]}


def failover_report(store: MetricsStore, now: float | None = None) -> dict[str, Any]:
    """Seed 5.2: failover success rate over the last 7 days, and those events."""
    now = time.time() if now is None else now
    events = store.failover_events(now - FAILOVER_DAYS * DAY)
    return {"window": f"{FAILOVER_DAYS} days", "success_rate": store.failover_success_rate(),
            "events": [{**asdict(e), "rto_ms": e.rto_ms} for e in events]}


def _sum(store: MetricsStore, name: str, since: float, monitor: str | None) -> float:
    return sum(p.value for p in store.series(name, since, monitor))


def slo_report(store: MetricsStore, *, target: float, window_seconds: float,
               burn_windows: dict[str, float], monitor: str | None = None,
               now: float | None = None) -> dict[str, Any]:
    """Availability, error budget and burn rates over ``window_seconds``; RTO per failover.

    ``monitor`` selects one monitor's series when several write to one database.
    """
    now = time.time() if now is None else now
    since = now - window_seconds
    requests = _sum(store, "service_requests", since, monitor)
    errors = _sum(store, "service_errors", since, monitor)
    up = store.series("service_up", since, monitor)
    by_requests = 1.0 - errors / requests if requests > 0 else None
    by_time = sum(p.value for p in up) / len(up) if up else None
    budget = 1.0 - target
    spent = (errors / requests) / budget if requests > 0 else 0.0
    burn: dict[str, float | None] = {}
    for label, seconds in burn_windows.items():
        req = _sum(store, "service_requests", now - seconds, monitor)
        err = _sum(store, "service_errors", now - seconds, monitor)
        burn[label] = (err / req) / budget if req > 0 else None
    failovers = store.failover_events(since)
    return {
        "target": target, "window_seconds": window_seconds,
        "requests": requests, "errors": errors,
        "availability_by_requests": by_requests, "availability_by_time": by_time,
        "error_budget_spent": spent, "error_budget_remaining": 1.0 - spent,
        "burn_rates": burn,
        "failovers": [{"time": e.time, "kind": e.kind, "from_zone": e.from_zone,
                       "to_zone": e.to_zone, "success": e.success,
                       "detection_ms": e.detection_delay_ms, "action_ms": e.duration_ms,
                       "rto_ms": e.rto_ms} for e in sorted(failovers, key=lambda e: e.time)],
    }
