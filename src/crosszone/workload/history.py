"""A Jepsen-style history: every store operation's invocation and its completion.

An operation is invoked (``invoke`` time), then completes as ``ok`` (acknowledged), ``fail``
(definitely did not take effect: refused before it was sent, or an explicit abort) or
``unknown`` (a timeout, a reset, a 5xx: it may or may not have taken effect). The checker
(:mod:`crosszone.drills.checker`) must treat an unknown outcome as either.

Keys have one writer each, writing strictly increasing integer values, so "this write is present"
is "the key's value is at least this one" and "a read went back in time" is a smaller value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class OpStatus(StrEnum):
    OK = "ok"
    FAIL = "fail"
    UNKNOWN = "unknown"


@dataclass
class Op:
    index: int
    process: str  # the client loop that issued it
    type: str  # "write" | "read"
    key: str
    consistency: str  # "strong" | "async"
    zone: str  # whose store it was sent to
    invoke: float  # seconds since the run began
    value: int | None = None  # what a write wrote / what a read returned (None: no record)
    complete: float | None = None
    status: OpStatus | None = None  # None while in flight
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Op:
        status = data.get("status")
        return cls(**{**data, "status": None if status is None else OpStatus(status)})


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)

    def invoke(self, process: str, type_: str, key: str, consistency: str, zone: str,
               at: float, value: int | None = None) -> Op:
        op = Op(len(self.ops), process, type_, key, consistency, zone, at, value)
        self.ops.append(op)
        return op

    @staticmethod
    def complete(op: Op, status: OpStatus, at: float, value: int | None = None,
                 error: str | None = None) -> None:
        op.status, op.complete, op.error = status, at, error
        if op.type == "read":
            op.value = value

    def counts(self) -> dict[str, dict[str, int]]:
        """``{"write/strong": {"ok": n, "fail": n, "unknown": n}, ...}``."""
        out: dict[str, dict[str, int]] = {}
        for op in self.ops:
            bucket = out.setdefault(f"{op.type}/{op.consistency}",
                                    {s.value: 0 for s in OpStatus})
            bucket[(op.status or OpStatus.UNKNOWN).value] += 1
        return out
