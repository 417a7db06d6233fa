"""The control plane in a real local stack (issue 3): zone kill and freeze move the LB and DNS,
failover events are recorded, the leader's zone can die, fencing refuses a deposed leader, and the
guardrails keep the last zone serving."""

from __future__ import annotations

import time
from typing import Any

import dns.resolver
import httpx
import pytest

from crosszone.config.placement import Placement
from crosszone.runtime import LocalStack
from stackutil import local_topology, start_stack, wait_until

pytestmark = pytest.mark.integration

FIRST = 170  # zones on 127.0.170-172.0/24, LB on 127.0.0.170
ZONES = ("us-west-2a", "us-west-2b", "us-west-2c")


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LocalStack:
    topo = local_topology(FIRST, http_port=18170, https_port=18610, workers=1, decode_ms=1.0,
                          control={"failover": {"recovery_stable_seconds": 0.5,
                                                "failback_delay_seconds": 0.5,
                                                # every test fails and heals a zone: that is
                                                # not flapping here (the unit tests cover it)
                                                "flap_threshold": 50}})
    return start_stack(request, tmp_path_factory.mktemp("control"), topo)


def controller_status(stack: LocalStack, zone: str) -> dict[str, Any] | None:
    node = Placement(stack.topology).controller(zone)
    try:
        r = httpx.get(f"{node.url}/control/status", timeout=1.0)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def leader(stack: LocalStack) -> tuple[str, int] | None:
    """(zone, term) of the controller acting as leader, if exactly one does."""
    acting = [(z, s["term"]) for z in ZONES
              if (s := controller_status(stack, z)) and s["leader"] and s["term"] is not None]
    return acting[0] if len(acting) == 1 else None


def lb_zones(stack: LocalStack) -> dict[str, dict[str, Any]]:
    lb = stack.topology.load_balancer
    zones: dict[str, dict[str, Any]] = httpx.get(
        f"http://{lb.address}:{stack.lb_url().split(':')[2].split('/')[0]}/lb/status",
        timeout=2.0).json()["zones"]
    return zones


def dns_answer(stack: LocalStack, via: str) -> set[str]:
    host, port = Placement(stack.topology).dns_address(via)
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = [host], port, 2.0
    name = stack.topology.control.dns.name
    return {a.to_text() for a in resolver.resolve(name, "A", tcp=False)}


def events(stack: LocalStack, zone: str) -> list[dict[str, Any]]:
    node = Placement(stack.topology).controller(zone)
    result: list[dict[str, Any]] = httpx.get(f"{node.url}/control/events",
                                             timeout=2.0).json()["events"]
    return result


def gateway_ip(stack: LocalStack, zone: str) -> str:
    return Placement(stack.topology).gateway(zone).host


def settle(stack: LocalStack) -> None:
    stack.wait_healthy(timeout=30)
    wait_until(lambda: leader(stack), timeout=10, what="one acting leader")
    wait_until(lambda: all(z["weight"] > 0 for z in lb_zones(stack).values()), timeout=15,
               what="every zone back in the LB")


def test_one_leader_and_dns_answers_every_zone(stack: LocalStack) -> None:
    settle(stack)
    assert dns_answer(stack, "us-west-2b") == {gateway_ip(stack, z) for z in ZONES}


def test_zone_kill_moves_lb_and_dns_and_records_an_event(stack: LocalStack) -> None:
    settle(stack)
    victim = next(z for z in ZONES if z != leader(stack)[0])  # type: ignore[index]
    t0 = time.monotonic()
    stack.hold(zone=victim, signal="KILL")
    try:
        wait_until(lambda: lb_zones(stack)[victim]["weight"] == 0, timeout=5,
                   what="the controller to drain the dead zone at the LB")
        shifted = time.monotonic() - t0
        survivor = next(z for z in ZONES if z != victim)
        wait_until(lambda: gateway_ip(stack, victim) not in dns_answer(stack, survivor),
                   timeout=5, what="DNS to drop the dead zone")
        recorded = [e for e in events(stack, survivor) if e["from_zone"] == victim]
        assert recorded and recorded[-1]["success"]
        assert recorded[-1]["detection_delay_ms"] > 0
        shifts = controller_status(stack, survivor)["shifts"]  # type: ignore[index]
        assert any(s["zone"] == victim and s["kind"] == "autoshift" for s in shifts), shifts
        assert shifted < 5
    finally:
        stack.release(zone=victim)
    settle(stack)


def test_frozen_zone_is_routed_around_within_the_detection_time(stack: LocalStack) -> None:
    settle(stack)
    victim = next(z for z in ZONES if z != leader(stack)[0])  # type: ignore[index]
    hc = stack.topology.load_balancer.health_check
    t0 = time.monotonic()
    stack.hold(zone=victim, signal="STOP")  # sockets accept, nothing answers
    try:
        wait_until(lambda: not lb_zones(stack)[victim]["available"], timeout=10,
                   what="the LB to stop using the frozen zone")
        detected = time.monotonic() - t0
        # Detection is computed from the health check, plus one probe interval of slack.
        assert detected < hc.detection_seconds() + hc.interval_seconds + 1.0, detected
    finally:
        stack.release(zone=victim)
    settle(stack)


def test_leader_zone_kill_yields_a_new_leader_and_fencing_refuses_the_old(
        stack: LocalStack) -> None:
    settle(stack)
    old = leader(stack)
    assert old is not None
    old_zone, old_term = old
    t0 = time.monotonic()
    stack.hold(zone=old_zone, signal="KILL")
    try:
        new = wait_until(lambda: (lead := leader(stack)) and lead[0] != old_zone and lead,
                         timeout=5, what="a new acting leader")
        took = time.monotonic() - t0
        assert new[1] > old_term
        assert took < 3.0, f"new acting leader after {took:.2f}s"
        # The LB has seen the new term: a push with the old leader's token is refused.
        wait_until(lambda: lb_zones(stack)[old_zone]["weight"] == 0, timeout=5,
                   what="the new leader to drain the dead zone")
        lb = stack.topology.load_balancer
        port = stack.lb_url().split(":")[2].split("/")[0]
        stale = httpx.put(f"http://{lb.address}:{port}/lb/weights",
                          json={"weights": {z: 1.0 for z in ZONES}},
                          headers={"X-Crosszone-Fencing-Token": str(old_term),
                                   "Authorization": f"Bearer {stack.admin_token}"}, timeout=2)
        assert stale.status_code == 409, stale.text
        assert lb_zones(stack)[old_zone]["weight"] == 0
    finally:
        stack.release(zone=old_zone)
    settle(stack)


def test_guardrails_keep_the_last_zone_and_fail_open(stack: LocalStack) -> None:
    settle(stack)
    lead = leader(stack)
    assert lead is not None
    others = [z for z in ZONES if z != lead[0]]
    for zone in others:
        stack.hold(zone=zone, component="gateway", signal="KILL")
    try:
        wait_until(lambda: lb_zones(stack)[lead[0]]["weight"] > 0 and all(
            lb_zones(stack)[z]["weight"] == 0 for z in others), timeout=8,
            what="all traffic on the last healthy zone")
        client = httpx.post(stack.lb_url() + "/chat/completions", timeout=10,
                            headers={"Authorization": f"Bearer {stack.api_key}"},
                            json={"model": "deepseek-chat",
                                  "messages": [{"role": "user", "content": "still there?"}]})
        assert client.status_code == 200
        # The last healthy zone's gateway goes too: nothing is healthy, the controller fails
        # open and raises the alert instead of draining everything.
        stack.hold(zone=lead[0], component="gateway", signal="KILL")
        status = wait_until(
            lambda: (s := controller_status(stack, lead[0])) and s["routing"]["fail_open"] and s,
            timeout=8, what="the controller to fail open")
        assert "no healthy zones" in status["alert"]
        assert all(z["weight"] > 0 for z in lb_zones(stack).values())
    finally:
        for zone in ZONES:
            stack.release(zone=zone, component="gateway")
    settle(stack)
