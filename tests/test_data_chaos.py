"""Conversations (async class) and usage records under zone kills, on a real stack (issue 4).

Zones on 127.0.144-146.0/24, LB on 127.0.0.144:18144.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from typing import Any

import openai
import pytest

from crosszone.runtime import LocalStack
from crosszone.storage.client import ZoneStores
from crosszone.tools.membership import wait_caught_up
from datautil import MODEL, admin, client, create_key, zones
from stackutil import local_topology, start_stack, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LocalStack:
    topo = local_topology(144, http_port=18144, https_port=18584, decode_ms=2.0,
                          conversations={"consistency": "async"})
    return start_stack(request, tmp_path_factory.mktemp("chaos"), topo)


def test_async_conversation_continues_across_zones(stack: LocalStack) -> None:
    first, second, third = zones(stack)
    start = client(stack, stack.api_key, first).responses.create(
        model=MODEL, input="my name is Ada", max_output_tokens=6)
    # No waiting: the other zone reads it from the first zone if it has not arrived yet.
    follow = client(stack, stack.api_key, second).responses.create(
        model=MODEL, input="who am I?", previous_response_id=start.id, max_output_tokens=6)
    asyncio.run(wait_caught_up(stack.topology, timeout=10))  # the async class's bound: its lag
    stack.hold(zone=second, signal="KILL")
    try:
        last = client(stack, stack.api_key, third).responses.create(
            model=MODEL, input="again?", previous_response_id=follow.id, max_output_tokens=6)
        assert follow.usage is not None and last.usage is not None
        assert last.usage.input_tokens > follow.usage.input_tokens + follow.usage.output_tokens
    finally:
        stack.release(zone=second)
        stack.wait_healthy(timeout=30)


class Tally:
    """What clients received, per request id (they send their own ``x-request-id``, which the LB
    keeps): the usage of each request answered completely, and the ids of those that failed."""

    def __init__(self) -> None:
        self.received: dict[str, tuple[int, int]] = {}
        self.failed: set[str] = set()
        self.errors: Counter[str] = Counter()

    def totals(self) -> dict[str, int]:
        prompt = sum(p for p, _ in self.received.values())
        completion = sum(c for _, c in self.received.values())
        return {"requests": len(self.received), "prompt_tokens": prompt,
                "completion_tokens": completion, "total_tokens": prompt + completion}


async def one_request(api: openai.AsyncOpenAI, kind: str, rid: str) -> tuple[int, int]:
    """Send one request; its usage as the client received it."""
    messages: Any = [{"role": "user", "content": f"tell me about {random.random()}"}]
    headers = {"x-request-id": rid}
    if kind == "chat":
        done = await api.chat.completions.create(model=MODEL, messages=messages,
                                                 extra_headers=headers)
        assert done.usage is not None
        return done.usage.prompt_tokens, done.usage.completion_tokens
    if kind == "chat-stream":
        usage = None
        async for chunk in await api.chat.completions.create(
                model=MODEL, messages=messages, stream=True, extra_headers=headers,
                stream_options={"include_usage": True}):
            usage = chunk.usage or usage
        if usage is None:
            raise RuntimeError("stream ended without its usage")
        return usage.prompt_tokens, usage.completion_tokens
    if kind == "responses":
        answer = await api.responses.create(model=MODEL, input="hello there",
                                            extra_headers=headers)
        assert answer.usage is not None
        return answer.usage.input_tokens, answer.usage.output_tokens
    final = None
    async for event in await api.responses.create(model=MODEL, input="hi", stream=True,
                                                  extra_headers=headers):
        if event.type in ("response.completed", "response.incomplete"):
            final = event.response
    if final is None or final.usage is None:
        raise RuntimeError("stream ended without response.completed")
    return final.usage.input_tokens, final.usage.output_tokens


async def load(stack: LocalStack, key: str, stop: asyncio.Event, tally: Tally) -> None:
    api = openai.AsyncOpenAI(base_url=stack.lb_url(), api_key=key, max_retries=0, timeout=30)
    kinds = ["chat", "chat-stream", "responses", "responses-stream"]

    async def worker(n: int) -> None:
        i = n
        while not stop.is_set():
            kind = kinds[i % len(kinds)]
            i += 1
            rid = uuid.uuid4().hex
            try:
                tally.received[rid] = await one_request(api, kind, rid)
            except (openai.APIError, RuntimeError) as exc:
                tally.failed.add(rid)
                tally.errors[f"{kind}: {type(exc).__name__}"] += 1

    try:
        await asyncio.gather(*(worker(n) for n in range(8)))
    finally:
        await api.close()


def usage_of(stack: LocalStack, zone: str, key_id: str) -> dict[str, int]:
    answer = admin(stack, "GET", f"/admin/usage?key_id={key_id}", zone=zone)
    assert answer.status_code == 200, answer.text
    totals: dict[str, int] = answer.json()["totals"]
    return totals


async def usage_records(stack: LocalStack, zone: str, key_id: str) -> dict[str, Any]:
    stores = ZoneStores(stack.topology, zone)
    try:
        # stored under the LB's usage id; keyed here by the request id the client saw
        return {r.value["request_id"]: r.value async for r in stores.local.iterate("usage")
                if r.value["key_id"] == key_id}
    finally:
        await stores.close()


def test_usage_totals_exact_after_a_zone_dies_mid_load(stack: LocalStack) -> None:
    key = create_key(stack, "billing")
    victim = zones(stack)[0]
    tally = Tally()

    async def drill() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(load(stack, key["key"], stop, tally))
        await asyncio.sleep(1.0 + random.random())
        await asyncio.to_thread(stack.hold, zone=victim, signal="KILL")
        await asyncio.sleep(1.5)
        await asyncio.to_thread(stack.release, zone=victim)
        await asyncio.to_thread(stack.wait_healthy, 30.0)
        await asyncio.sleep(0.5)
        stop.set()
        await running

    asyncio.run(drill())
    assert len(tally.received) > 20, (tally.totals(), tally.errors)
    asyncio.run(wait_caught_up(stack.topology, timeout=30))

    # Every request a client received is recorded once, with the tokens the client was told.
    records = asyncio.run(usage_records(stack, victim, key["id"]))
    for rid, tokens in tally.received.items():
        assert rid in records, f"request {rid} was answered but not recorded"
        assert (records[rid]["prompt_tokens"], records[rid]["completion_tokens"]) == tokens
    # Any other record is a request a gateway answered whose answer the LB then gave up on
    # (it moved the request elsewhere, and that failed too): the client saw it fail.
    extra = set(records) - set(tally.received)
    assert extra <= tally.failed, extra - tally.failed
    expected = tally.totals()
    for rid in extra:
        prompt, completion = records[rid]["prompt_tokens"], records[rid]["completion_tokens"]
        expected["requests"] += 1
        expected["prompt_tokens"] += prompt
        expected["completion_tokens"] += completion
        expected["total_tokens"] += prompt + completion

    def agree() -> bool:  # and every zone's totals say the same
        return all(usage_of(stack, z, key["id"]) == expected for z in zones(stack))

    wait_until(agree, timeout=15, what=f"usage in every zone == {expected} (received "
               f"{tally.totals()}, errors {dict(tally.errors)})")
