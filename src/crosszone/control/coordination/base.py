"""The coordination interface: one leader lease with a fencing token, and a tiny KV.

Every backend (embedded Raft, etcd) implements the small ``_primitives``; the public methods here
hold the policy (Patroni's AbstractDCS is the model): time limits, error translation, and the
deadline after which a leader must stop acting.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from crosszone.control.settings import LeaseSettings
from crosszone.errors import CoordinationError, LeaseLost

T = TypeVar("T")


@dataclass(frozen=True)
class Lease:
    """A leader lease as its holder sees it.

    ``term`` is the fencing token: every command the leader sends carries it, and receivers reject
    one older than any they have seen. ``deadline`` is on the holder's monotonic clock: the moment
    the renewal was *sent* plus the TTL minus the safety margin, so a slow answer shortens the time
    the leader may act and never lengthens it.
    """

    holder: str
    term: int
    deadline: float
    handle: str = ""  # the backend's own id for the lease (the etcd lease ID)

    def valid(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) < self.deadline

    def remaining(self, now: float | None = None) -> float:
        return self.deadline - (time.monotonic() if now is None else now)


@dataclass(frozen=True)
class LeaderInfo:
    """Who holds the lease according to the store (possibly slightly stale on a follower)."""

    holder: str
    term: int

    @property
    def node_id(self) -> str:
        return holder_node(self.holder)


def holder_node(holder: str) -> str:
    """The node id inside a holder string (``node#incarnation``)."""
    return holder.split("#", 1)[0]


@dataclass(frozen=True)
class Grant:
    """What a primitive returns when it acquired or refreshed the lease."""

    term: int
    handle: str = ""


class Coordinator(ABC):
    """A leader lease and a tiny KV over a consensus store.

    Guarantees every implementation gives (``tests/test_coordination_contract.py`` checks each):

    Leadership (one lease per cluster)
      * ``_acquire(ttl)`` is create-if-absent: it takes the lease only when no live lease exists,
        and returns the existing grant when the lease is already this node's own.
      * Each new lease gets a term strictly greater than every term granted before, by any node:
        the fencing token.
      * The store keeps a lease at least ``ttl`` seconds after the last successful
        acquire/refresh was sent, and drops it soon after that (so a dead holder is replaced).
      * ``_refresh(grant)`` and ``_release(grant)`` are compare-and-set on the term: they never
        touch a lease granted to anyone else, and ``_refresh`` raises :class:`LeaseLost` when the
        lease is gone.

    KV (shifts, scaling targets, the published routing)
      * ``_get`` / ``_items(prefix)`` / ``_put`` / ``_delete`` on string keys and values; reads may
        lag a write by a moment on a follower.
      * ``_put`` / ``_delete`` with ``fence=term`` apply only while the lease with exactly that
        term is held (and return False otherwise), so a deposed leader cannot publish.

    Time
      * Every primitive returns or raises within the request timeout; the base enforces it and
        turns a timeout or a library error into :class:`CoordinationError`.
    """

    def __init__(self, node_id: str, settings: LeaseSettings) -> None:
        self.node_id = node_id
        self.settings = settings
        # A restarted process is a new holder: it waits for its predecessor's lease to lapse
        # instead of inheriting a term another incarnation of it may still be acting on.
        self.holder = f"{node_id}#{secrets.token_hex(3)}"

    # -- lifecycle -------------------------------------------------------------------------------

    @abstractmethod
    async def start(self) -> None:
        """Connect or start the local member; idempotent."""

    @abstractmethod
    async def close(self) -> None:
        """Release resources (sockets, threads); never raises."""

    # -- leadership ------------------------------------------------------------------------------

    async def campaign(self) -> Lease | None:
        """Take the lease if it is free (or already ours); None when someone else holds it."""
        sent = time.monotonic()
        grant = await self._bounded(self._acquire(self.settings.ttl_seconds))
        return None if grant is None else self._lease(grant, sent)

    async def renew(self, lease: Lease) -> Lease:
        """Extend our lease; raise LeaseLost when it is gone, CoordinationError when unsure."""
        sent = time.monotonic()
        if not lease.valid(sent):
            raise LeaseLost(f"lease of term {lease.term} passed its deadline before renewal")
        grant = await self._bounded(self._refresh(Grant(lease.term, lease.handle),
                                                  self.settings.ttl_seconds),
                                    limit=max(0.0, min(self.settings.request_timeout_seconds,
                                                       lease.remaining(sent))))
        return self._lease(grant, sent)

    async def resign(self, lease: Lease) -> None:
        """Give the lease up at once so another node can take over without waiting for the TTL."""
        await self._bounded(self._release(Grant(lease.term, lease.handle)))

    async def leader(self) -> LeaderInfo | None:
        return await self._bounded(self._leader())

    # -- KV --------------------------------------------------------------------------------------

    async def get(self, key: str) -> str | None:
        return await self._bounded(self._get(key))

    async def items(self, prefix: str) -> dict[str, str]:
        return await self._bounded(self._items(prefix))

    async def put(self, key: str, value: str, *, fence: int | None = None) -> bool:
        """Store a value; with ``fence`` only while the lease of that term is held."""
        return await self._bounded(self._put(key, value, fence))

    async def delete(self, key: str, *, fence: int | None = None) -> bool:
        """Remove a key; with ``fence`` only while the lease of that term is held."""
        return await self._bounded(self._delete(key, fence))

    # -- what each backend implements ------------------------------------------------------------

    @abstractmethod
    async def _acquire(self, ttl: float) -> Grant | None: ...

    @abstractmethod
    async def _refresh(self, grant: Grant, ttl: float) -> Grant: ...

    @abstractmethod
    async def _release(self, grant: Grant) -> None: ...

    @abstractmethod
    async def _leader(self) -> LeaderInfo | None: ...

    @abstractmethod
    async def _get(self, key: str) -> str | None: ...

    @abstractmethod
    async def _items(self, prefix: str) -> dict[str, str]: ...

    @abstractmethod
    async def _put(self, key: str, value: str, fence: int | None) -> bool: ...

    @abstractmethod
    async def _delete(self, key: str, fence: int | None) -> bool: ...

    # -- policy ----------------------------------------------------------------------------------

    def _lease(self, grant: Grant, sent: float) -> Lease:
        s = self.settings
        return Lease(self.holder, grant.term,
                     sent + s.ttl_seconds - s.safety_margin_seconds, grant.handle)

    async def _bounded(self, call: Awaitable[T], limit: float | None = None) -> T:
        timeout = self.settings.request_timeout_seconds if limit is None else limit
        try:
            return await asyncio.wait_for(call, timeout)
        except (LeaseLost, CoordinationError):
            raise
        except TimeoutError:
            raise CoordinationError(
                f"{type(self).__name__} {self.node_id}: no answer within {timeout:.2f} s") from None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.node_id}>"
