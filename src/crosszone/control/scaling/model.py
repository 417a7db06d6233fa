"""The auto-scaling groups' data: bounds, published state, operator settings, load, decisions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Mode = Literal["active-backup", "active-active"]


@dataclass(frozen=True)
class GroupBounds:
    """A zone's group as the topology declares it."""

    min_size: int
    max_size: int
    desired_capacity: int

    def clamp(self, n: int) -> int:
        return max(self.min_size, min(self.max_size, n))


@dataclass(frozen=True)
class GroupState:
    """A zone's published desired capacity; ``changed_at`` (wall time) drives the cooldowns."""

    desired: int
    reason: str
    changed_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"desired": self.desired, "reason": self.reason, "changed_at": self.changed_at}


@dataclass(frozen=True)
class OperatorSetting:
    """What ``crosszone scale --zone Z --desired N`` stored."""

    desired: int
    set_at: float


@dataclass(frozen=True)
class ZoneLoad:
    """What a zone's in-service workers reported on ``/health`` (fresh reports only)."""

    workers: int = 0
    running: int = 0
    queued: int = 0

    @property
    def in_flight(self) -> int:
        return self.running + self.queued


@dataclass(frozen=True)
class ScalingObservation:
    groups: Mapping[str, GroupState]
    operator: Mapping[str, OperatorSetting]
    loads: Mapping[str, ZoneLoad]
    out_of_service: frozenset[str] = frozenset()
    established: frozenset[str] | None = None  # zones seen up at least once; None: all


@dataclass(frozen=True)
class ZonePlan:
    """Why a zone's target is what it is (shown in ``/control/status``)."""

    in_flight: int  # this zone's
    demand: int  # the region's
    share: float  # planned share of the region's in-flight requests
    need: int  # workers for that share at the target per worker
    baseline: int  # operator setting or desired_capacity
    floor: int  # baseline plus its part of lost zones' baselines
    target: int  # max(floor, need) within bounds
    out_of_service: bool

    def to_dict(self) -> dict[str, Any]:
        return {"in_flight": self.in_flight, "region_in_flight": self.demand,
                "planned_share": round(self.share, 4), "need": self.need,
                "baseline": self.baseline, "floor": self.floor, "target": self.target,
                "out_of_service": self.out_of_service}


@dataclass(frozen=True)
class ScalingDecision:
    groups: Mapping[str, GroupState]
    changed: bool
    sentence: str
    plans: Mapping[str, ZonePlan]
    changes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def group_bounds(topology: object) -> dict[str, GroupBounds]:
    from crosszone.config.topology import Topology

    assert isinstance(topology, Topology)
    out: dict[str, GroupBounds] = {}
    for zone in topology.zone_names():
        g = topology.worker_group_of(zone)
        out[zone] = GroupBounds(g.min_size, g.max_size, g.desired_capacity)
    return out
