"""The opt-in exact-match response cache (``cache.responses``): deterministic chat and
completions requests answered again without a worker.

Cacheable: ``POST /v1/chat/completions`` or ``/v1/completions``, not streamed, ``n`` absent or
1, and deterministic by the request's own word: ``temperature`` 0 (greedy decoding) or a
``seed`` (the client asks for a reproducible sample; that sample is the cached one). Its key
is the SHA-256 of the API and the request as canonical JSON (keys sorted) less the fields that
do not change the answer (:data:`IGNORED`, and ``n``, which can only be 1); so two requests
share an entry only when every other field is equal, byte for byte once canonical.

An entry is stored in the zone store (collection ``response_cache``, async class: it
replicates, so the other zones answer the same request from it too) and kept in the gateway's
:class:`~crosszone.storage.cache.LocalCache`, which follows the zone store's change feed: a
newer entry for the same key written in another zone replaces the local copy once
replication brings it. Each entry expires ``ttl_seconds`` after it was stored (wall clock,
checked on every hit, memory or store): an expired entry is a miss, and the next miss
overwrites it. A hit answers the stored body with a fresh ``id`` and ``created``; the client
gets the same ``usage`` block, and is billed for it (a hit saves compute, not the bill).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from typing import Any

import orjson

from crosszone.errors import StoreError
from crosszone.storage.cache import LocalCache
from crosszone.storage.client import StoreClient

RESPONSE_CACHE = "response_cache"
CACHE_HEADER = "x-crosszone-cache"
IGNORED = frozenset({"user", "stream", "stream_options", "metadata", "store", "service_tier"})
"""Request fields that do not change the answer: left out of the key."""
STORE_TIMEOUT = 1.0  # a slow store makes the cache miss, never the request slow
log = logging.getLogger("crosszone.response_cache")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def cache_key(api: str, doc: dict[str, Any]) -> str | None:
    """The key of a cacheable request (None: not deterministic, streamed, or several choices)."""
    if doc.get("stream") is True or doc.get("n") not in (None, 1):
        return None
    temperature, seed = doc.get("temperature"), doc.get("seed")
    greedy = _number(temperature) and temperature == 0
    seeded = isinstance(seed, int) and not isinstance(seed, bool)
    if not (greedy or seeded) or not isinstance(doc.get("model"), str):
        return None
    request = {k: v for k, v in doc.items() if k not in IGNORED and k != "n"}  # n is 1
    try:
        canonical = orjson.dumps({"api": api, "request": request}, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits: the worker will refuse it
        return None
    return hashlib.sha256(canonical).hexdigest()


def _valid(value: Any, now: float) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("body"), dict)
            and _number(value.get("expires_at")) and value["expires_at"] > now)


class ResponseCache:
    """Entries in ``store`` (this zone's) and in ``memory`` (see the module docstring)."""

    def __init__(self, zone: str, store: StoreClient, memory: LocalCache[dict[str, Any]],
                 ttl: float) -> None:
        self.zone = zone
        self.store = store
        self.memory = memory
        self.ttl = ttl
        self.hits = self.misses = 0

    def __repr__(self) -> str:
        return f"ResponseCache({self.zone}, hits={self.hits}, misses={self.misses}, " \
               f"{self.memory!r})"

    async def lookup(self, key: str) -> bytes | None:
        """The answer to send for a hit (None: a miss)."""
        value = await self._entry(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        body = dict(value["body"])
        prefix = str(body.get("id") or "cmpl").split("-", 1)[0]
        body["id"], body["created"] = f"{prefix}-{secrets.token_hex(12)}", int(time.time())
        return orjson.dumps(body)

    async def _entry(self, key: str) -> dict[str, Any] | None:
        now = time.time()
        cached = self.memory.get(key)
        if cached is not None:
            if _valid(cached, now):
                return cached
            self.memory.discard(key)
        with self.memory.reading(key) as read:
            try:
                record = await self.store.get(RESPONSE_CACHE, key, timeout=STORE_TIMEOUT)
            except StoreError as exc:
                log.debug("response cache lookup in zone %s failed: %s", self.zone, exc)
                return None
            if record is None or not _valid(record.value, now):
                return None
            value: dict[str, Any] = record.value
            self.memory.fill(read, value, record.version, ttl=value["expires_at"] - now)
        return value

    async def remember(self, key: str, api: str, model: str, body: bytes) -> None:
        """Store a worker's successful answer under ``key`` (best effort: a store that does
        not take it in time only costs a later miss)."""
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        if not isinstance(answer, dict) or not answer.get("choices"):
            return
        now = time.time()
        value = {"api": api, "model": model, "body": answer, "zone": self.zone,
                 "created": now, "expires_at": now + self.ttl}
        with self.memory.reading(key) as read:
            try:
                async with asyncio.timeout(STORE_TIMEOUT):
                    written = await self.store.put(RESPONSE_CACHE, key, value)
            except (StoreError, TimeoutError) as exc:
                log.info("response cache entry not stored in zone %s: %s", self.zone, exc)
                return
            self.memory.fill(read, value, written.records[0].version)
