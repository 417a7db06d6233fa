"""A minimal controller for the coordination contract tests and the leader benchmark.

It campaigns like a real controller and, while it may act, sends a fenced command to a receiver
every ``--interval`` seconds. It prints one JSON line per event on stdout. With
``--stale-on-resume`` it also reproduces the case fencing exists for: when resumed after
SIGSTOP, it sends one command with the token it held before the freeze, as a process paused
between its lease check and its send would, and reports what the receiver said.

    python -m crosszone.control.leader_agent --node a --receiver http://H:P/command \\
        --backend raft --raft-self 127.0.109.1:7101 --raft-peers A:P,B:P,C:P
    python -m crosszone.control.leader_agent --node a --receiver URL \\
        --backend etcd --etcd http://127.0.110.1:2379,... --prefix /t1/
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path

import aiohttp

from crosszone.control.coordination.base import Coordinator
from crosszone.control.coordination.election import Elector
from crosszone.control.coordination.etcd import EtcdCoordinator
from crosszone.control.coordination.raft import RaftCoordinator
from crosszone.control.fencing import fencing_headers
from crosszone.control.settings import LeaseSettings


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


def build(args: argparse.Namespace) -> Coordinator:
    lease = LeaseSettings(ttl_seconds=args.ttl, renew_seconds=args.renew,
                          request_timeout_seconds=args.request_timeout,
                          safety_margin_seconds=args.margin)
    if args.backend == "raft":
        return RaftCoordinator(args.node, args.raft_self, args.raft_peers.split(","), lease,
                               data_dir=Path(args.data_dir) if args.data_dir else None)
    return EtcdCoordinator(args.node, args.etcd.split(","), lease, prefix=args.prefix)


async def send(session: aiohttp.ClientSession, url: str, node: str, token: int, seq: int,
               stale: bool = False) -> int | None:
    try:
        async with session.post(url, json={"node": node, "token": token, "seq": seq,
                                           "stale_probe": stale},
                                headers=fencing_headers(token),
                                timeout=aiohttp.ClientTimeout(total=0.5)) as resp:
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None


async def run(args: argparse.Namespace) -> None:
    coordinator = build(args)
    await coordinator.start()
    elector = Elector(coordinator, renew_seconds=args.renew, loop_seconds=args.interval)
    stop, resumed = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if args.stale_on_resume:
        loop.add_signal_handler(signal.SIGCONT, resumed.set)
    election = asyncio.create_task(elector.run(stop))
    emit("started", node=args.node)
    last_token: int | None = None
    leading = False
    seq = 0
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            token = elector.acting_token()
            if (token is not None) != leading:
                leading = token is not None
                emit("leader" if leading else "follower", node=args.node, term=token,
                     why=elector.last_sentence)
            if token is not None:
                seq += 1
                status = await send(session, args.receiver, args.node, token, seq)
                last_token = token
                if status == 409:
                    elector.demote("the receiver has seen a newer fencing token")
            if resumed.is_set():
                resumed.clear()
                if last_token is not None:
                    status = await send(session, args.receiver, args.node, last_token, seq,
                                        stale=True)
                    emit("stale-probe", node=args.node, term=last_token, status=status)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.interval)
    await election
    await coordinator.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--node", required=True)
    p.add_argument("--receiver", required=True, help="URL fenced commands are POSTed to")
    p.add_argument("--backend", choices=["raft", "etcd"], required=True)
    p.add_argument("--raft-self")
    p.add_argument("--raft-peers", help="comma-separated host:port of every member")
    p.add_argument("--data-dir")
    p.add_argument("--etcd", help="comma-separated client URLs")
    p.add_argument("--prefix", default="/crosszone/")
    p.add_argument("--ttl", type=float, default=1.5)
    p.add_argument("--renew", type=float, default=0.3)
    p.add_argument("--request-timeout", type=float, default=0.4)
    p.add_argument("--margin", type=float, default=0.2)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--stale-on-resume", action="store_true")
    args = p.parse_args(argv)
    if args.backend == "raft" and not (args.raft_self and args.raft_peers):
        p.error("--backend raft needs --raft-self and --raft-peers")
    if args.backend == "etcd" and not args.etcd:
        p.error("--backend etcd needs --etcd")
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
