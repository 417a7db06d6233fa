"""What the FailoverManager reads (an Observation) and returns (a Decision)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from crosszone.control.shifts import ZonalShift

ZoneStatus = Literal["healthy", "degraded", "unhealthy"]
TransitionKind = Literal["failover", "failback", "shift", "restore", "fail-open"]


@dataclass(frozen=True)
class ZoneObservation:
    """One zone as the health checker sees it.

    ``degraded`` is a gray failure: health endpoints answer but the zone's error rate or latency
    is an outlier against the other zones. ``failing_since`` is the wall time of the first bad
    evidence of the current streak (for the detection delay of a failover event).
    """

    status: ZoneStatus
    reason: str = ""
    failing_since: float | None = None
    healthy_fraction: float = 1.0


@dataclass(frozen=True)
class Routing:
    """Which zones take traffic, as pushed to the LB/gateways and served by DNS.

    ``weights`` always covers every zone and sums to 1. ``active`` is the active zone in
    active-backup mode. ``fail_open`` marks the "no healthy zones" state.
    """

    weights: Mapping[str, float]
    active: str | None = None
    fail_open: bool = False

    def serving(self) -> list[str]:
        return [z for z, w in self.weights.items() if w > 0]

    def same_as(self, other: Routing | None) -> bool:
        if other is None or self.active != other.active or self.fail_open != other.fail_open:
            return False
        if set(self.weights) != set(other.weights):
            return False
        return all(abs(w - other.weights[z]) < 1e-6 for z, w in self.weights.items())

    def to_json(self) -> str:
        return json.dumps({"weights": dict(self.weights), "active": self.active,
                           "fail_open": self.fail_open}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Routing:
        data: dict[str, Any] = json.loads(text)
        weights = {str(z): float(w) for z, w in dict(data["weights"]).items()}
        active = data.get("active")
        return cls(weights, None if active is None else str(active), bool(data.get("fail_open")))

    def describe(self) -> str:
        if self.active is not None and not self.fail_open:
            return f"active {self.active}"
        parts = ", ".join(f"{z} {w:.0%}" for z, w in self.weights.items() if w > 0)
        return ("fail open: " if self.fail_open else "") + (parts or "no zone")


@dataclass(frozen=True)
class Observation:
    """Everything one cycle decides on: zone health, live shifts, and the published routing."""

    zones: Mapping[str, ZoneObservation]
    shifts: tuple[ZonalShift, ...] = ()
    current: Routing | None = None


@dataclass(frozen=True)
class Transition:
    """Traffic moved: becomes one row of ``failover_events`` once the controller has acted."""

    kind: TransitionKind
    from_zones: tuple[str, ...]
    to_zones: tuple[str, ...]
    reason: str
    detected_at: float | None = None  # first bad evidence; None when nothing failed (failback)


@dataclass(frozen=True)
class Decision:
    """The outcome of one FailoverManager cycle; ``sentence`` says what it decided and why."""

    routing: Routing
    changed: bool
    sentence: str
    start_shifts: tuple[ZonalShift, ...] = ()
    end_shifts: tuple[ZonalShift, ...] = ()
    transitions: tuple[Transition, ...] = ()
    alert: str | None = None
    notes: tuple[str, ...] = field(default=())
