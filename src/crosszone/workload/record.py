"""What one client request saw, and summaries over many."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from enum import StrEnum


class Outcome(StrEnum):
    OK = "ok"
    FAILED = "failed"  # an error status or an exception before any byte
    CUT = "cut"  # a stream that ended with an error event or no [DONE]


@dataclass(frozen=True)
class RequestRecord:
    start: float  # seconds since the workload began
    end: float
    stream: bool
    outcome: Outcome
    zone: str | None = None  # zone whose worker served (x-crosszone-zone)
    attempts: int = 1  # 1 + retries made by the LB and the gateway
    error: str | None = None
    kind: str = "chat"  # chat | response (a conversation turn) | key-create | key-revoke |
    #                     revoked-key (a call with a revoked key: OK means it was refused)

    @property
    def latency_ms(self) -> float:
        return (self.end - self.start) * 1000.0


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (the same definition as SQL PERCENTILE_CONT)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Timeline:
    """All records of one run, with the moment a fault was injected (if any)."""

    records: list[RequestRecord] = field(default_factory=list)
    fault_at: float | None = None
    fault_zone: str | None = None

    def add(self, record: RequestRecord) -> None:
        self.records.append(record)

    def window(self, after_fault: bool | None) -> list[RequestRecord]:
        if after_fault is None or self.fault_at is None:
            return list(self.records) if after_fault is not True else []
        if after_fault:
            return [r for r in self.records if r.end >= self.fault_at]
        return [r for r in self.records if r.end < self.fault_at]

    def counts(self) -> Counter[Outcome]:
        return Counter(r.outcome for r in self.records)

    def by_zone(self, records: list[RequestRecord] | None = None) -> dict[str, dict[str, float]]:
        groups: dict[str, list[RequestRecord]] = defaultdict(list)
        for r in self.records if records is None else records:
            groups[r.zone or "-"].append(r)
        out: dict[str, dict[str, float]] = {}
        for zone, recs in sorted(groups.items()):
            ok = [r.latency_ms for r in recs if r.outcome is Outcome.OK]
            out[zone] = {
                "ok": len(ok),
                "failed": sum(1 for r in recs if r.outcome is not Outcome.OK),
                "p50_ms": percentile(ok, 0.5),
                "p95_ms": percentile(ok, 0.95),
            }
        return out

    def settle_seconds(self) -> float | None:
        """Time from the fault until the last request it visibly affected: a failure, a cut
        stream, a retry by the LB, or a request still served by the faulty zone."""
        if self.fault_at is None:
            return None
        affected = [
            r.end for r in self.records
            if r.end >= self.fault_at and (
                r.outcome is not Outcome.OK or r.attempts > 1
                or (self.fault_zone is not None and r.zone == self.fault_zone)
            )
        ]
        return max(affected) - self.fault_at if affected else 0.0

    def summary(self) -> dict[str, object]:
        counts = self.counts()
        ok_lat = [r.latency_ms for r in self.records if r.outcome is Outcome.OK]
        return {
            "requests": len(self.records),
            "ok": counts[Outcome.OK],
            "failed": counts[Outcome.FAILED],
            "streams_cut": counts[Outcome.CUT],
            "failed_non_streaming": sum(
                1 for r in self.records if not r.stream and r.outcome is not Outcome.OK),
            "retried_by_lb": sum(1 for r in self.records if r.attempts > 1),
            "p50_ms": round(percentile(ok_lat, 0.5), 1),
            "p95_ms": round(percentile(ok_lat, 0.95), 1),
            "mean_ms": round(statistics.fmean(ok_lat), 1) if ok_lat else 0.0,
            "fault_zone": self.fault_zone,
            "settle_seconds": None if (s := self.settle_seconds()) is None else round(s, 3),
            "zones_before_fault": self.by_zone(self.window(False)),
            "zones_after_fault": self.by_zone(self.window(True)),
        }
