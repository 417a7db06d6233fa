"""``timeline.png``: requests/s, errors and p95 latency per zone over the drill, with every fault
shaded from injection to heal and failover events marked.

Uses matplotlib's object API on the Agg canvas (no pyplot, no display, no global state).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from crosszone.drills.judge import DrillData
from crosszone.drills.rto import latency_class
from crosszone.errors import DrillError
from crosszone.workload.record import Outcome, percentile

NO_ZONE = "no zone"  # failures that never reached one


def _bins(duration: float, width: float) -> list[float]:
    return [i * width for i in range(max(1, math.ceil(duration / width)))]


def write_timeline(path: Path, data: DrillData, title: str, bin_seconds: float = 1.0) -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise DrillError(f"the timeline needs matplotlib ({exc})") from exc
    starts = _bins(data.duration, bin_seconds)
    rate: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(starts))
    errors: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(starts))
    latency: dict[str, list[list[float]]] = defaultdict(lambda: [[] for _ in starts])
    for r in data.timeline.records:
        i = min(int(r.end // bin_seconds), len(starts) - 1)
        zone = r.zone or NO_ZONE
        if r.outcome is Outcome.OK:
            rate[zone][i] += 1 / bin_seconds
            if latency_class(r) in ("chat", "stream"):
                latency[zone][i].append(r.latency_ms)
        else:
            errors[zone][i] += 1
    mids = [s + bin_seconds / 2 for s in starts]
    fig = Figure(figsize=(12, 8), dpi=100)
    FigureCanvasAgg(fig)
    ax_rate, ax_err, ax_lat = fig.subplots(3, 1, sharex=True)
    zones = sorted(set(rate) | set(errors) | set(latency))
    colors = {z: f"C{i}" for i, z in enumerate(zones)}
    for zone in zones:
        if zone in rate:
            ax_rate.plot(mids, rate[zone], label=zone, color=colors[zone])
        if zone in errors:
            ax_err.bar(starts, errors[zone], width=bin_seconds, align="edge", alpha=0.7,
                       label=zone, color=colors[zone])
        if zone in latency:
            p95 = [percentile(v, 0.95) if v else math.nan for v in latency[zone]]
            ax_lat.plot(mids, p95, label=zone, color=colors[zone], marker=".", markersize=3)
    for cls, style in (("chat", ":"), ("stream", "-.")):
        if cls in data.threshold_ms:
            ax_lat.axhline(data.threshold_ms[cls], color="grey", linestyle=style, linewidth=1,
                           label=f"RTO threshold ({cls})")
    for ax in (ax_rate, ax_err, ax_lat):
        for f in data.faults:
            if f.start is not None:
                ax.axvspan(f.start, f.end if f.end is not None else data.duration,
                           color="red", alpha=0.12)
        for t, _ in data.lb_events:
            ax.axvline(t, color="purple", linestyle="--", linewidth=0.8, alpha=0.6)
        for e in data.control_events:
            ax.axvline(float(e.get("at", 0.0)), color="black", linewidth=1.2)
        ax.grid(alpha=0.3)
    for f in data.faults:
        if f.start is not None:
            ax_rate.annotate(f.label, (f.start, 1.0), xycoords=("data", "axes fraction"),
                             va="top", fontsize=8, color="darkred")
    for rec in data.recoveries:
        if rec.rto is not None:
            ax_err.axvline(rec.episode.start + rec.rto, color="green", linewidth=1.5)
    ax_rate.set_ylabel("successful requests/s")
    ax_err.set_ylabel(f"errors per {bin_seconds:g}s")
    ax_lat.set_ylabel("chat p95 latency (ms)")
    ax_lat.set_xlabel("seconds since the workload began (red: fault; dashed: LB rotation "
                      "change; black: controller failover; green: recovered)")
    ax_rate.legend(loc="upper right", fontsize=8)
    if any(sum(v) for v in errors.values()):
        ax_err.legend(loc="upper right", fontsize=8)
    ax_lat.legend(loc="upper right", fontsize=8)
    ax_rate.set_title(title)
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as exc:
        raise DrillError(f"cannot write {path}: {exc.strerror}") from exc
