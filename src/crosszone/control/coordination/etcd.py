"""etcd v3 through its JSON gateway (``/v3/...`` over HTTP, aiohttp): leases, txn, keepalive.

The leader key is created with a transaction that succeeds only if the key does not exist
(``create_revision == 0``) and is attached to an etcd lease; the key's create revision is the
term. Revisions only grow in an etcd cluster, so every new leader gets a larger fencing token.
A fenced KV write is a transaction comparing the leader key's create revision with the token.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
from typing import Any

import aiohttp

from crosszone.control.coordination.base import Coordinator, Grant, LeaderInfo
from crosszone.control.settings import LeaseSettings
from crosszone.errors import CoordinationError, LeaseLost

_NOT_FOUND = 5  # gRPC status code etcd uses for "requested lease not found"


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def _prefix_end(prefix: str) -> bytes:
    """The smallest key after every key starting with ``prefix`` (etcd's range_end)."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return b"\0"
    raw[-1] += 1
    return bytes(raw)


class EtcdCoordinator(Coordinator):
    """A client of an etcd v3 cluster; tries the endpoints in turn when one does not answer."""

    def __init__(self, node_id: str, endpoints: list[str], settings: LeaseSettings, *,
                 prefix: str = "/crosszone/") -> None:
        super().__init__(node_id, settings)
        if not endpoints:
            raise CoordinationError("etcd backend needs at least one endpoint")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self._preferred = 0
        self._session: aiohttp.ClientSession | None = None
        self._background: set[asyncio.Task[None]] = set()

    @property
    def leader_key(self) -> str:
        return self.prefix + "leader"

    def _kv_key(self, key: str) -> str:
        return self.prefix + "kv/" + key

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- transport ---------------------------------------------------------------------------------

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the preferred endpoint, moving to the next one when it does not answer.

        Each attempt gets half the request timeout, so a frozen member (which accepts the
        connection and never answers) costs one half and the next member still has time.
        """
        if self._session is None:
            raise CoordinationError(f"etcd client {self.node_id} is not started")
        per_try = aiohttp.ClientTimeout(total=self.settings.request_timeout_seconds / 2)
        errors: list[str] = []
        for attempt in range(len(self.endpoints)):
            index = (self._preferred + attempt) % len(self.endpoints)
            url = self.endpoints[index] + path
            try:
                async with self._session.post(url, json=body, timeout=per_try) as resp:
                    document: dict[str, Any] = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                errors.append(f"{self.endpoints[index]}: {type(exc).__name__} {exc}".strip())
                continue
            if "error" in document and document.get("code") != _NOT_FOUND:
                errors.append(f"{self.endpoints[index]}: {document['error']}")
                continue  # e.g. "etcdserver: no leader" on a minority member: try another
            self._preferred = index
            return document
        raise CoordinationError("etcd: no member answered: " + "; ".join(errors))

    async def _range(self, key: str, range_end: bytes | None = None) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"key": _b64(key)}
        if range_end is not None:
            body["range_end"] = _b64(range_end)
        document = await self._post("/v3/kv/range", body)
        kvs: list[dict[str, Any]] = document.get("kvs", [])
        return kvs

    async def _txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
                   failure: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return await self._post("/v3/kv/txn", {"compare": compare, "success": success,
                                               "failure": failure or []})

    def _is_leader_term(self, term: int) -> dict[str, Any]:
        return {"key": _b64(self.leader_key), "target": "CREATE", "result": "EQUAL",
                "create_revision": str(term)}

    # -- primitives --------------------------------------------------------------------------------

    async def _acquire(self, ttl: float) -> Grant | None:
        current = await self._range(self.leader_key)
        if current:
            kv = current[0]
            if _unb64(kv.get("value", "")) != self.holder:
                return None
            return Grant(int(kv["create_revision"]), str(kv.get("lease", "")))
        granted = await self._post("/v3/lease/grant", {"TTL": str(math.ceil(ttl))})
        lease_id = str(granted["ID"])
        created = {"key": _b64(self.leader_key), "target": "CREATE", "result": "EQUAL",
                   "create_revision": "0"}
        put = {"request_put": {"key": _b64(self.leader_key), "value": _b64(self.holder),
                               "lease": lease_id}}
        document = await self._txn([created], [put])
        if not document.get("succeeded"):
            task = asyncio.get_running_loop().create_task(self._revoke_quietly(lease_id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return None
        return Grant(int(document["header"]["revision"]), lease_id)

    async def _revoke_quietly(self, lease_id: str) -> None:
        with contextlib.suppress(CoordinationError, TimeoutError):  # it expires by itself
            await asyncio.wait_for(self._post("/v3/lease/revoke", {"ID": lease_id}),
                                   self.settings.request_timeout_seconds)

    async def _refresh(self, grant: Grant, ttl: float) -> Grant:
        document = await self._post("/v3/lease/keepalive", {"ID": grant.handle})
        result = document.get("result", document)
        if document.get("code") == _NOT_FOUND or int(result.get("TTL", 0)) <= 0:
            raise LeaseLost(f"etcd lease {grant.handle} (term {grant.term}) has expired")
        return grant

    async def _release(self, grant: Grant) -> None:
        delete = {"request_delete_range": {"key": _b64(self.leader_key)}}
        await self._txn([self._is_leader_term(grant.term)], [delete])
        await self._revoke_quietly(grant.handle)

    async def _leader(self) -> LeaderInfo | None:
        current = await self._range(self.leader_key)
        if not current:
            return None
        return LeaderInfo(_unb64(current[0].get("value", "")), int(current[0]["create_revision"]))

    async def _get(self, key: str) -> str | None:
        found = await self._range(self._kv_key(key))
        return _unb64(found[0].get("value", "")) if found else None

    async def _items(self, prefix: str) -> dict[str, str]:
        full = self._kv_key(prefix)
        found = await self._range(full, _prefix_end(full))
        strip = len(self._kv_key(""))
        return {_unb64(kv["key"])[strip:]: _unb64(kv.get("value", "")) for kv in found}

    async def _put(self, key: str, value: str, fence: int | None) -> bool:
        put = {"key": _b64(self._kv_key(key)), "value": _b64(value)}
        if fence is None:
            await self._post("/v3/kv/put", put)
            return True
        document = await self._txn([self._is_leader_term(fence)], [{"request_put": put}])
        return bool(document.get("succeeded"))

    async def _delete(self, key: str, fence: int | None) -> bool:
        delete = {"key": _b64(self._kv_key(key))}
        if fence is None:
            await self._post("/v3/kv/deleterange", delete)
            return True
        document = await self._txn([self._is_leader_term(fence)],
                                   [{"request_delete_range": delete}])
        return bool(document.get("succeeded"))
