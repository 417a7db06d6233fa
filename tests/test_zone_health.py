"""Zone health roll-up from node probes, passive ejections, and gray-failure outliers."""

from __future__ import annotations

from crosszone.config.placement import Node
from crosszone.config.topology import HealthCheck
from crosszone.control.grayfailure import ZoneStats, find_outliers
from crosszone.control.health import HealthChecker
from crosszone.control.settings import GrayFailureSettings

CHECK = HealthCheck(intervalSeconds=0.5, timeoutSeconds=0.25, healthyThresholdCount=2,
                    unhealthyThresholdCount=2)
GRAY = GrayFailureSettings(window_seconds=10, min_samples=10)


def nodes() -> list[Node]:
    out = []
    for z, net in (("a", "127.0.109"), ("b", "127.0.110"), ("c", "127.0.111")):
        out.append(Node(z, "gateway", 0, f"{net}.10", 8080))
        out += [Node(z, "worker", i, f"{net}.{20 + i}", 9000) for i in (1, 2)]
    return out


def checker() -> HealthChecker:
    return HealthChecker(nodes(), CHECK, GRAY, min_healthy_fraction=0.5, clock=lambda: 100.0)


def test_thresholds_apply_in_both_directions() -> None:
    hc = checker()
    hc.record_probe("a/gateway", False, None, "refused", 10.0)
    assert hc.snapshot(10.0)["a"].status == "healthy"  # one failure is not enough
    hc.record_probe("a/gateway", False, None, "refused", 10.5)
    a = hc.snapshot(11.0)["a"]
    assert a.status == "unhealthy" and a.failing_since == 10.0
    assert a.reason == "gateway a/gateway down (refused)"
    hc.record_probe("a/gateway", True, 1.0, "", 11.0)
    assert hc.snapshot(11.0)["a"].status == "unhealthy"  # one success is not enough either
    hc.record_probe("a/gateway", True, 1.0, "", 11.5)
    assert hc.snapshot(11.5)["a"].status == "healthy"


def test_zone_rolls_up_from_the_healthy_fraction() -> None:
    hc = checker()
    for name in ("b/worker-1", "b/worker-2"):
        for t in (1.0, 1.5):
            hc.record_probe(name, False, None, "timeout", t)
    b = hc.snapshot(2.0)["b"]
    assert b.status == "unhealthy" and b.reason == "1/3 nodes healthy"
    assert b.healthy_fraction == 1 / 3


def test_passive_ejection_is_immediate() -> None:
    hc = checker()
    assert hc.eject("c/gateway", "5 consecutive 5xx")
    assert hc.snapshot()["c"].status == "unhealthy"
    assert not hc.eject("nowhere/gateway", "?")


def test_gray_failure_is_relative_to_the_other_zones() -> None:
    ok = ZoneStats(requests=100, errors=1, latency_ms=20, latency_samples=50)
    sick = ZoneStats(requests=100, errors=30, latency_ms=22, latency_samples=50)
    slow = ZoneStats(requests=100, errors=1, latency_ms=400, latency_samples=50)
    assert find_outliers({"a": ok, "b": sick, "c": ok}, GRAY) == {
        "b": "error rate 30% vs 1% elsewhere"}
    assert find_outliers({"a": ok, "b": ok, "c": slow}, GRAY) == {
        "c": "latency 400 ms vs 20 ms elsewhere"}
    # Everyone equally bad is not a zonal problem; too few samples are not judged.
    assert find_outliers({"a": sick, "b": sick, "c": sick}, GRAY) == {}
    assert find_outliers({"a": ok, "b": ZoneStats(5, 5), "c": ok}, GRAY) == {}


def test_passive_reports_make_a_zone_degraded_while_probes_pass() -> None:
    hc = checker()
    for z in ("a", "b", "c"):
        hc.record_passive(z, 200, 60 if z == "b" else 2, 30.0)
    observed = hc.snapshot()
    assert observed["b"].status == "degraded" and "error rate 30%" in observed["b"].reason
    assert observed["a"].status == observed["c"].status == "healthy"
