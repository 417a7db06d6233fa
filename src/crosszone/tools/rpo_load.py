"""The write load of the RPO drill, and the log of what the service acknowledged.

Three kinds of writes go through the load balancer, each acknowledged by a 200 answer:

* API keys (``POST /admin/keys``): strong; stored under ``api_keys/<id>``;
* conversations (``POST /v1/responses``, each client continuing its own chain with
  ``previous_response_id``): the deployment's ``conversations.consistency``; ``responses/<id>``;
* usage records: one per answered request (responses and chat completions), async;
  ``usage/<x-request-id>``.

Each acknowledgement keeps the zone whose gateway answered (``x-crosszone-gateway-zone``) and
when, so the drill can tell the writes the killed zone acknowledged.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

GATEWAY_ZONE = "x-crosszone-gateway-zone"
REQUEST_ID = "x-request-id"
MODEL = "deepseek-chat"


@dataclass(frozen=True, slots=True)
class Acked:
    kind: str  # keys | conversations | usage
    collection: str
    key: str
    zone: str  # the zone whose gateway answered
    at: float  # time.monotonic() when the answer arrived


@dataclass
class AckLog:
    acked: list[Acked] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    error_times: list[float] = field(default_factory=list)

    def add(self, kind: str, collection: str, key: str, zone: str) -> None:
        self.acked.append(Acked(kind, collection, key, zone, time.monotonic()))

    def failed(self, what: str) -> None:
        self.errors[what] += 1
        self.error_times.append(time.monotonic())

    def of(self, kind: str) -> list[Acked]:
        return [a for a in self.acked if a.kind == kind]


class RpoLoad:
    """``concurrency`` clients writing keys, conversations and (with both) usage records."""

    def __init__(self, base_url: str, api_key: str, admin_token: str, *,
                 concurrency: int = 8) -> None:
        self.base_url = base_url.rstrip("/")  # the LB, without /v1
        self.api_key = api_key
        self.admin_token = admin_token
        self.concurrency = concurrency
        self.log = AckLog()

    def __repr__(self) -> str:
        return f"RpoLoad({self.base_url}, acked={len(self.log.acked)})"

    async def run(self, stop: asyncio.Event) -> AckLog:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            clients = [self._keys(session, stop)]
            clients += [self._conversations(session, stop, n)
                        for n in range(max(1, self.concurrency - 2))]
            clients.append(self._chats(session, stop))
            await asyncio.gather(*clients)
        return self.log

    async def _post(self, session: aiohttp.ClientSession, path: str, body: dict[str, Any],
                    token: str, what: str) -> tuple[dict[str, Any], str, str] | None:
        """The answer, serving zone and request id of a 200; None (counted) otherwise."""
        try:
            async with session.post(self.base_url + path, data=orjson.dumps(body), headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/json"}) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    self.log.failed(f"{what}: HTTP {resp.status}")
                    await asyncio.sleep(0.05)
                    return None
                answer = orjson.loads(raw)
                return answer, resp.headers.get(GATEWAY_ZONE, "?"), resp.headers.get(
                    REQUEST_ID, "")
        except (aiohttp.ClientError, TimeoutError, OSError, orjson.JSONDecodeError) as exc:
            self.log.failed(f"{what}: {type(exc).__name__}")
            await asyncio.sleep(0.05)
            return None

    async def _keys(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            got = await self._post(session, "/admin/keys", {"name": f"rpo-{n}"},
                                   self.admin_token, "keys")
            if got is not None:
                self.log.add("keys", "api_keys", str(got[0]["id"]), got[1])

    async def _conversations(self, session: aiohttp.ClientSession, stop: asyncio.Event,
                             n: int) -> None:
        previous: str | None = None
        turn = 0
        while not stop.is_set():
            turn += 1
            body: dict[str, Any] = {"model": MODEL, "input": f"client {n} turn {turn}",
                                    "max_output_tokens": 8}
            if previous is not None and turn % 5:
                body["previous_response_id"] = previous
            got = await self._post(session, "/v1/responses", body, self.api_key,
                                   "conversations")
            if got is None:
                previous = None  # the chain may have been lost with its zone: start anew
                continue
            answer, zone, rid = got
            previous = str(answer["id"])
            self.log.add("conversations", "responses", previous, zone)
            if rid:
                self.log.add("usage", "usage", rid, zone)

    async def _chats(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set():
            got = await self._post(session, "/v1/chat/completions", {
                "model": MODEL, "max_tokens": 8,
                "messages": [{"role": "user", "content": "hello"}]}, self.api_key, "chat")
            if got is not None and got[2]:
                self.log.add("usage", "usage", got[2], got[1])
