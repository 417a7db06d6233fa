"""Run an aiohttp application on a loopback address inside the current event loop.

For tests and tools that need a real socket without the runtime's process supervision; port 0
binds a free port, and the yielded URL carries the one the kernel picked (no probe-then-bind race).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from crosszone.config.placement import Node
from crosszone.config.topology import Topology
from crosszone.dataplane.worker.app import create_worker_app


@asynccontextmanager
async def serve_app(app: web.Application, host: str, port: int = 0) -> AsyncIterator[str]:
    """Serve ``app`` on ``host:port`` for the duration of the block; yields ``http://host:port``."""
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def serve_worker(topology: Topology, host: str, port: int = 0, *, zone: str | None = None,
                       index: int = 1) -> AsyncIterator[str]:
    """A worker of ``topology`` on ``host:port``; yields its base URL (without ``/v1``).

    The node's port is reported as given (0 when the kernel picks one); only its name and zone
    show in responses.
    """
    node = Node(zone or topology.zone_names()[0], "worker", index, host, port)
    async with serve_app(create_worker_app(topology, node), host, port) as url:
        yield url
