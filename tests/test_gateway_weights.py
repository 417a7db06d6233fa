"""``PUT /gateway/weights``: the controller's routing reaches the gateways, fenced like the LB's,
and decides which other zones take a gateway's cross-zone fallback.

In-process gateway (tests/signalutil.py): zones on 127.0.203-205.0/24. The real stack: zones on
127.0.206-208.0/24, LB on 127.0.0.206 (ports 18206, 18646).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from crosszone.config.placement import Placement
from crosszone.control.fencing import FENCING_HEADER
from crosszone.runtime import LocalStack
from signalutil import ADMIN, GatewayRig
from stackutil import local_topology, start_stack, wait_until

A, B, C = "us-west-2a", "us-west-2b", "us-west-2c"
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
async def rig() -> AsyncIterator[GatewayRig]:
    rig = GatewayRig()
    try:
        yield await rig.start()
    finally:
        await rig.stop()


async def put(rig: GatewayRig, body: Any, token: int | str | None = None,
              auth: dict[str, str] = ADMIN_AUTH) -> tuple[int, dict[str, Any]]:
    assert rig.client is not None
    headers = dict(auth)
    if token is not None:
        headers[FENCING_HEADER] = str(token)
    resp = await rig.client.put(rig.url + "/gateway/weights", json=body, headers=headers)
    return resp.status, await resp.json()


async def test_put_weights_is_fenced_and_validated(rig: GatewayRig) -> None:
    assert rig.client is not None
    start = await (await rig.client.get(rig.url + "/gateway/weights")).json()
    assert start == {"zone": A, "weights": {A: 1.0, B: 1.0, C: 1.0},
                     "fallback": {B: 1.0, C: 1.0}, "updated_at": None}

    status, doc = await put(rig, {"weights": {B: 0}}, token=5, auth={})
    assert status == 401 and doc["error"]["code"] == "invalid_admin_token"
    status, doc = await put(rig, {"weights": {B: 0}}, token=5)
    assert status == 200 and doc["weights"] == {A: 1.0, B: 0.0, C: 1.0}
    assert doc["updated_at"] is not None
    assert {ep.weight for ep in rig.hop.pool.endpoints if ep.zone == B} == {0.0}

    # a deposed leader's older term is refused and changes nothing; the same term is admitted
    status, doc = await put(rig, {"weights": {B: 1, C: 0}}, token=4)
    assert status == 409 and doc["error"]["code"] == "stale_fencing_token"
    status, doc = await put(rig, {"weights": {C: 0.5}}, token=5)
    assert status == 200 and doc["weights"] == {A: 1.0, B: 0.0, C: 0.5}
    # an operator's manual PUT carries no token
    status, doc = await put(rig, {"weights": {C: 1}})
    assert status == 200 and doc["fallback"] == {B: 0.0, C: 1.0}

    for body, token, code in (({"weights": {"nowhere": 1}}, 6, "invalid_weights"),
                              ({"weights": {B: -1}}, 6, "invalid_weights"),
                              ({"zones": {}}, 6, "invalid_weights"),
                              ({"weights": {A: 0, C: 0}}, 6, "invalid_weights"),
                              ({"weights": {B: 1}}, "x", "invalid_fencing_token")):
        status, doc = await put(rig, body, token=token)
        assert status == 400 and doc["error"]["code"] == code, body
        assert doc["error"]["type"] == "invalid_request_error"
    final = await (await rig.client.get(rig.url + "/gateway/weights")).json()
    assert final["weights"] == {A: 1.0, B: 0.0, C: 1.0}


async def test_a_zone_with_weight_zero_gets_fallback_only_when_nothing_else_is_left(
        rig: GatewayRig) -> None:
    status, _ = await put(rig, {"weights": {A: 0, B: 0, C: 1}}, token=1)
    assert status == 200

    def served(responses: list[Any]) -> set[str]:
        assert all(r.status == 200 for r in responses)
        return {r.headers["x-crosszone-zone"] for r in responses}

    # its own workers stay the gateway's first choice whatever its own zone's weight
    assert served(await rig.chat(6)) == {A}
    for w in rig.workers.values():
        if w.name.startswith(A):
            await w.stop()
    assert served(await rig.chat(12)) == {C}  # fallback: weight 0 keeps B out
    assert sum(w.requests for name, w in rig.workers.items() if name.startswith(B)) == 0
    for w in rig.workers.values():
        if w.name.startswith(C):
            await w.stop()
    assert served(await rig.chat(6)) == {B}  # nothing else left: fail open


# -- the real stack --------------------------------------------------------------------------------

FIRST = 206


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LocalStack:
    topo = local_topology(FIRST, http_port=18206, https_port=18646, workers=1, decode_ms=1.0,
                          control={"failover": {"recovery_stable_seconds": 0.5,
                                                "failback_delay_seconds": 0.5,
                                                "flap_threshold": 50}})
    return start_stack(request, tmp_path_factory.mktemp("weights"), topo)


def controller(stack: LocalStack, zone: str) -> str:
    return Placement(stack.topology).controller(zone).url


def leader_term(stack: LocalStack) -> int | None:
    terms = []
    for zone in (A, B, C):
        try:
            s = httpx.get(controller(stack, zone) + "/control/status", timeout=1.0).json()
        except (httpx.HTTPError, ValueError):
            continue
        if s.get("leader") and s.get("term") is not None:
            terms.append(int(s["term"]))
    return terms[0] if len(terms) == 1 else None


def gateway_url(stack: LocalStack, zone: str) -> str:
    return Placement(stack.topology).gateway(zone).url


def gateway_weights(stack: LocalStack, zone: str) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(gateway_url(stack, zone) + "/gateway/weights",
                                    timeout=2.0).json()
    return doc


def lb_weights(stack: LocalStack) -> dict[str, float]:
    url = stack.lb_url().removesuffix("/v1")
    zones = httpx.get(f"{url}/lb/status", timeout=2.0).json()["zones"]
    return {z: float(v["weight"]) for z, v in zones.items()}


def cancel_shift(stack: LocalStack, zone: str) -> bool:
    try:
        r = httpx.delete(controller(stack, C) + f"/control/shifts/{zone}", timeout=5.0,
                         headers={"Authorization": f"Bearer {stack.admin_token}"})
    except httpx.HTTPError:
        return False
    return r.status_code in (200, 404)


def served_by(stack: LocalStack, zone: str, n: int) -> set[str]:
    """The zones whose workers served ``n`` requests sent straight to ``zone``'s gateway."""
    out = set()
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=15.0) as client:
        for _ in range(n):
            r = client.post(gateway_url(stack, zone) + "/v1/chat/completions", json=body,
                            headers=headers)
            assert r.status_code == 200, r.text
            out.add(r.headers["x-crosszone-zone"])
    return out


def test_the_leader_pushes_weights_to_every_gateway_which_keeps_them(stack: LocalStack) -> None:
    admin = {"Authorization": f"Bearer {stack.admin_token}"}
    term = wait_until(lambda: leader_term(stack), timeout=20, what="an acting leader")
    wait_until(lambda: all(gateway_weights(stack, z)["updated_at"] is not None
                           for z in (A, B, C)), timeout=15, what="weights at every gateway")
    wait_until(lambda: {z: gateway_weights(stack, z)["weights"] for z in (A, B, C)}
               == dict.fromkeys((A, B, C), lb_weights(stack)), timeout=15,
               what="the gateways' weights equal to the LB's")
    stale = httpx.put(gateway_url(stack, A) + "/gateway/weights", json={"weights": {A: 0}},
                      headers={**admin, FENCING_HEADER: str(term - 1)}, timeout=2.0)
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "stale_fencing_token"

    shift = httpx.post(controller(stack, C) + "/control/shifts", headers=admin, timeout=5.0,
                       json={"zone": B, "expires": "10m", "reason": "gateway weights test"})
    assert shift.status_code == 201, shift.text
    try:
        wait_until(lambda: gateway_weights(stack, A)["weights"][B] == 0
                   and lb_weights(stack)[B] == 0, timeout=10, what=f"{B} shifted everywhere")
        stack.hold(zone=A, component="worker")
        try:
            # gateway A has no worker of its own: its fallback avoids the shifted zone
            assert served_by(stack, A, 12) == {C}
            stack.hold(component="controller")
            try:
                time.sleep(1.5)  # no controller answers: the gateway keeps its last weights
                assert gateway_weights(stack, A)["weights"][B] == 0
                assert served_by(stack, A, 6) == {C}
            finally:
                stack.release(component="controller")
            wait_until(lambda: leader_term(stack), timeout=45, what="a leader again")
        finally:
            stack.release(zone=A, component="worker")
    finally:
        wait_until(lambda: cancel_shift(stack, B), timeout=15, what="the shift cancelled")
    stack.wait_healthy(timeout=30)
    wait_until(lambda: all(w > 0 for w in lb_weights(stack).values())
               and all(gateway_weights(stack, A)["weights"][z] > 0 for z in (A, B, C)),
               timeout=40, what="every zone back in service")
