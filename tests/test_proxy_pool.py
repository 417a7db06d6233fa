"""Selection policies of the upstream pool: least outstanding, tiers, weights, fail open."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from crosszone.dataplane.gateway.app import gateway_pool
from crosszone.dataplane.lb.app import lb_pool
from crosszone.dataplane.proxy.pool import (
    Endpoint,
    LeastOutstanding,
    UpstreamPool,
    WeightedLeastOutstanding,
)
from proxyfakes import make_topology


def eps(*specs: tuple[str, int]) -> list[Endpoint]:
    return [Endpoint(name, name.split("/")[0], f"http://127.0.112.{i + 21}:9",
                     priority=prio, healthy=True)
            for i, (name, prio) in enumerate(specs)]


def test_least_outstanding_picks_the_idlest() -> None:
    a, b, c = eps(("z/a", 0), ("z/b", 0), ("z/c", 0))
    pool = UpstreamPool([a, b, c], LeastOutstanding(random.Random(1)))
    a.outstanding, b.outstanding, c.outstanding = 3, 1, 2
    assert pool.pick() is b
    b.outstanding = 5
    assert pool.pick() is c


def test_least_outstanding_breaks_ties_at_random() -> None:
    endpoints = eps(("z/a", 0), ("z/b", 0), ("z/c", 0))
    pool = UpstreamPool(endpoints, LeastOutstanding(random.Random(7)))
    seen = Counter(pool.pick().name for _ in range(300))  # type: ignore[union-attr]
    assert set(seen) == {"z/a", "z/b", "z/c"}
    assert min(seen.values()) > 60


def test_unavailable_and_excluded_endpoints_are_skipped() -> None:
    a, b, c = eps(("z/a", 0), ("z/b", 0), ("z/c", 0))
    pool = UpstreamPool([a, b, c])
    a.healthy = False
    assert pool.eject(b, "boom") is True
    assert pool.eject(b, "again") is False
    assert pool.pick() is c
    assert pool.pick(exclude=[c]) is None
    assert b.ejections == 1 and b.last_error == "again"


def test_unknown_health_counts_as_available() -> None:
    a = Endpoint("z/a", "z", "http://127.0.112.21:9")
    assert a.healthy is None and a.available
    assert UpstreamPool([a]).pick() is a


def test_lower_tier_wins_and_next_tier_is_fallback() -> None:
    own1, own2, far = eps(("a/1", 0), ("a/2", 0), ("b/1", 1))
    pool = UpstreamPool([far, own1, own2])
    far.outstanding = 0
    own1.outstanding = own2.outstanding = 50
    assert pool.pick() in (own1, own2)
    own1.healthy = False
    assert pool.pick() is own2
    pool.eject(own2, "reset")
    assert pool.pick() is far
    # a retry inside one request moves on too
    own1.healthy, own2.ejected = True, False
    assert pool.pick(exclude=[own1, own2]) is far


def test_fail_open_tries_every_target_in_order() -> None:
    a, b, c = eps(("a", 0), ("b", 1), ("c", 2))
    pool = UpstreamPool([c, a, b], fail_open=True)
    for ep in (a, b, c):
        ep.healthy = False
    assert pool.pick() is a
    assert pool.pick(exclude=[a]) is b
    assert pool.pick(exclude=[a, b]) is c
    assert pool.pick(exclude=[a, b, c]) is None
    assert UpstreamPool([a, b, c], fail_open=False).pick() is None


def test_fail_open_prefers_the_endpoint_that_failed_the_fewest_checks_in_a_row() -> None:
    a, b, c = eps(("a", 0), ("b", 0), ("c", 0))  # one tier: zones of equal weight
    pool = UpstreamPool([a, b, c], fail_open=True)
    for ep, failures in ((a, 40), (b, 35), (c, 2)):  # a, b refused for a while; c just starved
        ep.healthy, ep.failures = False, failures
    assert [pool.pick(exclude=x) for x in ([], [c], [c, b])] == [c, b, a]


def test_weighted_split_follows_weights_when_idle() -> None:
    a, b, c = eps(("a", 0), ("b", 0), ("c", 0))
    a.set_weight(3)
    b.set_weight(1)
    c.set_weight(0)  # drained
    pool = UpstreamPool([a, b, c], WeightedLeastOutstanding())
    seen = Counter(pool.pick().name for _ in range(400))  # type: ignore[union-attr]
    assert seen == {"a": 300, "b": 100}
    # a drained zone still serves when nothing else can
    a.healthy = b.healthy = False
    assert pool.pick() is c


def test_weighted_favours_the_less_loaded() -> None:
    a, b = eps(("a", 0), ("b", 0))
    a.set_weight(2)
    b.set_weight(1)
    a.outstanding = 7  # effective weights 2/8 vs 1/1
    pool = UpstreamPool([a, b], WeightedLeastOutstanding())
    seen = Counter(pool.pick().name for _ in range(500))  # type: ignore[union-attr]
    assert seen["b"] == 400 and seen["a"] == 100


def test_equal_weights_are_strict_least_outstanding() -> None:
    a, b = eps(("a", 0), ("b", 0))
    a.outstanding = 1
    pool = UpstreamPool([a, b], WeightedLeastOutstanding())
    assert all(pool.pick() is b for _ in range(50))


@given(st.lists(st.integers(0, 20), min_size=1, max_size=8), st.integers(0, 2**31))
def test_pick_is_always_an_available_endpoint_of_the_lowest_tier(
        loads: list[int], seed: int) -> None:
    rng = random.Random(seed)
    endpoints = [Endpoint(f"e{i}", "z", "http://x", priority=rng.randint(0, 2),
                          healthy=rng.choice([True, False, None])) for i in range(len(loads))]
    for ep, load in zip(endpoints, loads, strict=True):
        ep.outstanding = load
    chosen = UpstreamPool(endpoints, LeastOutstanding(rng)).pick()
    available = [ep for ep in endpoints if ep.available]
    if not available:
        assert chosen is None
        return
    assert chosen is not None and chosen.available
    best_tier = min(ep.tier for ep in available)
    assert chosen.tier == best_tier
    assert chosen.outstanding == min(ep.outstanding for ep in available if ep.tier == best_tier)


def test_gateway_pool_prefers_its_own_zone() -> None:
    topology = make_topology(worker_port=9000)
    pool = gateway_pool(topology, "zb")
    # every slot up to max_size (4); the scale-out slots wait for a passing health check
    assert len(pool.endpoints) == 12 and not pool.fail_open
    assert len(pool.available()) == 6 and pool.get("zb/worker-1").healthy is None
    assert pool.get("zb/worker-3").healthy is False and not pool.get("za/worker-4").available
    tiers = {ep.name: ep.priority for ep in pool.endpoints}
    assert tiers["zb/worker-1"] == tiers["zb/worker-2"] == 0
    assert tiers["za/worker-1"] == tiers["zc/worker-2"] == 1
    assert pool.get("zb/worker-2").url == "http://127.0.113.22:9000"


def test_lb_pool_active_backup_and_active_active() -> None:
    backup = lb_pool(make_topology(worker_port=9000, gateway_port=8081))
    assert backup.fail_open
    assert [(ep.name, ep.priority) for ep in backup.in_order()] == [
        ("za", 0), ("zb", 1), ("zc", 2)]
    assert backup.get("zc").url == "http://127.0.114.10:8081"
    assert backup.pick() is backup.get("za")
    active = lb_pool(make_topology(worker_port=9000, mode="active-active",
                                   weights={"za": 2.0, "zb": 1.0}))
    assert {ep.name: (ep.priority, ep.weight) for ep in active.endpoints} == {
        "za": (0, 2.0), "zb": (0, 1.0), "zc": (0, 0.0)}
