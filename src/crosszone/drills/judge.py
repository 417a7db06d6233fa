"""Turn what a drill observed into one verdict per SLO; the drill passes only if none failed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from crosszone.drills.checker import CheckResult
from crosszone.drills.faults import FaultRecord
from crosszone.drills.observe import ControlPlane
from crosszone.drills.rto import Recovery
from crosszone.drills.scenario import Scenario
from crosszone.drills.splitbrain import LeaderClaim
from crosszone.workload.product import Feature
from crosszone.workload.record import Outcome, RequestRecord, Timeline

Status = Literal["passed", "failed", "not applicable"]


@dataclass(frozen=True)
class Verdict:
    name: str
    status: Status
    value: str
    budget: str
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return dict(self.__dict__)


@dataclass
class DrillData:
    """Everything a drill observed, for the judge and the reports."""

    timeline: Timeline
    faults: list[FaultRecord]
    recoveries: list[Recovery]
    baseline_p95_ms: dict[str, float]  # per latency class
    threshold_ms: dict[str, float]
    duration: float
    control: ControlPlane
    check: CheckResult | None = None
    kv_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    kv_note: str = ""
    kv_unread: list[str] = field(default_factory=list)  # zones whose store could not be read
    claims: list[LeaderClaim] = field(default_factory=list)
    control_samples: int = 0
    split_brain: list[str] = field(default_factory=list)
    lb_events: list[tuple[float, str]] = field(default_factory=list)
    control_events: list[dict[str, Any]] = field(default_factory=list)
    prepared: dict[str, Any] = field(default_factory=dict)
    chaos_leftovers: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    features: dict[str, Feature] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def judge(scenario: Scenario, data: DrillData) -> list[Verdict]:
    return [_faults(data), _failed_requests(scenario, data), _rto(scenario, data),
            _failback(scenario, data), _rpo(scenario, data), _consistency(scenario, data),
            _split_brain(scenario, data), _leftovers(scenario, data)]


def passed(verdicts: list[Verdict]) -> bool:
    return all(v.status != "failed" for v in verdicts)


def _faults(data: DrillData) -> Verdict:
    bad = [f"{f.label}: {f.error or 'never injected'}" for f in data.faults
           if f.error or f.start is None or f.end is None]
    done = len(data.faults) - len(bad)
    return Verdict("faults injected and healed", "failed" if bad else "passed",
                   f"{done} of {len(data.faults)}", "all", "; ".join(bad))


def failures_by_kind(timeline: Timeline) -> Counter[str]:
    out: Counter[str] = Counter()
    for r in timeline.records:
        if r.outcome is not Outcome.OK:
            kind = "stream cut" if r.outcome is Outcome.CUT else (
                "stream failed" if r.stream else r.kind)
            out[kind] += 1
    return out


def split_refusals(records: Sequence[RequestRecord], designed: Mapping[str, str]
                   ) -> tuple[list[RequestRecord], Counter[str]]:
    """The failed requests that count, and how many were refused as designed, per marker."""
    refused: Counter[str] = Counter()
    counted = []
    for r in records:
        if r.outcome is Outcome.OK:
            continue
        marker = next((m for m in designed if m in (r.error or "")), None)
        if marker is None:
            counted.append(r)
        else:
            refused[marker] += 1
    return counted, refused


def _failed_requests(s: Scenario, data: DrillData) -> Verdict:
    records = data.timeline.records
    designed = s.slo.designed_refusals
    counted, refused = split_refusals(records, designed)
    kinds = failures_by_kind(data.timeline)
    detail = ", ".join(f"{n} {k}" for k, n in kinds.most_common())
    if counted:
        errors = Counter((r.error or str(r.outcome))[:120] for r in counted)
        detail += "; errors: " + "; ".join(f"{n}x {e}" for e, n in errors.most_common(3))
    if refused:
        detail += "; refused as designed, not counted: " + "; ".join(
            f"{n}x '{m}' ({designed[m]})" for m, n in refused.most_common())
    status: Status = "failed" if len(counted) > s.slo.failed_requests else "passed"
    value = f"{len(counted)} of {len(records)}" + (
        f" (+{sum(refused.values())} refused as designed)" if refused else "")
    return Verdict("failed client requests", status, value, f"<= {s.slo.failed_requests}",
                   detail)


def _rto(s: Scenario, data: DrillData) -> Verdict:
    limit = s.slo.rto_seconds
    parts = [f"{', '.join(r.episode.labels)}: "
             + ("not recovered" if r.rto is None else f"{r.rto:.1f}s")
             + ("" if r.during_fault or r.rto is None else " (only after the heal)")
             + (f", then {len(r.blips)} bad bin(s) before the heal (first: {r.blips[0][0]:.0f}s "
                f"{r.blips[0][1][:80]})" if r.blips else "")
             for r in data.recoveries]
    if limit is None:
        return Verdict("RTO", "not applicable", "; ".join(parts), "none set")
    values = [r.rto for r in data.recoveries]
    ok = bool(values) and all(v is not None and v <= limit for v in values)
    value = "not recovered" if any(v is None for v in values) else \
        f"{max((v for v in values if v is not None), default=0.0):.1f}s"
    limits = ", ".join(f"{k} {data.baseline_p95_ms[k]:.0f} -> {v:.0f} ms"
                       for k, v in data.threshold_ms.items())
    detail = "; ".join(parts) + f" (p95 baseline -> threshold: {limits})"
    return Verdict("RTO", "passed" if ok else "failed", value, f"<= {limit:g}s", detail)


def _failback(s: Scenario, data: DrillData) -> Verdict:
    name = "failback (heal -> full service)"
    limit = s.slo.failback_seconds or s.slo.rto_seconds
    routed = [r for r in data.recoveries if r.during_fault and r.rto is not None]
    if limit is None or not routed:
        return Verdict(name, "not applicable", "-", "-" if limit is None else f"<= {limit:g}s",
                       "service came back only with the heal: counted in the RTO"
                       if data.recoveries else "no fault")
    values = [r.failback for r in routed]
    ok = all(v is not None and v <= limit for v in values)
    value = "not recovered" if any(v is None for v in values) else \
        f"{max(v for v in values if v is not None):.1f}s"
    return Verdict(name, "passed" if ok else "failed", value, f"<= {limit:g}s",
                   "; ".join(f"{', '.join(r.episode.labels)}: "
                             + ("not recovered" if r.failback is None else f"{r.failback:.1f}s")
                             for r in routed))


def _rpo(s: Scenario, data: DrillData) -> Verdict:
    if data.check is None:
        return Verdict("RPO (acknowledged writes lost)", "not applicable", "-", "-",
                       data.kv_note or "the workload made no store writes")
    budget = {"strong": s.slo.rpo.strong, "async": s.slo.rpo.async_}
    parts, ok = [], True
    for cls in ("strong", "async"):
        stats = data.check.classes.get(cls)
        if stats is None or stats.acknowledged == 0:
            parts.append(f"{cls}: no acknowledged write")
            continue
        parts.append(f"{cls}: {stats.lost} of {stats.acknowledged} lost")
        ok = ok and stats.lost <= budget[cls]
    return Verdict("RPO (acknowledged writes lost)", "passed" if ok else "failed",
                   "; ".join(parts), f"strong <= {budget['strong']}, async <= {budget['async']}",
                   data.kv_note)


def _consistency(s: Scenario, data: DrillData) -> Verdict:
    name = "consistency (history checker)"
    if data.check is None:
        return Verdict(name, "not applicable", "-", "-", "no store operations recorded")
    if not s.slo.consistency:
        return Verdict(name, "not applicable", "-", "-", "disabled by the scenario")
    found = [v for v in data.check.violations if v.kind != "lost-write"]
    kinds = Counter(v.kind for v in found)
    value = ", ".join(f"{n} {k}" for k, n in kinds.items()) or "no violation"
    detail = "; ".join(str(v) for v in found[:3])
    if data.kv_unread:  # a sync write cannot be shown to be in every zone
        value += f"; stores not read: {', '.join(data.kv_unread)}"
        detail = (data.kv_note + "; " + detail).strip("; ")
    return Verdict(name, "failed" if found or data.kv_unread else "passed", value,
                   "no stale read, no unreplicated sync write, no visible failed write",
                   detail)


def _split_brain(s: Scenario, data: DrillData) -> Verdict:
    name = "no split brain"
    if not s.slo.split_brain:
        return Verdict(name, "not applicable", "-", "-", "disabled by the scenario")
    if not data.control.present:
        return Verdict(name, "not applicable", "-", "one leader per term, one active zone",
                       f"no control plane in the stack ({data.control.note})")
    if not data.control.observable or data.control_samples == 0:
        return Verdict(name, "failed", "not observed", "one leader per term, one active zone",
                       f"controllers run but could not be sampled: {data.control.note}")
    terms = sorted({c.term for c in data.claims})
    value = (f"{len(data.split_brain)} violation(s)" if data.split_brain
             else f"terms {terms[0]}..{terms[-1]}, one leader each" if terms
             else "no leader claimed")
    return Verdict(name, "failed" if data.split_brain else "passed", value,
                   "one leader per term, one active zone",
                   "; ".join(data.split_brain[:3]) or f"{data.control_samples} samples")


def _leftovers(s: Scenario, data: DrillData) -> Verdict:
    name = "nothing left behind"
    if not s.slo.leftovers:
        return Verdict(name, "not applicable", "-", "-", "disabled by the scenario")
    found = [f"{zone}: {len(v)} prepared transaction(s)" if isinstance(v, list)
             else f"{zone} store: {v}" for zone, v in sorted(data.prepared.items()) if v != []]
    found += data.chaos_leftovers + data.orphans
    return Verdict(name, "failed" if found else "passed",
                   f"{len(found)} item(s)" if found else "nothing",
                   "no prepared tx, no chaos rule, no orphan process", "; ".join(found[:5]))
