"""HttpPeer: another zone's store service, reached over HTTP (the way shipping crosses zones).

aiohttp errors are translated here: connection failures and timeouts become StoreUnavailable,
error bodies are turned back into the StoreError subclass their ``code`` names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson

from crosszone.replication.peers import ReplicationTransport, TxParticipant
from crosszone.storage import Ack, Batch, Decision, PreparedTx, Record, Snapshot
from crosszone.storage.wire import store_request


class HttpPeer(ReplicationTransport, TxParticipant):
    """The store service of ``zone`` at ``base_url`` (``http://127.0.N.6:7000``)."""

    def __init__(self, zone: str, base_url: str, *, timeout: float = 5.0,
                 session: aiohttp.ClientSession | None = None,
                 source_host: str | None = None) -> None:
        self.zone = zone
        self.base_url = base_url.rstrip("/")
        # bind outgoing connections to our own zone address, so a network fault on our zone's
        # subnet cuts replication and 2PC as it would between real zones
        self.source_host = source_host
        self.timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 1.0))
        self._session = session
        self._own_session = session is None

    def __repr__(self) -> str:
        return f"HttpPeer({self.zone!r}, {self.base_url!r})"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            local = (self.source_host, 0) if self.source_host else None
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(local_addr=local), timeout=self.timeout,
                json_serialize=lambda o: orjson.dumps(o).decode())
            self._own_session = True
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, method: str, path: str, body: Any = None,
                   timeout: float | None = None) -> Any:
        """One request; the decoded JSON answer, or the StoreError the error body names."""
        return await store_request(
            self._client(), self.zone, self.base_url, method, path, body,
            timeout=None if timeout is None else aiohttp.ClientTimeout(total=timeout))

    async def apply(self, batch: Batch) -> Ack:
        return Ack.from_json(await self.call("POST", "/replication/apply", batch.to_json()))

    async def import_snapshot(self, snapshot: Snapshot) -> Ack:
        return Ack.from_json(await self.call("POST", "/replication/snapshot", snapshot.to_json(),
                                             timeout=120.0))

    async def prepare(self, txid: str, records: Sequence[Record], token: int) -> None:
        await self.call("POST", "/tx/prepare", {"txid": txid, "token": token,
                                                "records": [r.to_json() for r in records]})

    async def commit(self, txid: str, token: int) -> bool:
        answer = await self.call("POST", "/tx/commit", {"txid": txid, "token": token})
        return bool(answer["done"])

    async def rollback(self, txid: str) -> bool:
        answer = await self.call("POST", "/tx/rollback", {"txid": txid})
        return bool(answer["done"])

    async def prepared(self) -> list[PreparedTx]:
        answer = await self.call("GET", "/tx/prepared")
        return [PreparedTx.from_json(p) for p in answer["prepared"]]

    async def decide(self, txid: str, decision: Decision) -> Decision:
        answer = await self.call("POST", "/tx/decision", {"txid": txid, "decision": decision})
        return "commit" if answer["decision"] == "commit" else "abort"
