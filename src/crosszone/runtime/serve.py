"""Run one component (worker, gateway or load balancer) in the foreground.

This is what a real deployment runs on each host, and what the local supervisor runs per node.
Lifecycle as in uvicorn's server: bind every site, serve until SIGTERM/SIGINT, then stop accepting,
let in-flight requests finish for ``shutdown_timeout`` seconds and cancel the rest; every response
from then on says ``Connection: close``. Under the supervisor a node may inherit its listening
sockets instead of binding them (:mod:`crosszone.runtime.listeners`): stopping then closes only
this process's copy, so new connections wait in the backlog for the next incarnation instead of
being refused, and for HANDOVER_SECONDS the open keep-alive connections are still answered, each
answer closing its connection, so their clients move over between two requests.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from aiohttp import hdrs, web

from crosszone.config import Node, Placement, Topology
from crosszone.errors import ConfigError, ConfigProblem, RuntimeStateError
from crosszone.runtime.listeners import BACKLOG, Address, inherited_listeners

COMPONENTS = ("worker", "gateway", "store", "controller", "monitor", "lb")
SHUTDOWN_TIMEOUT_SECONDS = 3.0  # below the supervisor's 5 s grace before SIGKILL
# With a successor on the same sockets: how long (of the shutdown timeout) keep-alive connections
# are still answered, with "Connection: close", so clients move over between two requests instead
# of sending one on a connection as it is closed.
HANDOVER_SECONDS = 1.0

log = logging.getLogger("crosszone.serve")


@dataclass(frozen=True)
class Binding:
    host: str
    port: int
    ssl_context: ssl.SSLContext | None = None

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    def __str__(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{self.host}:{self.port}"


def listen_addresses(topology: Topology, node: Node) -> list[Address]:
    """Where ``node``'s process listens (what :func:`build_app` binds), without building it."""
    if node.component == "controller":
        return []  # its loops bind the API, Raft and DNS themselves
    if node.component == "lb":
        lb = topology.load_balancer
        return [(lb.address, listener.port) for listener in lb.listeners]
    return [(node.host, node.port)]


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
    from crosszone.control.settings import control_settings
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
    leases = control_settings(topology).stores.enabled  # the controllers grant them
    return create_store_app(topology, node, store, prepare_timeout=st.prepare_timeout_seconds,
                            keep_max=st.keep_max, trim_every=st.trim_every_seconds,
                            await_lease=leases)


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


async def _start_sites(runner: web.AppRunner, bindings: list[Binding],
                       inherited: dict[Address, socket.socket]) -> list[str]:
    """Serve on the inherited socket of each binding, else bind it; where each one serves."""
    served = []
    try:
        for binding in bindings:
            sock = inherited.pop(binding.address, None)
            site: web.BaseSite
            if sock is not None:  # the backlog too: asyncio calls listen() again
                site = web.SockSite(runner, sock, ssl_context=binding.ssl_context,
                                    backlog=BACKLOG)
                served.append(f"{binding} (inherited fd {sock.fileno()})")
            else:
                site = web.TCPSite(runner, binding.host, binding.port,
                                   ssl_context=binding.ssl_context, reuse_address=True)
                served.append(str(binding))
            try:
                await site.start()
            except OSError as exc:
                raise _bind_error(binding, exc) from exc
    finally:
        for address, sock in inherited.items():  # not ours to serve: a mismatched topology
            log.warning("closing an inherited socket for %s:%d, which is not served here",
                        *address)
            sock.close()
    return served


def _close_connections_once_stopping(app: web.Application, stop: asyncio.Event) -> None:
    """Every response prepared after ``stop`` says ``Connection: close``, and closes its
    connection: the client reconnects for its next request instead of racing a close."""
    async def on_prepare(_: web.Request, response: web.StreamResponse) -> None:
        if stop.is_set():
            response.force_close()
            response.headers[hdrs.CONNECTION] = "close"  # already computed: say it too

    app.on_response_prepare.append(on_prepare)


async def _hand_over(runner: web.AppRunner, seconds: float) -> None:
    """Stop accepting at once, then keep answering the open connections (each answer closing
    its connection) until none is left or ``seconds`` have passed."""
    for site in runner.sites:
        await site.stop()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while runner.server is not None and runner.server.connections and loop.time() < deadline:
        await asyncio.sleep(0.05)


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
    inherited = inherited_listeners()  # a successor may serve them while this process drains
    handover = min(HANDOVER_SECONDS, shutdown_timeout / 2) if inherited else 0.0
    _close_connections_once_stopping(app, stop)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout - handover)
    await runner.setup()
    try:
        served = await _start_sites(runner, bindings, inherited)
        log.info("%s serving on %s", node.name, ", ".join(served))
        # Everything built so far (modules, topology, apps) lives as long as the process: keep
        # it out of the collector's full passes, which otherwise stall every relayed stream for
        # tens of milliseconds at a time (inter-token latency p99).
        gc.freeze()
        await stop.wait()
        log.info("%s stopping: draining for up to %.1fs", node.name, shutdown_timeout)
        await _hand_over(runner, handover)
    finally:
        await runner.cleanup()  # closes the listening sockets first: no new connection here
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
