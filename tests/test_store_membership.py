"""The controllers keep the zone stores' leases and 2PC membership (issues 3 and 4), on a real
three-zone stack: zones 127.0.230-232.0/24, LB 127.0.0.230 (ports 18230 / 18670).

What is checked: every store is leased and a member after start; when a zone's store dies,
strong writes keep succeeding (they wait out the lease period on other zones) and the survivors
drop it once its lease has surely lapsed; a key revoked while it is down is refused in that
zone as soon as it is back (it gets no lease before it has caught up); with every controller
frozen no lease is renewed, so no store serves strong operations, while chats keep working.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from crosszone.runtime import LocalStack
from crosszone.tools.membership import statuses, wait_in_service, wait_out_of_service
from datautil import MODEL, admin, client, create_key, zones
from stackutil import local_topology, start_stack, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LocalStack:
    topo = local_topology(230, http_port=18230, https_port=18670,
                          conversations={"consistency": "sync"})
    return start_stack(request, tmp_path_factory.mktemp("membership"), topo)


def _status(stack: LocalStack) -> dict[str, object]:
    leader = wait_until(lambda: next(
        (doc for z in zones(stack) for doc in [_control(stack, z)]
         if doc is not None and doc.get("leader")), None), what="an acting leader")
    assert isinstance(leader, dict)
    return leader


def _control(stack: LocalStack, zone: str) -> dict[str, object] | None:
    node = stack.node(f"{zone}/controller")
    try:
        doc: dict[str, object] = httpx.get(f"{node.url}/control/status", timeout=2).json()
    except httpx.HTTPError:
        return None
    return doc


def test_after_start_every_store_is_a_leased_member(stack: LocalStack) -> None:
    asyncio.run(wait_in_service(stack.topology, timeout=20))
    seen = asyncio.run(statuses(stack.topology))
    terms = {s.lease for s in seen.values() if s is not None}
    assert len(terms) == 1 and None not in terms, seen  # one leader's term everywhere
    stores = _status(stack)["stores"]
    assert isinstance(stores, dict) and set(stores["leased"]) == set(zones(stack))


def test_store_death_costs_no_strong_write_and_rejoin_waits_for_catch_up(
        stack: LocalStack) -> None:
    first, second, _ = zones(stack)
    asyncio.run(wait_in_service(stack.topology, timeout=20))
    doomed = create_key(stack, "revoked-while-away")
    kept = create_key(stack, "kept")
    chat = client(stack, doomed["key"], first)
    chat.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    stack.hold(zone=first, component="store", signal="KILL")
    killed = time.monotonic()
    try:
        # a strong write right away waits until the survivors run 2PC without the dead store
        revoked = admin(stack, "DELETE", f"/admin/keys/{doomed['id']}")
        assert revoked.status_code == 200, revoked.text
        took = time.monotonic() - killed
        out = asyncio.run(wait_out_of_service(stack.topology, first, timeout=10))
        assert out < 10
        assert took < 8, f"the revocation waited {took:.1f}s for the membership change"
        created = admin(stack, "POST", "/admin/keys", json={"name": "during"}, zone=second)
        assert created.status_code == 200, created.text
        seen = asyncio.run(statuses(stack.topology))
        assert seen[first] is None
        for z in zones(stack)[1:]:
            found = seen[z]
            assert found is not None and first not in found.zones and found.lease is not None
    finally:
        stack.release(zone=first, component="store")
    # back: no lease (so no strong read, no key check against stale data) until caught up
    asyncio.run(wait_in_service(stack.topology, timeout=30))
    refused = client(stack, doomed["key"], first)
    with pytest.raises(Exception) as caught:
        refused.chat.completions.create(model=MODEL,
                                        messages=[{"role": "user", "content": "hi"}])
    assert getattr(caught.value, "status_code", None) == 401, caught.value
    ok = client(stack, kept["key"], first).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "still here?"}])
    assert ok.choices[0].message.content
    listed = admin(stack, "GET", "/admin/keys", zone=first).json()["data"]
    assert {"kept", "during"} <= {k["name"] for k in listed}


def test_without_a_leader_no_store_keeps_its_lease_but_chats_go_on(stack: LocalStack) -> None:
    """No controller majority: strong operations are refused as such (409 "fenced", what the
    stores that answer say), also while another zone's store is down -- not a 503 "cannot
    connect" that the LB would retry and the client would take for an outage."""
    asyncio.run(wait_in_service(stack.topology, timeout=20))
    key = create_key(stack, "frozen-control")
    *down, alive = zones(stack)
    stack.hold(component="controller", signal="STOP")
    for zone in down:
        stack.hold(zone=zone, component="store", signal="KILL")
    try:
        def lapsed() -> bool:
            return all(s is None or s.lease is None
                       for s in asyncio.run(statuses(stack.topology)).values())
        wait_until(lapsed, timeout=5, what="every store lease lapsed")
        answer = client(stack, key["key"]).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "anyone?"}])
        assert answer.choices[0].message.content  # keys are read as they stand
        for zone in (None, alive, down[0]):  # through the LB, and at single gateways
            started = time.monotonic()
            refused = admin(stack, "POST", "/admin/keys", json={"name": "no-quorum"}, zone=zone)
            assert refused.status_code == 409, refused.text
            assert refused.json()["error"]["code"] == "fenced", refused.text
            assert "holds no lease" in refused.json()["error"]["message"]
            assert time.monotonic() - started < 15
        turn = httpx.post(stack.lb_url() + "/responses", timeout=30,
                          headers={"Authorization": f"Bearer {key['key']}"},
                          json={"model": MODEL, "input": "remember me"})
        assert turn.status_code == 409 and turn.json()["error"]["code"] == "fenced", turn.text
    finally:
        stack.release(component="controller")
        for zone in down:
            stack.release(zone=zone, component="store")
    stack.wait_healthy(timeout=30)
    asyncio.run(wait_in_service(stack.topology, timeout=20))
    assert admin(stack, "POST", "/admin/keys", json={"name": "quorum-back"}).status_code == 200
