"""Run one zone's store service in the foreground (tests, benchmarks, a host of its own).

    python -m crosszone.storage --zone a --store /var/lib/crosszone/a.db \\
        [--config topology.yaml] [--listen 127.0.1.6:7000] [--peer b=http://127.0.2.6:7000 ...]

``CROSSZONE_FAILPOINT=after_prepare:3`` makes the process SIGKILL itself the 3rd time the 2PC
coordinator reaches that point (``before_prepare``, ``after_prepare``, ``after_decision``,
``mid_commit``): crash tests use it to stop at an exact step.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from aiohttp import web

from crosszone.config import Node, load_topology, parse_topology
from crosszone.storage import open_store
from crosszone.storage.service import STORE_PORT, create_store_app, store_url


def failpoint_from_env() -> object:
    spec = os.environ.get("CROSSZONE_FAILPOINT", "")
    if not spec:
        return None
    point, _, nth = spec.partition(":")
    hits = {"n": 0}

    def hit(name: str) -> None:
        if name == point:
            hits["n"] += 1
            if hits["n"] >= int(nth or 1):
                os.kill(os.getpid(), signal.SIGKILL)

    return hit


async def serve(args: argparse.Namespace) -> None:
    peers = dict(p.split("=", 1) for p in args.peer)
    if args.config:
        topology = load_topology(args.config)
    else:
        zones = sorted({args.zone, *peers})
        topology = parse_topology({"zones": [{"name": z, "subnet": f"127.0.{200 + i}.0/24"}
                                             for i, z in enumerate(zones)]})
    listen = args.listen or store_url(topology, args.zone).removeprefix("http://")
    host, _, port = listen.rpartition(":")
    store = await open_store(args.zone, args.store)
    node = Node(args.zone, "store", 0, host, int(port or STORE_PORT))
    app = create_store_app(topology, node, store, peers=peers or None,
                           failpoint=failpoint_from_env(),  # type: ignore[arg-type]
                           prepare_timeout=args.prepare_timeout, keep_max=args.keep_max,
                           trim_every=args.trim_every)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, int(port or STORE_PORT), reuse_address=True).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logging.getLogger("crosszone.store").info("zone %s store serving on %s", args.zone, listen)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m crosszone.storage")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--store", required=True, help="SQLite file or PostgreSQL DSN")
    parser.add_argument("--config", help="topology file (default: built from --peer)")
    parser.add_argument("--listen", help="host:port (default: host .6 of the zone, port 7000)")
    parser.add_argument("--peer", action="append", default=[], help="ZONE=URL of another zone")
    parser.add_argument("--prepare-timeout", type=float, default=2.0)
    parser.add_argument("--keep-max", type=int, default=200_000,
                        help="outbox entries kept for a lagging zone before it needs a snapshot")
    parser.add_argument("--trim-every", type=float, default=5.0)
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("CROSSZONE_LOG", "INFO"),
                        format=f"%(asctime)s %(levelname)s [{args.zone}/store] %(message)s")
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args))
    else:
        uvloop.run(serve(args))


if __name__ == "__main__":
    main()
