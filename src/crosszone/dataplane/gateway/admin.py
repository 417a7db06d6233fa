"""The admin API of a gateway (behind ``auth.admin_token``): API keys and usage.

=====================================  =====================================================
``POST /admin/keys``                   ``{"name": ...}`` -> the new key, shown this once
``GET /admin/keys``                    every key: id, name, created, revoked (never a secret)
``DELETE /admin/keys/{id}``            revoke; in effect in every zone when it returns
``GET /admin/usage``                   usage totals per key and model (``key_id``, ``model``
                                       filter), as this zone's store holds them
``POST /internal/keys/invalidate``     ``{"ids": [...]}``: drop keys from this gateway's cache
                                       (what a revoking gateway sends the others)
=====================================  =====================================================
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from crosszone.dataplane.gateway.keys import KEYS, ApiKey, KeyCache, key_hash, new_secret
from crosszone.dataplane.gateway.usage import USAGE, UsageRecord, aggregate
from crosszone.errors import ApiNotFound, InvalidApiRequest
from crosszone.storage.failover import AnyStore

INVALIDATE_PATH = "/internal/keys/invalidate"
PEER_TIMEOUT = 1.0


def json_response(payload: Any, status: int = 200, *,
                  headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status,
                        content_type="application/json", headers=headers)


async def json_body(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip() and optional:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidApiRequest(f"request body is not valid JSON: {exc}",
                                code="invalid_json") from exc
    if not isinstance(body, dict):
        raise InvalidApiRequest("request body must be a JSON object", code="invalid_json")
    return body


class KeyRegistry:
    """Issues, lists and revokes API keys in the zone stores (strong writes)."""

    def __init__(self, store: AnyStore, cache: KeyCache, *, peers: Sequence[str],
                 admin_token: str | None, session: Any) -> None:
        self.store = store
        self.cache = cache
        self.peers = list(peers)  # other gateways' base URLs
        self.admin_token = admin_token
        self._session = session  # () -> aiohttp.ClientSession

    def __repr__(self) -> str:
        return f"KeyRegistry({self.store!r}, peers={len(self.peers)})"

    async def create(self, name: str) -> tuple[ApiKey, str]:
        key_id, secret = new_secret()
        key = ApiKey(key_id, name, key_hash(secret), int(time.time()))
        await self.store.put(KEYS, key_id, key.to_json(), strong=True)
        return key, secret

    async def all(self) -> list[ApiKey]:
        return [ApiKey.from_json(r.value) async for r in self.store.iterate(KEYS, strong=True)
                if isinstance(r.value, dict)]

    async def revoke(self, key_id: str) -> tuple[ApiKey, list[str]]:
        """Revoke (idempotent); the key and the gateways that had to be waited out."""
        record = await self.store.get(KEYS, key_id, strong=True)
        if record is None or not isinstance(record.value, dict):
            raise ApiNotFound(f"no API key with id {key_id!r}", param="id")
        key = ApiKey.from_json(record.value)
        if key.revoked is None:
            key = replace(key, revoked=int(time.time()))
            await self.store.put(KEYS, key_id, key.to_json(), strong=True)
        committed = time.monotonic()
        self.cache.invalidate([key_id])
        unconfirmed = await self.tell_peers([key_id])
        if unconfirmed:  # their caches hold nothing read before the commit once the TTL passed
            await asyncio.sleep(max(0.0, committed + self.cache.ttl - time.monotonic()))
        return key, unconfirmed

    async def tell_peers(self, key_ids: list[str]) -> list[str]:
        """Ask every other gateway to drop ``key_ids``; the ones that did not confirm."""
        headers = {"Authorization": f"Bearer {self.admin_token or ''}",
                   "Content-Type": "application/json"}
        body = orjson.dumps({"ids": key_ids})
        session: aiohttp.ClientSession = self._session()

        async def tell(url: str) -> bool:
            try:
                async with session.post(url + INVALIDATE_PATH, data=body, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT)
                                        ) as resp:
                    return resp.status == 200
            except (aiohttp.ClientError, TimeoutError, OSError):
                return False

        answers = await asyncio.gather(*(tell(url) for url in self.peers))
        return [url for url, ok in zip(self.peers, answers, strict=True) if not ok]


class AdminApi:
    """The handlers; the caller checks the admin token first."""

    def __init__(self, zone: str, registry: KeyRegistry, store: AnyStore) -> None:
        self.zone = zone
        self.registry = registry
        self.store = store

    async def create_key(self, request: web.Request) -> web.Response:
        body = await json_body(request, optional=True)
        name = body.get("name", "")
        if not isinstance(name, str) or len(name) > 200:
            raise InvalidApiRequest("'name' must be a string of at most 200 characters",
                                    param="name", code="invalid_value")
        key, secret = await self.registry.create(name)
        return json_response({**key.public(), "key": secret})

    async def list_keys(self, request: web.Request) -> web.Response:
        keys = await self.registry.all()
        return json_response({"object": "list", "data": [k.public() for k in keys]})

    async def revoke_key(self, request: web.Request) -> web.Response:
        key, waited = await self.registry.revoke(request.match_info["key_id"])
        return json_response({**key.public(), "deleted": True,
                              "waited_for_cache_ttl": bool(waited)})

    async def usage(self, request: web.Request) -> web.Response:
        key_id, model = request.query.get("key_id"), request.query.get("model")
        records = [UsageRecord.from_json(r.value) async for r in self.store.iterate(USAGE)
                   if isinstance(r.value, dict)]
        chosen = [r for r in records if (key_id is None or r.key_id == key_id)
                  and (model is None or r.model == model)]
        return json_response({**aggregate(chosen), "zone": self.zone})

    async def invalidate(self, request: web.Request) -> web.Response:
        ids = (await json_body(request)).get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise InvalidApiRequest("'ids' must be an array of key ids", param="ids")
        self.registry.cache.invalidate(ids)
        return json_response({"invalidated": ids, "zone": self.zone})
