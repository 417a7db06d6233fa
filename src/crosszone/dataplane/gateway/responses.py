"""``/v1/responses``: stored conversations on the zone stores, answered by chat completions.

``POST /v1/responses`` loads the conversation of ``previous_response_id`` (one record, in any
zone), asks a worker for a chat completion of it plus the new input, stores the response with
the whole conversation (collection ``responses``, unless ``store`` is false), records the usage,
and only then tells the client the response is complete. ``conversations.consistency``:

* ``sync`` (default): the response is written by two-phase commit to every zone in service and
  read with strong reads, so once a client saw it complete, any zone can continue it (RPO 0);
* ``async``: written to the serving zone and replicated; a zone that dies loses the responses it
  had not shipped yet (at most its replication lag). Reads fall back to the other zones when
  the local store lacks a response (it may not have arrived yet).

``GET /v1/responses/{id}`` answers the stored response, ``DELETE`` removes it (a tombstone).

Reads go through the gateway's cache of stored responses (``cache.conversations``; the answer
of ``GET`` says ``x-crosszone-cache: hit|miss``). A stored response never changes; it can only
be deleted, which discards it from the deleting gateway's cache at once. Otherwise:

* ``async``: the cache follows the zone store's change feed, so a delete made in any zone
  discards the entry once replication brings the tombstone here -- as fresh as a read of the
  local store, which is what the async class promises;
* ``sync``: a strong read must not miss an acknowledged delete made a moment ago elsewhere,
  and the change feed may be a few milliseconds behind. So a hit is confirmed by a strong read
  of the record's version (``GET /versions/...``, the same lease and in-doubt checks as the
  read it replaces); the cache saves carrying and parsing the whole conversation, never the
  strong read. Absent records are never cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Literal

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from crosszone.dataplane.gateway.admin import json_response
from crosszone.dataplane.gateway.conversation import (
    Continuation,
    ResponseBuilder,
    ResponsesRequest,
    chat_body,
    parse_continuation,
    parse_request,
)
from crosszone.dataplane.gateway.response_cache import CACHE_HEADER
from crosszone.dataplane.gateway.responses_events import ResponseEvents
from crosszone.dataplane.gateway.usage import UsageRecord, UsageRecorder, resent_tokens
from crosszone.dataplane.gateway.workers import WorkerCalls
from crosszone.dataplane.proxy.errors import MigrationFailed
from crosszone.dataplane.proxy.headers import REQUEST_ID
from crosszone.dataplane.proxy.migration import MIGRATIONS_HEADER
from crosszone.dataplane.proxy.responses_dialect import CONTINUATION_FIELD
from crosszone.errors import ApiNotFound, StoreError, StoreUnavailable, UpstreamError
from crosszone.storage.cache import LocalCache
from crosszone.storage.client import StoreClient, ZoneStores
from crosszone.storage.failover import FailoverStore
from crosszone.storage.records import Record

RESPONSES = "responses"
log = logging.getLogger("crosszone.responses")
_CLIENT_GONE = (OSError, aiohttp.ClientError)


class ConversationStore:
    """Stored responses of one consistency class (``sync``: 2PC and strong reads), read
    through ``cache`` (see the module docstring; a cache of TTL 0 keeps nothing)."""

    def __init__(self, stores: ZoneStores, consistency: Literal["sync", "async"],
                 cache: LocalCache[dict[str, Any]] | None = None) -> None:
        self.stores = stores
        self.any = FailoverStore(stores)  # writes wait out a zone's failure on other zones
        self.consistency = consistency
        self.strong = consistency == "sync"
        self.cache = cache if cache is not None else LocalCache(RESPONSES, 0.0)

    def __repr__(self) -> str:
        return f"ConversationStore({self.consistency}, {self.stores!r}, {self.cache!r})"

    async def load(self, response_id: str) -> dict[str, Any] | None:
        return (await self.lookup(response_id))[0]

    async def lookup(self, response_id: str) -> tuple[dict[str, Any] | None, bool]:
        """The stored record of ``response_id`` and whether the cache answered it."""
        cached = self.cache.entry(response_id)
        if cached is not None:
            if not self.strong:
                return cached.value, True
            current = await self.any.run(  # the strong read, without the value
                lambda c: c.version(RESPONSES, response_id, strong=True,
                                    timeout=self.any.read_timeout), strong=True)
            if current == cached.version:
                return cached.value, True
            self.cache.discard(response_id, current)
            if current is None:
                return None, False
        with self.cache.reading(response_id) as read:
            record, cacheable = await self._read(response_id)
            value = _value(record)
            if record is not None and value is not None and cacheable:
                self.cache.fill(read, value, record.version)
        return value, False

    async def _read(self, response_id: str) -> tuple[Record | None, bool]:
        """The record, and whether the cache may keep it.

        Strong: from any leased zone store, which holds every acknowledged sync turn. Async:
        from this zone's store; from the others when it is not there (not replicated yet) or
        the local store is down -- not cached then: this zone's change feed would not report
        a delete that reached the local store before the record itself."""
        if self.strong:
            return await self.any.get(RESPONSES, response_id, strong=True), True
        try:
            record = await self.stores.local.get(RESPONSES, response_id)
            if record is not None:
                return record, True
        except StoreUnavailable:
            pass
        found = await asyncio.gather(*(self._try(s, response_id) for s in self.stores.others()))
        return next((r for r in found if r is not None), None), False

    async def _try(self, store: StoreClient, response_id: str) -> Record | None:
        try:
            record = await store.get(RESPONSES, response_id, strong=self.strong)
        except StoreError:
            return None
        return record if _value(record) is not None else None

    async def save(self, builder: ResponseBuilder, history: list[dict[str, Any]],
                   key_id: str) -> None:
        value = {"response": builder.response(), "conversation": builder.conversation(history),
                 "key_id": key_id}
        with self.cache.reading(builder.id) as read:  # the next turn will want it
            written = await self.any.put(RESPONSES, builder.id, value, strong=self.strong)
            self.cache.fill(read, value, written.records[0].version)

    async def delete(self, response_id: str) -> None:
        await self.any.delete(RESPONSES, response_id, strong=self.strong)
        self.cache.discard(response_id)


def continuation_of(request: web.Request, body: dict[str, Any]) -> Continuation | None:
    """The continuation a hop above asks for (the field is removed from ``body``); None for
    a new response, and for a client's request (no ``x-crosszone-migrations``: the load
    balancer drops every ``x-crosszone-*`` header a client sends)."""
    raw = body.pop(CONTINUATION_FIELD, None)
    if raw is None or MIGRATIONS_HEADER not in request.headers:
        return None
    return parse_continuation(raw, resent_tokens(request.headers))


def _value(record: Any) -> dict[str, Any] | None:
    value = getattr(record, "value", None)
    return value if isinstance(value, dict) else None


def _not_found(response_id: str, *, previous: bool = False) -> ApiNotFound:
    if previous:
        return ApiNotFound(f"Previous response with id '{response_id}' not found.",
                           param="previous_response_id", code="previous_response_not_found")
    return ApiNotFound(f"No response found with id '{response_id}'.", param="response_id")


class ResponsesApi:
    """The handlers; the caller authenticates and passes the key id and request id."""

    def __init__(self, zone: str, conversations: ConversationStore, workers: WorkerCalls,
                 usage: UsageRecorder) -> None:
        self.zone = zone
        self.conversations = conversations
        self.workers = workers
        self.usage = usage

    def __repr__(self) -> str:
        return f"ResponsesApi({self.zone}, {self.conversations!r})"

    async def create(self, request: web.Request, body: dict[str, Any], key_id: str,
                     rid: str, usage_id: str | None = None) -> web.StreamResponse:
        """``rid``: the request id (headers, tracing); ``usage_id``: the usage record's key
        (default ``rid``)."""
        continuation = continuation_of(request, body)
        req = parse_request(body)
        history: list[dict[str, Any]] = []
        if req.previous_response_id:
            previous = await self.conversations.load(req.previous_response_id)
            if previous is None:
                raise _not_found(req.previous_response_id, previous=True)
            history = list(previous.get("conversation") or [])
        builder = ResponseBuilder(req, continuation=continuation)
        chat = chat_body(req, history, continuation)
        headers = CIMultiDict({"Content-Type": "application/json", REQUEST_ID: rid})
        if continuation is not None:  # the migrations so far count against the same limit
            headers[MIGRATIONS_HEADER] = request.headers[MIGRATIONS_HEADER]
        usage = UsageRecord(rid, key_id, req.model, "responses", self.zone,
                            usage_id=usage_id or rid)
        if req.stream:
            return await self._stream(request, req, builder, chat, headers, history, usage)
        builder.add_completion(await self.workers.complete(chat, headers))
        await self._finish(req, builder, history, usage)
        return json_response(builder.response(), headers={REQUEST_ID: rid})

    async def _finish(self, req: ResponsesRequest, builder: ResponseBuilder,
                      history: list[dict[str, Any]], usage: UsageRecord) -> None:
        """Store the response, then record its usage: both before the client hears it is
        complete."""
        if req.store:
            await self.conversations.save(builder, history, usage.key_id)
        billed = builder.response_usage()  # what the client is told, so billed once
        if billed is not None:
            await self.usage.record(usage.with_tokens(billed))

    async def _stream(self, request: web.Request, req: ResponsesRequest,
                      builder: ResponseBuilder, chat: dict[str, Any],
                      headers: CIMultiDict[str], history: list[dict[str, Any]],
                      usage: UsageRecord) -> web.StreamResponse:
        chunks = self.workers.stream(chat, headers)
        async with contextlib.aclosing(chunks):
            first = await anext(chunks, None)  # failures until here answer as plain errors
            response = web.StreamResponse(headers={
                "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                REQUEST_ID: headers[REQUEST_ID]})
            try:
                await response.prepare(request)
                events = ResponseEvents(response, builder)
                await events.start()
                try:
                    if first is not None:
                        await events.chunk(first)
                    async for chunk in chunks:
                        await events.chunk(chunk)
                    await events.finish_output()
                    await self._finish(req, builder, history, usage)
                except (UpstreamError, StoreError) as exc:
                    log.warning("response %s failed: %s", builder.id, exc)
                    code = exc.code if isinstance(exc, StoreError | MigrationFailed) \
                        else "server_error"
                    await events.failed(str(exc), code)
                else:
                    await events.completed()
                await response.write_eof()
            except _CLIENT_GONE:
                log.info("client of response %s went away", builder.id)
        return response

    async def get(self, request: web.Request) -> web.Response:
        response_id = request.match_info["response_id"]
        stored, hit = await self.conversations.lookup(response_id)
        if stored is None or not isinstance(stored.get("response"), dict):
            raise _not_found(response_id)
        return json_response(stored["response"], headers={CACHE_HEADER: "hit" if hit else "miss"})

    async def delete(self, request: web.Request) -> web.Response:
        response_id = request.match_info["response_id"]
        if await self.conversations.load(response_id) is None:
            raise _not_found(response_id)
        await self.conversations.delete(response_id)
        return json_response({"id": response_id, "object": "response", "deleted": True})
