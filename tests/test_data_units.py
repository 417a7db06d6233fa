"""The pieces of the data products without processes: keys, key cache, usage tap, requests."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from crosszone.dataplane.gateway.conversation import (
    ResponseBuilder,
    chat_body,
    input_messages,
    parse_request,
)
from crosszone.dataplane.gateway.keys import (
    ApiKey,
    Authenticator,
    KeyCache,
    bootstrap_id,
    key_hash,
    key_id_of,
    new_secret,
)
from crosszone.dataplane.gateway.usage import UsageRecord, UsageTap, aggregate
from crosszone.errors import InvalidApiRequest, NotAuthenticated
from crosszone.storage.records import Record


def test_key_format_names_its_id_and_hides_nothing_else() -> None:
    key_id, secret = new_secret()
    assert secret.startswith("sk-cz-k") and len(secret) > 60
    assert key_id_of(secret) == key_id
    assert key_id_of("sk-cz-" + "x" * 40) is None and key_id_of(secret + "!") is None
    assert key_hash(secret) != key_hash(secret + "x")
    assert bootstrap_id("sk-static").startswith("bootstrap-")


class FakeStore:
    """Just ``get`` of a StoreClient, counting reads."""

    def __init__(self) -> None:
        self.keys: dict[str, ApiKey] = {}
        self.reads = 0

    async def get(self, collection: str, key: str, *, strong: bool = False) -> Record | None:
        self.reads += 1
        found = self.keys.get(key)
        return None if found is None else Record(collection, key, found.to_json(), 1, "a")


async def test_authenticator_static_then_store_with_cache() -> None:
    store = FakeStore()
    key_id, secret = new_secret()
    store.keys[key_id] = ApiKey(key_id, "k", key_hash(secret), 1)
    now = [0.0]
    auth = Authenticator(["sk-static"], store, KeyCache(2.0, clock=lambda: now[0]))  # type: ignore[arg-type]
    assert await auth.authenticate("Bearer sk-static") == bootstrap_id("sk-static")
    assert await auth.authenticate(f"Bearer {secret}") == key_id
    assert await auth.authenticate(f"bearer {secret}") == key_id
    assert store.reads == 1  # cached
    for bad in (None, "", "Basic x", "Bearer", f"Bearer {secret[:-1]}x", "Bearer sk-other"):
        with pytest.raises(NotAuthenticated):
            await auth.authenticate(bad)
    store.keys[key_id] = ApiKey(key_id, "k", key_hash(secret), 1, revoked=5)
    assert await auth.authenticate(f"Bearer {secret}") == key_id  # cached until invalidated
    auth.cache.invalidate([key_id])
    with pytest.raises(NotAuthenticated, match="revoked"):
        await auth.authenticate(f"Bearer {secret}")


def test_cache_expires_and_drops_fills_that_raced_an_invalidation() -> None:
    now = [0.0]
    cache = KeyCache(2.0, clock=lambda: now[0])
    key = ApiKey("key_1", "k", "h", 1)
    generation = cache.generation
    cache.invalidate(["other"])  # a revocation landed while the read was in flight
    cache.put(key, 0.0, generation)
    assert cache.get("key_1") is None
    cache.put(key, 0.0, cache.generation)
    assert cache.get("key_1") == key
    now[0] = 2.0  # TTL counted from the start of the read
    assert cache.get("key_1") is None


class FakeRecorder:
    """Records at once, or holds each write until ``gate`` is set (a slow store)."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.records: list[UsageRecord] = []
        self.gate = gate

    async def record(self, record: UsageRecord) -> bool:
        self.records.append(record)
        if self.gate is not None:
            await self.gate.wait()
        return True


USAGE_EVENT = (b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":7,'
               b'"completion_tokens":3,"total_tokens":10}}\n\n')
TOKEN_EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'


async def _nothing(out: bytes) -> None:
    raise AssertionError(f"nothing to flush before the usage block, got {out!r}")


@pytest.mark.parametrize("strip", [True, False])
async def test_usage_tap_records_once_and_strips_when_asked(strip: bool) -> None:
    recorder = FakeRecorder()
    base = UsageRecord("rid", "key", "m", "chat", "za")
    tap = UsageTap(recorder, base, strip=strip, resent=2)  # type: ignore[arg-type]
    assert await tap.feed(TOKEN_EVENT, _nothing) == TOKEN_EVENT
    out = await tap.feed(USAGE_EVENT + b"data: [DONE]\n\n", _nothing)
    assert out == (b"" if strip else USAGE_EVENT) + b"data: [DONE]\n\n"
    assert await tap.feed(USAGE_EVENT, _nothing) == USAGE_EVENT  # only the first one counts
    [record] = recorder.records
    # two tokens the client already had were re-sent as prompt: billed as completion
    assert (record.prompt_tokens, record.completion_tokens) == (5, 5)


async def test_usage_tap_sends_the_last_tokens_before_the_usage_write_completes() -> None:
    """The worker's last read often holds the last token, the usage block and [DONE]: the
    token goes to the client at once; only the usage block and [DONE] wait for the store."""
    gate = asyncio.Event()
    recorder = FakeRecorder(gate)
    tap = UsageTap(recorder, UsageRecord("rid", "key", "m", "chat", "za"),  # type: ignore[arg-type]
                   strip=False)
    sent: list[bytes] = []

    async def flush(out: bytes) -> None:
        sent.append(out)

    feeding = asyncio.create_task(tap.feed(TOKEN_EVENT + USAGE_EVENT + b"data: [DONE]\n\n",
                                           flush))
    for _ in range(5):
        await asyncio.sleep(0)
    assert sent == [TOKEN_EVENT] and len(recorder.records) == 1
    assert not feeding.done()  # the usage block waits for the durable write
    gate.set()
    assert await feeding == USAGE_EVENT + b"data: [DONE]\n\n"


def test_aggregate_per_key_and_model() -> None:
    def rec(key: str, model: str, p: int, c: int) -> UsageRecord:
        return UsageRecord("r", key, model, "chat", "za", p, c)

    summary = aggregate([rec("a", "m1", 1, 2), rec("a", "m1", 3, 4), rec("b", "m2", 5, 6)])
    assert summary["totals"] == {"requests": 3, "prompt_tokens": 9, "completion_tokens": 12,
                                 "total_tokens": 21}
    assert summary["data"][0] == {"key_id": "a", "model": "m1", "requests": 2,
                                  "prompt_tokens": 4, "completion_tokens": 6,
                                  "total_tokens": 10}


@pytest.mark.parametrize("body,param", [
    ({"input": "x"}, "model"),
    ({"model": "m", "input": []}, "input"),
    ({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]}, "input[0]"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image"}]}]},
     "input[0].content[0]"),
    ({"model": "m", "input": "x", "tools": [{"type": "function"}]}, "tools"),
    ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "m", "input": "x", "stream": "yes"}, "stream"),
])
def test_bad_responses_requests_name_their_parameter(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidApiRequest) as info:
        parse_request(body)
    assert info.value.param == param


def test_request_becomes_chat_and_the_conversation_grows() -> None:
    req = parse_request({"model": "m", "instructions": "be brief", "max_output_tokens": 5,
                         "input": [{"type": "message", "role": "developer", "content": "d"},
                                   {"role": "user", "content": [
                                       {"type": "input_text", "text": "a"},
                                       {"type": "input_text", "text": "b"}]},
                                   {"type": "reasoning", "id": "rs_1", "summary": []}]})
    history = [{"role": "user", "content": "before"}, {"role": "assistant", "content": "ok"}]
    body = chat_body(req, history)
    assert body["messages"] == [{"role": "system", "content": "be brief"}, *history,
                                {"role": "system", "content": "d"},
                                {"role": "user", "content": "ab"}]
    assert body["max_tokens"] == 5
    builder = ResponseBuilder(req)
    builder.add_chunk({"choices": [{"index": 0, "delta": {"content": "hel"}}]})
    builder.add_chunk({"choices": [{"index": 0, "delta": {"content": "lo"},
                                    "finish_reason": "length"}]})
    builder.add_chunk({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}})
    response = builder.response()
    assert response["status"] == "incomplete" and response["usage"]["input_tokens"] == 9
    assert response["output"][0]["content"][0]["text"] == "hello"
    conversation = builder.conversation(history)
    assert conversation[-1] == {"role": "assistant", "content": "hello"}
    assert "be brief" not in str(conversation)  # instructions apply to one request only
    assert input_messages("hi") == [{"role": "user", "content": "hi"}]
