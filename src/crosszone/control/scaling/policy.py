"""The ScalingPolicy: every zone's desired capacity, decided once per tick.

The rules (baseline, load with N-1 static stability, zone loss, cooldowns) are described in
:mod:`crosszone.control.scaling`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from crosszone.control.scaling.model import (
    GroupBounds,
    GroupState,
    Mode,
    OperatorSetting,
    ScalingDecision,
    ScalingObservation,
    ZonePlan,
    group_bounds,
)
from crosszone.control.settings import ScalingSettings


class ScalingPolicy:
    """Decides every zone's desired capacity; remembers only how long load has been low."""

    def __init__(self, bounds: Mapping[str, GroupBounds], *, order: Sequence[str],
                 mode: Mode = "active-active", weights: Mapping[str, float] | None = None,
                 settings: ScalingSettings | None = None) -> None:
        if set(order) != set(bounds):
            raise ValueError(f"order {list(order)} and groups {list(bounds)} differ")
        self.bounds = dict(bounds)
        self.order = list(order)
        self.mode: Mode = mode
        self.settings = settings or ScalingSettings()
        raw = {z: max(0.0, float((weights or {}).get(z, 1.0 if weights is None else 0.0)))
               for z in self.order}
        if mode == "active-backup" or sum(raw.values()) <= 0:
            raw = dict.fromkeys(self.order, 1.0)
        self.weights = raw
        self._low_since: dict[str, float] = {}
        self._low_peak: dict[str, int] = {}
        self._lost: tuple[str, ...] = ()  # zones lost in the current cycle
        self._out_since: dict[str, float] = {}
        self._served: set[str] = set()  # zones seen in service since this policy started

    @classmethod
    def from_topology(cls, topology: object, settings: ScalingSettings | None = None
                      ) -> ScalingPolicy:
        from crosszone.config.topology import Topology

        assert isinstance(topology, Topology)
        order = topology.zone_order() + [z for z in topology.zone_names()
                                         if z not in topology.zone_order()]
        return cls(group_bounds(topology), order=order, mode=topology.failover.mode,
                   weights=topology.failover.weights,
                   settings=settings or topology.control.scaling)

    # -- shares ------------------------------------------------------------------------------------

    def current_shares(self, serving: Sequence[str]) -> dict[str, float]:
        """The part of the region's traffic each serving zone carries."""
        if not serving:
            return {}
        if self.mode == "active-backup":
            return {z: 1.0 if z == serving[0] else 0.0 for z in serving}
        total = sum(self.weights[z] for z in serving)
        if total <= 0:
            return {z: 1.0 / len(serving) for z in serving}
        return {z: self.weights[z] / total for z in serving}

    def planned_shares(self, serving: Sequence[str]) -> dict[str, float]:
        """Static stability: the share each zone must be ready for (see the module doc)."""
        now = self.current_shares(serving)
        if self.settings.headroom_percent is not None:
            factor = 1.0 + self.settings.headroom_percent / 100.0
            return {z: s * factor for z, s in now.items()}
        planned = dict(now)
        if len(serving) > 1:
            for lost in serving:
                rest = [z for z in serving if z != lost]
                for z, s in self.current_shares(rest).items():
                    planned[z] = max(planned[z], s)
        return planned

    # -- the cycle ---------------------------------------------------------------------------------

    def current(self, zone: str, groups: Mapping[str, GroupState]) -> GroupState:
        b = self.bounds[zone]
        return groups.get(zone) or GroupState(b.desired_capacity,
                                              "desired_capacity of the topology")

    def run_cycle(self, ob: ScalingObservation, now: float) -> ScalingDecision:
        plans = self._plans(ob, self._track_losses(ob, now))
        groups: dict[str, GroupState] = {}
        changes: list[str] = []
        notes: list[str] = []
        for zone in self.order:
            cur = self.current(zone, ob.groups)
            new = self._decide(zone, cur, plans[zone], ob.operator.get(zone), now, notes)
            groups[zone] = new
            if new is not cur:
                changes.append(f"{zone} {cur.desired} -> {new.desired} ({new.reason})")
        if changes:
            sentence = "scaling: " + "; ".join(changes)
        else:
            sizes = ", ".join(f"{z} {g.desired}" for z, g in groups.items())
            sentence = f"scaling: no change ({sizes})"
        if notes:
            sentence += "; " + "; ".join(notes)
        return ScalingDecision(groups, bool(changes), sentence, plans, tuple(changes),
                               tuple(notes))

    def _track_losses(self, ob: ScalingObservation, now: float) -> set[str]:
        """The first zone that served, then stayed out of service for ``zone_loss_seconds``."""
        for z in self.order:
            if z in ob.out_of_service:
                self._out_since.setdefault(z, now)
            else:
                self._out_since.pop(z, None)
                if ob.established is None or z in ob.established:
                    self._served.add(z)
        wait = self.settings.zone_loss_seconds
        lost = sorted((since, self.order.index(z), z) for z, since in self._out_since.items()
                      if z in self._served and now - since >= wait)
        return {lost[0][2]} if lost else set()

    def _plans(self, ob: ScalingObservation, lost_zones: set[str]) -> dict[str, ZonePlan]:
        s = self.settings
        out = {z for z in ob.out_of_service if z in self.bounds}
        serving = [z for z in self.order if z not in out]
        if not serving:  # every zone out: traffic fails open to all of them
            out, serving, lost_zones = set(), list(self.order), set()
        self._lost = tuple(z for z in self.order if z in lost_zones)
        demand = sum(load.in_flight for load in ob.loads.values())
        shares = self.planned_shares(serving)
        baseline = {z: self._baseline(z, ob.operator) for z in self.order}
        lost = sum(baseline[z] for z in lost_zones)
        alive_weight = sum(self.weights[z] for z in serving) or 1.0
        plans: dict[str, ZonePlan] = {}
        for z in self.order:
            b = self.bounds[z]
            share = shares.get(z, 0.0)
            need = floor = 0
            if s.enabled:
                need = _ceil(demand * share / s.target_in_flight_per_worker)
                extra = _ceil(lost * self.weights[z] / alive_weight) if z in serving else 0
                floor = baseline[z] + extra
            else:
                floor = baseline[z]
            in_flight = ob.loads[z].in_flight if z in ob.loads else 0
            plans[z] = ZonePlan(in_flight, demand, share, need, baseline[z], floor,
                                b.clamp(max(floor, need)), z in out)
        return plans

    def _baseline(self, zone: str, operator: Mapping[str, OperatorSetting]) -> int:
        b = self.bounds[zone]
        op = operator.get(zone)
        return b.clamp(op.desired if op is not None else b.desired_capacity)

    def _decide(self, zone: str, cur: GroupState, plan: ZonePlan, op: OperatorSetting | None,
                now: float, notes: list[str]) -> GroupState:
        b, s = self.bounds[zone], self.settings
        if op is not None and op.set_at > cur.changed_at:
            self._forget_low(zone)
            return GroupState(b.clamp(op.desired), f"operator set desired {op.desired}", now)
        if b.clamp(cur.desired) != cur.desired:
            self._forget_low(zone)
            return GroupState(b.clamp(cur.desired), f"bounds {b.min_size}..{b.max_size}", now)
        if plan.out_of_service:
            self._forget_low(zone)
            return cur  # kept for the zone's return
        if plan.target > cur.desired:
            self._forget_low(zone)
            new = cur
            floor = b.clamp(plan.floor)
            if floor > cur.desired:
                new = GroupState(floor, self._floor_reason(plan), now)
            if plan.target > new.desired:
                wait = cur.changed_at + s.scale_out_cooldown_seconds - now
                if wait <= 0:
                    new = GroupState(plan.target, self._load_reason(plan), now)
                else:
                    notes.append(f"{zone} needs {plan.target} for load: scale-out cooldown "
                                 f"{wait:.1f} s")
            return new
        if plan.target < cur.desired:
            since = self._low_since.setdefault(zone, now)
            peak = self._low_peak[zone] = max(self._low_peak.get(zone, 0), plan.target)
            ready = max(since, cur.changed_at) + s.scale_in_cooldown_seconds
            if now >= ready:
                self._forget_low(zone)
                return GroupState(peak, f"scale-in: target {peak} for "
                                  f"{now - since:.0f} s ({self._plan_words(plan)})", now)
            notes.append(f"{zone} scales in to {peak} in {ready - now:.1f} s unless load rises")
            return cur
        self._forget_low(zone)
        return cur

    def _forget_low(self, zone: str) -> None:
        self._low_since.pop(zone, None)
        self._low_peak.pop(zone, None)

    def _floor_reason(self, plan: ZonePlan) -> str:
        if plan.floor > plan.baseline and self._lost:
            return (f"zone loss: {', '.join(self._lost)} lost, its baseline spread over the "
                    f"survivors ({plan.baseline} + {plan.floor - plan.baseline})")
        return f"baseline {plan.baseline}"

    def _load_reason(self, plan: ZonePlan) -> str:
        return f"load: {self._plan_words(plan)}"

    def _plan_words(self, plan: ZonePlan) -> str:
        how = ("N-1 plan" if self.settings.headroom_percent is None
               else f"headroom {self.settings.headroom_percent:g}%")
        return (f"{plan.demand} in flight in the region, planned share {plan.share:.0%} "
                f"({how}) at {self.settings.target_in_flight_per_worker:g} per worker needs "
                f"{plan.need}")

    def __repr__(self) -> str:
        return f"<ScalingPolicy {self.mode} {self.order} enabled={self.settings.enabled}>"


def _ceil(x: float) -> int:
    return max(0, math.ceil(x - 1e-9))
