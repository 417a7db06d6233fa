"""RTO from the request timeline: time from a fault to full service.

Full service means, over a whole time bin: no request failed (or was cut), the p95 latency of
each class of successful request (plain chats, streamed chats, conversation turns) is within that
class's baseline threshold (judged where the bin holds at least MIN_BIN_SAMPLES of the class),
and requests completed at all (an empty bin while the baseline filled it is an outage).
Baselines come from the time before the first fault; a threshold is ``max(p95 x factor, p95 +
floor)`` so a very fast baseline does not turn scheduler noise into downtime.

Overlapping faults form one episode, whose window runs to the next episode (or the end of the
workload). Its RTO is the time from its start to the first bin from which service stayed full
for ``stable_seconds`` (or up to the heal) *while the fault was still in place* (the system
routed around it); bad bins after that are reported as blips, not added to the RTO (a single
slow second three minutes into a long fault is a latency blip, not the end of the recovery;
failed requests still count against the failed-request budget). When service came back only
after the heal, the RTO runs to the last bad bin of the whole window. Disruption caused
by the heal itself (a zone rejoining) is reported separately as *failback*: heal to the end of
the last bad bin after it. Either is None when service is not full in the window's last bin.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from crosszone.workload.record import Outcome, RequestRecord, percentile

LATENCY_CLASSES = ("chat", "stream", "response")
MIN_BASELINE_SAMPLES = 5
MIN_BIN_SAMPLES = 5  # a class with fewer successes in a bin is not judged on latency there


def latency_class(r: RequestRecord) -> str:
    return "stream" if r.stream and r.kind == "chat" else r.kind


@dataclass(frozen=True)
class Span:
    """One fault as it happened: drill seconds when injected and healed."""

    label: str
    start: float
    end: float


@dataclass
class Episode:
    start: float
    end: float  # when its last fault healed
    window_end: float  # where its RTO window stops
    labels: list[str] = field(default_factory=list)


@dataclass
class Recovery:
    episode: Episode
    rto: float | None  # None: not back to full service within the window
    threshold_ms: dict[str, float]
    bad_bins: list[tuple[float, str]]  # (bin start, why)
    failback: float | None = 0.0  # heal -> full service again (None: never)
    during_fault: bool = True  # whether service was full again before the heal
    blips: list[tuple[float, str]] = field(default_factory=list)  # bad bins after recovery

    def to_json(self) -> dict[str, object]:
        return {"faults": self.episode.labels, "start": round(self.episode.start, 3),
                "healed": round(self.episode.end, 3),
                "window_end": round(self.episode.window_end, 3),
                "rto_seconds": None if self.rto is None else round(self.rto, 3),
                "recovered_during_fault": self.during_fault,
                "failback_seconds": None if self.failback is None else round(self.failback, 3),
                "threshold_ms": {k: round(v, 1) for k, v in self.threshold_ms.items()},
                "blips_after_recovery": [{"at": round(t, 3), "why": w}
                                         for t, w in self.blips[:20]],
                "bad_bins": [{"at": round(t, 3), "why": w} for t, w in self.bad_bins[:40]]}


def episodes(spans: Sequence[Span], workload_end: float) -> list[Episode]:
    """Merge overlapping spans; each episode's window ends where the next one starts."""
    merged: list[Episode] = []
    for span in sorted(spans, key=lambda s: s.start):
        if merged and span.start <= merged[-1].end:
            merged[-1].end = max(merged[-1].end, span.end)
            merged[-1].labels.append(span.label)
        else:
            merged.append(Episode(span.start, span.end, workload_end, [span.label]))
    for current, following in itertools.pairwise(merged):
        current.window_end = following.start
    return merged


def baseline(records: Sequence[RequestRecord], until: float, skip: float = 1.0
             ) -> tuple[dict[str, float], float]:
    """(p95 latency ms per latency class, completions per second) before ``until``, leaving out
    the first ``skip`` seconds (connection set-up; at most a third of the baseline). A class with
    fewer than MIN_BASELINE_SAMPLES successes gets no baseline (and is not judged)."""
    since = min(skip, until / 3)
    before = [r for r in records if since <= r.start and r.end < until]
    p95: dict[str, float] = {}
    for cls in LATENCY_CLASSES:
        ok = [r.latency_ms for r in before
              if r.outcome is Outcome.OK and latency_class(r) == cls]
        if len(ok) >= MIN_BASELINE_SAMPLES:
            p95[cls] = percentile(ok, 0.95)
    return p95, len(before) / max(until - since, 1e-9)


def thresholds(baseline_p95: dict[str, float], factor: float, floor_ms: float
               ) -> dict[str, float]:
    return {cls: max(p * factor, p + floor_ms) for cls, p in baseline_p95.items()}


def recovery(records: Sequence[RequestRecord], episode: Episode, limit_ms: dict[str, float],
             bin_seconds: float, rate: float, stable_seconds: float = 10.0) -> Recovery:
    """The episode's RTO: see the module docstring. ``rate``: baseline completions/s."""
    bins: list[tuple[float, float]] = []
    t = episode.start
    while t + bin_seconds / 2 <= episode.window_end:
        bins.append((t, min(t + bin_seconds, episode.window_end)))
        t += bin_seconds
    expect_traffic = rate * bin_seconds >= 4
    bad: list[tuple[float, str]] = []
    for lo, hi in bins:
        inside = [r for r in records if lo <= r.end < hi]
        failed = [r for r in inside if r.outcome is not Outcome.OK]
        if failed:
            bad.append((lo, f"{len(failed)} failed: {failed[0].error or failed[0].outcome}"))
        elif not inside and expect_traffic and hi - lo >= bin_seconds * 0.99:
            bad.append((lo, "no request completed"))
        else:
            slow = _slow(inside, limit_ms)
            if slow:
                bad.append((lo, slow))
    if not bad:
        return Recovery(episode, 0.0, limit_ms, bad)
    last_bin = bins[-1][0]
    ended_bad = bad[-1][0] >= last_bin
    heal = episode.end
    half = bin_seconds / 2  # a bin straddling the heal belongs to the side holding its middle
    before = [lo for lo, _ in bad if lo + half < heal]
    after = [lo for lo, _ in bad if lo + half >= heal]
    back = _back_at([(lo, hi) for lo, hi in bins if lo + half < heal], set(before),
                    stable_seconds)
    if not before or back is not None:  # full service came back while the fault was on
        rto = (back - episode.start) if before and back is not None else 0.0
        failback = None if ended_bad else (
            max(max(after) + bin_seconds - heal, 0.0) if after else 0.0)
        blips = [(lo, why) for lo, why in bad if back is not None and back <= lo < heal - half]
        return Recovery(episode, rto, limit_ms, bad, failback, True, blips)
    late: float | None = None if ended_bad else bad[-1][0] + bin_seconds - episode.start
    return Recovery(episode, late, limit_ms, bad, None, False)


def _back_at(bins: list[tuple[float, float]], bad: set[float], stable: float) -> float | None:
    """The start of the first run of good ``bins`` (those before the heal) that lasts
    ``stable`` seconds or reaches the heal; None when there is none."""
    start: float | None = None
    for lo, hi in bins:
        if lo in bad:
            start = None
            continue
        if start is None:
            start = lo
        if hi - start >= stable or (lo, hi) == bins[-1]:
            return start
    return None


def _slow(records: Sequence[RequestRecord], limit_ms: dict[str, float]) -> str | None:
    """Which latency class's p95 is over its threshold in ``records`` (None: none)."""
    for cls, limit in limit_ms.items():
        ok = [r.latency_ms for r in records
              if r.outcome is Outcome.OK and latency_class(r) == cls]
        if len(ok) >= MIN_BIN_SAMPLES and (p95 := percentile(ok, 0.95)) > limit:
            return f"{cls} p95 {p95:.0f} ms > {limit:.0f} ms"
    return None
