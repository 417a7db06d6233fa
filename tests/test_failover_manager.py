"""FailoverManager: pure decisions, asserted through the Decision and its sentence."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from crosszone.control.failover import FailoverManager
from crosszone.control.model import Decision, Observation, Routing, ZoneObservation, ZoneStatus
from crosszone.control.settings import FailoverPolicy
from crosszone.control.shifts import (
    ZonalShift,
    operator_shift,
    parse_duration,
    parse_shifts,
)
from crosszone.errors import ShiftRejected

A, B, C = "us-west-2a", "us-west-2b", "us-west-2c"
ZONES = [A, B, C]
POLICY = FailoverPolicy(recovery_stable_seconds=3, failback_delay_seconds=5,
                        flap_window_seconds=60, flap_threshold=4, flap_hold_seconds=20)


class Sim:
    """Feeds observations and applies decisions the way the controller does (KV and routing)."""

    def __init__(self, manager: FailoverManager) -> None:
        self.manager = manager
        self.shifts: dict[str, ZonalShift] = {}
        self.current: Routing | None = None
        self.changes = 0
        self.log: list[str] = []

    def tick(self, now: float, **status: ZoneStatus | tuple[ZoneStatus, str]) -> Decision:
        zones: dict[str, ZoneObservation] = {}
        for z in self.manager.order:
            value = status.get(z.replace("-", "_"), "healthy")
            st, reason = value if isinstance(value, tuple) else (value, f"{value} by checks")
            zones[z] = ZoneObservation(st, "" if st == "healthy" else reason,
                                       None if st == "healthy" else now - 1.0)
        decision = self.manager.run_cycle(
            Observation(zones, tuple(self.shifts.values()), self.current), now)
        for s in decision.start_shifts:
            self.shifts[s.id] = s
        for s in decision.end_shifts:
            self.shifts.pop(s.id, None)
        if decision.changed:
            self.changes += self.current is not None
            self.current = decision.routing
        self.log.append(decision.sentence)
        return decision

    def run(self, start: float, end: float, step: float = 0.5,
            **status: ZoneStatus | tuple[ZoneStatus, str]) -> Decision:
        t = start
        decision = self.tick(t, **status)
        while t + step <= end:
            t += step
            decision = self.tick(t, **status)
        return decision


def ab(policy: FailoverPolicy = POLICY) -> Sim:
    return Sim(FailoverManager(ZONES, mode="active-backup", policy=policy))


def aa(weights: Mapping[str, float] | None = None) -> Sim:
    return Sim(FailoverManager(ZONES, mode="active-active", weights=weights, policy=POLICY))


def k(zone: str) -> str:
    return zone.replace("-", "_")


# -- active/backup, as the seed --------------------------------------------------------------------


def test_active_backup_starts_on_the_primary() -> None:
    sim = ab()
    d = sim.tick(0)
    assert d.routing.active == A and d.changed
    assert d.routing.weights == {A: 1.0, B: 0.0, C: 0.0}
    assert d.sentence == "initial routing: active us-west-2a"
    d = sim.tick(1)
    assert not d.changed
    assert d.sentence == "no change: active us-west-2a, 3/3 zones healthy"


def test_active_fails_over_to_first_healthy_backup_with_event_data() -> None:
    sim = ab()
    sim.tick(0)
    d = sim.tick(10, **{k(A): ("unhealthy", "gateway down")})
    assert d.routing.active == B and d.changed
    [t] = d.transitions
    assert (t.kind, t.from_zones, t.to_zones) == ("failover", (A,), (B,))
    assert t.detected_at == 9.0 and "gateway down" in t.reason
    assert [s.id for s in d.start_shifts] == ["auto-us-west-2a"]
    assert d.sentence.startswith("autoshift started on us-west-2a (zone failure: gateway down); "
                                 "failed over from us-west-2a to us-west-2b")


def test_two_zones_down_picks_the_third_and_keeps_it() -> None:
    sim = ab()
    sim.tick(0)
    d = sim.tick(1, **{k(A): "unhealthy", k(B): "unhealthy"})
    assert d.routing.active == C and d.alert is None
    d = sim.tick(2, **{k(A): "unhealthy", k(B): "unhealthy"})
    assert not d.changed and d.routing.active == C


def test_no_healthy_zones_fails_open_and_alerts() -> None:
    sim = ab()
    sim.tick(0)
    down = {k(z): "unhealthy" for z in ZONES}
    d = sim.tick(1, **down)  # type: ignore[arg-type]
    assert d.routing.fail_open and d.routing.active is None
    assert set(d.routing.serving()) == set(ZONES)
    assert d.alert == "no healthy zones available: failing open to all zones"
    assert d.sentence.startswith("ALERT no healthy zones available")
    assert [t.kind for t in d.transitions] == ["fail-open"]
    d = sim.tick(5, **{k(A): "unhealthy", k(B): "unhealthy"})
    assert d.routing.active == C and not d.routing.fail_open and d.alert is None
    assert [t.kind for t in d.transitions] == ["restore"]


def test_automatic_failback_waits_for_stable_health() -> None:
    sim = ab()
    sim.tick(0)
    sim.run(1, 10, **{k(A): "unhealthy"})
    assert sim.current is not None and sim.current.active == B
    d = sim.run(10.5, 12.5)  # A healthy for 2 s: autoshift still on, no failback
    assert sim.current.active == B and "auto-us-west-2a" in sim.shifts
    d = sim.run(13, 14)  # healthy 3.5 s: autoshift ended, failback still waits for 5 s
    assert "auto-us-west-2a" not in sim.shifts and sim.current.active == B
    assert "failback to us-west-2a after" in d.sentence
    d = sim.run(14.5, 15.5)
    assert sim.current.active == A
    assert any("failed back from us-west-2b to us-west-2a" in s for s in sim.log)
    assert sim.changes == 2


def test_manual_failback_stays_on_backup_until_it_fails() -> None:
    sim = ab(POLICY.model_copy(update={"failback": "manual"}))
    sim.tick(0)
    sim.run(1, 5, **{k(A): "unhealthy"})
    d = sim.run(5.5, 60)
    assert sim.current is not None and sim.current.active == B
    assert "failback is manual: staying on us-west-2b" in d.sentence
    d = sim.tick(61, **{k(B): "unhealthy"})
    assert d.routing.active == A  # the primary is the first healthy zone again


def test_operator_shift_of_the_active_zone_moves_traffic_and_expires() -> None:
    sim = ab()
    sim.tick(0)
    shift = operator_shift(A, ZONES, 30, "patching", 1, POLICY.max_shift_seconds)
    sim.shifts[shift.id] = shift
    d = sim.tick(1)
    assert d.routing.active == B
    [t] = d.transitions
    assert t.kind == "shift" and t.detected_at == 1 and "patching" in t.reason
    d = sim.tick(31)
    assert d.end_shifts == (shift,) and f"operator {shift.id} on {A} ended (expired)" in d.sentence


# -- active-active ---------------------------------------------------------------------------------


def test_active_active_moves_a_failed_zone_share_proportionally() -> None:
    sim = aa({A: 2, B: 1, C: 1})
    d = sim.tick(0)
    assert d.routing.weights == {A: 0.5, B: 0.25, C: 0.25}
    d = sim.tick(1, **{k(C): ("unhealthy", "3/3 nodes down")})
    assert d.routing.weights[C] == 0
    assert d.routing.weights[A] == pytest.approx(2 / 3)
    assert d.routing.weights[B] == pytest.approx(1 / 3)
    [t] = d.transitions
    assert t.from_zones == (C,) and t.to_zones == (A, B)
    assert "failed over from us-west-2c to us-west-2a, us-west-2b" in d.sentence


def test_active_active_two_down_third_takes_all() -> None:
    sim = aa()
    sim.tick(0)
    d = sim.tick(1, **{k(A): "unhealthy", k(B): "unhealthy"})
    assert d.routing.weights == {A: 0.0, B: 0.0, C: 1.0}
    assert d.alert is None


def test_restored_zone_returns_only_after_stable_period() -> None:
    sim = aa()
    sim.tick(0)
    sim.tick(1, **{k(B): "unhealthy"})
    sim.run(2, 4.5)
    assert sim.current is not None and sim.current.weights[B] == 0
    d = sim.run(5, 5.5)
    assert sim.current.weights[B] == pytest.approx(1 / 3)
    assert any("autoshift auto-us-west-2b on us-west-2b ended (us-west-2b healthy for 3.0 s)"
               in s and "restored from us-west-2a, us-west-2c to us-west-2b" in s
               for s in sim.log)
    assert d.sentence.startswith("no change")


# -- guardrails ------------------------------------------------------------------------------------


def test_never_shift_away_from_the_last_healthy_zone() -> None:
    sim = aa()
    sim.tick(0)
    shift = operator_shift(C, ZONES, 600, "drill", 0, POLICY.max_shift_seconds)
    sim.shifts[shift.id] = shift
    d = sim.tick(1, **{k(A): "unhealthy", k(B): "unhealthy"})
    assert d.routing.weights[C] == 1.0 and not d.routing.fail_open
    assert "guardrail: ignoring shifts of us-west-2c" in d.sentence


def test_one_gray_failure_autoshift_at_a_time() -> None:
    sim = aa()
    sim.tick(0)
    d = sim.tick(1, **{k(A): ("degraded", "error rate 40% vs 1%"),
                       k(C): ("degraded", "p50 900 ms vs 20 ms")})
    assert [s.zone for s in d.start_shifts] == [A]
    assert d.routing.weights[A] == 0 and d.routing.weights[C] > 0
    assert "us-west-2c is degraded (p50 900 ms vs 20 ms) but us-west-2a already shifted" \
        in d.sentence
    assert "one automatic shift at a time" in d.sentence


def test_no_gray_autoshift_while_another_zone_is_down() -> None:
    sim = aa()
    sim.tick(0)
    d = sim.tick(1, **{k(A): "unhealthy", k(B): ("degraded", "slow")})
    assert [s.zone for s in d.start_shifts] == [A]
    assert d.routing.weights == {A: 0.0, B: 0.5, C: 0.5}


def test_only_degraded_zones_left_serve_with_an_alert() -> None:
    sim = aa()
    sim.tick(0)
    d = sim.tick(1, **{k(A): "unhealthy", k(B): "unhealthy", k(C): ("degraded", "slow")})
    assert d.routing.weights[C] == 1.0 and not d.routing.fail_open
    assert d.alert is not None and "degraded" in d.alert


def test_flapping_zone_does_not_bounce_traffic() -> None:
    sim = aa()
    sim.tick(0)
    t = 0.0
    for _ in range(10):  # 4 s healthy, 1 s down, over and over: enough to pass a 3 s hold
        sim.run(t + 0.5, t + 1, **{k(B): "unhealthy"})
        sim.run(t + 1.5, t + 5)
        t += 5
    # B returned once (before it was known to flap), then flap damping kept it out.
    assert sim.changes <= 3
    assert sim.current is not None and sim.current.weights[B] == 0
    d = sim.run(t + 0.5, t + 21)
    assert sim.current.weights[B] > 0, d.sentence


def test_autoshift_is_idempotent_and_listed() -> None:
    sim = aa()
    sim.tick(0)
    d1 = sim.tick(1, **{k(B): "unhealthy"})
    d2 = sim.tick(2, **{k(B): "unhealthy"})
    assert [s.id for s in d1.start_shifts] == ["auto-us-west-2b"] and not d2.start_shifts
    [listed] = parse_shifts({s.key: s.to_json() for s in sim.shifts.values()})
    assert listed.kind == "autoshift" and listed.reason.startswith("zone failure")


def test_missing_observation_counts_as_unhealthy() -> None:
    manager = FailoverManager(ZONES, mode="active-active", policy=POLICY)
    d = manager.run_cycle(Observation({A: ZoneObservation("healthy")}), 0)
    assert d.routing.weights == {A: 1.0, B: 0.0, C: 0.0}


# -- shift validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800),
                                               ("2h", 7200), ("1d", 86400), ("1.5m", 90)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_operator_shift_needs_zone_expiry_and_reason() -> None:
    with pytest.raises(ShiftRejected) as info:
        operator_shift("nowhere", ZONES, 0, " ", 0, 3600)
    message = str(info.value)
    assert "unknown zone 'nowhere'" in message and "expiry" in message and "reason" in message
    with pytest.raises(ShiftRejected):
        parse_duration("soon")
    shift = operator_shift(A, ZONES, 60, "patch", 100, 3600)
    assert shift.expires_at == 160 and ZonalShift.from_json(shift.to_json()) == shift
