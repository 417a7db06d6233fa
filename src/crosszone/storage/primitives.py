"""The primitives every zone-store backend implements, and the helpers the policy builds on.

The guarantees each primitive must give are listed in :class:`crosszone.storage.base.ZoneStore`'s
module docstring; the policy lives in :mod:`~crosszone.storage.outbox` and
:mod:`~crosszone.storage.base`.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar

from crosszone.errors import StoreConflict
from crosszone.storage.records import Entry, HybridLogicalClock, PreparedTx, Record

T = TypeVar("T")
Decision = Literal["commit", "abort"]
KEY_MAX = "\U0010ffff"  # sorts after every other character: the end of a prefix range

OUTBOX_POS = "outbox_pos"  # last position used in the outbox
OUTBOX_FLOOR = "outbox_floor"  # every position <= floor has been trimmed
FENCE_TOKEN = "fence_token"  # highest coordinator token seen
LEASE = "lease"  # epoch of the lease this store holds, -1 when told it lost it


def applied_counter(zone: str) -> str:
    return f"applied:{zone}"


def cursor_counter(zone: str) -> str:
    return f"cursor:{zone}"


class StorePrimitives(ABC):
    """State every store has, the helpers shared by the policy, and the abstract primitives."""

    def __init__(self, zone: str, *, conflict_timeout: float = 2.0,
                 clock: HybridLogicalClock | None = None) -> None:
        self.zone = zone
        self.conflict_timeout = conflict_timeout
        self.clock = clock or HybridLogicalClock()
        self._listeners: list[Callable[[], None]] = []
        self._max_token = 0
        self._lease: int | None = 0
        self._lease_until: float | None = None  # monotonic; a time-limited grant lapses then
        self._durable_lease = 0  # what the database says (-1: revoked)
        self.is_open = False

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(zone={self.zone!r}, lease={self._lease}, "
                f"max_token={self._max_token})")

    async def quiesce(self) -> None:
        """Wait until background work the backend deferred (outbox publishing) is done."""
        return None

    def add_listener(self, callback: Callable[[], None]) -> None:
        """``callback()`` runs (on the event loop) after every commit that grew the outbox."""
        self._listeners.append(callback)

    def _notify(self) -> None:
        for callback in self._listeners:
            callback()

    def _log_own(self, tx: Any, records: Sequence[Record], *, store: bool = True) -> None:
        """LWW-store ``records`` and log them as this zone's next entries (inside ``tx``)."""
        if store:
            self._store_lww(tx, sorted(records, key=lambda r: (r.collection, r.key)))
        name = applied_counter(self.zone)
        self._counter(tx, OUTBOX_POS, lock=True)
        last = self._counter(tx, name)
        self._append_outbox(tx, [(self.zone, last + i + 1, r) for i, r in enumerate(records)])
        self._set_counter(tx, name, last + len(records))

    def _append_outbox(self, tx: Any, items: Sequence[tuple[str, int, Record]]) -> None:
        if not items:
            return
        head = self._counter(tx, OUTBOX_POS, lock=True)
        end = head + len(items)
        now = time.time()
        self._insert_outbox(tx, [Entry(source, seq, record, head + i + 1, end, now)
                                 for i, (source, seq, record) in enumerate(items)])
        self._set_counter(tx, OUTBOX_POS, end)

    def _applied(self, tx: Any) -> dict[str, int]:
        prefix = applied_counter("")
        return {name[len(prefix):]: value
                for name, value in self._counters(tx, prefix).items()}

    async def _retry_conflicts(self, attempt: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self.conflict_timeout
        delay = 0.005
        while True:
            try:
                return await attempt()
            except StoreConflict:
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)

    # ---------------------------------------------------------------- primitives
    @abstractmethod
    async def _open(self) -> None: ...

    @abstractmethod
    async def _close(self) -> None: ...

    @abstractmethod
    async def _transact(self, fn: Callable[[Any], T], *, write: bool = True) -> T: ...

    @abstractmethod
    def _fetch(self, tx: Any, collection: str, key: str) -> Record | None: ...

    @abstractmethod
    def _scan(self, tx: Any, collection: str, lo: str, after: str, hi: str, limit: int,
              include_deleted: bool) -> list[Record]: ...

    @abstractmethod
    def _store_lww(self, tx: Any, records: Sequence[Record]) -> None: ...

    @abstractmethod
    def _all_records(self, tx: Any) -> list[Record]: ...

    @abstractmethod
    def _max_hlc(self, tx: Any) -> int: ...

    @abstractmethod
    def _counter(self, tx: Any, name: str, *, lock: bool = False) -> int: ...

    @abstractmethod
    def _counters(self, tx: Any, prefix: str) -> dict[str, int]: ...

    @abstractmethod
    def _set_counter(self, tx: Any, name: str, value: int) -> None: ...

    @abstractmethod
    def _insert_outbox(self, tx: Any, entries: Sequence[Entry]) -> None: ...

    @abstractmethod
    def _select_outbox(self, tx: Any, after: int, limit: int) -> list[Entry]: ...

    @abstractmethod
    def _delete_outbox(self, tx: Any, upto: int) -> int: ...

    @abstractmethod
    def _decide(self, tx: Any, txid: str, decision: Decision, now: float) -> Decision: ...

    @abstractmethod
    def _decision(self, tx: Any, txid: str) -> Decision | None: ...

    @abstractmethod
    def _held_keys(self, tx: Any, keys: Sequence[tuple[str, str]]) -> list[str]: ...

    @abstractmethod
    async def _prepare(self, txid: str, records: Sequence[Record]) -> None: ...

    @abstractmethod
    async def _commit_prepared(self, txid: str) -> bool: ...

    @abstractmethod
    async def _rollback_prepared(self, txid: str) -> bool: ...

    @abstractmethod
    async def _list_prepared(self) -> list[PreparedTx]: ...
