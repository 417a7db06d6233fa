"""One proxy hop (a zone gateway, or the load balancer): pool, session, checks, forwarding,
and the passive signals it reports to the controllers.

The gateway and the load balancer differ only in their pool, their policy and the checks in front
of forwarding; everything else lives here once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp
from aiohttp import web

from crosszone.config.topology import HealthCheck, Migration, Timeouts, Topology
from crosszone.dataplane.proxy.forward import Forwarder, ServedHeaders
from crosszone.dataplane.proxy.headers import request_id, upstream_headers
from crosszone.dataplane.proxy.health import ActiveHealthChecker
from crosszone.dataplane.proxy.metrics import CONTENT_TYPE, HopMetrics
from crosszone.dataplane.proxy.pool import UpstreamPool
from crosszone.dataplane.proxy.reporter import SignalReporter
from crosszone.dataplane.proxy.signals import NodeName, PassiveSignals


def new_session(source_host: str | None = None) -> aiohttp.ClientSession:
    """The one client session of a hop: keep-alive, no connection cap, bytes relayed as-is.

    ``source_host`` binds outgoing connections to the node's own address, so that a network
    fault on its zone's subnet affects what it sends, not only what it receives.
    """
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300,
                                     keepalive_timeout=30,
                                     local_addr=(source_host, 0) if source_host else None)
    return aiohttp.ClientSession(
        connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
        # the client's own headers go through; aiohttp must not invent any of these
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        trust_env=False)


class ProxyHop:
    """Owns a hop's pool, session, active checker and forwarder, and ties them to an app."""

    def __init__(self, pool: UpstreamPool, *, timeouts: Timeouts, max_attempts: int,
                 health_check: HealthCheck, metrics_prefix: str, served_headers: ServedHeaders,
                 label: str, source_host: str | None = None, migration: Migration | None = None,
                 hedge: bool = False, node_name: NodeName | None = None) -> None:
        self.pool = pool
        self.label = label
        self.source_host = source_host
        self.metrics = HopMetrics(metrics_prefix)
        self.signals = PassiveSignals(node_name)
        self.forwarder = Forwarder(pool, timeouts, max_attempts, self.metrics, served_headers,
                                   migration=migration, hedge=hedge, signals=self.signals)
        self.checker = ActiveHealthChecker(pool, health_check, label=label,
                                           source_host=source_host)
        self.reporter: SignalReporter | None = None
        self.session: aiohttp.ClientSession | None = None

    def report_signals(self, topology: Topology) -> SignalReporter:
        """Post this hop's passive signals to every zone's controller while the hop runs."""
        self.reporter = SignalReporter.for_topology(self.signals, topology,
                                                    source_host=self.source_host,
                                                    label=self.label)
        return self.reporter

    def attach(self, app: web.Application) -> None:
        """Start with the app (on_startup), stop with it (on_cleanup)."""
        async def on_startup(_: web.Application) -> None:
            await self.start()

        async def on_cleanup(_: web.Application) -> None:
            await self.stop()

        app.on_startup.append(on_startup)
        app.on_cleanup.append(on_cleanup)

    async def start(self) -> None:
        if self.session is None:
            self.session = new_session(self.source_host)
            self.forwarder.session = self.session
        await self.checker.start()
        if self.reporter is not None:
            await self.reporter.start()

    async def stop(self) -> None:
        if self.reporter is not None:
            await self.reporter.stop()
        await self.checker.stop()
        if self.session is not None:
            self.forwarder.session = None
            await self.session.close()
            self.session = None
            await asyncio.sleep(0)  # let the connector's transports close

    async def proxy(self, request: web.Request, body: bytes, rid: str | None = None,
                    extra: Mapping[str, str] | None = None) -> web.StreamResponse:
        """Forward ``request`` (its body already read and checked) and count the answer;
        ``extra`` headers go upstream too."""
        metrics = self.metrics
        metrics.in_flight += 1
        try:
            rid = rid or request_id(request.headers)  # the gateway may have fixed it
            headers = upstream_headers(request.headers, rid)
            if extra:
                headers.update(extra)
            response = await self.forwarder.forward(request, body, headers, rid)
        finally:
            metrics.in_flight -= 1
        metrics.count_request(request.path, response.status)
        return response

    def metrics_response(self) -> web.Response:
        return web.Response(body=self.metrics.render(self.pool),
                            headers={"Content-Type": CONTENT_TYPE})
