"""Zonal shifts: move traffic away from one zone until an expiry (AWS ARC's zonal shift).

Operators start them (``crosszone shift start --zone Z --expires 30m --reason TEXT``); the
FailoverManager starts *autoshifts* through the same record when a zone fails or shows a gray
failure, and ends them once the zone has been healthy for long enough. Both kinds live in the
coordination KV under :data:`SHIFT_PREFIX`, so every controller (and ``shift list``) sees the same
list, and a new leader continues where the old one stopped.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass
from typing import Any, Literal

from crosszone.errors import ShiftRejected

SHIFT_PREFIX = "shifts/"

ShiftKind = Literal["operator", "autoshift"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class ZonalShift:
    """Traffic stays away from ``zone`` until ``expires_at`` (operator) or recovery (autoshift)."""

    id: str
    zone: str
    kind: ShiftKind
    reason: str
    started_at: float
    expires_at: float | None = None

    @property
    def key(self) -> str:
        return SHIFT_PREFIX + self.id

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ZonalShift:
        data: dict[str, Any] = json.loads(text)
        kind = data["kind"]
        if kind not in ("operator", "autoshift"):
            raise ValueError(f"unknown shift kind {kind!r}")
        expires = data.get("expires_at")
        return cls(str(data["id"]), str(data["zone"]), kind, str(data["reason"]),
                   float(data["started_at"]), None if expires is None else float(expires))

    def describe(self, now: float) -> str:
        until = ("until the zone recovers" if self.expires_at is None
                 else f"{max(self.expires_at - now, 0):.0f} s left")
        return f"{self.kind} {self.id} away from {self.zone} ({self.reason}; {until})"


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``2h``, ``1d`` -> seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ShiftRejected(f"cannot read duration {text!r}: use e.g. 90s, 30m, 2h, 1d")
    return float(m.group(1)) * _UNIT[m.group(2)]


def operator_shift(zone: str, zones: list[str], expires_in: float, reason: str, now: float,
                   max_seconds: float) -> ZonalShift:
    """Validate an operator's request; every shift needs a known zone, an expiry and a reason."""
    problems: list[str] = []
    if zone not in zones:
        problems.append(f"unknown zone {zone!r} (zones: {', '.join(zones)})")
    if not 0 < expires_in <= max_seconds:
        problems.append(f"expiry must be more than 0 and at most {max_seconds:.0f} s, "
                        f"got {expires_in:g} s")
    if not reason.strip():
        problems.append("a reason is required")
    if problems:
        raise ShiftRejected("zonal shift rejected: " + "; ".join(problems))
    return ZonalShift(f"op-{zone}-{secrets.token_hex(3)}", zone, "operator", reason.strip(),
                      now, now + expires_in)


def autoshift(zone: str, reason: str, now: float) -> ZonalShift:
    """An automatic shift; its id is fixed per zone so proposing it twice is harmless."""
    return ZonalShift(f"auto-{zone}", zone, "autoshift", reason, now, None)


def parse_shifts(items: dict[str, str]) -> list[ZonalShift]:
    """Shifts from KV items (``shifts/<id>`` -> JSON); unreadable records are skipped."""
    out: list[ZonalShift] = []
    for _key, text in sorted(items.items()):
        try:
            out.append(ZonalShift.from_json(text))
        except (ValueError, KeyError, TypeError):
            continue
    return sorted(out, key=lambda s: (s.started_at, s.id))
