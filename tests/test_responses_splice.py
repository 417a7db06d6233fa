"""Splicing a Responses API stream, without a network: the gateway's event writer on both sides.

Gateway A streams a response (its chat chunks from the simulator) and the client gets the
whole events before a random cut; the load balancer's :class:`ResponsesDialect` asks for a
continuation, gateway B builds it the way ``gateway/responses.py`` does (a builder seeded with
the text the client has, the chat request with that text as a prefix), and the splicer rewrites
B's stream. The client's stream must read as the uninterrupted one: the same events in the same
order, one response id, sequence numbers 0..n-1, the whole text once, the same usage.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from crosszone.dataplane.gateway.conversation import (
    ResponseBuilder,
    chat_body,
    parse_continuation,
    parse_request,
)
from crosszone.dataplane.gateway.responses_events import ResponseEvents
from crosszone.dataplane.proxy.dialects import dialect_for
from crosszone.dataplane.proxy.responses_dialect import CONTINUATION_FIELD, ResponsesDialect
from crosszone.dataplane.proxy.splice import Splicer
from crosszone.dataplane.proxy.transcript import StreamRecorder
from crosszone.dataplane.sse import split_events
from test_stream_splice import boundary, chunks, simulate


class Sink:
    """Stands in for the client connection ``ResponseEvents`` writes to."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.parts.append(data)


async def gateway(body: dict[str, Any], state: dict[str, Any] | None = None,
                  tokens: int = 0, rid: str = "a") -> bytes:
    """The Responses stream a gateway writes for ``body`` (a continuation with ``state``)."""
    req = parse_request(body)
    continuation = parse_continuation(state, tokens) if state is not None else None
    builder = ResponseBuilder(req, continuation=continuation)
    chat = {**chat_body(req, [], continuation), "stream": True,
            "stream_options": {"include_usage": True}}
    sink = Sink()
    events = ResponseEvents(sink, builder)  # type: ignore[arg-type]
    await events.start()
    data, _ = split_events(simulate(chat, chat=True, created=1, rid=rid))
    for raw in data:
        if raw != b"[DONE]":
            await events.chunk(orjson.loads(raw))
    await events.finish_output()
    await events.completed()
    return b"".join(sink.parts)


def read(stream: bytes) -> list[dict[str, Any]]:
    """The events a client parses, each checked to carry its type in the ``event:`` line."""
    blocks = stream.split(b"\n\n")
    assert blocks.pop() == b"", "stream ends inside an event"
    events = []
    for block in blocks:
        head, data = block.split(b"\n")
        event = json.loads(data.removeprefix(b"data: "))
        assert head == b"event: " + event["type"].encode()
        events.append(event)
    return events


def text_of(events: list[dict[str, Any]], kind: str) -> str:
    return "".join(e["delta"] for e in events if e["type"] == kind)


@settings(max_examples=150, deadline=None)
@example(model="deepseek-reasoner", cap=None, cuts=[0.2, 0.5], sizes=[])
@example(model="deepseek-chat", cap=5, cuts=[0.98], sizes=[7])
@given(model=st.sampled_from(["deepseek-chat", "deepseek-reasoner"]),
       cap=st.one_of(st.none(), st.integers(1, 30)),
       cuts=st.lists(st.floats(0, 1), min_size=1, max_size=3),
       sizes=st.lists(st.integers(1, 300), max_size=20))
async def test_a_response_stream_cut_anywhere_and_continued_reads_as_the_uninterrupted_one(
        model: str, cap: int | None, cuts: list[float], sizes: list[int]) -> None:
    body: dict[str, Any] = {"model": model, "input": "tell me a story", "stream": True}
    if cap is not None:
        body["max_output_tokens"] = cap
    dialect = ResponsesDialect()
    whole = await gateway(body)
    want = read(whole)

    recorder = StreamRecorder(dialect)
    received = whole[:boundary(whole[:int(cuts[0] * len(whole))])]
    for piece in chunks(received, sizes):
        recorder.record(piece)
    client = [received]
    for n, cut in enumerate([*cuts[1:], 1.0]):
        if recorder.ended(b"".join(client)[-32:]):
            break
        transcript = recorder.catch_up()
        sent = dialect.continuation(body, transcript)
        assert {k: v for k, v in sent.items() if k != CONTINUATION_FIELD} == body
        more = await gateway(sent, sent[CONTINUATION_FIELD], transcript.tokens, rid=f"b{n}")
        splicer = Splicer(dialect, transcript, None)
        for piece in chunks(more[:int(cut * len(more))], sizes):
            out, error = splicer.feed(piece)
            assert error is None
            client.append(out)

    got = read(b"".join(client))
    assert [e["type"] for e in got] == [e["type"] for e in want]
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    for kind in ("response.output_text.delta", "response.reasoning_text.delta"):
        assert text_of(got, kind) == text_of(want, kind)
    responses = [e["response"] for e in got if "response" in e]
    assert len({(r["id"], r["created_at"]) for r in responses}) == 1
    assert len({e["item_id"] for e in got if "item_id" in e and e["type"].startswith(
        "response.output_text")}) <= 1
    final, expected = got[-1]["response"], want[-1]["response"]
    assert final["status"] == expected["status"]
    assert final["usage"] == expected["usage"]
    texts = [[c.get("text") for c in item.get("content") or []] for item in final["output"]]
    assert texts == [[c.get("text") for c in item.get("content") or []]
                     for item in expected["output"]]
    assert [item["id"] for item in final["output"]] == [
        e["item"]["id"] for e in got if e["type"] == "response.output_item.added"]


async def test_a_continuation_is_only_the_request_plus_what_the_client_has() -> None:
    body = {"model": "deepseek-reasoner", "input": "hi", "stream": True, "max_output_tokens": 20}
    dialect = dialect_for("/v1/responses")
    assert isinstance(dialect, ResponsesDialect)
    whole = await gateway(body)
    recorder = StreamRecorder(dialect)
    events = whole.split(b"\n\n")
    recorder.record(b"\n\n".join(events[:8]) + b"\n\n")  # created .. a few reasoning deltas
    assert recorder.ended(b"") is False
    transcript = recorder.catch_up()
    state = dialect.continuation(body, transcript)[CONTINUATION_FIELD]
    first = read(whole)[0]["response"]
    assert state["response_id"] == first["id"] and state["created_at"] == first["created_at"]
    assert state["reasoning_id"].startswith("rs_") and state["message_id"] is None
    assert state["content"] == "" and state["reasoning"]
    assert state["reasoning_tokens"] == transcript.tokens == len(state["reasoning"].split())
    # the chat request a gateway makes of it: the prefix, and only what is left of the cap
    req = parse_request(body)
    chat = chat_body(req, [], parse_continuation(state, transcript.tokens))
    assert chat["messages"][-1] == {"role": "assistant", "content": "", "prefix": True,
                                    "reasoning_content": state["reasoning"]}
    assert chat["max_tokens"] == 20 - transcript.tokens
    recorder.record(b"\n\n".join(events[8:]))
    assert recorder.ended(b"") is True


def test_a_continuation_object_must_be_an_object() -> None:
    from crosszone.errors import InvalidApiRequest

    with pytest.raises(InvalidApiRequest, match="must be an object"):
        parse_continuation("nope", 3)
