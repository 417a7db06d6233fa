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
    ResponseBuilder,
    ResponsesRequest,
    chat_body,
    parse_request,
)
from crosszone.dataplane.gateway.responses_events import ResponseEvents
from crosszone.dataplane.gateway.usage import UsageRecord, UsageRecorder
from crosszone.dataplane.gateway.workers import WorkerCalls
from crosszone.dataplane.proxy.headers import REQUEST_ID
from crosszone.errors import ApiNotFound, StoreError, StoreUnavailable, UpstreamError
from crosszone.storage.client import StoreClient, ZoneStores

RESPONSES = "responses"
log = logging.getLogger("crosszone.responses")
_CLIENT_GONE = (OSError, aiohttp.ClientError)


class ConversationStore:
    """Stored responses of one consistency class (``sync``: 2PC and strong reads)."""

    def __init__(self, stores: ZoneStores, consistency: Literal["sync", "async"]) -> None:
        self.stores = stores
        self.consistency = consistency
        self.strong = consistency == "sync"

    def __repr__(self) -> str:
        return f"ConversationStore({self.consistency}, {self.stores!r})"

    async def load(self, response_id: str) -> dict[str, Any] | None:
        """The stored record of ``response_id``: from this zone's store; from the others when
        it is not there (async class: not replicated yet) or the local store is down."""
        try:
            record = await self.stores.local.get(RESPONSES, response_id, strong=self.strong)
            if record is not None or self.strong:
                return _value(record)
        except StoreUnavailable:
            pass
        found = await asyncio.gather(*(self._try(s, response_id) for s in self.stores.others()))
        return next((v for v in found if v is not None), None)

    async def _try(self, store: StoreClient, response_id: str) -> dict[str, Any] | None:
        try:
            return _value(await store.get(RESPONSES, response_id, strong=self.strong))
        except StoreError:
            return None

    async def save(self, builder: ResponseBuilder, history: list[dict[str, Any]],
                   key_id: str) -> None:
        value = {"response": builder.response(), "conversation": builder.conversation(history),
                 "key_id": key_id}
        await self.stores.local.put(RESPONSES, builder.id, value, strong=self.strong)

    async def delete(self, response_id: str) -> None:
        await self.stores.local.delete(RESPONSES, response_id, strong=self.strong)


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
                     rid: str) -> web.StreamResponse:
        req = parse_request(body)
        history: list[dict[str, Any]] = []
        if req.previous_response_id:
            previous = await self.conversations.load(req.previous_response_id)
            if previous is None:
                raise _not_found(req.previous_response_id, previous=True)
            history = list(previous.get("conversation") or [])
        builder = ResponseBuilder(req)
        chat = chat_body(req, history)
        headers = CIMultiDict({"Content-Type": "application/json", REQUEST_ID: rid})
        usage = UsageRecord(rid, key_id, req.model, "responses", self.zone)
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
        if builder.usage is not None:
            await self.usage.record(usage.with_tokens(builder.usage))

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
                    code = exc.code if isinstance(exc, StoreError) else "server_error"
                    await events.failed(str(exc), code)
                else:
                    await events.completed()
                await response.write_eof()
            except _CLIENT_GONE:
                log.info("client of response %s went away", builder.id)
        return response

    async def get(self, request: web.Request) -> web.Response:
        response_id = request.match_info["response_id"]
        stored = await self.conversations.load(response_id)
        if stored is None or not isinstance(stored.get("response"), dict):
            raise _not_found(response_id)
        return json_response(stored["response"])

    async def delete(self, request: web.Request) -> web.Response:
        response_id = request.match_info["response_id"]
        if await self.conversations.load(response_id) is None:
            raise _not_found(response_id)
        await self.conversations.delete(response_id)
        return json_response({"id": response_id, "object": "response", "deleted": True})
