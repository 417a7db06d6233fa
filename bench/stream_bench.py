"""Streaming benchmark (issue 7): ``python -m bench.stream_bench [--streams 1000]``.

Two zones on 127.0.134-135.0/24 with one simulator worker each, and an active/backup load
balancer on 127.0.0.134:18134, so a proxied stream always takes LB -> gateway of zone a -> worker
a1, and a direct one goes to a1 itself. In one run:

1. Sustained streams: N concurrent streams through LB + gateway, then N direct to the worker
   (decode 100 ms/token): streams completed, tokens/s, inter-token gaps, RSS growth of the LB and
   gateway per open stream, and their CPU per relayed token.
2. Added inter-token latency: pairs of identical requests sent together, one direct and one
   through LB + gateway. The worker emits both sequences' tokens in the same decode step, back to
   back, so each token's arrival difference is what the two hops add. Idle, then under a
   background load of L streams through the LB (a separate client process).
3. Failover pause (second stack, decode 10 ms/token): S streams through the LB, then worker a1
   SIGKILLed (the gateway migrates every stream to b1), or zone a killed whole (the LB migrates
   to zone b): the longest gap between two tokens each client saw, over all streams and rounds.
4. Recording cost: CPU per relayed chunk of what migration adds to the relay when nothing fails.

Writes the "Streaming and mid-stream failover (issue 7)" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.common import write_section
from bench.stream_client import (
    StreamRecord,
    chat_body,
    cpu_seconds,
    cpu_split,
    load_process_main,
    many_streams,
    one_stream,
    pct,
    rss_kib,
    session,
)
from bench.stream_micro import recording_cost
from crosszone.runtime import LocalStack
from crosszone.runtime.processes import is_crosszone_process

ZONES = {"bench-a": "127.0.134", "bench-b": "127.0.135"}
LB = ("127.0.0.134", 18134)
API_KEY = "sk-stream-bench"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def topology(decode_ms: float, min_tokens: int, max_tokens: int,
             workers: int = 1) -> dict[str, Any]:
    fast_checks = {"intervalSeconds": 0.25, "timeoutSeconds": 0.2,
                   "healthyThresholdCount": 1, "unhealthyThresholdCount": 2}
    return {
        "region": "bench",
        "zones": [{"name": z, "subnet": f"{net}.0/24"} for z, net in ZONES.items()],
        # max_size = desired: the controllers must not scale a zone during the run
        "worker_group": {"min_size": 1, "max_size": workers, "desired_capacity": workers,
                         "port": 9000},
        "gateway": {"port": 8080, "healthCheck": fast_checks,
                    "timeouts": {"connect_seconds": 0.5, "first_byte_seconds": 30,
                                 "idle_seconds": 5, "total_seconds": 120}},
        "load_balancer": {"address": LB[0], "healthCheck": fast_checks, "listeners": [
            {"protocol": "HTTP", "port": LB[1], "targetPort": 8080}]},
        "failover": {"mode": "active-backup"},
        "inference": {"backend": "simulator", "simulator": {
            "decode_ms_per_token": decode_ms, "prefill_ms_per_token": 0.0,
            "max_num_seqs": 4096, "max_queue": 4096,
            "min_output_tokens": min_tokens, "max_output_tokens": max_tokens}},
        "auth": {"api_keys": [API_KEY]},
        "supervision": {"restart": "always", "backoff_initial_seconds": 0.05,
                        "backoff_max_seconds": 0.5},
    }


@contextlib.contextmanager
def running(run_dir: Path, topo: dict[str, Any]) -> Iterator[LocalStack]:
    """A stack that is always stopped, and anything it recorded killed by pid."""
    stack = LocalStack(run_dir)
    try:
        stack.up(topo, timeout=60, attached=True)
        yield stack
    finally:
        pids: dict[str, int] = {}
        with contextlib.suppress(Exception):
            pids = stack.pids()
        with contextlib.suppress(Exception):
            stack.down()
        for pid in pids.values():
            if is_crosszone_process(pid):
                os.kill(pid, signal.SIGKILL)


VICTIM = "bench-a/worker-1"
LB_URL = f"http://{LB[0]}:{LB[1]}/v1/chat/completions"
DIRECT_URL = f"http://{ZONES['bench-a']}.21:9000/v1/chat/completions"


def wait_ready(stack: LocalStack) -> None:
    """Every worker back in gateway a's pool and every zone in the LB's (after a kill)."""
    workers = stack.topology.worker_group.desired_capacity
    stack.wait_healthy(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            gw = httpx.get(f"http://{ZONES['bench-a']}.10:8080/health", timeout=1).json()
            lb = httpx.get(f"http://{LB[0]}:{LB[1]}/lb/status", timeout=1).json()
            if gw["local_healthy_workers"] == workers and gw["healthy_workers"] == 2 * workers \
                    and all(z["available"] for z in lb["zones"].values()):
                return
        time.sleep(0.05)
    raise TimeoutError("the stack did not settle after a kill")


# -- 1. sustained streams ------------------------------------------------------------------------

def sustained(stack: LocalStack, url: str, streams: int, ramp: float) -> dict[str, float]:
    pids = stack.pids()
    hops = [pids["lb"], pids["bench-a/gateway"]]
    rss_before = sum(rss_kib(p) for p in hops)
    cpu_before = sum(cpu_seconds(p) for p in hops)
    kernel_before = sum(cpu_split(p)[1] for p in hops)
    peak: dict[str, float] = {}

    async def run() -> list[StreamRecord]:
        task = asyncio.create_task(many_streams(url, streams, ramp, HEADERS))
        await asyncio.sleep(ramp + 1.0)  # every stream open, none finished yet
        peak["rss"] = sum(rss_kib(p) for p in hops)
        return await task

    records = asyncio.run(run())
    ok = [r for r in records if r.ok]
    arrivals = sorted(t for r in records for t in r.arrivals)
    all_open = max(r.arrivals[0] for r in ok) if ok else 0.0
    first_done = min(r.closed for r in ok) if ok else 0.0
    window = [t for t in arrivals if all_open <= t <= first_done]
    gaps = [g for r in ok for g in r.gaps()]
    cpu = sum(cpu_seconds(p) for p in hops) - cpu_before
    return {
        "ok": len(ok), "streams": streams, "tokens": len(arrivals),
        "tokens_per_s": len(window) / max(first_done - all_open, 1e-9),
        "gap_p50": pct(gaps, 50), "gap_p99": pct(gaps, 99),
        "rss_per_stream_kib": (peak["rss"] - rss_before) / streams,
        "cpu_us_per_token": cpu / max(len(arrivals), 1) * 1e6,
        # system calls (loopback TCP sends also run the receiving side's stack) and epoll
        "kernel_share": (sum(cpu_split(p)[1] for p in hops) - kernel_before) / max(cpu, 1e-9),
    }


# -- 2. added latency ----------------------------------------------------------------------------

Pair = tuple[list[float], list[float]]  # token arrival times: direct, through LB + gateway


async def aligned_pairs(seconds: float, loops: int, step: float) -> tuple[list[Pair], int]:
    """Arrival times of identical requests sent direct and through the LB at once that the
    worker decoded in the same steps; how many pairs were discarded (not aligned)."""
    pairs: list[Pair] = []
    discarded = 0
    end = time.monotonic() + seconds

    async with session() as http:
        async def loop(i: int) -> None:
            nonlocal discarded
            n = 0
            while time.monotonic() < end:
                body = chat_body(f"pair {i} {n}", max_tokens=20)
                direct, proxied = await asyncio.gather(
                    one_stream(http, DIRECT_URL, body, {}, StreamRecord()),
                    one_stream(http, LB_URL, body, HEADERS, StreamRecord()))
                n += 1
                a, b = direct.arrivals, proxied.arrivals
                if not (direct.ok and proxied.ok and len(a) == len(b) and a
                        and proxied.node == VICTIM and abs(b[0] - a[0]) < step / 2):
                    discarded += 1  # another worker, or admitted in different decode steps
                    continue
                pairs.append((a, b))

        await asyncio.gather(*(loop(i) for i in range(loops)))
    return pairs, discarded


def added_latency(load: int, seconds: float) -> dict[str, float]:
    """What the two hops add, from aligned pairs: to the first token (time to first token:
    authentication, routing, two connections); to every later token (its arrival through the
    hops minus its arrival direct: the relay); and to the gaps between tokens (proxied gap
    minus direct gap: the inter-token latency a client sees change)."""
    proc = None
    if load:
        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(target=load_process_main, args=(LB_URL, load, seconds + 3, HEADERS))
        proc.start()
        time.sleep(2.5)  # the load is up
    try:
        pairs, discarded = asyncio.run(aligned_pairs(seconds, 8, 0.1))
    finally:
        if proc is not None:
            proc.join(timeout=seconds + 10)
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.join()
    first = [(b[0] - a[0]) * 1000 for a, b in pairs]
    later = [(b[i] - a[i]) * 1000 for a, b in pairs for i in range(1, len(a))]
    gaps = [((b[i] - b[i - 1]) - (a[i] - a[i - 1])) * 1000
            for a, b in pairs for i in range(1, len(a))]
    return {"samples": len(later), "discarded_pairs": discarded,
            "first_p50_ms": pct(first, 50), "first_p99_ms": pct(first, 99),
            "p50_ms": pct(later, 50), "p99_ms": pct(later, 99),
            "gap_p50_ms": pct(gaps, 50), "gap_p99_ms": pct(gaps, 99)}


# -- 3. failover pause ---------------------------------------------------------------------------

def failover_pauses(stack: LocalStack, streams: int, rounds: int,
                    zone: bool) -> tuple[list[float], int, float]:
    """Longest token gap of each stream that lost its worker a1 (or its zone a) mid-stream;
    how many of those failed; the normal gap (p50)."""
    pauses: list[float] = []
    failures = 0
    normal: list[float] = []
    for n in range(rounds):
        wait_ready(stack)
        victim = stack.pids()[VICTIM]

        async def run(n: int, victim: int) -> list[StreamRecord]:
            records = [StreamRecord() for _ in range(streams)]
            async with session() as http:
                tasks = [asyncio.create_task(one_stream(
                    http, LB_URL, chat_body(f"failover {n} {i}"), HEADERS, rec))
                    for i, rec in enumerate(records)]
                while min(len(r.arrivals) for r in records) < 30:
                    await asyncio.sleep(0.005)
                if zone:
                    await asyncio.to_thread(stack.hold, zone="bench-a", signal="KILL")
                else:
                    os.kill(victim, signal.SIGKILL)
                await asyncio.gather(*tasks)
            return records

        try:
            records = asyncio.run(run(n, victim))
        finally:
            if zone:
                stack.release(zone="bench-a")
        for rec in records:
            if (rec.zone != "bench-a") if zone else (rec.node != VICTIM):
                continue  # served elsewhere: not hit by this failure
            if not rec.ok:
                failures += 1
                continue
            gaps = rec.gaps()
            pauses.append(max(gaps) * 1000)
            normal.extend(g * 1000 for g in gaps[:20])
    return pauses, failures, pct(normal, 50)


# -- report --------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--load", type=int, default=500)
    parser.add_argument("--pair-seconds", type=float, default=8.0)
    parser.add_argument("--failover-streams", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cz-stream-bench-"))
    started = time.monotonic()
    results: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    with running(tmp / "run1", topology(100.0, 60, 80)) as stack:
        asyncio.run(many_streams(LB_URL, 50, 0.5, HEADERS))  # warm up both paths
        asyncio.run(many_streams(DIRECT_URL, 50, 0.5, {}))
        results["proxied"] = sustained(stack, LB_URL, args.streams, 3.0)
        print("proxied", results["proxied"], flush=True)
        results["direct"] = sustained(stack, DIRECT_URL, args.streams, 3.0)
        print("direct", results["direct"], flush=True)
        results["added"] = {}
        for load in sorted({0, 50, 100, args.load}):
            results["added"][load] = added_latency(load, args.pair_seconds)
            print("added latency, load", load, results["added"][load], flush=True)
    with running(tmp / "run2", topology(10.0, 150, 200, workers=2)) as stack:
        results["worker_kill"] = failover_pauses(stack, args.failover_streams, args.rounds,
                                                 zone=False)
        print("worker kill", results["worker_kill"][1:], flush=True)
        results["zone_kill"] = failover_pauses(stack, args.failover_streams,
                                               max(args.rounds // 2, 1), zone=True)
        print("zone kill", results["zone_kill"][1:], flush=True)
    results["micro"] = recording_cost()
    print("micro", results["micro"], flush=True)
    results["load_after"] = os.getloadavg()[0]
    if not args.no_write:
        report(results, args, time.monotonic() - started)
    return 0


def latency_note(r: dict[str, Any]) -> str:
    """Why the target holds or not, with this run's figures."""
    added, p = r["added"], r["proxied"]
    top = max(added)
    slope = (added[top]["p50_ms"] - added[0]["p50_ms"]) / max(top, 1) * 1000
    kernel_us = p["cpu_us_per_token"] * p["kernel_share"]
    return (
        "Without other traffic the later tokens meet the target (the last token of a stream "
        "used to wait for the gateway's durable usage write, 5-10 ms, because the worker sends "
        "it in one piece with the usage block; now the tokens go at once and only the usage "
        "block and [DONE] wait for the write). Under load the target is missed, and not by "
        "the migration logic (last paragraph): the worker emits one token for every running "
        "sequence in the same decode step, so each hop receives a burst of as many chunks as "
        "there are streams and relays them one after another; a token waits for the chunks "
        f"ahead of it in the burst, about {slope:.0f} us per other open stream in this run. "
        f"The two hops spend {p['cpu_us_per_token']:.0f} us of CPU per relayed token, "
        f"{p['kernel_share'] * 100:.0f} % of it in the kernel (the loopback TCP send runs the "
        "receiving side's stack too, and epoll), the rest in Python (aiohttp's parser and "
        f"writer, the relay). Even with no Python at all, the kernel's {kernel_us:.0f} us per "
        f"token would put a token in the middle of a {top}-stream burst "
        f"{kernel_us * top / 2 / 1000:.1f} ms behind: p99 <= 2 ms at hundreds of concurrent "
        "streams would need hops that do not share two cores with the worker and the client "
        "(the scale-out layout: one host per component) and a compiled relay with batched "
        "system calls; neither is measured here.")


def report(r: dict[str, Any], args: argparse.Namespace, took: float) -> None:
    p, d = r["proxied"], r["direct"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on this machine ({os.cpu_count()} cores), one run"
        f" of `python -m bench.stream_bench` ({took:.0f} s; load average "
        f"{r['load_before']:.1f} before, {r['load_after']:.1f} after: the machine is shared). "
        "Stack: LB -> gateway -> simulator worker (plus each zone's store and controller), real "
        "processes on loopback; the client is one Python process (aiohttp).", "",
        f"**Sustained streams** ({args.streams} concurrent, started over 3 s, 60-80 tokens each "
        "at 100 ms/token):", "",
        "| path | streams completed | tokens/s (all open) | inter-token gap p50 / p99 "
        "| RSS per open stream (LB + gateway) | CPU per token (LB + gateway) |",
        "|---|---|---|---|---|---|",
        f"| LB + gateway | {p['ok']}/{p['streams']} | {p['tokens_per_s']:,.0f} | "
        f"{p['gap_p50'] * 1000:.1f} / {p['gap_p99'] * 1000:.1f} ms | "
        f"{p['rss_per_stream_kib']:.1f} KiB | {p['cpu_us_per_token']:.0f} us |",
        f"| direct to worker | {d['ok']}/{d['streams']} | {d['tokens_per_s']:,.0f} | "
        f"{d['gap_p50'] * 1000:.1f} / {d['gap_p99'] * 1000:.1f} ms | - | - |", "",
        "**Added latency per token** (pairs of identical requests, one direct and one "
        "through LB + gateway, that the worker decodes in the same steps; 8 pairs in flight, "
        "20 tokens each, other streams through the LB as load). *Later tokens*: arrival "
        "through the hops minus arrival direct, every token after the first: the relay's "
        "added inter-token latency. *Gap*: proxied gap minus direct gap between consecutive "
        "tokens: how much the client's inter-token rhythm changes. *First token*: added time "
        "to first token (authentication, routing, two connections), not inter-token:", "",
        "| other streams | samples | later tokens p50 / p99 | gap p50 / p99 | first token "
        "p50 / p99 | target: p99 <= 2 ms |", "|---|---|---|---|---|---|"]
    for load, x in sorted(r["added"].items()):
        met = "met" if x["p99_ms"] <= 2.0 else "**missed**"
        lines.append(f"| {load} | {x['samples']} ({x['discarded_pairs']} pairs discarded) | "
                     f"{x['p50_ms']:.2f} / {x['p99_ms']:.2f} ms | {x['gap_p50_ms']:.2f} / "
                     f"{x['gap_p99_ms']:.2f} ms | {x['first_p50_ms']:.2f} / "
                     f"{x['first_p99_ms']:.2f} ms | {met} |")
    lines += ["", latency_note(r)]
    lines += ["", "**Pause at a mid-stream failover** (decode 10 ms/token; the longest gap "
              "between two tokens each client saw; the stream then continues on another worker "
              "with the same text):", "",
              "| failure | streams | lost | pause p50 | pause p99 | normal gap p50 |",
              "|---|---|---|---|---|---|"]
    for name, label in (("worker_kill", "worker SIGKILLed (gateway migrates)"),
                        ("zone_kill", "zone killed: gateway + worker (LB migrates)")):
        pauses, failures, normal = r[name]
        lines.append(f"| {label} | {len(pauses) + failures} | {failures} | "
                     f"{pct(pauses, 50):.1f} ms | {pct(pauses, 99):.1f} ms | {normal:.1f} ms |")
    m = r["micro"]
    net = m["record_us"] + m["watchdog_us"] - m["timeout_at_us"]
    lines += ["", f"**Hot path cost of being able to migrate** (in-process, {m['chunks']:,} "
              f"token chunks of {m['chunk_bytes']} bytes, per relayed chunk): recording "
              f"{m['record_us']:.2f} us (error-event check, event-boundary check, append; the "
              "transcript parsed in batches every 16 KiB, included); the idle timeout, a timer "
              f"per read before this issue ({m['timeout_at_us']:.2f} us), is now one watchdog "
              f"timer per stream ({m['watchdog_us']:.2f} us per read): net {net:+.2f} us per "
              "chunk per hop against the relay before migration existed. Non-streaming requests "
              "do not touch any of it."]
    write_section("Streaming and mid-stream failover (issue 7)", "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
