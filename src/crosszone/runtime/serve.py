"""Run one component (worker, gateway or load balancer) in the foreground.

This is what a real deployment runs on each host, and what the local supervisor runs per node.
Lifecycle as in uvicorn's server: bind every site, serve until SIGTERM/SIGINT, then stop accepting,
let in-flight requests finish for ``shutdown_timeout`` seconds and cancel the rest.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from crosszone.config import Node, Placement, Topology
from crosszone.errors import ConfigError, ConfigProblem, RuntimeStateError

COMPONENTS = ("worker", "gateway", "store", "controller", "monitor", "lb")
SHUTDOWN_TIMEOUT_SECONDS = 3.0  # below the supervisor's 5 s grace before SIGKILL

log = logging.getLogger("crosszone.serve")


@dataclass(frozen=True)
class Binding:
    host: str
    port: int
    ssl_context: ssl.SSLContext | None = None

    def __str__(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{self.host}:{self.port}"


def resolve_node(topology: Topology, component: str, zone: str | None, index: int = 1) -> Node:
    """The node ``component`` in ``zone`` (index for workers); ConfigError naming what is wrong."""
    def wrong(option: str, value: object, message: str) -> ConfigError:
        return ConfigError("command line", [ConfigProblem(option, value, message)])

    if component not in COMPONENTS:
        raise wrong("COMPONENT", component, f"unknown component (one of {', '.join(COMPONENTS)})")
    placement = Placement(topology)
    if component == "lb":
        return placement.lb()
    zones = ", ".join(topology.zone_names())
    if zone is None:
        raise wrong("--zone", None, f"a {component} needs a zone (one of {zones})")
    if zone not in topology.zone_names():
        raise wrong("--zone", zone, f"is not a zone of the topology (one of {zones})")
    if component == "gateway":
        return placement.gateway(zone)
    if component == "store":
        return placement.store(zone)
    if component == "controller":
        return placement.controller(zone)
    if component == "monitor":
        return placement.monitor(zone)
    max_size = topology.worker_group_of(zone).max_size
    if not 1 <= index <= max_size:
        raise wrong("--index", index, f"zone {zone} has workers 1..{max_size}")
    return placement.worker(zone, index)


def build_app(topology: Topology, node: Node,
              run_dir: Path) -> tuple[web.Application, list[Binding]]:
    """The component's application and the addresses it must be bound on.

    Component modules are imported here, not at the top, so the CLI works without them.
    """
    try:
        return _build_app(topology, node, run_dir)
    except ImportError as exc:
        raise RuntimeStateError(f"the {node.component} component cannot be loaded: {exc}") from exc


def _build_app(topology: Topology, node: Node,
               run_dir: Path) -> tuple[web.Application, list[Binding]]:
    if node.component == "worker":
        from crosszone.dataplane.worker.app import create_worker_app

        return create_worker_app(topology, node), [Binding(node.host, node.port)]
    if node.component == "gateway":
        from crosszone.dataplane.gateway.app import create_gateway_app

        return create_gateway_app(topology, node), [Binding(node.host, node.port)]
    if node.component == "store":
        return _store_app(topology, node, run_dir), [Binding(node.host, node.port)]
    if node.component == "monitor":
        from crosszone.monitoring.monitor import create_monitor_app

        return create_monitor_app(topology, node, run_dir), [Binding(node.host, node.port)]
    from crosszone.dataplane.lb.app import create_lb_app
    from crosszone.dataplane.lb.tls import ensure_certificate

    lb = topology.load_balancer
    bindings = []
    for listener in lb.listeners:
        context = ensure_certificate(topology, run_dir) if listener.protocol == "HTTPS" else None
        bindings.append(Binding(lb.address, listener.port, context))
    return create_lb_app(topology), bindings


def _store_app(topology: Topology, node: Node, run_dir: Path) -> web.Application:
    from crosszone.storage import make_store
    from crosszone.storage.service import create_store_app

    st = topology.storage
    assert node.zone is not None
    if st.backend == "postgres":
        location = st.dsn[node.zone]
    else:
        (run_dir / "data").mkdir(parents=True, exist_ok=True)
        location = str(run_dir / "data" / f"store-{node.zone}.db")
    store = make_store(node.zone, location, conflict_timeout=st.conflict_timeout_seconds)
    return create_store_app(topology, node, store, prepare_timeout=st.prepare_timeout_seconds,
                            keep_max=st.keep_max, trim_every=st.trim_every_seconds)


async def _serve_controller(topology: Topology, node: Node, run_dir: Path,
                            stop: asyncio.Event) -> None:
    """A controller runs its own loops (election, observe-decide-act, API, DNS) until stopped;
    on SIGTERM it resigns its lease so another zone takes over at once."""
    from crosszone.control.controller import create_controller

    assert node.zone is not None
    controller = create_controller(topology, node.zone, run_dir=run_dir)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await controller.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _bind_error(binding: Binding, exc: OSError) -> RuntimeStateError:
    # asyncio wraps the bind error in a long sentence; the errno says it best.
    reason = os.strerror(exc.errno) if exc.errno else (str(exc) or type(exc).__name__)
    return RuntimeStateError(f"cannot bind {binding.host}:{binding.port}: {reason.lower()}")


async def serve(topology: Topology, node: Node, run_dir: Path,
                stop: asyncio.Event | None = None,
                shutdown_timeout: float = SHUTDOWN_TIMEOUT_SECONDS) -> None:
    """Serve ``node`` until ``stop`` is set or SIGTERM/SIGINT arrives, then drain and return."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if node.component == "controller":
        await _serve_controller(topology, node, run_dir, stop)
        return
    app, bindings = build_app(topology, node, run_dir)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        for binding in bindings:
            site = web.TCPSite(runner, binding.host, binding.port,
                               ssl_context=binding.ssl_context, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                raise _bind_error(binding, exc) from exc
        log.info("%s serving on %s", node.name, ", ".join(str(b) for b in bindings))
        await stop.wait()
        log.info("%s stopping: draining for up to %.1fs", node.name, shutdown_timeout)
    finally:
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("%s stopped", node.name)


def run_component(topology: Topology, node: Node, run_dir: Path) -> None:
    """Blocking entry point: serve ``node`` on uvloop (asyncio where uvloop is missing)."""
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s [{node.name}] %(name)s: %(message)s")
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(topology, node, run_dir))
    else:
        uvloop.run(serve(topology, node, run_dir))
