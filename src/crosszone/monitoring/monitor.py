"""The monitor's HTTP application (``create_monitor_app``), one per zone on host ``.7:9100``.

Any monitor answers every route:

* ``GET /health`` -- liveness, the last sentence (peers use it to pick the notifier)
* ``GET /metrics`` -- the deployment as this monitor sees it, Prometheus text
* ``GET /api/status`` -- snapshot, alerts, recent failovers and history (the dashboard polls it)
* ``GET /api/alerts`` -- firing alerts and recent transitions
* ``GET /api/report/latency|failovers|slo`` -- what ``crosszone report`` prints
  (``slo``: ``?days=30``)
* ``GET /api/latency/samples?zone=Z&after=T&limit=N`` -- zone Z's probes, for peer monitors
* ``GET /`` and ``/static/...`` -- the web dashboard (no CDN: every asset is in the package)

Errors are OpenAI-style JSON with the matching status, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from crosszone.config import Node, Topology
from crosszone.dataplane.openai_errors import error_middleware, error_response
from crosszone.errors import MetricsStoreError
from crosszone.monitoring.alerts import Notifier
from crosszone.monitoring.cycle import Monitor
from crosszone.monitoring.dashboard import add_dashboard_routes
from crosszone.monitoring.exported import CONTENT_TYPE
from crosszone.monitoring.report import failover_report, latency_report, slo_report
from crosszone.monitoring.settings import MonitoringSettings
from crosszone.monitoring.store import MetricsStore

MONITOR: web.AppKey[Monitor] = web.AppKey("monitor", Monitor)
log = logging.getLogger("crosszone.monitor")


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS),
                        status=status, content_type="application/json")


def status_document(m: Monitor) -> dict[str, Any]:
    snap = m.snapshot
    return {
        "zone": m.zone, "node": m.node.name, "cycles": m.cycles, "sentence": m.sentence,
        "notifier": m.notifier, "time": time.time(),
        "zones_order": m.topology.zone_names(),
        "snapshot": None if snap is None else snap.to_json(),
        "alerts": [a.to_json() for a in m.alerts.evaluator.active.values()],
        "alert_history": m.alerts.history[-20:],
        "failovers": [{**asdict(e), "rto_ms": e.rto_ms} for e in m.recent_failovers[:20]],
        "history": list(m.history),
    }


async def run_report(store: MetricsStore, settings: MonitoringSettings, kind: str,
                     days: float = 30.0, monitor: str | None = None) -> dict[str, Any]:
    """One report from ``store``; ValueError for an unknown kind."""
    if kind == "latency":
        return await asyncio.to_thread(latency_report, store)
    if kind == "failovers":
        return await asyncio.to_thread(failover_report, store)
    if kind == "slo":
        windows = {"short": settings.short_window_seconds, "long": settings.long_window_seconds}
        return await asyncio.to_thread(
            lambda: slo_report(store, target=settings.slo_target, window_seconds=days * 86400,
                               burn_windows=windows, monitor=monitor))
    raise ValueError(f"unknown report {kind!r} (latency, failovers or slo)")


def create_monitor_app(topology: Topology, node: Node, run_dir: Path, *,
                       settings: MonitoringSettings | None = None,
                       store: MetricsStore | None = None,
                       notifiers: list[Notifier] | None = None) -> web.Application:
    """The monitor of ``node.zone``; the caller binds it on ``node.host:node.port``."""
    monitor = Monitor(topology, node, run_dir, settings=settings, store=store,
                      notifiers=notifiers)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def startup(app: web.Application) -> None:
        await monitor.open()
        tasks.append(asyncio.create_task(monitor.run(stop), name=f"monitor-{monitor.zone}"))

    async def cleanup(app: web.Application) -> None:
        stop.set()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await monitor.close()

    async def health(request: web.Request) -> web.Response:
        stale = monitor.stale()
        return _json({"status": "stale" if stale else "ok", "zone": monitor.zone,
                      "cycles": monitor.cycles, "sentence": monitor.sentence},
                     503 if stale else 200)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=monitor.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def status(request: web.Request) -> web.Response:
        doc = status_document(monitor)
        try:
            doc["latency_matrix"] = await asyncio.to_thread(monitor.store.latency_matrix,
                                                            time.time() - 300)
        except MetricsStoreError:
            doc["latency_matrix"] = []
        return _json(doc)

    async def alerts(request: web.Request) -> web.Response:
        return _json({"firing": [a.to_json() for a in monitor.alerts.evaluator.firing()],
                      "history": monitor.alerts.history,
                      "rules": [{"alert": r.name, "expr": r.expr(), "severity": r.severity}
                                for r in monitor.rules]})

    async def report(request: web.Request) -> web.Response:
        try:
            days = float(request.query.get("days", "30"))
            doc = await run_report(monitor.store, monitor.settings, request.match_info["kind"],
                                   days, monitor.zone)
        except ValueError as exc:
            return error_response(400, str(exc), code="invalid_request")
        except MetricsStoreError as exc:
            return error_response(503, str(exc), code="metrics_store_unavailable")
        return _json({"monitor": monitor.zone, **doc})

    async def samples(request: web.Request) -> web.Response:
        q = request.query
        try:
            zone, after = q["zone"], float(q.get("after", "0"))
            limit = max(1, min(int(q.get("limit", "10000")), 100_000))
        except (KeyError, ValueError):
            return error_response(400, "expected ?zone=<zone>&after=<unix seconds>&limit=<n>",
                                  code="invalid_request")
        try:
            rows = await asyncio.to_thread(monitor.store.latency_samples, zone, after, limit)
        except MetricsStoreError as exc:
            return error_response(503, str(exc), code="metrics_store_unavailable")
        return _json({"samples": [asdict(r) for r in rows]})

    app = web.Application(middlewares=[error_middleware])
    app[MONITOR] = monitor
    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/alerts", alerts)
    app.router.add_get("/api/report/{kind}", report)
    app.router.add_get("/api/latency/samples", samples)
    add_dashboard_routes(app)
    return app
