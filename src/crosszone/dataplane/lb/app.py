"""The multi-zone load balancer as an aiohttp application (one app, bound once per listener).

Targets are the zone gateways. ``active-backup`` puts each zone in its own tier in
``zone_order()``, so all traffic goes to the first available zone; ``active-active`` puts all zones
in one tier and splits by weight and outstanding requests. A zone whose weight is zero is drained:
it takes traffic only when no other zone can. With no target available at all the balancer fails
open and tries every target in order (Envoy's panic mode). It does not authenticate: the
gateways do. It is the edge: the ``x-crosszone-*`` headers a client sends are dropped, since the
hops behind it take those (prefix tokens, migrations of a continued stream) from hops only.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from aiohttp import web

from crosszone.config.placement import Placement
from crosszone.config.topology import Timeouts, Topology
from crosszone.dataplane.lb.metrics import ZoneMetrics
from crosszone.dataplane.openai_errors import error_middleware, error_response
from crosszone.dataplane.proxy.headers import USAGE_ID, without_internal
from crosszone.dataplane.proxy.hop import ProxyHop
from crosszone.dataplane.proxy.pool import (
    Endpoint,
    LeastOutstanding,
    UpstreamPool,
    WeightedLeastOutstanding,
)
from crosszone.dataplane.proxy.signals import NodeName
from crosszone.dataplane.proxy.weights import weights_handler

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


RETRY_PATIENCE_SECONDS = 8.0
"""How long the LB keeps retrying a request that no zone could serve before its first byte
(rounds over every zone, 50 ms doubling to 1 s apart): a mass restart or a starved survivor
costs latency, not an error. Bounded by the request's own deadline."""


def _gateway_names(topology: Topology) -> NodeName:
    """The LB's endpoints are named after their zone; the controllers know them as gateways."""
    names = {gw.zone: gw.name for gw in Placement(topology).gateways()}
    return lambda ep: names.get(ep.zone, ep.name)


def create_lb_app(topology: Topology) -> web.Application:
    """The load balancer; the caller binds it on every listener (HTTP and/or HTTPS)."""
    pool = lb_pool(topology)
    hop = ProxyHop(pool, timeouts=lb_timeouts(topology), max_attempts=len(pool.endpoints),
                   health_check=topology.load_balancer.health_check,
                   metrics_prefix="crosszone_lb", served_headers=_served,
                   label="load balancer", migration=topology.gateway.migration, hedge=True,
                   node_name=_gateway_names(topology))
    hop.report_signals(topology)  # passive signals per zone to the controllers
    # every zone failed a request before its first byte: try them all again, with backoff
    hop.forwarder.patience_seconds = RETRY_PATIENCE_SECONDS
    zone_metrics = ZoneMetrics(hop.metrics.registry, pool)
    max_body = topology.gateway.max_body_bytes

    async def relay(request: web.Request) -> web.StreamResponse:
        clean = without_internal(request.headers)  # x-crosszone-*: only hops may set them
        if clean is not None:
            request = request.clone(headers=clean)
        length = request.content_length
        try:
            if length is not None and length > max_body:
                raise web.HTTPRequestEntityTooLarge(max_size=max_body, actual_size=length)
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            hop.metrics.count_request(request.path, 413)
            zone_metrics.count(None, request.path, 413)
            return error_response(413, f"request body exceeds {max_body} bytes",
                                  code="body_too_large")
        response = await hop.proxy(request, body, extra={USAGE_ID: uuid.uuid4().hex})
        zone_metrics.count(response.headers.get(GATEWAY_ZONE_HEADER), request.path,
                           response.status)
        return response

    async def health(request: web.Request) -> web.Response:
        zones = [ep.zone for ep in pool.available()]
        return _json({"status": "ok" if zones else "unavailable", "healthy_zones": zones},
                     200 if zones else 503)

    async def status(request: web.Request) -> web.Response:
        return _json(status_document(topology, pool))

    async def metrics(request: web.Request) -> web.Response:
        return hop.metrics_response()

    def set_weights(weights: dict[str, float]) -> web.Response:
        pool.set_weights(weights)
        return _json(status_document(topology, pool))

    # admin token: who may shift traffic; fencing token: the sender still leads (else 409)
    put_weights = weights_handler(topology.zone_names(), topology.auth.admin_token,
                                  lambda: {ep.zone: ep.weight for ep in pool.endpoints},
                                  set_weights)

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
