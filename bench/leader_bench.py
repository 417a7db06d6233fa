"""Leader failover benchmark (issue 3; ANCHORS.md: a new acting leader within 3 s).

Three ``crosszone.control.leader_agent`` processes (the controller's elector plus a fenced
command every 50 ms) campaign over one backend; a receiver admits their commands through a
FencingGuard. Each trial SIGKILLs the agent whose commands are being accepted and measures the
time until a command with a higher term is accepted, then restarts the victim. Series:

* embedded Raft (pysyncobj, members on 127.0.109.1-3);
* etcd (3 members on 127.0.110.1-3): the leader process killed;
* etcd, the leader's whole zone killed (its agent and its etcd member).

It also computes, without measuring, the detection time of the seed's health-check settings
(30 s / 5 s / 2 / 2) and of the local ones, and the leader-loss bound of each lease setting.
Run: ``python -m bench.leader_bench [--trials 10]``. Needs ``etcd`` for the etcd series.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from bench.common import write_section
from crosszone.config.topology import HealthCheck
from crosszone.control.coordination.etcd_local import EtcdMember, LocalEtcdCluster, etcd_binary
from crosszone.control.fencing import FencingGuard, fenced
from crosszone.control.settings import ControlSettings, LeaseSettings, check_control

RAFT_HOSTS = ("127.0.109.1", "127.0.109.2", "127.0.109.3")
ETCD_HOSTS = ("127.0.110.1", "127.0.110.2", "127.0.110.3")
RECEIVER = ("127.0.111.1", 17999)
RAFT_PORT = 17301
ETCD_CLIENT, ETCD_PEER = 23791, 23891
TARGET = 3.0
LEASE = ControlSettings().lease
# etcd leases are whole seconds and a new etcd leader re-arms every lease for its full TTL
# plus an election timeout, so with etcd a 1 s lease is what keeps a zone loss under 3 s.
ETCD_FAST = LeaseSettings(ttl_seconds=1.0, renew_seconds=0.2, request_timeout_seconds=0.25,
                          safety_margin_seconds=0.2)


@dataclass
class Receiver:
    guard: FencingGuard = field(default_factory=FencingGuard)
    accepted: list[tuple[float, str, int]] = field(default_factory=list)
    runner: web.AppRunner | None = None

    async def start(self) -> None:
        @fenced(self.guard)
        async def command(request: web.Request) -> web.Response:
            doc = await request.json()
            self.accepted.append((time.monotonic(), str(doc["node"]), int(doc["token"])))
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_post("/command", command)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, *RECEIVER).start()

    def acting(self) -> tuple[float, str, int] | None:
        return self.accepted[-1] if self.accepted else None


class Agents:
    """Three agent processes; killed and restarted by pid."""

    def __init__(self, args: dict[int, list[str]], logs: Path) -> None:
        self.args = args
        self.logs = logs
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, i: int) -> None:
        with (self.logs / f"agent{i}.log").open("ab") as out:
            self.procs[i] = subprocess.Popen(
                [sys.executable, "-m", "crosszone.control.leader_agent", "--node", f"n{i}",
                 *self.args[i]], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def common_args(lease: LeaseSettings = LEASE) -> list[str]:
    url = f"http://{RECEIVER[0]}:{RECEIVER[1]}/command"
    return ["--receiver", url, "--ttl", str(lease.ttl_seconds),
            "--renew", str(lease.renew_seconds),
            "--request-timeout", str(lease.request_timeout_seconds),
            "--margin", str(lease.safety_margin_seconds)]


async def wait_for(predicate: object, timeout: float) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s")
        await asyncio.sleep(0.01)


async def series(agents: Agents, trials: int, settle: float,
                 zone_kill: LocalEtcdCluster | None = None) -> list[float]:
    receiver = Receiver()
    await receiver.start()
    out: list[float] = []
    try:
        for i in agents.args:
            agents.start(i)
        await wait_for(lambda: receiver.acting() is not None, 20.0)
        for _ in range(trials):
            await asyncio.sleep(settle)
            acting = receiver.acting()
            assert acting is not None
            _, node, token = acting
            victim = int(node[1:])
            killed = time.monotonic()
            agents.kill(victim)
            if zone_kill is not None:
                zone_kill.signal(zone_kill.members[victim].name, signal.SIGKILL)
            await wait_for(lambda t=token: (receiver.acting() or (0, "", 0))[2] > t, 15.0)
            first = next(at for at, _, t in receiver.accepted if t > token)
            out.append(first - killed)
            if zone_kill is not None:
                member = zone_kill.members[victim]
                zone_kill.procs[member.name].wait(timeout=10)
                zone_kill.start_member(member)
            agents.start(victim)
    finally:
        agents.stop_all()
        if receiver.runner is not None:
            await receiver.runner.cleanup()
    return out


def raft_agents(tmp: Path) -> Agents:
    peers = ",".join(f"{h}:{RAFT_PORT}" for h in RAFT_HOSTS)
    return Agents({i: ["--backend", "raft", "--raft-self", f"{h}:{RAFT_PORT}",
                       "--raft-peers", peers, "--data-dir", str(tmp / f"raft{i}"),
                       *common_args()] for i, h in enumerate(RAFT_HOSTS)}, tmp)


def etcd_agents(tmp: Path, cluster: LocalEtcdCluster, prefix: str,
                lease: LeaseSettings = LEASE) -> Agents:
    urls = cluster.endpoints
    tmp.mkdir(parents=True, exist_ok=True)
    return Agents({i: ["--backend", "etcd", "--etcd", ",".join(urls[i:] + urls[:i]),
                       "--prefix", prefix, *common_args(lease)] for i in range(3)}, tmp)


def summary(label: str, values: list[float]) -> str:
    if not values:
        return f"| {label} | 0 | - | - | - |"
    p50, worst = statistics.median(values), max(values)
    verdict = "met" if worst < TARGET else "**missed**"
    return (f"| {label} | {len(values)} | {p50:.2f} s | {worst:.2f} s | "
            f"< {TARGET:g} s ({verdict}) |")


def detection_rows() -> list[str]:
    seed = HealthCheck(interval_seconds=30, timeout_seconds=5, healthy_threshold_count=2,
                       unhealthy_threshold_count=2)
    local = HealthCheck(interval_seconds=0.5, timeout_seconds=0.25, healthy_threshold_count=2,
                        unhealthy_threshold_count=2)
    loop = ControlSettings().loop_seconds
    rows = []
    for label, hc in (("seed (SUMMARY 2.3)", seed), ("local default", local)):
        best = (hc.unhealthy_threshold_count - 1) * hc.interval_seconds + hc.timeout_seconds
        worst = hc.detection_seconds()
        back = hc.healthy_threshold_count * hc.interval_seconds
        rows.append(f"| {label} | {hc.interval_seconds:g} s / {hc.timeout_seconds:g} s / "
                    f"{hc.unhealthy_threshold_count} / {hc.healthy_threshold_count} | "
                    f"{best:g}-{worst:g} s | {worst + loop:g} s | {back:g} s |")
    return rows


def lease_rows() -> list[str]:
    loop = ControlSettings().loop_seconds
    raft = LEASE.ttl_seconds + loop
    etcd = math.ceil(LEASE.ttl_seconds) + loop
    return [f"| embedded Raft, local lease | ttl {LEASE.ttl_seconds:g} s, campaign every "
            f"{loop:g} s | {raft:.2f} s |",
            f"| etcd, local lease (whole seconds) | ttl {math.ceil(LEASE.ttl_seconds)} s, "
            f"campaign every {loop:g} s | {etcd:.2f} s (+ election timeout and etcd election "
            "if its leader died) |",
            f"| etcd, 1 s lease | ttl {ETCD_FAST.ttl_seconds:g} s | "
            f"{ETCD_FAST.ttl_seconds + loop:.2f} s (same) |",
            "| Patroni defaults (ANCHORS.md) | ttl 30 s, loop_wait 10 s | 40 s |",
            "| the seed's single FailoverManager | none | never (no second manager) |"]


async def run(trials: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="leader-bench-") as tmp:
        root = Path(tmp)
        (root / "raft").mkdir()
        print("embedded Raft ...", flush=True)
        results["embedded Raft: leader's controller killed (its Raft member with it)"] = \
            await series(
                raft_agents(root / "raft"), trials, settle=2.0)
        if etcd_binary() is None:
            print("etcd not installed: skipping the etcd series", flush=True)
            return results
        members = [EtcdMember(f"m{i}", h, ETCD_CLIENT, ETCD_PEER) for i, h in enumerate(ETCD_HOSTS)]
        cluster = LocalEtcdCluster(members, root / "etcd")
        cluster.start()
        try:
            print("etcd: leader process killed ...", flush=True)
            results["etcd: leader process killed"] = await series(
                etcd_agents(root / "e1", cluster, "/bench1/"), trials, settle=1.0)
            print("etcd: leader's zone killed (agent + etcd member) ...", flush=True)
            results["etcd: leader's zone killed (agent + member)"] = await series(
                etcd_agents(root / "e2", cluster, "/bench2/"), trials, settle=2.5,
                zone_kill=cluster)
            print("etcd, 1 s lease: leader's zone killed ...", flush=True)
            results["etcd, ttl 1 s: leader's zone killed"] = await series(
                etcd_agents(root / "e3", cluster, "/bench3/", ETCD_FAST), trials, settle=2.5,
                zone_kill=cluster)
        finally:
            cluster.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    assert check_control(ControlSettings(lease=ETCD_FAST, loop_seconds=0.05)) == []
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    results = asyncio.run(run(args.trials))
    lines = [
        "Three controllers' electors (`crosszone.control.leader_agent`, one process per zone) "
        "send a fenced command every 50 ms; each trial SIGKILLs the one whose commands are "
        "accepted and times the first accepted command of a higher term (the next acting "
        f"leader). Lease: ttl {LEASE.ttl_seconds:g} s, renew every {LEASE.renew_seconds:g} s, "
        f"stop acting {LEASE.safety_margin_seconds:g} s before expiry; Raft elections "
        "0.3-0.7 s; etcd heartbeat 100 ms / election 500 ms (the last series: ttl "
        f"{ETCD_FAST.ttl_seconds:g} s, renew {ETCD_FAST.renew_seconds:g} s, request timeout "
        f"{ETCD_FAST.request_timeout_seconds:g} s).",
        "",
        "| leader loss | trials | p50 | max | target |",
        "|---|---|---|---|---|",
        *(summary(label, values) for label, values in results.items()),
        "",
        "With etcd, the agent next to the etcd leader answers fastest and tends to win the "
        "lease, so killing the leader's zone often kills the etcd leader too; the new etcd "
        "leader re-arms every lease for its full TTL plus an election timeout. That is why the "
        "etcd backend wants a 1 s lease (`control.lease`), while the embedded Raft default "
        "meets the target with 1.5 s.",
        "",
        "Computed, not measured: a silent zone under active checks alone (best-worst case, "
        "plus one controller cycle), and traffic returning after recovery:",
        "",
        "| health-check settings | interval / timeout / unhealthy / healthy | detection | "
        "+ controller cycle | re-admission |",
        "|---|---|---|---|---|",
        *detection_rows(),
        "",
        "Computed bound on leader loss -> new acting leader (lease expiry + one campaign):",
        "",
        "| coordination | lease | bound |",
        "|---|---|---|",
        *lease_rows(),
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("Control plane: leader failover and detection (issue 3)", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
