"""``crosszone demo``: chat traffic through the LB while one zone dies, with a live table.

Brings the stack up unless one is already running in the run directory, drives the official
``openai`` client (its own retries off) for ``duration`` seconds, kills every process of one zone
half-way (held down by the supervisor, so nothing restarts it), then prints what clients saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from crosszone.runtime.stack import LocalStack
from crosszone.workload import ChatWorkload, Outcome, Timeline, WorkloadConfig
from crosszone.workload.record import percentile

console = Console(stderr=True)


def run_demo(config: Path | None, run_dir: Path, duration: float, concurrency: int,
             kill_zone: str | None) -> int:
    stack = LocalStack(run_dir)
    started_here = False
    if not stack.is_running():
        console.print(f"[bold]Starting the stack[/] in {run_dir} ...")
        stack.up(config)
        started_here = True
    try:
        zones = stack.topology.zone_names()
        victim = kill_zone or zones[0]
        if victim not in zones:
            console.print(f"[red]--kill-zone {victim!r} is not a zone of this topology[/] "
                          f"({', '.join(zones)})")
            return 2
        summary = asyncio.run(_drive(stack, duration, concurrency, victim, zones))
    finally:
        if started_here:
            console.print("Stopping the stack ...")
            stack.down()
        else:
            with contextlib.suppress(Exception):
                stack.release(zone=kill_zone or stack.topology.zone_names()[0])
    report = run_dir / "demo-report.json"
    report.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    _print_report(summary, report)
    return 0 if summary["failed_non_streaming"] == 0 else 1


async def _drive(stack: LocalStack, duration: float, concurrency: int, victim: str,
                 zones: list[str]) -> dict[str, object]:
    timeline = Timeline()
    workload = ChatWorkload(
        WorkloadConfig(base_url=stack.lb_url("http"), api_key=stack.api_key,
                       concurrency=concurrency, duration_seconds=duration),
        timeline)
    runner = asyncio.create_task(workload.run())
    killed = False
    with Live(_table(timeline, zones, victim, workload.now()), console=console,
              refresh_per_second=4) as live:
        while not runner.done():
            await asyncio.sleep(0.25)
            now = workload.now()
            if not killed and now >= duration / 2:
                await asyncio.to_thread(stack.hold, zone=victim, signal="KILL")
                timeline.fault_at, timeline.fault_zone = workload.now(), victim
                killed = True
            live.update(_table(timeline, zones, victim, now))
    await runner
    return timeline.summary()


def _table(timeline: Timeline, zones: list[str], victim: str, now: float) -> Group:
    table = Table(title="requests through the load balancer (last 5 s latency)")
    for col in ("zone", "ok", "failed", "ok/s (5 s)", "p50 ms", "p95 ms"):
        table.add_column(col, justify="right" if col != "zone" else "left")
    recent = [r for r in timeline.records if r.end >= now - 5]
    for zone in [*zones, "-"]:
        recs = [r for r in timeline.records if (r.zone or "-") == zone]
        if zone == "-" and not recs:
            continue
        ok = sum(1 for r in recs if r.outcome is Outcome.OK)
        lat = [r.latency_ms for r in recent if (r.zone or "-") == zone
               and r.outcome is Outcome.OK]
        name = zone + ("  [red](killed)[/]" if timeline.fault_at and zone == victim else "")
        table.add_row(name, str(ok), str(len(recs) - ok), f"{len(lat) / 5:.1f}",
                      f"{percentile(lat, 0.5):.0f}", f"{percentile(lat, 0.95):.0f}")
    status = (f"t={now:5.1f}s  " + (f"zone {victim} killed at t={timeline.fault_at:.1f}s"
                                     if timeline.fault_at else f"zone {victim} will be killed"))
    return Group(table, Text(status))


def _print_report(summary: dict[str, object], path: Path) -> None:
    out = Console()
    out.print("\n[bold]crosszone demo report[/]")
    rows = [
        ("requests sent", summary["requests"]),
        ("succeeded", summary["ok"]),
        ("failed (non-streaming)", summary["failed_non_streaming"]),
        ("failed / streams cut", f"{summary['failed']} / {summary['streams_cut']}"),
        ("retried by the LB", summary["retried_by_lb"]),
        ("latency p50 / p95", f"{summary['p50_ms']} ms / {summary['p95_ms']} ms"),
        ("zone killed", summary["fault_zone"]),
        ("traffic settled on survivors after", f"{summary['settle_seconds']} s"),
    ]
    for key, value in rows:
        out.print(f"  {key:<38} {value}")
    out.print("  served per zone before / after the kill:")
    before = summary["zones_before_fault"]
    after = summary["zones_after_fault"]
    assert isinstance(before, dict) and isinstance(after, dict)
    for zone in sorted(set(before) | set(after)):
        b = before.get(zone, {}).get("ok", 0)
        a = after.get(zone, {}).get("ok", 0)
        out.print(f"    {zone:<14} {int(b):>6} / {int(a):>6}")
    out.print(f"  full report (JSON): {path}")
