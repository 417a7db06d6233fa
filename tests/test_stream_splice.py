"""Splice logic of mid-stream migration, without a network: transcript, dialects, splicer.

The property test replays what the relay does when a stream breaks: the client has the whole
events before a random cut, the continuation body goes to the simulator (framed by the worker's
own code), and the splicer rewrites the continuation; the client's stream must be the
uninterrupted one, token for token, with one usage block and one ``[DONE]``.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from crosszone.config.topology import Simulator
from crosszone.dataplane.engines.base import Usage
from crosszone.dataplane.engines.simulator import SimulatorEngine
from crosszone.dataplane.proxy.dialects import (
    CannotContinue,
    ChatDialect,
    CompletionsDialect,
    StreamDialect,
)
from crosszone.dataplane.proxy.hedge import RetryBudget
from crosszone.dataplane.proxy.splice import Splicer, client_max_tokens
from crosszone.dataplane.proxy.transcript import CATCH_UP_BYTES, StreamRecorder
from crosszone.dataplane.sse import DONE, split_events
from crosszone.dataplane.worker.protocol import Framer, parse_chat, parse_completions

CONFIG = Simulator(decode_ms_per_token=0, prefill_ms_per_token=0, reasoning_tokens=8,
                   min_output_tokens=4, max_output_tokens=40)
ENGINE = SimulatorEngine(CONFIG)


def simulate(body: dict[str, Any], *, chat: bool, created: int, rid: str = "r1") -> bytes:
    """The SSE bytes a simulator worker streams for ``body`` (what its HTTP layer writes)."""
    parsed = (parse_chat if chat else parse_completions)(body, rid)
    plan = ENGINE.plan(parsed.generation)
    framer = Framer(chat=chat, id_=f"{'chatcmpl' if chat else 'cmpl'}-{rid}",
                    model=parsed.generation.model, created=created)
    out = [framer.first()]
    reasoning = 0
    for position in range(plan.start, plan.stop):
        delta = plan.token(position)
        reasoning += 1 if delta.reasoning else 0
        out.append(framer.token(delta))
    out.append(framer.finish(plan.finish_reason))
    if parsed.include_usage:
        out.append(framer.usage(Usage(plan.prompt_tokens, plan.stop - plan.start, reasoning)))
    out.append(DONE)
    return b"".join(out)


def read(stream: bytes) -> dict[str, Any]:
    """What a client makes of a stream: texts, finishes, usage blocks, envelopes, [DONE]s."""
    events, rest = split_events(stream)
    assert not rest.strip(), "stream ends inside an event"
    seen: dict[str, Any] = {"content": "", "reasoning": "", "finish": [], "usage": [],
                            "envelopes": set(), "done": 0, "roles": 0, "errors": []}
    for data in events:
        if data == b"[DONE]":
            seen["done"] += 1
            continue
        event = json.loads(data)
        if "error" in event:
            seen["errors"].append(event["error"])
            continue
        seen["envelopes"].add((event["id"], event["created"], event["model"]))
        if event.get("usage"):
            seen["usage"].append(event["usage"])
        for choice in event["choices"]:
            delta = choice.get("delta") or {}
            seen["roles"] += 1 if "role" in delta else 0
            seen["content"] += delta.get("content") or choice.get("text") or ""
            seen["reasoning"] += delta.get("reasoning_content") or ""
            if choice.get("finish_reason"):
                seen["finish"].append(choice["finish_reason"])
    return seen


def chunks(data: bytes, sizes: list[int]) -> list[bytes]:
    out, i = [], 0
    for size in sizes:
        if i >= len(data):
            break
        out.append(data[i:i + size])
        i += size
    if i < len(data):
        out.append(data[i:])
    return out


def boundary(data: bytes) -> int:
    end = data.rfind(b"\n\n")
    return end + 2 if end >= 0 else 0


REQUESTS = st.one_of(
    st.builds(lambda p, m, pre: ("chat", {"model": m, "messages": [
        {"role": "user", "content": p}, *([{"role": "assistant", "content": pre,
                                            "prefix": True}] if pre else [])]}),
              st.text(max_size=40), st.sampled_from(["deepseek-chat", "deepseek-reasoner"]),
              st.sampled_from(["", "well then "])),
    st.builds(lambda p: ("completions", {"model": "deepseek-chat", "prompt": p}),
              st.text(max_size=40)),
)


@settings(max_examples=300, deadline=None)
@example(request=("completions", {"model": "deepseek-chat", "prompt": "\x8e\x8dK1F\xe6"}),
         max_tokens=6, include_usage=True, seed=3, cuts=[0.5, 0.5], sizes=[])  # cap, then +1
@given(request=REQUESTS, max_tokens=st.one_of(st.none(), st.integers(1, 60)),
       include_usage=st.booleans(), seed=st.one_of(st.none(), st.integers(0, 3)),
       cuts=st.lists(st.floats(0, 1), min_size=1, max_size=3),
       sizes=st.lists(st.integers(1, 400), max_size=30))
def test_a_stream_cut_anywhere_and_continued_reads_as_the_uninterrupted_one(
        request: tuple[str, dict[str, Any]], max_tokens: int | None, include_usage: bool,
        seed: int | None, cuts: list[float], sizes: list[int]) -> None:
    kind, body = request
    chat = kind == "chat"
    body = {**body, "stream": True}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    if seed is not None:
        body["seed"] = seed
    dialect: StreamDialect = ChatDialect() if chat else CompletionsDialect()
    whole = simulate(body, chat=chat, created=1000)

    # Segment 1 goes through as it is, whole events only; later ones through a splicer.
    recorder = StreamRecorder(dialect)
    received = whole[:boundary(whole[:int(cuts[0] * len(whole))])]
    for piece in chunks(received, sizes):
        recorder.record(piece)
    client = [received]
    for n, cut in enumerate([*cuts[1:], 1.0]):
        if dialect.completed(b"".join(client)[-32:]):
            break
        transcript = recorder.catch_up()
        continuation = dialect.continuation(body, transcript)
        more = simulate(continuation, chat=chat, created=2000 + n, rid=f"other{n}")
        splicer = Splicer(dialect, transcript, client_max_tokens(body))
        for piece in chunks(more[:int(cut * len(more))], sizes):
            out, error = splicer.feed(piece)
            assert error is None
            client.append(out)

    got, want = read(b"".join(client)), read(whole)
    assert (got["reasoning"], got["content"]) == (want["reasoning"], want["content"])
    assert got["finish"] == want["finish"] and len(want["finish"]) == 1
    assert got["usage"] == want["usage"]
    assert got["done"] == 1
    assert len(got["envelopes"]) == 1  # one id, one created, from the first event seen
    if received:
        assert got["envelopes"] == want["envelopes"]
    assert got["roles"] == want["roles"]


def test_usage_is_merged_and_the_role_chunk_dropped() -> None:
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}],
            "stream": True, "stream_options": {"include_usage": True}}
    whole = read(simulate(body, chat=True, created=1))
    dialect = ChatDialect()
    recorder = StreamRecorder(dialect)
    first = simulate(body, chat=True, created=1)
    events = first.split(b"\n\n")
    recorder.record(b"\n\n".join(events[:4]) + b"\n\n")  # role + 3 tokens
    transcript = recorder.catch_up()
    assert transcript.tokens == 3
    assert transcript.envelope == {"id": "chatcmpl-r1", "object": "chat.completion.chunk",
                                   "created": 1, "model": "deepseek-chat",
                                   "system_fingerprint": "fp_crosszone"}
    continuation = dialect.continuation(body, transcript)
    prefix = continuation["messages"][-1]
    assert prefix == {"role": "assistant", "content": "".join(transcript.choice(0).content),
                      "prefix": True}
    more = simulate(continuation, chat=True, created=5)
    more_usage = read(more)["usage"][0]
    assert more_usage["prompt_tokens"] == whole["usage"][0]["prompt_tokens"] + 3
    splicer = Splicer(dialect, transcript, None)
    out, error = splicer.feed(more)
    assert error is None and out.count(b"[DONE]") == 1
    assert b'"role"' not in out and b'"created":5' not in out
    assert read(out)["usage"] == whole["usage"]
    # A second [DONE] or usage block (a confused backend) is never forwarded.
    assert splicer.feed(DONE) == (b"", None)
    usage_only = b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":1}}\n\n'
    assert splicer.feed(usage_only) == (b"", None)


def test_error_event_ends_the_continuation() -> None:
    transcript = StreamRecorder(ChatDialect()).catch_up()
    splicer = Splicer(ChatDialect(), transcript, None)
    token = (b'data: {"id":"x","created":9,"model":"m","choices":[{"index":0,'
             b'"delta":{"content":"a "},"finish_reason":null}]}\n\n')
    out, error = splicer.feed(token + b'data: {"error":{"message":"boom","code":"x"}}\n\n'
                              + token)
    assert out.count(b'"a "') == 1
    assert error == {"error": {"message": "boom", "code": "x"}}
    assert transcript.tokens == 1


def test_max_tokens_left_and_text_past_the_cap_dropped() -> None:
    dialect = ChatDialect()
    recorder = StreamRecorder(dialect)
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    whole = simulate(body, chat=True, created=1)
    events = whole.split(b"\n\n")
    recorder.record(b"\n\n".join(events[:4]) + b"\n\n")  # all 3 tokens, not the finish
    transcript = recorder.catch_up()
    continuation = dialect.continuation(body, transcript)
    assert continuation["max_tokens"] == 1  # at least 1; what comes past the cap is dropped
    splicer = Splicer(dialect, transcript, client_max_tokens(body))
    out, _ = splicer.feed(simulate(continuation, chat=True, created=2))
    assert splicer.dropped == 1
    got = read(b"\n\n".join(events[:4]) + b"\n\n" + out)
    assert got["finish"] == ["length"] and got["usage"] == read(whole)["usage"]


def test_streams_that_cannot_be_continued() -> None:
    dialect = ChatDialect()
    recorder = StreamRecorder(dialect)
    recorder.record(b'data: {"id":"x","choices":[{"index":0,"delta":{"tool_calls":'
                    b'[{"index":0,"function":{"name":"f"}}]}}]}\n\n')
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(CannotContinue, match="tool calls"):
        dialect.continuation(body, recorder.catch_up())
    with pytest.raises(CannotContinue, match="n > 1"):
        dialect.continuation({**body, "n": 2}, StreamRecorder(dialect).catch_up())
    with pytest.raises(CannotContinue, match="echo"):
        CompletionsDialect().continuation({"model": "m", "prompt": "p", "echo": True},
                                          StreamRecorder(dialect).catch_up())


def test_client_prefix_and_completions_prefix_are_extended() -> None:
    dialect = ChatDialect()
    recorder = StreamRecorder(dialect)
    recorder.record(b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"r "}}]}\n\n'
                    b'data: {"choices":[{"index":0,"delta":{"content":"b "}}]}\n\n')
    body = {"model": "m", "max_completion_tokens": 10, "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "a ", "prefix": True}]}
    out = dialect.continuation(body, recorder.catch_up())
    assert out["messages"] == [{"role": "user", "content": "x"},
                               {"role": "assistant", "content": "a b ", "prefix": True,
                                "reasoning_content": "r "}]
    assert out["max_completion_tokens"] == 8
    assert body["messages"][-1]["content"] == "a "  # the original is left alone
    completions = CompletionsDialect()
    recorder = StreamRecorder(completions)
    recorder.record(b'data: {"choices":[{"index":0,"text":"c "}]}\n\n')
    assert completions.continuation({"prompt": "p", "crosszone_prefix": "z "},
                                    recorder.catch_up())["crosszone_prefix"] == "z c "


def test_recorder_parses_only_past_its_threshold() -> None:
    recorder = StreamRecorder(ChatDialect())
    event = (b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"w "}}]}\n\n')
    count = CATCH_UP_BYTES // len(event)
    for _ in range(count - 1):
        recorder.record(event)
    assert recorder.transcript.tokens == 0  # nothing parsed yet: the hot path is an append
    for _ in range(2):
        recorder.record(event)
    assert recorder.transcript.tokens == count + 1  # past the threshold: parsed in one batch
    assert recorder.held_bytes == 0
    recorder.record(event)
    assert recorder.transcript.tokens == count + 1
    assert recorder.catch_up().tokens == count + 2


def test_split_events_handles_crlf_comments_and_multiline_data() -> None:
    events, rest = split_events(b": keep-alive\n\ndata: a\r\n\r\nevent: x\ndata: b\ndata: c\n\n"
                                b"data: partial")
    assert events == [b"a", b"b\nc"] and rest == b"data: partial"
    assert orjson.loads(split_events(b'data: {"k":1}\n\n')[0][0]) == {"k": 1}


def test_retry_budget_allows_its_percentage() -> None:
    budget = RetryBudget(10)
    allowed = 0
    for _ in range(100):
        budget.deposit()
        allowed += budget.try_spend()
    assert allowed == 10
    never = RetryBudget(0)
    never.deposit()
    assert not never.try_spend()
    burst = RetryBudget(100, burst=3)
    for _ in range(10):
        burst.deposit()
    assert [burst.try_spend() for _ in range(4)] == [True, True, True, False]


def test_migration_settings_are_validated_with_their_paths() -> None:
    from crosszone.config import parse_topology
    from crosszone.errors import ConfigError
    from stackutil import local_topology

    topology = local_topology(130, gateway={"migration": {"hedge_first_token_ms": 20000,
                                                          "hedge_routes": ["chat"]}})
    with pytest.raises(ConfigError) as info:
        parse_topology(topology)
    paths = {p.path for p in info.value.problems}
    assert paths == {"gateway.migration.hedge_first_token_ms",
                     "gateway.migration.hedge_routes[0]"}
    defaults = parse_topology(local_topology(130)).gateway.migration
    assert (defaults.max_migrations, defaults.hedge_first_token_ms) == (2, None)
