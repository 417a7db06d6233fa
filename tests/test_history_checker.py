"""The Jepsen-style history checker against hand-made histories: one clean, one per violation,
and unknown outcomes treated as either."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from crosszone.drills.checker import check_history
from crosszone.workload.history import History, Op, OpStatus

ZONES = ("a", "b", "c")


class Hist:
    """Builds a history with explicit invoke/complete times."""

    def __init__(self) -> None:
        self.history = History()

    def write(self, key: str, value: int, status: OpStatus, t0: float, t1: float,
              consistency: str = "strong", zone: str = "a") -> Op:
        op = self.history.invoke("w", "write", key, consistency, zone, t0, value)
        History.complete(op, status, t1, error=None if status is OpStatus.OK else "x")
        return op

    def read(self, key: str, value: int | None, t0: float, t1: float, zone: str = "b",
             status: OpStatus = OpStatus.OK) -> Op:
        op = self.history.invoke("r", "read", key, "strong", zone, t0)
        History.complete(op, status, t1, value)
        return op

    @property
    def ops(self) -> list[Op]:
        return self.history.ops


def everywhere(**values: int) -> dict[str, dict[str, int]]:
    return {z: dict(values) for z in ZONES}


@pytest.fixture
def h() -> Iterator[Hist]:
    yield Hist()


def test_a_clean_history_is_valid(h: Hist) -> None:
    h.write("k1", 1, OpStatus.OK, 0.0, 0.1)
    h.read("r", None, 0.0, 0.05)
    h.write("r", 1, OpStatus.OK, 0.1, 0.2)
    h.read("r", 1, 0.3, 0.4)
    h.write("r", 2, OpStatus.OK, 0.5, 0.6)
    h.read("r", 1, 0.55, 0.58)  # concurrent with the write of 2: the old value is fine
    h.read("r", 2, 0.7, 0.8, zone="c")
    h.write("x", 1, OpStatus.OK, 0.0, 0.1, consistency="async")
    result = check_history(h.ops, everywhere(k1=1, r=2, x=1))
    assert result.valid, result.violations
    assert result.classes["strong"].acknowledged == 3
    assert result.classes["strong"].reads == 4
    assert result.lost("strong") == 0 and result.lost("async") == 0


def test_an_acknowledged_strong_write_missing_everywhere_is_lost(h: Hist) -> None:
    h.write("k1", 1, OpStatus.OK, 0.0, 0.1)
    h.write("k2", 1, OpStatus.OK, 0.2, 0.3)
    result = check_history(h.ops, everywhere(k1=1))
    assert result.lost("strong") == 1
    [violation] = result.violations
    assert violation.kind == "lost-write" and violation.key == "k2"
    assert "in no zone" in violation.detail


def test_a_strong_write_missing_in_one_zone_is_unreplicated(h: Hist) -> None:
    h.write("k1", 1, OpStatus.OK, 0.0, 0.1)
    final = everywhere(k1=1)
    del final["c"]["k1"]
    result = check_history(h.ops, final)
    assert result.lost("strong") == 0
    assert [v.kind for v in result.violations] == ["unreplicated-write"]
    assert "missing in c" in result.violations[0].detail


def test_async_losses_are_counted_not_violations(h: Hist) -> None:
    h.write("x1", 1, OpStatus.OK, 0.0, 0.1, consistency="async")
    h.write("x2", 1, OpStatus.OK, 0.0, 0.1, consistency="async")
    final = everywhere(x1=1)
    final["a"]["x2"] = 1  # replicated to one zone only
    result = check_history(h.ops, final)
    assert result.valid
    assert result.classes["async"].lost == 0 and result.classes["async"].unreplicated == 1
    result = check_history(h.ops, everywhere(x1=1))
    assert result.valid and result.lost("async") == 1  # the drill judges it against a budget


def test_a_later_value_keeps_an_earlier_write_present(h: Hist) -> None:
    h.write("r", 1, OpStatus.OK, 0.0, 0.1)
    h.write("r", 2, OpStatus.OK, 0.2, 0.3)
    assert check_history(h.ops, everywhere(r=2)).valid


def test_a_stale_read_after_an_acknowledged_write(h: Hist) -> None:
    h.write("r", 1, OpStatus.OK, 0.0, 0.1)
    h.write("r", 2, OpStatus.OK, 0.2, 0.3)
    h.read("r", 1, 0.4, 0.5, zone="c")  # invoked after 2 was acknowledged
    result = check_history(h.ops, everywhere(r=2))
    [violation] = result.violations
    assert violation.kind == "stale-read"
    assert "after a write of 2 was acknowledged" in violation.detail


def test_a_read_that_goes_back_in_time_after_another_read(h: Hist) -> None:
    h.write("r", 1, OpStatus.OK, 0.0, 0.1)
    h.write("r", 2, OpStatus.UNKNOWN, 0.2, 2.0)  # a timeout: it may have happened
    h.read("r", 2, 0.3, 0.4, zone="a")  # ... and it did
    h.read("r", 1, 0.5, 0.6, zone="b")  # so this read went back in time
    result = check_history(h.ops, everywhere(r=2))
    assert [v.kind for v in result.violations] == ["stale-read"]
    assert "less than 2 read at a" in result.violations[0].detail


def test_unknown_writes_are_treated_as_either(h: Hist) -> None:
    h.write("k1", 1, OpStatus.UNKNOWN, 0.0, 2.0)  # never took effect: absent is fine
    h.write("k2", 1, OpStatus.UNKNOWN, 0.0, 2.0)  # took effect: present is fine too
    h.write("r", 1, OpStatus.OK, 0.0, 0.1)
    h.write("r", 2, OpStatus.UNKNOWN, 0.2, 2.2)
    h.read("r", 2, 0.3, 0.4)  # reading an unknown write's value is legal
    h.read("r", 2, 0.5, 0.6)
    h.write("r", 3, OpStatus.UNKNOWN, 0.7, 2.7)
    h.read("r", 2, 0.8, 0.9)  # and so is not seeing a later unknown write
    result = check_history(h.ops, everywhere(k2=1, r=2))
    assert result.valid, result.violations
    strong = result.classes["strong"]
    assert strong.unknown == 4 and strong.unknown_present == 2
    assert strong.lost == 0 and strong.acknowledged == 1


def test_an_unknown_write_may_take_effect_late(h: Hist) -> None:
    """A write that timed out can still arrive (say, once a network heals) and overwrite newer
    values: legal for an indeterminate operation, never for an acknowledged one."""
    h.write("r", 1, OpStatus.UNKNOWN, 0.0, 2.0)
    h.write("r", 2, OpStatus.OK, 2.0, 2.1)
    h.read("r", 1, 5.0, 5.1)  # the late write of 1 landed after 2
    h.write("r", 3, OpStatus.OK, 5.2, 5.3)
    h.read("r", 3, 5.4, 5.5)
    assert check_history(h.ops, everywhere(r=3)).valid
    h.read("r", 2, 5.6, 5.7)  # but 2 after 3 was acknowledged is stale
    assert [v.kind for v in check_history(h.ops, everywhere(r=3)).violations] == ["stale-read"]


def test_a_failed_write_that_shows_up_is_a_violation(h: Hist) -> None:
    h.write("k1", 1, OpStatus.FAIL, 0.0, 0.1)
    h.write("r", 1, OpStatus.OK, 0.0, 0.1)
    h.write("r", 2, OpStatus.FAIL, 0.2, 0.3)
    h.read("r", 2, 0.4, 0.5)
    result = check_history(h.ops, everywhere(k1=1, r=1))
    kinds = sorted(v.kind for v in result.violations)
    assert kinds == ["failed-write-visible", "failed-write-visible"]
    assert result.classes["strong"].failed == 2


def test_a_read_of_a_value_never_written_is_a_phantom(h: Hist) -> None:
    h.write("r", 1, OpStatus.OK, 0.0, 0.1)
    h.read("r", 7, 0.2, 0.3)
    result = check_history(h.ops, everywhere(r=1))
    assert [v.kind for v in result.violations] == ["phantom-read"]


def test_operations_still_in_flight_are_ignored(h: Hist) -> None:
    h.history.invoke("w", "write", "k9", "strong", "a", 0.0, 1)  # never completed
    assert check_history(h.ops, everywhere()).valid


def test_history_round_trips_through_json(h: Hist) -> None:
    op = h.write("k1", 1, OpStatus.UNKNOWN, 0.0, 1.0)
    again = Op.from_json(op.to_json())
    assert again == op and again.status is OpStatus.UNKNOWN
    assert h.history.counts() == {"write/strong": {"ok": 0, "fail": 0, "unknown": 1}}
