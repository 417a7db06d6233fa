"""API keys, conversations (sync class) and the admin API on a real three-zone stack (issue 4).

Zones on 127.0.140-142.0/24, LB on 127.0.0.140:18140. The last test kills a zone.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from crosszone.runtime import LocalStack
from datautil import MODEL, admin, client, create_key, gateway_base, heal_zone, kill_zone, zones
from stackutil import local_topology, start_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LocalStack:
    topo = local_topology(140, http_port=18140, https_port=18580,
                          conversations={"consistency": "sync"})
    return start_stack(request, tmp_path_factory.mktemp("data"), topo)


def test_admin_api_needs_the_admin_token(stack: LocalStack) -> None:
    for token in ("wrong", stack.api_key):
        answer = admin(stack, "GET", "/admin/keys", token=token)
        assert answer.status_code == 401
        error = answer.json()["error"]
        assert error["code"] == "invalid_admin_token"
        assert error["type"] == "authentication_error"
    assert admin(stack, "GET", "/admin/usage", token="wrong").status_code == 401
    bare = httpx.post(gateway_base(stack, zones(stack)[0]) + "/admin/keys", json={})
    assert bare.status_code == 401 and bare.json()["error"]["code"] == "invalid_admin_token"


def test_key_works_in_every_zone_and_revocation_is_immediate(stack: LocalStack) -> None:
    created = create_key(stack, "alice")
    secret, key_id = created["key"], created["id"]
    assert secret.startswith("sk-cz-") and created["active"] is True
    for zone in zones(stack):
        answer = client(stack, secret, zone).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert answer.choices[0].message.content
    listed = admin(stack, "GET", "/admin/keys").json()["data"]
    mine = [k for k in listed if k["id"] == key_id]
    assert mine and mine[0]["name"] == "alice" and mine[0]["revoked"] is None
    assert secret not in str(listed) and "hash" not in mine[0]

    revoked = admin(stack, "DELETE", f"/admin/keys/{key_id}")
    assert revoked.status_code == 200 and revoked.json()["revoked"] is not None
    for zone in zones(stack):  # no wait: in effect everywhere when the DELETE returned
        with pytest.raises(openai.AuthenticationError) as info:
            client(stack, secret, zone).models.list()
        assert info.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        client(stack, secret).models.list()  # and through the LB
    client(stack, stack.api_key).models.list()  # the bootstrap key still works
    assert admin(stack, "DELETE", "/admin/keys/key_0000000000000000").status_code == 404


def test_unknown_response_is_404_json(stack: LocalStack) -> None:
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    answer = httpx.get(stack.lb_url() + "/responses/resp_nope", headers=headers)
    assert answer.status_code == 404
    assert answer.json()["error"]["type"] == "not_found_error"
    with pytest.raises(openai.NotFoundError):
        client(stack, stack.api_key).responses.create(
            model=MODEL, input="hi", previous_response_id="resp_nope")
    with pytest.raises(openai.NotFoundError):
        client(stack, stack.api_key).responses.retrieve("resp_nope")


def test_responses_stream_retrieve_delete(stack: LocalStack) -> None:
    api = client(stack, stack.api_key)
    events = list(api.responses.create(model=MODEL, input="tell me", instructions="be brief",
                                       stream=True, max_output_tokens=8))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in kinds and kinds[-1] in (
        "response.completed", "response.incomplete")
    final = events[-1].response  # type: ignore[union-attr]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and final.output_text == text
    assert final.usage is not None and final.usage.output_tokens > 0
    assert [e.sequence_number for e in events] == list(range(len(events)))

    got = api.responses.retrieve(final.id)
    assert got.output_text == text and got.status == final.status
    api.responses.delete(final.id)
    with pytest.raises(openai.NotFoundError):
        api.responses.retrieve(final.id)


def test_sync_conversation_continues_in_another_zone_after_a_kill(stack: LocalStack) -> None:
    first, second, third = zones(stack)
    start = client(stack, stack.api_key, first).responses.create(
        model=MODEL, input="my name is Ada", max_output_tokens=6)
    kill_zone(stack, first)  # right after the answer: sync class, nothing may be lost
    try:
        later = client(stack, stack.api_key, second)
        assert later.responses.retrieve(start.id).output_text == start.output_text
        follow = later.responses.create(model=MODEL, input="what is my name?",
                                        previous_response_id=start.id, max_output_tokens=6)
        assert start.usage is not None and follow.usage is not None
        # the history (first input and answer) was sent along with the new input
        assert follow.usage.input_tokens > start.usage.input_tokens + start.usage.output_tokens
        events = list(client(stack, stack.api_key, third).responses.create(
            model=MODEL, input="and again?", previous_response_id=follow.id, stream=True,
            max_output_tokens=6))
        assert events[-1].type in ("response.completed", "response.incomplete")
        through_lb = client(stack, stack.api_key).responses.create(
            model=MODEL, input="one more", previous_response_id=follow.id, max_output_tokens=4)
        assert through_lb.previous_response_id == follow.id
    finally:
        heal_zone(stack, first)
    back = client(stack, stack.api_key, first).responses.retrieve(follow.id)
    assert back.output_text == follow.output_text


def test_a_reused_client_request_id_is_still_billed_per_request(stack: LocalStack) -> None:
    """Usage is keyed by an id the LB mints, not by the client's x-request-id (which passes
    through for tracing): replaying one id must not make later requests free."""
    created = create_key(stack, "replayer")
    api = client(stack, created["key"])
    for _ in range(3):
        answer = api.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "again"}], max_tokens=4,
            extra_headers={"x-request-id": "same-id-every-time"})
        assert answer.headers["x-request-id"] == "same-id-every-time"
    totals = wait_usage(stack, created["id"], requests=3)
    assert totals["requests"] == 3


def wait_usage(stack: LocalStack, key_id: str, requests: int) -> dict[str, int]:
    """The key's usage totals once ``requests`` are recorded (async writes; 10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        answer = admin(stack, "GET", f"/admin/usage?key_id={key_id}")
        assert answer.status_code == 200, answer.text
        totals: dict[str, int] = answer.json()["totals"]
        if totals.get("requests", 0) >= requests or time.monotonic() > deadline:
            return totals
        time.sleep(0.2)
