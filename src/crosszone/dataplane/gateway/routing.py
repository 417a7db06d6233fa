"""The gateway's routing weights: which other zones take its cross-zone fallback.

The acting controller pushes the same weights to every gateway as to the load balancer
(``PUT /gateway/weights``, fenced like ``PUT /lb/weights``: see :mod:`~.proxy.weights`). A gateway
sends to other zones' workers only while its own zone has none available; the weights decide
which: a zone with weight 0 (shifted away, failed, or a backup in active/backup mode) moves to
the pool's drained tier, so it gets fallback traffic only when no zone with a positive weight has
a worker left (fail open), and positive weights split the fallback between the other zones. The
gateway's own workers stay its first choice whatever its own zone's weight: the load balancer
decides whether traffic reaches this gateway at all, and a request that does is served locally
if it can be. The gateway keeps the last weights it accepted while no controller answers (static
stability), and starts from the topology's.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from crosszone.config.topology import Topology
from crosszone.dataplane.proxy.pool import UpstreamPool
from crosszone.dataplane.proxy.weights import weights_handler

WEIGHTS_PATH = "/gateway/weights"


def initial_weights(topology: Topology) -> dict[str, float]:
    """Per zone: the topology's active-active weight, else 1 (every zone may take fallback)."""
    weights = topology.failover.weights
    if topology.failover.mode != "active-active" or weights is None:
        return dict.fromkeys(topology.zone_names(), 1.0)
    return {z: float(weights.get(z, 0.0)) for z in topology.zone_names()}


class FallbackWeights:
    """The weights of one gateway's pool, by zone; the gateway's own zone is never drained."""

    def __init__(self, pool: UpstreamPool, zone: str, topology: Topology) -> None:
        self.pool = pool
        self.zone = zone
        self.zones = topology.zone_names()
        self.admin_token = topology.auth.admin_token
        self.weights: dict[str, float] = {}
        self.updated_at: float | None = None  # wall time of the last accepted push
        self._set(initial_weights(topology))

    def _set(self, weights: dict[str, float]) -> None:
        self.weights |= weights
        for ep in self.pool.endpoints:
            if ep.zone != self.zone and ep.zone in weights:
                ep.set_weight(weights[ep.zone])

    def apply(self, weights: dict[str, float]) -> web.Response:
        self._set(weights)
        self.updated_at = time.time()
        return self.response()

    def document(self) -> dict[str, Any]:
        return {"zone": self.zone, "weights": dict(self.weights),
                "fallback": {z: w for z, w in self.weights.items() if z != self.zone},
                "updated_at": self.updated_at}

    def response(self) -> web.Response:
        return web.Response(body=orjson.dumps(self.document()), content_type="application/json")

    def attach(self, app: web.Application) -> None:
        """``PUT /gateway/weights`` (admin and fencing tokens) and ``GET`` to read them."""
        app.router.add_put(WEIGHTS_PATH, weights_handler(
            self.zones, self.admin_token, lambda: self.weights, self.apply))
        app.router.add_get(WEIGHTS_PATH, self._get)

    async def _get(self, request: web.Request) -> web.Response:
        return self.response()

    def __repr__(self) -> str:
        return f"<FallbackWeights {self.zone} {self.weights}>"
