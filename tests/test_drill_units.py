"""Drill pieces without a stack: scenario files (errors name path and value, short variants),
the RTO computation, the split-brain checks, and ``crosszone drill list``."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from crosszone.drills.cli import drill_app, resolve_file
from crosszone.drills.judge import split_refusals
from crosszone.drills.rto import Episode, Span, baseline, episodes, recovery, thresholds
from crosszone.drills.scenario import load_scenario, parse_scenario
from crosszone.drills.splitbrain import LeaderClaim, check_split_brain
from crosszone.errors import ScenarioError
from crosszone.workload.record import Outcome, RequestRecord

LIBRARY = Path(__file__).resolve().parent.parent / "drills"
SEED = {"seed-network-loss": ("network-loss", "us-west-2a", 300.0),
        "seed-cpu-fullload": ("cpu-fullload", "us-west-2b", 180.0)}


def _doc(**extra: object) -> dict[str, object]:
    doc: dict[str, object] = {"name": "t", "faults": [
        {"kind": "zone-down", "zone": "us-west-2a", "at": 5, "duration": 10}]}
    doc.update(extra)
    return doc


def test_every_library_scenario_loads_full_and_short() -> None:
    files = sorted(LIBRARY.glob("*.yaml"))
    assert {f.stem for f in files} >= {
        "seed-network-loss", "seed-cpu-fullload", "zone-killed", "leader-zone-killed",
        "minority-partition", "flapping-zone", "rolling-restart", "store-down",
        "two-zones-down"}
    for path in files:
        full, short = load_scenario(path), load_scenario(path, short=True)
        assert full.name == path.stem == short.name
        assert short.duration < 90 < full.duration or short.duration < full.duration


@pytest.mark.parametrize("name", sorted(SEED))
def test_seed_experiments_are_exact(name: str) -> None:
    kind, zone, seconds = SEED[name]
    [fault] = load_scenario(LIBRARY / f"{name}.yaml").faults
    assert (fault.kind, fault.zone, fault.duration) == (kind, zone, seconds)
    if kind == "network-loss":
        assert fault.percent == 100
    else:
        assert (fault.workers, fault.cpu_percent) == (4, 100)
    [short] = load_scenario(LIBRARY / f"{name}.yaml", short=True).faults
    assert (short.kind, short.zone, short.percent, short.workers) == \
        (fault.kind, fault.zone, fault.percent, fault.workers)


def test_errors_name_every_path_and_value() -> None:
    doc = _doc(faults=[{"kind": "network-loss", "at": 0.5, "duration": -1},
                       {"kind": "explode", "at": 3, "duration": 1},
                       {"kind": "process-kill", "at": 3, "duration": 1, "component": "gpu",
                        "zone": "a"}],
               slo={"rto_seconds": "soon"})
    with pytest.raises(ScenarioError) as info:
        parse_scenario(doc, "drill.yaml")
    text = str(info.value)
    assert text.startswith("drill.yaml: ") and "in the scenario" in text
    assert "faults[0].duration" in text and "(got -1)" in text
    assert "faults[1].kind" in text and "'explode'" in text
    assert "slo.rto_seconds" in text and "'soon'" in text
    with pytest.raises(ScenarioError) as info:
        parse_scenario(_doc(faults=[{"kind": "network-loss", "at": 0.5, "duration": 1},
                                    {"kind": "process-kill", "at": 3, "duration": 1,
                                     "component": "gpu", "zone": "a"}]), "d.yaml")
    text = str(info.value)
    assert "faults[0].zone: network-loss needs a zone (got None)" in text
    assert "faults[0].at: the first fault needs at least 1 s of baseline" in text
    assert "faults[1].component" in text and "'gpu'" in text


def test_short_overlay_replaces_lists_and_merges_mappings() -> None:
    doc = _doc(slo={"rto_seconds": 5, "failed_requests": 0},
               short={"faults": [{"kind": "zone-down", "zone": "b", "at": 2, "duration": 3}],
                      "slo": {"rto_seconds": 9}})
    full, short = parse_scenario(doc), parse_scenario(doc, short=True)
    assert full.faults[0].zone == "us-west-2a" and full.slo.rto_seconds == 5
    assert [f.zone for f in short.faults] == ["b"] and short.slo.rto_seconds == 9
    assert short.duration == 2 + 3 + short.workload.cooldown_seconds
    with pytest.raises(ScenarioError, match="short: must be a mapping"):
        parse_scenario(_doc(short=[1]))


def test_unreadable_and_invalid_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match="invalid YAML"):
        load_scenario(bad)


def _rec(start: float, end: float, ok: bool = True, kind: str = "chat") -> RequestRecord:
    return RequestRecord(start, end, False, Outcome.OK if ok else Outcome.FAILED, "z",
                         error=None if ok else "boom", kind=kind)


def _steady(t0: float, t1: float, ms: float = 20.0, every: float = 0.05) -> list[RequestRecord]:
    out, t = [], t0
    while t < t1:
        out.append(_rec(t, t + ms / 1000))
        t += every
    return out


def test_rto_is_fault_to_full_service_and_failback_is_separate() -> None:
    records = _steady(0, 30)
    records += [_rec(10.2, 10.5, ok=False), _rec(11.1, 11.3, ok=False)]  # routed around by 12
    records += [_rec(21.0, 21.4 + i * 0.01) for i in range(10)]  # slow after the heal at 20.5
    p95, rate = baseline(records, 10.0)
    assert p95["chat"] == pytest.approx(20.0, abs=1) and rate > 10
    limits = thresholds(p95, 3.0, 100.0)
    assert limits["chat"] == pytest.approx(120.0, abs=2)
    [episode] = episodes([Span("kill", 10.0, 20.5)], 30.0)
    result = recovery(records, episode, limits, 1.0, rate)
    assert result.during_fault and result.rto == pytest.approx(2.0)
    assert result.failback == pytest.approx(1.5)  # the bin [21, 22) ends 1.5 s after the heal


def test_a_bin_straddling_the_heal_counts_as_failback() -> None:
    records = _steady(0, 20)
    records += [_rec(10.9, 11.6 + i * 0.01) for i in range(10)]  # slow right after the heal
    p95, rate = baseline(records, 5.0)
    [episode] = episodes([Span("partition", 5.0, 10.8)], 20.0)
    result = recovery(records, episode, thresholds(p95, 3.0, 100.0), 1.0, rate)
    assert result.during_fault and result.rto == 0.0
    assert result.failback == pytest.approx(1.2)  # bin [11, 12) ends 1.2 s after the heal


def test_rto_runs_past_the_heal_when_service_only_came_back_then() -> None:
    records = _steady(0, 10) + _steady(16, 30)  # nothing completes from 10 to 16 (heal at 15)
    p95, rate = baseline(records, 10.0)
    [episode] = episodes([Span("freeze", 10.0, 15.0)], 30.0)
    result = recovery(records, episode, thresholds(p95, 3.0, 100.0), 1.0, rate)
    assert not result.during_fault and result.rto == pytest.approx(6.0)
    assert result.failback is None
    still = recovery(_steady(0, 10), episode, thresholds(p95, 3.0, 100.0), 1.0, rate)
    assert still.rto is None  # never back within the window


def test_overlapping_faults_form_one_episode() -> None:
    merged = episodes([Span("a", 5, 10), Span("b", 5, 12), Span("c", 20, 25)], 40)
    assert [(e.start, e.end, e.window_end, e.labels) for e in merged] == [
        (5, 12, 20, ["a", "b"]), (20, 25, 40, ["c"])]
    assert isinstance(merged[0], Episode)


def _claim(node: str, term: int, sent: float, active: str | None = None) -> LeaderClaim:
    return LeaderClaim(node, node, term, sent, sent + 0.01, active)


def test_split_brain_checks() -> None:
    clean = [_claim("a", 1, 0.0), _claim("a", 1, 1.0), _claim("b", 2, 3.0), _claim("b", 2, 4.0)]
    assert check_split_brain(clean, active_backup=True) == []
    same_term = [*clean, _claim("c", 2, 5.0)]
    assert check_split_brain(same_term, False) == ["two leaders in term 2: b, c"]
    deposed = [*clean, _claim("a", 1, 5.0)]
    [problem] = check_split_brain(deposed, False)
    assert problem.startswith("deposed leader a (term 1) still acting at 5.00s after b")
    two_active = [_claim("a", 1, 0.0, "z1"), LeaderClaim("b", "b", 2, 0.005, 0.02, "z2")]
    assert any("two active zones" in p for p in check_split_brain(two_active, True))
    assert not any("two active zones" in p for p in check_split_brain(two_active, False))


def test_drill_list_and_file_resolution(tmp_path: Path) -> None:
    answer = CliRunner().invoke(drill_app, ["list", str(LIBRARY)])
    assert answer.exit_code == 0, answer.output
    assert "seed-network-loss" in answer.output and "two-zones-down" in answer.output
    assert resolve_file("zone-killed", LIBRARY) == LIBRARY / "zone-killed.yaml"
    (tmp_path / "broken.yaml").write_text("name: Bad Name\nfaults: []\n")
    answer = CliRunner().invoke(drill_app, ["list", str(tmp_path)])
    assert answer.exit_code == 2 and "invalid" in answer.output
    answer = CliRunner().invoke(drill_app, ["run", str(tmp_path / "broken.yaml")])
    assert answer.exit_code == 2
    assert "faults" in answer.output + str(answer.stderr if answer.stderr_bytes else "")


def test_designed_refusals_are_reported_apart_and_nothing_else_is_excused() -> None:
    records = [_rec(0, 1), _rec(1, 2, ok=False), _rec(2, 3, ok=False, kind="key-create")]
    records[2] = RequestRecord(2, 3, False, Outcome.FAILED, "z", kind="key-create",
                               error="ConflictError: Error code: 409 - zone c holds no lease")
    counted, refused = split_refusals(records, {"holds no lease": "no quorum"})
    assert [r.error for r in counted] == ["boom"] and refused == {"holds no lease": 1}
    counted, refused = split_refusals(records, {})
    assert len(counted) == 2 and not refused
    doc = load_scenario(LIBRARY / "two-zones-down.yaml")
    assert doc.slo.designed_refusals == {
        "holds no lease": "strong write without a controller majority (CP by design)"}


def test_a_latency_blip_long_after_recovery_is_reported_not_added_to_the_rto() -> None:
    records = _steady(0, 100)
    records += [_rec(10.2, 10.5, ok=False)]  # the fault at 10: routed around by 11
    records += [_rec(60.1, 60.6 + i * 0.01) for i in range(10)]  # one slow second at 60
    p95, rate = baseline(records, 10.0)
    [episode] = episodes([Span("loss", 10.0, 90.0)], 100.0)
    result = recovery(records, episode, thresholds(p95, 3.0, 100.0), 1.0, rate, 10.0)
    assert result.during_fault and result.rto == pytest.approx(1.0)
    assert [at for at, _ in result.blips] == [60.0]
    # flapping: never stable for 10 s before the heal, so the RTO runs to the last bad bin
    flaps = _steady(0, 40) + [_rec(10.0 + 4 * i + 0.1, 10.0 + 4 * i + 0.3, ok=False)
                              for i in range(6)]
    p95, rate = baseline(flaps, 10.0)
    [episode] = episodes([Span("flap", 10.0, 36.0)], 40.0)
    result = recovery(flaps, episode, thresholds(p95, 3.0, 100.0), 1.0, rate, 10.0)
    assert result.rto == pytest.approx(21.0) and not result.blips
