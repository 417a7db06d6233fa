"""API keys: issued and revoked by two-phase commit, checked by each gateway in its own zone.

A key is ``sk-cz-k<16 hex: its id>_<43 characters: 256 random bits>``. Stores keep only its
SHA-256 (a fast hash is enough for 256 random bits: nothing to guess) in collection
``api_keys`` under ``key_<id>``, with its name, creation time and revocation time. Issuing and
revoking are strong writes (every zone in service, or none).

A gateway checks a bearer token against the static keys of the topology (bootstrap keys, id
``bootstrap-<hash prefix>``) and then against its zone's store with a strong read (so a zone
that lost its lease refuses, and a key in the middle of a revocation waits for its outcome),
keeping what it read for ``auth.key_cache_seconds`` in :class:`KeyCache`.

Revocation is in effect everywhere before ``DELETE /admin/keys/{id}`` returns because of the
order of its steps: (1) the revocation commits in every zone in service (2PC); (2) every
gateway is told to drop the key from its cache (``POST /internal/keys/invalidate``) and (3) if
one does not confirm, the call waits until the cache TTL has passed since the commit, after which
no cache anywhere holds an entry read before the commit. Cache fills racing an invalidation
are discarded (:class:`~crosszone.storage.cache.LocalCache`). The gateway's change follower
also discards a key when its zone store's change feed says it changed (an extra: the
revocation does not depend on it).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from crosszone.errors import Fenced, NotAuthenticated
from crosszone.storage.cache import Cached, LocalCache
from crosszone.storage.failover import AnyStore, FailoverStore
from crosszone.storage.records import Record

log = logging.getLogger("crosszone.gateway.keys")

KEYS = "api_keys"
KEY_PREFIX = "sk-cz-k"
_DYNAMIC = re.compile(r"sk-cz-k([0-9a-f]{16})_[A-Za-z0-9_-]{40,}")
BOOTSTRAP_PREFIX = "bootstrap-"


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> tuple[str, str]:
    """A fresh (key id, secret key)."""
    raw_id = secrets.token_hex(8)
    return f"key_{raw_id}", f"{KEY_PREFIX}{raw_id}_{secrets.token_urlsafe(32)}"


def key_id_of(secret: str) -> str | None:
    """The id a dynamic key names (None if ``secret`` does not look like one)."""
    match = _DYNAMIC.fullmatch(secret)
    return f"key_{match.group(1)}" if match else None


def bootstrap_id(secret: str) -> str:
    """The id usage records carry for a static key of the topology."""
    return BOOTSTRAP_PREFIX + key_hash(secret)[:12]


@dataclass(frozen=True, slots=True)
class ApiKey:
    """What a store holds about one key (never the key itself)."""

    id: str
    name: str
    hash: str
    created: int
    revoked: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "hash": self.hash, "created": self.created,
                "revoked": self.revoked}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ApiKey:
        revoked = data.get("revoked")
        return cls(str(data["id"]), str(data.get("name", "")), str(data["hash"]),
                   int(data["created"]), None if revoked is None else int(revoked))

    def public(self) -> dict[str, Any]:
        """As the admin API shows it: no hash, no secret."""
        return {"object": "api_key", "id": self.id, "name": self.name, "created": self.created,
                "revoked": self.revoked, "active": self.revoked is None}


class KeyCache(LocalCache[ApiKey]):
    """Keys this gateway read from its store, trusted for ``ttl`` seconds from the read's start.

    It does not rely on the change feed (``follows_feed`` off): revocations invalidate it
    explicitly and its TTL bounds the rest. A fill that raced an invalidation is dropped.
    """

    def __init__(self, ttl: float, *, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(KEYS, ttl, max_entries=max_entries, clock=clock)

    def put(self, key: ApiKey, read_started: float, generation: int) -> None:
        """The coarse form of :meth:`fill`: keep ``key`` unless anything at all was
        invalidated since ``generation`` was read."""
        if self.ttl > 0 and generation == self.generation:
            self._keep(key.id, Cached(key, None, read_started + self.ttl))

    def invalidate(self, key_ids: Iterable[str] | None = None) -> None:
        """Forget ``key_ids`` (every key when None)."""
        if key_ids is None:
            self.clear()
            return
        for key_id in key_ids:
            self.discard(key_id)


class Authenticator:
    """Checks ``Authorization: Bearer <key>``; answers the key's id or raises NotAuthenticated.

    A key is read with a strong read, from whichever zone store holds a lease (the own zone's
    first). When none does within ``strong_deadline`` -- the control plane has no quorum, so
    no lease is renewed anywhere -- it is read from the nearest store as it stands, so
    inference keeps running: no revocation can be acknowledged while no store holds a lease,
    and a zone cut off before one was sees it once it has caught up. Other store errors
    propagate: the caller answers 503 and the load balancer tries another zone. Without a
    store (``store`` None) only the static keys work.
    """

    def __init__(self, static_keys: Iterable[str], store: AnyStore | None,
                 cache: KeyCache, *, strong_deadline: float = 0.5) -> None:
        self._static = [(k.encode(), bootstrap_id(k)) for k in static_keys]
        self.store = store
        self.cache = cache
        self.strong_deadline = strong_deadline
        self.degraded_reads = 0

    def __repr__(self) -> str:
        return f"Authenticator(static={len(self._static)}, store={self.store!r})"

    async def authenticate(self, authorization: str | None) -> str:
        token = bearer(authorization)
        if token is None:
            raise NotAuthenticated(_MISSING)
        given = token.encode()
        found: str | None = None
        for static, static_id in self._static:  # every key compared: timing tells nothing
            if hmac.compare_digest(given, static):
                found = static_id
        if found is not None:
            return found
        key_id = key_id_of(token)
        if key_id is None or self.store is None:
            raise NotAuthenticated(_MISSING)
        key = await self._lookup(key_id)
        if key is None or not hmac.compare_digest(key.hash, key_hash(token)):
            raise NotAuthenticated(_MISSING)
        if key.revoked is not None:
            raise NotAuthenticated("this API key has been revoked", code="revoked_api_key")
        return key.id

    async def _lookup(self, key_id: str) -> ApiKey | None:
        cached = self.cache.get(key_id)
        if cached is not None:
            return cached
        with self.cache.reading(key_id) as read:
            record = await self._read(key_id)
            if record is None or not isinstance(record.value, dict):
                return None
            key = ApiKey.from_json(record.value)
            self.cache.fill(read, key, record.version)
        return key

    async def _read(self, key_id: str) -> Record | None:
        assert self.store is not None
        try:
            if isinstance(self.store, FailoverStore):
                return await self.store.get(KEYS, key_id, strong=True,
                                            deadline=self.strong_deadline)
            return await self.store.get(KEYS, key_id, strong=True)
        except Fenced as exc:
            self.degraded_reads += 1
            if self.degraded_reads == 1 or self.degraded_reads % 1000 == 0:
                log.warning("no zone store holds a lease (%s): API keys are read from the "
                            "nearest store as it stands (%d such reads)", exc,
                            self.degraded_reads)
            return await self.store.get(KEYS, key_id)


_MISSING = "invalid or missing API key; send 'Authorization: Bearer <key>'"


def bearer(authorization: str | None) -> str | None:
    """The token of ``Bearer <token>`` (None when absent or another scheme)."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def token_matches(authorization: str | None, expected: str | None) -> bool:
    """Whether the bearer token equals ``expected`` (constant time; False when none is set)."""
    token = bearer(authorization)
    if token is None or not expected:
        return False
    return hmac.compare_digest(token.encode(), expected.encode())
