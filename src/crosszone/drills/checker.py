"""The history checker (Jepsen-style): were acknowledged writes kept, and did sync reads stay put?

Input: a :class:`~crosszone.workload.history.History` (each operation's invocation and outcome)
and the final state read from every zone's store after the drill healed. Every key has one
writer writing strictly increasing integers, so a write of ``v`` is *present* in a zone when the
key's value there is at least ``v``.

Checks, per consistency class:

* **lost write** — an acknowledged (``ok``) write present in no zone. This is the RPO. For a
  sync class it is always a violation; for an async class the drill compares the count with its
  budget.
* **unreplicated write** — an acknowledged write present in some zones but not all. A sync
  write must be in every zone (a violation); for an async class it only means replication had
  not caught up when the state was read (reported).
* **failed write visible** — a write that definitely failed whose exact value is in a zone, or
  was returned by a read.
* **stale read** (sync classes) — an ``ok`` read that returned less than a write acknowledged
  before the read was invoked, or less than a read that completed before it was invoked: the
  read went back in time.
* **phantom read** — a read returned a value no write ever wrote.

Unknown outcomes are treated as either: an unknown write is never required to be present and
never forbidden to be; it may take effect at any moment after its invocation (a request that
timed out can still arrive later), so reading its value is legal even after newer writes were
acknowledged, and from then on later reads may not go below it (the read-after-read rule).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from crosszone.workload.history import Op, OpStatus

SYNC_CLASSES = ("strong",)


@dataclass(frozen=True)
class Violation:
    kind: str  # lost-write | unreplicated-write | failed-write-visible | stale-read | phantom-read
    key: str
    op: int  # index of the offending operation
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} {self.key} (op {self.op}): {self.detail}"


@dataclass
class ClassStats:
    acknowledged: int = 0
    lost: int = 0
    unreplicated: int = 0
    failed: int = 0
    unknown: int = 0
    unknown_present: int = 0
    reads: int = 0

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class CheckResult:
    classes: dict[str, ClassStats] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    zones: list[str] = field(default_factory=list)

    def lost(self, consistency: str) -> int:
        stats = self.classes.get(consistency)
        return stats.lost if stats else 0

    def of_kind(self, kind: str) -> list[Violation]:
        return [v for v in self.violations if v.kind == kind]

    @property
    def valid(self) -> bool:
        """No violation at all (async losses are counted, and judged against a budget)."""
        return not self.violations

    def to_json(self, limit: int = 50) -> dict[str, Any]:
        kinds: dict[str, int] = defaultdict(int)
        for v in self.violations:
            kinds[v.kind] += 1
        return {"valid": self.valid, "zones": self.zones,
                "classes": {c: s.to_json() for c, s in sorted(self.classes.items())},
                "violation_counts": dict(kinds),
                "violations": [str(v) for v in self.violations[:limit]]}


def check_history(ops: Iterable[Op], final: Mapping[str, Mapping[str, int]],
                  sync_classes: Iterable[str] = SYNC_CLASSES) -> CheckResult:
    """Check ``ops`` against ``final`` (zone -> key -> value, read after the drill healed)."""
    sync = set(sync_classes)
    ops = [op for op in ops if op.status is not None]
    result = CheckResult(zones=sorted(final))
    writes = [op for op in ops if op.type == "write"]
    reads = [op for op in ops if op.type == "read"]
    written: dict[str, dict[int, Op]] = defaultdict(dict)  # key -> value -> write
    for op in writes:
        if op.value is not None:
            written[op.key][op.value] = op
    observed = {(op.key, op.value) for op in reads if op.status is OpStatus.OK}
    for op in writes:
        _check_write(op, final, sync, observed, result)
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in reads:
        stats = result.classes.setdefault(op.consistency, ClassStats())
        stats.reads += 1
        if op.status is OpStatus.OK:
            by_key[op.key].append(op)
    for key, key_reads in by_key.items():
        _check_reads(key, key_reads, written.get(key, {}), sync, result)
    result.violations.sort(key=lambda v: (v.kind, v.op))
    return result


def _check_write(op: Op, final: Mapping[str, Mapping[str, int]], sync: set[str],
                 observed: set[tuple[str, int | None]], result: CheckResult) -> None:
    stats = result.classes.setdefault(op.consistency, ClassStats())
    value = op.value if op.value is not None else 0
    current = {zone: state.get(op.key) for zone, state in final.items()}
    present = [z for z, v in current.items() if v is not None and v >= value]
    exact = [z for z, v in current.items() if v == value]
    if op.status is OpStatus.OK:
        stats.acknowledged += 1
        if not present:
            stats.lost += 1
            if op.consistency in sync:
                result.violations.append(Violation(
                    "lost-write", op.key, op.index,
                    f"{op.consistency} write of {value} acknowledged by {op.zone} at "
                    f"{op.complete:.3f}s is in no zone ({_show(current)})"))
        elif len(present) < len(current):
            stats.unreplicated += 1
            if op.consistency in sync:
                missing = sorted(set(current) - set(present))
                result.violations.append(Violation(
                    "unreplicated-write", op.key, op.index,
                    f"{op.consistency} write of {value} acknowledged by {op.zone} is missing "
                    f"in {', '.join(missing)} ({_show(current)})"))
    elif op.status is OpStatus.FAIL:
        stats.failed += 1
        seen = (op.key, op.value) in observed
        if exact or seen:
            where = ", ".join(exact) if exact else "a read"
            result.violations.append(Violation(
                "failed-write-visible", op.key, op.index,
                f"{op.consistency} write of {value} failed ({op.error}) but {where} shows it"))
    else:
        stats.unknown += 1
        if exact or (op.key, op.value) in observed:
            stats.unknown_present += 1


def _check_reads(key: str, reads: list[Op], writes: Mapping[int, Op], sync: set[str],
                 result: CheckResult) -> None:
    acked = sorted((w.complete, v) for v, w in writes.items()
                   if w.status is OpStatus.OK and w.complete is not None)
    acked_times = [t for t, _ in acked]
    acked_max: list[int] = []  # running max of acknowledged values, by completion time
    for _, v in acked:
        acked_max.append(max(v, acked_max[-1]) if acked_max else v)
    done = sorted(reads, key=lambda r: r.complete or 0.0)
    done_times = [r.complete or 0.0 for r in done]
    done_max: list[tuple[int, Op]] = []  # running max of values read, by completion time
    for r in done:
        v = r.value or 0
        done_max.append((v, r) if not done_max or v > done_max[-1][0] else done_max[-1])
    for read in sorted(reads, key=lambda r: r.invoke):
        value = read.value or 0
        source = writes.get(value) if read.value is not None else None
        if read.value is not None and source is None:
            result.violations.append(Violation(
                "phantom-read", key, read.index,
                f"read at {read.zone} returned {value}, which no write wrote"))
            continue
        if source is not None and source.status is OpStatus.FAIL:
            continue  # reported as failed-write-visible
        if read.consistency not in sync:
            continue
        if source is not None and source.status is OpStatus.UNKNOWN:
            continue  # an indeterminate write may take effect at any time after its invocation
        i = bisect.bisect_left(acked_times, read.invoke)
        if i and value < acked_max[i - 1]:
            result.violations.append(Violation(
                "stale-read", key, read.index,
                f"strong read at {read.zone} invoked at {read.invoke:.3f}s returned {value} "
                f"after a write of {acked_max[i - 1]} was acknowledged"))
            continue
        j = bisect.bisect_left(done_times, read.invoke)
        if j and value < done_max[j - 1][0]:
            earlier = done_max[j - 1][1]
            result.violations.append(Violation(
                "stale-read", key, read.index,
                f"strong read at {read.zone} invoked at {read.invoke:.3f}s returned {value}, "
                f"less than {earlier.value} read at {earlier.zone} (op {earlier.index}) which "
                f"completed at {earlier.complete or 0.0:.3f}s"))


def _show(values: Mapping[str, int | None]) -> str:
    return ", ".join(f"{z}={'-' if v is None else v}" for z, v in sorted(values.items()))
