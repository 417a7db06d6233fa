"""RPO, measured: write under load, kill a zone at a random moment, heal, count what was lost.

    python -m crosszone.tools.rpo [--run-dir DIR] [--conversations sync|async] [--seconds 4]

Without ``--run-dir`` it starts its own local stack (``--config`` or the built-in topology on
127.0.176-178.0/24, ``--first-octet``) and stops it at the end. Steps:

1. load through the LB (:mod:`.rpo_load`): API keys (strong), conversations (the topology's
   class), usage records (async), every acknowledgement logged with the zone that answered;
2. at a random moment, sample the replication lag of the victim zone, then SIGKILL all its
   processes (``LocalStack.hold``); take it out of service on the survivors (what the control
   plane would do), and keep the load running on them for ``--down`` seconds;
3. stop the load; once the survivors agree among themselves, read what they hold: an
   acknowledged write no survivor holds is **lost** (what a zone that never came back costs);
4. heal (``release``, healthy, caught up, back in service) and check every zone holds every
   acknowledged write.

Verdict: strong classes lose nothing; an async class loses at most what the victim had not
shipped at the kill: the lag sampled just before it (records, fewest over destinations: the
survivors relay to each other) plus what the victim acknowledged between the sample and the kill.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from crosszone.errors import CrosszoneError
from crosszone.runtime import LocalStack
from crosszone.storage.client import ZoneStores
from crosszone.tools.membership import wait_caught_up, wait_in_service, wait_out_of_service
from crosszone.tools.rpo_load import Acked, AckLog, RpoLoad

COLLECTIONS = ("api_keys", "responses", "usage")


@dataclass(frozen=True)
class DrillOptions:
    seconds: float = 4.0  # load before the kill: the kill lands in [seconds/2, seconds]
    down: float = 2.0  # load on the survivors while the victim is down
    concurrency: int = 8
    zone: str | None = None
    seed: int | None = None


@dataclass
class ClassResult:
    kind: str
    consistency: str  # sync | async
    acked: int
    acked_by_victim: int
    lost: int  # acknowledged, held by no survivor
    bound: int | None  # async: what the lag at the kill allows
    missing_after_heal: int
    ok: bool


@dataclass
class DrillReport:
    victim: str
    conversations: str
    kill_after_seconds: float
    lag_at_kill: dict[str, dict[str, float]]  # destination -> records, seconds
    acked_after_sample: int  # by the victim, between the lag sample and the kill
    out_of_service_ms: float  # from the kill to the survivors no longer waiting for it
    results: list[ClassResult] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    load_average: float = 0.0  # of this machine when the drill ended: context for the lag

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def lines(self) -> list[str]:
        lag = ", ".join(f"-> {d}: {v['records']:.0f} records ({v['seconds'] * 1000:.1f} ms)"
                        for d, v in self.lag_at_kill.items())
        out = [f"killed {self.victim} after {self.kill_after_seconds:.2f}s of load "
               f"(conversations: {self.conversations})",
               f"lag of {self.victim} just before the kill: {lag or 'none'}; "
               f"+{self.acked_after_sample} acknowledged by it after that sample",
               f"survivors stopped waiting for it in two-phase commits after "
               f"{self.out_of_service_ms:.0f} ms (machine load average {self.load_average:.1f})",
               f"{'class':<14}{'consistency':<12}{'acked':>7}{'by victim':>10}{'lost':>6}"
               f"{'bound':>7}{'after heal':>11}  verdict"]
        for r in self.results:
            bound = "0" if r.bound is None else str(r.bound)
            out.append(f"{r.kind:<14}{r.consistency:<12}{r.acked:>7}{r.acked_by_victim:>10}"
                       f"{r.lost:>6}{bound:>7}{r.missing_after_heal:>11}  "
                       f"{'ok' if r.ok else 'FAILED'}")
        if self.errors:
            out.append("refused or failed requests: " + ", ".join(
                f"{k} x{v}" for k, v in sorted(self.errors.items())))
        out.append("RPO verdict: " + ("ok" if self.ok else "FAILED"))
        return out


async def holdings(stores: ZoneStores, zones: list[str]) -> dict[str, dict[str, set[str]]]:
    """The keys of every drill collection in each of ``zones``."""
    async def of(zone: str) -> dict[str, set[str]]:
        client = stores.zone(zone)
        return {c: {r.key async for r in client.iterate(c, page=5000)} for c in COLLECTIONS}

    found = await asyncio.gather(*(of(z) for z in zones))
    return dict(zip(zones, found, strict=True))


def _result(kind: str, strong: bool, acked: list[Acked], victim: str,
            before: dict[str, dict[str, set[str]]], after: dict[str, dict[str, set[str]]],
            bound: int) -> ClassResult:
    lost = [a for a in acked if not any(a.key in held[a.collection]
                                        for held in before.values())]
    missing = [a for a in acked if not all(a.key in held[a.collection]
                                           for held in after.values())]
    limit = 0 if strong else bound
    return ClassResult(kind, "sync" if strong else "async", len(acked),
                       sum(1 for a in acked if a.zone == victim), len(lost),
                       None if strong else bound, len(missing),
                       len(lost) <= limit and not missing)


async def run_drill(stack: LocalStack, options: DrillOptions) -> DrillReport:
    topology = stack.topology
    zones = topology.zone_names()
    rng = random.Random(options.seed)
    victim = options.zone or rng.choice(zones)
    survivors = [z for z in zones if z != victim]
    if not stack.admin_token:
        raise CrosszoneError("the stack has no admin token: API keys cannot be written")
    load = RpoLoad(stack.lb_url().removesuffix("/v1"), stack.api_key, stack.admin_token,
                   concurrency=options.concurrency)
    stores = ZoneStores(topology, zones[0])
    stop = asyncio.Event()
    started = time.monotonic()
    running = asyncio.create_task(load.run(stop))
    try:
        await asyncio.sleep(rng.uniform(options.seconds / 2, options.seconds))
        lag = await stores.zone(victim).lag()
        sampled = time.monotonic()
        await asyncio.to_thread(stack.hold, zone=victim, signal="KILL")
        killed = time.monotonic()
        await wait_out_of_service(topology, victim, 30.0)  # the controller's leader does it
        out_ms = (time.monotonic() - killed) * 1000
        await asyncio.sleep(options.down)
    finally:
        stop.set()
        log: AckLog = await running
    try:
        await wait_caught_up(topology, 30.0, among=survivors)
        before = await holdings(stores, survivors)
        await asyncio.to_thread(stack.release, zone=victim)
        await asyncio.to_thread(stack.wait_healthy, 60.0)
        await wait_in_service(topology, 60.0)
        after = await holdings(stores, zones)
    finally:
        await stores.close()
    shipped = {x.destination: x for x in lag if x.destination in survivors}
    unshipped = min((x.records for x in shipped.values()), default=0)
    late = sum(1 for a in log.acked if a.zone == victim and sampled <= a.at <= killed)
    strong_conversations = topology.conversations.consistency == "sync"
    report = DrillReport(
        victim, topology.conversations.consistency, killed - started,
        {d: {"records": x.records, "seconds": x.seconds} for d, x in shipped.items()},
        late, out_ms, errors=dict(log.errors), load_average=os.getloadavg()[0])
    for kind, strong in (("keys", True), ("conversations", strong_conversations),
                         ("usage", False)):
        report.results.append(_result(kind, strong, log.of(kind), victim, before, after,
                                      unshipped + late))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crosszone.tools.rpo",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, help="a running stack (default: start one)")
    parser.add_argument("--config", type=Path, help="topology for the stack started here")
    parser.add_argument("--conversations", choices=["sync", "async"],
                        help="conversations.consistency of the stack started here")
    parser.add_argument("--first-octet", type=int, default=176,
                        help="the stack started here: zones on 127.0.N..N+2.0/24")
    parser.add_argument("--seconds", type=float, default=4.0, help="load before the kill")
    parser.add_argument("--down", type=float, default=2.0, help="load while the zone is down")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--zone", help="the zone to kill (default: a random one)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    options = DrillOptions(args.seconds, args.down, args.concurrency, args.zone, args.seed)
    try:
        report = drill(args.run_dir, args.config, args.conversations, options,
                       args.first_octet)
    except CrosszoneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(report), indent=2) if args.json else "\n".join(report.lines()))
    return 0 if report.ok else 3


def drill(run_dir: Path | None, config: Path | None, conversations: str | None,
          options: DrillOptions, first_octet: int = 176) -> DrillReport:
    """Run the drill on the stack in ``run_dir``, or on a stack started (and stopped) here."""
    if run_dir is not None:
        return asyncio.run(run_drill(LocalStack(run_dir), options))
    from crosszone.tools.rpo_stack import addresses_in_use, drill_topology

    topology = drill_topology(config, conversations, first_octet)
    busy = addresses_in_use(topology)
    if busy:
        raise CrosszoneError(f"another stack answers on {', '.join(busy[:3])}: pick free "
                             "addresses (--first-octet) or pass its --run-dir")
    with tempfile.TemporaryDirectory(prefix="crosszone-rpo-") as tmp, \
            LocalStack(Path(tmp)) as stack:
        stack.up(topology, timeout=90)
        return asyncio.run(run_drill(stack, options))


if __name__ == "__main__":
    sys.exit(main())
