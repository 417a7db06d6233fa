"""The FailoverManager: which zones take traffic, decided once per tick, explained in a sentence.

Pure decision logic (no I/O, time passed in): ``run_cycle(observation, now) -> Decision``. The
controller observes, calls it, and acts on the decision only while it holds the leader lease.

Modes (``failover.mode`` of the topology):

* **active-backup**, exactly as the seed's FailoverManager: ``zones[0]`` is active and the rest
  are ordered backups; the active zone is kept while it is healthy, otherwise the first healthy
  backup takes over. Failback to a recovered, more preferred zone is automatic after
  ``failback_delay_seconds`` of health, or manual (an operator shifts traffic off the backup).
* **active-active**: every zone takes its weight's share; a failed or shifted zone's share is
  spread over the others in proportion to their weights.

Guardrails:

1. Never shift traffic away from the last healthy zone: shifts are ignored when honouring them
   would leave no healthy zone serving (fail open, like ARC and Envoy's panic mode). With no
   healthy zone at all, degraded zones serve; with none of those either, every zone does and
   the decision carries an alert ("no healthy zones available").
2. At most one zone is shifted automatically for a gray failure at a time, and not while another
   zone is down. (A zone whose health checks fail is removed regardless, as any load balancer
   does; that removal is listed as an autoshift so operators see one list.)
3. Hysteresis: a zone leaves at once but returns only after ``recovery_stable_seconds`` of health
   (``flap_hold_seconds`` when it has been flapping), so a flapping zone does not bounce traffic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from crosszone.control.hysteresis import ZoneTracker
from crosszone.control.model import Decision, Observation, Routing, Transition, ZoneObservation
from crosszone.control.settings import FailoverPolicy
from crosszone.control.shifts import ZonalShift, autoshift

Mode = Literal["active-backup", "active-active"]

_MISSING = ZoneObservation("unhealthy", "no health observation")


class FailoverManager:
    """Decides the routing for a fixed list of zones (in failover priority order)."""

    def __init__(self, zones: Sequence[str], *, mode: Mode = "active-backup",
                 weights: Mapping[str, float] | None = None,
                 policy: FailoverPolicy | None = None) -> None:
        if len(zones) < 1 or len(set(zones)) != len(zones):
            raise ValueError(f"zones must be distinct and non-empty, got {list(zones)}")
        self.order = list(zones)
        self.mode: Mode = mode
        self.policy = policy or FailoverPolicy()
        raw = {z: max(0.0, float((weights or {}).get(z, 1.0 if weights is None else 0.0)))
               for z in self.order}
        if mode == "active-backup" or sum(raw.values()) <= 0:
            raw = dict.fromkeys(self.order, 1.0)
        total = sum(raw.values())
        self.base = {z: w / total for z, w in raw.items()}
        self.trackers = {z: ZoneTracker(self.policy.flap_window_seconds) for z in self.order}

    @classmethod
    def from_topology(cls, topology: object, policy: FailoverPolicy | None = None
                      ) -> FailoverManager:
        """Built from a :class:`crosszone.config.topology.Topology` (its ``failover`` section)."""
        from crosszone.config.topology import Topology

        assert isinstance(topology, Topology)
        fo = topology.failover
        return cls(topology.zone_order() + [z for z in topology.zone_names()
                                            if z not in topology.zone_order()],
                   mode=fo.mode, weights=fo.weights, policy=policy)

    # -- the cycle -------------------------------------------------------------------------------

    def run_cycle(self, observation: Observation, now: float) -> Decision:
        zones = {z: observation.zones.get(z, _MISSING) for z in self.order}
        for z, ob in zones.items():
            self.trackers[z].update(ob.status == "healthy", now)
        notes: list[str] = []
        live, started, ended = self._update_shifts(observation.shifts, zones, now, notes)
        routing, alert, failback = self._route(zones, live, observation.current, now, notes)
        transitions = self._transitions(observation.current, routing, zones, live, failback)
        changed = not routing.same_as(observation.current)
        sentence = self._sentence(routing, zones, changed, started, ended, notes, transitions,
                                  alert, observation.current is None)
        return Decision(routing, changed, sentence, tuple(started), tuple(s for s, _ in ended),
                        tuple(transitions), alert, tuple(notes))

    # -- shifts ------------------------------------------------------------------------------------

    def _required_stability(self, zone: str, now: float) -> float:
        p = self.policy
        flapping = self.trackers[zone].flapping(now, p.flap_threshold)
        return p.flap_hold_seconds if flapping else p.recovery_stable_seconds

    def _update_shifts(self, shifts: Sequence[ZonalShift], zones: Mapping[str, ZoneObservation],
                       now: float, notes: list[str]
                       ) -> tuple[list[ZonalShift], list[ZonalShift],
                                  list[tuple[ZonalShift, str]]]:
        live: list[ZonalShift] = []
        ended: list[tuple[ZonalShift, str]] = []
        for s in shifts:
            if s.zone not in zones:
                ended.append((s, f"zone {s.zone} is not in the topology"))
            elif s.kind == "operator" and s.expired(now):
                ended.append((s, "expired"))
            elif s.kind == "autoshift" and zones[s.zone].status == "healthy" \
                    and self.trackers[s.zone].healthy_for(now) >= \
                    self._required_stability(s.zone, now):
                ended.append((s, f"{s.zone} healthy for "
                                 f"{self.trackers[s.zone].healthy_for(now):.1f} s"))
            else:
                live.append(s)
        auto = {s.zone for s in live if s.kind == "autoshift"}
        started: list[ZonalShift] = []
        for z, ob in zones.items():
            if ob.status == "unhealthy" and z not in auto:
                started.append(autoshift(z, f"zone failure: {ob.reason or 'unhealthy'}", now))
                auto.add(z)
        down = {z for z, ob in zones.items() if ob.status == "unhealthy"}
        for z, ob in zones.items():
            if ob.status != "degraded" or z in auto:
                continue
            if not self.policy.autoshift_gray_failures:
                notes.append(f"{z} is degraded ({ob.reason}) but gray-failure autoshift is off")
                continue
            others = sorted((auto | down) - {z})
            if others:
                notes.append(f"{z} is degraded ({ob.reason}) but {', '.join(others)} already "
                             "shifted or down: not shifting it (guardrail: one automatic "
                             "shift at a time)")
                continue
            started.append(autoshift(z, f"gray failure: {ob.reason}", now))
            auto.add(z)
        return live + started, started, ended

    # -- routing -----------------------------------------------------------------------------------

    def _route(self, zones: Mapping[str, ZoneObservation], live: Sequence[ZonalShift],
               current: Routing | None, now: float, notes: list[str]
               ) -> tuple[Routing, str | None, bool]:
        shifted = {s.zone for s in live}
        healthy = [z for z in self.order if zones[z].status == "healthy"]
        # A degraded zone the guardrails kept from shifting still serves.
        eligible = [z for z in self.order if zones[z].status != "unhealthy" and z not in shifted]
        degraded = [z for z in self.order if zones[z].status == "degraded"]
        alert: str | None = None
        if eligible:
            tier = eligible
        elif healthy:
            tier = healthy
            notes.append(f"guardrail: ignoring shifts of {', '.join(healthy)} (never shift "
                         "traffic away from the last healthy zone)")
        elif degraded:
            tier = degraded
        else:
            alert = "no healthy zones available: failing open to all zones"
            return Routing(dict(self.base), None, True), alert, False
        if not healthy:
            alert = f"no healthy zones available: serving from degraded {', '.join(tier)}"
        if self.mode == "active-active":
            total = sum(self.base[z] for z in tier)
            weights = {z: (self.base[z] / total if z in tier else 0.0) for z in self.order}
            return Routing(weights, None, False), alert, False
        active, failback = self._choose_active(tier, bool(eligible), current, now, notes)
        weights = {z: 1.0 if z == active else 0.0 for z in self.order}
        return Routing(weights, active, False), alert, failback

    def _choose_active(self, tier: list[str], all_eligible: bool, current: Routing | None,
                       now: float, notes: list[str]) -> tuple[str, bool]:
        """The seed's determine_active_zone plus a failback policy."""
        was = current.active if current is not None and not current.fail_open else None
        if was not in tier or was is None:
            return tier[0], False
        preferred = tier[0]
        if preferred == was or not all_eligible:
            return was, False
        if self.policy.failback == "manual":
            notes.append(f"{preferred} is available again; failback is manual: staying on {was}")
            return was, False
        held = self.trackers[preferred].healthy_for(now)
        wait = self.policy.failback_delay_seconds
        if held >= wait:
            return preferred, True
        notes.append(f"failback to {preferred} after {wait - held:.1f} s more of health")
        return was, False

    # -- what moved --------------------------------------------------------------------------------

    def _ordered(self, zones: set[str]) -> tuple[str, ...]:
        return tuple(z for z in self.order if z in zones)

    def _why_out(self, zone: str, zones: Mapping[str, ZoneObservation],
                 live: Sequence[ZonalShift]) -> tuple[Literal["failover", "shift"], str,
                                                      float | None]:
        ob = zones[zone]
        if ob.status != "healthy":
            return "failover", f"{zone} {ob.status}: {ob.reason}", ob.failing_since
        for s in live:
            if s.zone == zone:
                return "shift", f"{s.kind} {s.id}: {s.reason}", s.started_at
        return "failover", f"{zone} is no longer eligible", None

    def _transitions(self, current: Routing | None, routing: Routing,
                     zones: Mapping[str, ZoneObservation], live: Sequence[ZonalShift],
                     failback: bool) -> list[Transition]:
        if current is None:
            return []
        old, new = set(current.serving()), set(routing.serving())
        if routing.fail_open:
            if current.fail_open:
                return []
            starts = [t for t in (zones[z].failing_since for z in old) if t is not None]
            return [Transition("fail-open", self._ordered(old), self._ordered(new),
                               "no healthy zones available", min(starts) if starts else None)]
        if current.fail_open:
            return [Transition("restore", self._ordered(old), self._ordered(new),
                               f"healthy again: {', '.join(self._ordered(new))}")]
        out: list[Transition] = []
        if self.mode == "active-backup":
            was, now_active = current.active, routing.active
            if was == now_active or now_active is None:
                return []
            if failback:
                return [Transition("failback", (was or "",), (now_active,),
                                   f"failback to preferred zone {now_active} "
                                   f"(policy {self.policy.failback})")]
            if was is None or was not in zones:
                return [Transition("restore", (), (now_active,), "active zone chosen")]
            kind, reason, detected = self._why_out(was, zones, live)
            return [Transition(kind, (was,), (now_active,), reason, detected)]
        for z in self._ordered(old - new):
            kind, reason, detected = self._why_out(z, zones, live)
            out.append(Transition(kind, (z,), self._ordered(new), reason, detected))
        for z in self._ordered(new - old):
            out.append(Transition("restore", self._ordered(old), (z,),
                                  f"{z} takes traffic again"))
        return out

    # -- the sentence ------------------------------------------------------------------------------

    def _sentence(self, routing: Routing, zones: Mapping[str, ZoneObservation], changed: bool,
                  started: list[ZonalShift], ended: list[tuple[ZonalShift, str]],
                  notes: list[str], transitions: list[Transition], alert: str | None,
                  initial: bool) -> str:
        clauses: list[str] = []
        if alert:
            clauses.append(f"ALERT {alert}")
        clauses += [f"autoshift started on {s.zone} ({s.reason})" for s in started]
        clauses += [f"{s.kind} {s.id} on {s.zone} ended ({why})" for s, why in ended]
        for t in transitions:
            frm, to = ", ".join(t.from_zones) or "-", ", ".join(t.to_zones) or "-"
            verb = {"failover": "failed over", "failback": "failed back", "shift": "shifted",
                    "restore": "restored", "fail-open": "failed open"}[t.kind]
            clauses.append(f"{verb} from {frm} to {to} ({t.reason})")
        clauses += notes
        if changed and not transitions:
            clauses.append(f"{'initial' if initial else 'updated'} routing: {routing.describe()}")
        if not clauses:
            healthy = sum(1 for ob in zones.values() if ob.status == "healthy")
            clauses.append(f"no change: {routing.describe()}, {healthy}/{len(zones)} zones "
                           "healthy")
        return "; ".join(clauses)

    def __repr__(self) -> str:
        return f"<FailoverManager {self.mode} {self.order} policy={self.policy.failback}>"
