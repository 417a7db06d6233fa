"""FailoverStore: every zone's store seen as one, for the gateway's products.

A strong operation (2PC write, strong read) can be served by any zone store that holds a lease
and is in the 2PC membership; the control plane takes a dead zone out within a lease period
(:mod:`crosszone.control.stores`). So instead of failing while that happens, the gateway tries
its own zone's store first and then the others, round after round with backoff, until
``deadline``: a strong write or read then waits out a zone failure instead of failing it.

Retried: a store that cannot be reached (:class:`StoreUnavailable`) or without a lease or with
a stale fencing token (:class:`Fenced`) -- on the next zone's store at once; a 2PC that aborted
because a participant did not answer (:class:`TransactionAborted`) or a key held by an
in-doubt transaction (:class:`StoreConflict`) -- after a backoff, from the own zone again (any
coordinator would meet the same participant or key until the control plane acts).
Retrying is safe because every product write is idempotent: it names its key and its whole
value (an API key's id is chosen before the first attempt), so a write that committed although
its answer was lost commits the same value again.
Async operations fail over only when a store cannot be reached.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from crosszone.errors import (
    Fenced,
    StoreConflict,
    StoreError,
    StoreUnavailable,
    TransactionAborted,
)
from crosszone.storage.client import StoreClient, Written, ZoneStores, pages
from crosszone.storage.records import Record, Write

T = TypeVar("T")
log = logging.getLogger(__name__)

STRONG_RETRYABLE: tuple[type[StoreError], ...] = (StoreUnavailable, Fenced, TransactionAborted,
                                                  StoreConflict)
ASYNC_RETRYABLE: tuple[type[StoreError], ...] = (StoreUnavailable,)


class FailoverStore:
    """The zone stores of ``stores`` as one store: the local zone's first, then the others."""

    def __init__(self, stores: ZoneStores, *, deadline: float = 8.0, backoff: float = 0.05,
                 max_backoff: float = 0.5, read_timeout: float = 2.5,
                 probe_timeout: float = 0.3, trust_seconds: float = 5.0) -> None:
        self.stores = stores
        self.read_timeout = read_timeout  # a frozen store must not hold a read for long
        # A store that served in the last ``trust_seconds`` is called directly; any other is
        # first asked ``GET /health`` (``probe_timeout``): one that does not answer, or holds
        # no lease, is passed over for a strong operation instead of holding it for a whole
        # write timeout (a frozen zone). Stores that failed go last in the next rounds.
        self.probe_timeout = probe_timeout
        self.trust_seconds = trust_seconds
        self._trusted: dict[str, float] = {}  # zone -> served recently, until (monotonic)
        self._failed: dict[str, float] = {}  # zone -> failed last at (monotonic)
        self.deadline = deadline
        self.backoff = backoff
        self.max_backoff = max_backoff

    def __repr__(self) -> str:
        return f"FailoverStore(local={self.stores.local_zone!r}, deadline={self.deadline:g}s)"

    async def run(self, op: Callable[[StoreClient], Awaitable[T]], *, strong: bool,
                  deadline: float | None = None) -> T:
        """``op`` on the first store that serves it; the last error after ``deadline``."""
        retryable = STRONG_RETRYABLE if strong else ASYNC_RETRYABLE
        give_up = time.monotonic() + (self.deadline if deadline is None else deadline)
        delay = self.backoff
        failures: list[str] = []
        last: StoreError = StoreUnavailable("no zone store configured")
        answered: StoreError | None = None  # the last refusal of a store that did answer
        while True:
            for client in self._order():
                if strong:
                    refused = await self._unusable(client)
                    if refused is not None:
                        failures.append(f"{client.zone}: {refused}")
                        last = refused
                        if not isinstance(refused, StoreUnavailable):
                            answered = refused
                        continue
                try:
                    result = await op(client)
                except retryable as exc:
                    failures.append(f"{client.zone}: {exc}")
                    last = exc
                    if isinstance(exc, StoreUnavailable):
                        self._distrust(client.zone)
                    else:
                        answered = exc
                    if isinstance(exc, TransactionAborted | StoreConflict):
                        break  # a participant or a key, not this coordinator: any would fail
                else:
                    self._trusted[client.zone] = time.monotonic() + self.trust_seconds
                    self._failed.pop(client.zone, None)
                    return result
                if time.monotonic() >= give_up:
                    break
            if time.monotonic() + delay >= give_up:
                log.warning("no zone store served the %s operation within %.1fs: %s",
                            "strong" if strong else "async", self.deadline,
                            "; ".join(failures[-3:]))
                # a store that answered says why better than one that is down: "holds no
                # lease" (409, no controller majority: refused by design) rather than
                # "cannot connect" (503, which a load balancer would retry elsewhere)
                raise answered if answered is not None else last
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff)

    def _order(self) -> list[StoreClient]:
        """The local store first, then the others; stores that failed last (oldest first)."""
        return sorted(self.stores.all(), key=lambda c: self._failed.get(c.zone, 0.0))

    def _distrust(self, zone: str) -> None:
        self._trusted.pop(zone, None)
        self._failed[zone] = time.monotonic()

    async def _unusable(self, client: StoreClient) -> StoreError | None:
        """None when ``client`` may take a strong operation, else why not (its probe's error:
        Fenced for a store without a lease, StoreUnavailable for one that does not answer)."""
        if self._trusted.get(client.zone, 0.0) > time.monotonic():
            return None
        try:
            await client.health(timeout=self.probe_timeout)
        except StoreError as exc:
            self._distrust(client.zone)
            return exc
        return None

    # ------------------------------------------------------------------ the StoreClient calls
    async def get(self, collection: str, key: str, *, strong: bool = False,
                  deadline: float | None = None) -> Record | None:
        return await self.run(lambda c: c.get(collection, key, strong=strong,
                                              timeout=self.read_timeout),
                              strong=strong, deadline=deadline)

    async def scan(self, collection: str, *, prefix: str = "", after: str = "",
                   limit: int = 1000, strong: bool = False) -> tuple[list[Record], str | None]:
        return await self.run(lambda c: c.scan(collection, prefix=prefix, after=after,
                                               limit=limit, strong=strong), strong=strong)

    def iterate(self, collection: str, *, prefix: str = "", page: int = 1000,
                strong: bool = False) -> AsyncIterator[Record]:
        """Every live record under ``prefix``; each page from whichever store serves it."""
        return pages(lambda after: self.scan(collection, prefix=prefix, after=after,
                                             limit=page, strong=strong))

    async def write(self, writes: Sequence[Write], *, strong: bool = False) -> Written:
        return await self.run(lambda c: c.write(writes, strong=strong), strong=strong)

    async def put(self, collection: str, key: str, value: Any, *,
                  strong: bool = False) -> Written:
        return await self.write([Write.put(collection, key, value)], strong=strong)

    async def delete(self, collection: str, key: str, *, strong: bool = False) -> Written:
        return await self.write([Write.remove(collection, key)], strong=strong)


AnyStore = StoreClient | FailoverStore
"""What the gateway's products read and write through: one zone's store, or all of them."""
