"""The multi-zone load balancer as an aiohttp application (one app, bound once per listener).

Targets are the zone gateways. ``active-backup`` puts each zone in its own tier in
``zone_order()``, so all traffic goes to the first available zone; ``active-active`` puts all zones
in one tier and splits by weight and outstanding requests. A zone whose weight is zero is drained:
it takes traffic only when no other zone can. With no target available at all the balancer fails
open and tries every target in order (Envoy's panic mode). It does not authenticate: the
gateways do.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from aiohttp import web

from crosszone.config.placement import Placement
from crosszone.config.topology import Timeouts, Topology
from crosszone.control.fencing import FencingGuard
from crosszone.dataplane.gateway.auth import ApiKeyAuth
from crosszone.dataplane.openai_errors import error_middleware, error_response
from crosszone.dataplane.proxy.hop import ProxyHop
from crosszone.dataplane.proxy.pool import (
    Endpoint,
    LeastOutstanding,
    UpstreamPool,
    WeightedLeastOutstanding,
)
from crosszone.errors import StaleFencingToken

LB_HOP = web.AppKey("crosszone_lb_hop", ProxyHop)

GATEWAY_ZONE_HEADER = "x-crosszone-gateway-zone"
LB_ATTEMPTS_HEADER = "x-crosszone-lb-attempts"


def lb_pool(topology: Topology) -> UpstreamPool:
    """One endpoint per zone gateway, named after its zone."""
    lb = topology.load_balancer
    port = lb.listeners[0].target_port if lb.listeners else topology.gateway.port
    order = topology.zone_order()
    order += [z for z in topology.zone_names() if z not in order]
    failover = topology.failover
    active_backup = failover.mode == "active-backup"
    weights = failover.weights
    endpoints = []
    for gw in Placement(topology).gateways():
        zone = gw.zone or ""
        endpoints.append(Endpoint(
            zone, zone, f"http://{gw.host}:{port}",
            priority=order.index(zone) if active_backup else 0,
            weight=1.0 if weights is None else weights.get(zone, 0.0)))
    policy = LeastOutstanding() if active_backup else WeightedLeastOutstanding()
    return UpstreamPool(endpoints, policy, fail_open=True)


def lb_timeouts(topology: Topology) -> Timeouts:
    """Timeouts towards a gateway: long enough for the gateway's own retries to finish first."""
    gw = topology.gateway
    t = gw.timeouts
    return Timeouts(
        connect_seconds=t.connect_seconds,
        first_byte_seconds=gw.max_attempts * (t.connect_seconds + t.first_byte_seconds) + 1.0,
        idle_seconds=t.idle_seconds + 1.0,
        total_seconds=t.total_seconds + 1.0)


def _served(ep: Endpoint | None, attempts: int) -> dict[str, str]:
    if ep is None:
        return {LB_ATTEMPTS_HEADER: str(attempts)}
    return {GATEWAY_ZONE_HEADER: ep.zone, LB_ATTEMPTS_HEADER: str(attempts)}


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status,
                        content_type="application/json")


def status_document(topology: Topology, pool: UpstreamPool) -> dict[str, Any]:
    """What ``GET /lb/status`` answers: every target's state."""
    return {
        "mode": topology.failover.mode,
        "panic": not pool.available(),
        "zones": {ep.zone: {"url": ep.url, "healthy": ep.healthy, "ejected": ep.ejected,
                            "available": ep.available, "outstanding": ep.outstanding,
                            "weight": ep.weight, "priority": ep.priority,
                            "last_error": ep.last_error}
                  for ep in pool.endpoints},
    }


def parse_weights(document: Any, zones: list[str]) -> dict[str, float]:
    """Validate ``{"weights": {zone: number}}``; raise ValueError with a clear message."""
    if not isinstance(document, dict) or not isinstance(document.get("weights"), dict):
        raise ValueError('expected {"weights": {"<zone>": <number>, ...}}')
    weights: dict[str, float] = {}
    for zone, value in document["weights"].items():
        if zone not in zones:
            raise ValueError(f"unknown zone {zone!r}; zones are {zones}")
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value) or value < 0:
            raise ValueError(f"weight of {zone} must be a finite number >= 0, got {value!r}")
        weights[zone] = float(value)
    return weights


def create_lb_app(topology: Topology) -> web.Application:
    """The load balancer; the caller binds it on every listener (HTTP and/or HTTPS)."""
    pool = lb_pool(topology)
    hop = ProxyHop(pool, timeouts=lb_timeouts(topology), max_attempts=len(pool.endpoints),
                   health_check=topology.load_balancer.health_check,
                   metrics_prefix="crosszone_lb", served_headers=_served,
                   label="load balancer", migration=topology.gateway.migration, hedge=True)
    max_body = topology.gateway.max_body_bytes
    admin_token = topology.auth.admin_token
    admin = ApiKeyAuth([admin_token] if admin_token else [])
    fence = FencingGuard(require=False)  # an operator's manual PUT carries no token

    async def relay(request: web.Request) -> web.StreamResponse:
        length = request.content_length
        try:
            if length is not None and length > max_body:
                raise web.HTTPRequestEntityTooLarge(max_size=max_body, actual_size=length)
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            hop.metrics.count_request(request.path, 413)
            return error_response(413, f"request body exceeds {max_body} bytes",
                                  code="body_too_large")
        return await hop.proxy(request, body)

    async def health(request: web.Request) -> web.Response:
        zones = [ep.zone for ep in pool.available()]
        return _json({"status": "ok" if zones else "unavailable", "healthy_zones": zones},
                     200 if zones else 503)

    async def status(request: web.Request) -> web.Response:
        return _json(status_document(topology, pool))

    async def metrics(request: web.Request) -> web.Response:
        return hop.metrics_response()

    async def put_weights(request: web.Request) -> web.Response:
        # The admin token (when configured) says who may shift traffic; the fencing token says
        # the sender is still the acting leader: a deposed controller's push is refused.
        if admin_token and not admin.allows(request.headers.get("Authorization")):
            return error_response(401, "admin token required", code="invalid_admin_token")
        try:
            fence.admit_header(request.headers)
        except StaleFencingToken as exc:
            return error_response(409, str(exc), code="stale_fencing_token")
        except ValueError as exc:
            return error_response(400, str(exc), code="invalid_fencing_token")
        try:
            weights = parse_weights(orjson.loads(await request.read()), topology.zone_names())
        except (orjson.JSONDecodeError, ValueError) as exc:
            return error_response(400, str(exc), code="invalid_weights")
        merged = {ep.zone: ep.weight for ep in pool.endpoints} | weights
        if sum(merged.values()) <= 0:
            return error_response(400, "weights must not all be zero", code="invalid_weights")
        pool.set_weights(weights)
        return _json(status_document(topology, pool))

    app = web.Application(client_max_size=max_body, middlewares=[error_middleware])
    app[LB_HOP] = hop
    app.router.add_get("/health", health)
    app.router.add_get("/lb/status", status)
    app.router.add_get("/lb/metrics", metrics)
    app.router.add_put("/lb/weights", put_weights)
    app.router.add_route("*", "/v1/{tail:.*}", relay)
    app.router.add_route("*", "/admin/{tail:.*}", relay)  # keys, usage: the gateways
    hop.attach(app)
    return app
