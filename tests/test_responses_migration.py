"""A stream whose gateway dies mid-stream, continued by the load balancer through another zone's
gateway, on a real stack (zones on 127.0.220-222.0/24, LB on 127.0.0.220:18220).

For the Responses API the client sees one response, its events numbered without a gap, the text
once, one ``response.completed`` with the uninterrupted run's usage, and the stored response
holds the whole text. For both APIs the usage the gateways record (``GET /admin/usage``) is what
the client's final usage block says, once. And a client cannot reach the hops' own
``x-crosszone-*`` controls through the load balancer.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from crosszone.runtime import LocalStack
from datautil import admin, create_key, gateway_base, zones
from stackutil import local_topology, start_stack, wait_until
from test_stream_migration import metric, settle

pytestmark = pytest.mark.integration

FIRST = 220
REASONING = 8


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> LocalStack:
    topo = local_topology(
        FIRST, http_port=18220, https_port=18620, decode_ms=8.0,
        gateway={"timeouts": {"idle_seconds": 1.0}},
        inference={"simulator": {"min_output_tokens": 16, "max_output_tokens": 30,
                                 "reasoning_tokens": REASONING}})
    return start_stack(request, tmp_path_factory.mktemp("responses-migration"), topo)


def kill_gateway(stack: LocalStack, zone: str) -> None:
    """SIGKILL the zone's gateway (the supervisor starts it again)."""
    assert stack.signal(zone=zone, component="gateway", signal="KILL")


def usage_of(stack: LocalStack, key_id: str, want: dict[str, int]) -> dict[str, int]:
    """The usage totals the gateways recorded for ``key_id``, once they are ``want``
    (records replicate between zones asynchronously; any zone may answer)."""
    seen: dict[str, int] = {}

    def settled() -> bool:
        nonlocal seen
        seen = admin(stack, "GET", f"/admin/usage?key_id={key_id}").json()["totals"]
        return seen == want

    wait_until(settled, timeout=15, what=f"usage of {key_id} to be {want} (last: {seen})")
    return seen


def responses_stream(stack: LocalStack, key: str, *, kill_after: int | None = None,
                     **extra: Any) -> tuple[list[Any], str]:
    """The events of a streamed response through the LB (killing its gateway after
    ``kill_after`` text deltas), and the zone that served it first."""
    client = openai.OpenAI(base_url=stack.lb_url(), api_key=key, max_retries=0, timeout=30)
    stream = client.responses.create(model="deepseek-reasoner", input="tell me a long story",
                                     stream=True, **extra)
    zone = stream.response.headers["x-crosszone-gateway-zone"]
    events: list[Any] = []
    deltas = 0
    for event in stream:
        events.append(event)
        if event.type.endswith("_text.delta"):
            deltas += 1
            if deltas == kill_after:
                kill_gateway(stack, zone)
    return events, zone


def texts(events: list[Any]) -> tuple[str, str]:
    return ("".join(e.delta for e in events if e.type == "response.reasoning_text.delta"),
            "".join(e.delta for e in events if e.type == "response.output_text.delta"))


@pytest.mark.parametrize("kill_after", [REASONING // 2, REASONING + 4])
def test_a_responses_stream_whose_gateway_dies_continues_through_another_zone(
        stack: LocalStack, kill_after: int) -> None:
    settle(stack)
    base, _ = responses_stream(stack, stack.api_key, store=False)
    key = create_key(stack, f"responses-{kill_after}")
    before = metric(stack, "crosszone_lb_stream_migrations_total", outcome="resumed")

    got, _ = responses_stream(stack, key["key"], kill_after=kill_after)

    assert metric(stack, "crosszone_lb_stream_migrations_total",
                  outcome="resumed") == before + 1
    assert [e.type for e in got] == [e.type for e in base]
    assert [e.sequence_number for e in got] == list(range(len(got)))
    assert texts(got) == texts(base)
    ids = {e.response.id for e in got if hasattr(e, "response")}
    assert len(ids) == 1
    final = got[-1].response
    assert got[-1].type == "response.completed" and final.status == "completed"
    assert final.output_text == texts(base)[1] == base[-1].response.output_text
    assert final.usage is not None and base[-1].response.usage is not None
    assert final.usage.model_dump() == base[-1].response.usage.model_dump()
    assert [item.id for item in final.output] == [
        e.item.id for e in got if e.type == "response.output_item.added"]
    # Stored once, whole: the continuing gateway wrote the response under the same id.
    client = openai.OpenAI(base_url=stack.lb_url(), api_key=key["key"], max_retries=0)
    stored = client.responses.retrieve(final.id)
    assert stored.output_text == final.output_text and stored.status == "completed"
    assert stored.usage is not None and stored.usage.model_dump() == final.usage.model_dump()
    # Billed once, as the client was told.
    usage_of(stack, key["id"], {
        "requests": 1, "prompt_tokens": final.usage.input_tokens,
        "completion_tokens": final.usage.output_tokens,
        "total_tokens": final.usage.total_tokens})
    settle(stack)  # the killed gateway is back


def test_a_chat_stream_whose_gateway_dies_is_billed_once(stack: LocalStack) -> None:
    settle(stack)
    key = create_key(stack, "chat-usage")
    body = {"model": "deepseek-chat", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "count to thirty"}]}
    before = metric(stack, "crosszone_lb_stream_migrations_total", outcome="resumed")
    usages, text, tokens = [], "", 0
    with httpx.Client(timeout=30) as http, http.stream(
            "POST", stack.lb_url() + "/chat/completions", json=body,
            headers={"Authorization": f"Bearer {key['key']}"}) as resp:
        zone = resp.headers["x-crosszone-gateway-zone"]
        for line in resp.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            assert "error" not in event
            if event.get("usage"):
                usages.append(event["usage"])
            for choice in event["choices"]:
                if (choice.get("delta") or {}).get("content"):
                    text += choice["delta"]["content"]
                    tokens += 1
                    if tokens == 5:
                        kill_gateway(stack, zone)
    assert metric(stack, "crosszone_lb_stream_migrations_total",
                  outcome="resumed") == before + 1
    [usage] = usages
    assert usage["completion_tokens"] == tokens == len(text.split())
    usage_of(stack, key["id"], {
        "requests": 1, "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"], "total_tokens": usage["total_tokens"]})
    settle(stack)


def test_a_client_cannot_send_the_hops_internal_headers(stack: LocalStack) -> None:
    settle(stack)
    key = create_key(stack, "injector")
    forged = {"Authorization": f"Bearer {key['key']}", "x-crosszone-prefix-tokens": "7",
              "X-Crosszone-Migrations": "2"}
    # The prefix-token count would move 7 prompt tokens to completion in the usage record.
    answer = httpx.post(stack.lb_url() + "/chat/completions", headers=forged, timeout=30,
                        json={"model": "deepseek-chat",
                              "messages": [{"role": "user",
                                            "content": "tell me about the mountains"}]})
    assert answer.status_code == 200, answer.text
    usage = answer.json()["usage"]
    assert usage["prompt_tokens"] > 7
    # A forged continuation object in the body is ignored too: a new response, from the start.
    events, _ = responses_stream(
        stack, key["key"], store=False, extra_headers={"x-crosszone-migrations": "1",
                                                       "x-crosszone-prefix-tokens": "3"},
        extra_body={"crosszone_continuation": {
            "response_id": "resp_forged", "content": "Once upon", "reasoning": "",
            "reasoning_tokens": 0, "created_at": 1}})
    final = events[-1].response
    assert final.id != "resp_forged" and final.created_at != 1
    # (what the LB drops is what a gateway obeys: from a hop, the same request continues)
    hop = openai.OpenAI(base_url=gateway_base(stack, zones(stack)[0]) + "/v1",
                        api_key=stack.api_key, max_retries=0, timeout=30)
    continued = list(hop.responses.create(
        model="deepseek-reasoner", input="tell me a long story", stream=True, store=False,
        extra_headers={"x-crosszone-migrations": "1", "x-crosszone-prefix-tokens": "3"},
        extra_body={"crosszone_continuation": {"response_id": "resp_forged", "created_at": 1,
                                               "content": "", "reasoning": "a b c",
                                               "reasoning_tokens": 3}}))
    assert continued[-1].response.id == "resp_forged"
    assert not texts(events)[1].startswith("Once upon")
    assert events[0].type == "response.created"
    assert final.usage is not None
    usage_of(stack, key["id"], {
        "requests": 2,
        "prompt_tokens": usage["prompt_tokens"] + final.usage.input_tokens,
        "completion_tokens": usage["completion_tokens"] + final.usage.output_tokens,
        "total_tokens": usage["total_tokens"] + final.usage.total_tokens})
