"""The zone API gateway as an aiohttp application.

Its pool holds every worker of the topology: the gateway's own zone in the first tier, the other
zones in the second, so requests cross zones only while no worker of its own zone is available;
the controller's weights (``PUT /gateway/weights``, :mod:`.routing`) say which other zones take
that fallback. Like the load balancer, it reports its passive signals to the controllers.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from crosszone.config.placement import Node, Placement
from crosszone.config.topology import Topology
from crosszone.dataplane.gateway.product import GatewayProduct
from crosszone.dataplane.gateway.routing import FallbackWeights
from crosszone.dataplane.openai_errors import error_middleware, error_response
from crosszone.dataplane.proxy.hop import ProxyHop
from crosszone.dataplane.proxy.pool import Endpoint, UpstreamPool, WeightedLeastOutstanding

GATEWAY_HOP = web.AppKey("crosszone_gateway_hop", ProxyHop)

ZONE_HEADER = "x-crosszone-zone"
NODE_HEADER = "x-crosszone-node"
ATTEMPTS_HEADER = "x-crosszone-attempts"

_JSON_METHODS = frozenset({"POST", "PUT", "PATCH"})
_FORM_TYPES = ("multipart/", "application/x-www-form-urlencoded")


def gateway_pool(topology: Topology, zone: str) -> UpstreamPool:
    """Every worker slot up to each group's max_size, own zone first (tier 0), the other zones
    as fallback (tier 1), split by weight (:class:`~.routing.FallbackWeights`). Slots beyond
    desired_capacity start unavailable: an auto-scaling group starts them later, and they take
    requests only once a health check has passed."""
    placement = Placement(topology)
    endpoints = [Endpoint(worker.name, name, worker.url, priority=0 if name == zone else 1,
                          healthy=None if worker.index <= topology.worker_group_of(name)
                          .desired_capacity else False)
                 for name in topology.zone_names() for worker in placement.max_workers(name)]
    return UpstreamPool(endpoints, WeightedLeastOutstanding(), fail_open=False)


def _served(ep: Endpoint | None, attempts: int) -> dict[str, str]:
    if ep is None:
        return {ATTEMPTS_HEADER: str(attempts)}
    return {ZONE_HEADER: ep.zone, NODE_HEADER: ep.name, ATTEMPTS_HEADER: str(attempts)}


def _check_json(request: web.Request, body: bytes) -> web.Response | None:
    """An OpenAI-style 400 unless the body of a POST/PUT/PATCH is a JSON object."""
    if request.method not in _JSON_METHODS or request.content_type.startswith(_FORM_TYPES):
        return None
    if not body:
        return error_response(400, "request body is empty; expected a JSON object",
                              code="invalid_json")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return error_response(400, f"request body is not valid JSON: {exc}", code="invalid_json")
    if not isinstance(document, dict):
        return error_response(400, "request body must be a JSON object", code="invalid_json")
    return None


def create_gateway_app(topology: Topology, node: Node) -> web.Application:
    """The gateway of ``node.zone``; the caller binds it on ``node.host:node.port``."""
    if node.zone is None:
        raise ValueError(f"a gateway belongs to a zone; node {node.name} has none")
    zone = node.zone
    gw = topology.gateway
    max_body = gw.max_body_bytes
    hop = ProxyHop(gateway_pool(topology, zone), timeouts=gw.timeouts,
                   max_attempts=gw.max_attempts, health_check=gw.health_check,
                   metrics_prefix="crosszone_gateway", served_headers=_served,
                   label=f"gateway {zone}", source_host=node.host, migration=gw.migration)
    hop.report_signals(topology)  # passive signals per zone to the controllers
    weights = FallbackWeights(hop.pool, zone, topology)  # PUT /gateway/weights
    product = GatewayProduct(topology, node, hop)  # keys, conversations, usage (zone store)
    too_large = f"request body exceeds {max_body} bytes"

    async def relay(request: web.Request) -> web.StreamResponse:
        response = await _admit(request)
        if response is not None:
            hop.metrics.count_request(request.path, response.status)
            return response
        body = await request.read()  # size checked by _admit / client_max_size
        bad = _check_json(request, body)
        if bad is not None:
            hop.metrics.count_request(request.path, bad.status)
            return bad
        return await product.proxy(request, body)

    async def _admit(request: web.Request) -> web.Response | None:
        denied = await product.admit(request)
        if denied is not None:
            return denied
        length = request.content_length
        if length is not None and length > max_body:
            return error_response(413, too_large, code="body_too_large")
        if length is None and request.body_exists:
            try:  # chunked upload: aiohttp enforces client_max_size while reading
                await request.read()
            except web.HTTPRequestEntityTooLarge:
                return error_response(413, too_large, code="body_too_large")
        return None

    async def health(request: web.Request) -> web.Response:
        serving = len(hop.pool.available())
        local = len(hop.pool.available(zone))
        return web.json_response(
            {"status": "ok" if serving else "unavailable", "zone": zone,
             "healthy_workers": serving, "local_healthy_workers": local},
            status=200 if serving else 503, dumps=lambda o: orjson.dumps(o).decode())

    async def metrics(request: web.Request) -> web.Response:
        return hop.metrics_response()

    app = web.Application(client_max_size=max_body, middlewares=[error_middleware])
    app[GATEWAY_HOP] = hop
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    weights.attach(app)
    product.attach(app)  # /v1/responses, /admin/*: before the catch-all relay route
    app.router.add_route("*", "/v1/{tail:.*}", relay)
    hop.attach(app)
    return app
