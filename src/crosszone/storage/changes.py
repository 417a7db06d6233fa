"""The change feed of one zone store: which records changed, in order, for caches to follow.

Every change to a record reaches the zone's outbox in the transaction that makes it: a local
write, a two-phase commit (each participant logs the committed records), a record applied from
another zone by replication (logged again for relay). So the feed needs no hook of its own in
the store: :class:`ChangeFeed` tails the outbox -- woken by the store's commit listener, the one
the shippers use, so the write path only sets an event -- and keeps the newest changes in an
in-memory ring, numbered by a counter of its own. ``GET /changes`` on the store service
(:func:`~crosszone.storage.service.create_store_app`) long-polls it.

A subscriber holds ``(epoch, seq)``: the feed instance (a random id: a store restart starts a
new one) and the last change it has seen. It is told to ``reset`` -- forget everything it
cached -- when either is unknown, when it fell behind the ring, after the tailer found entries
trimmed before it read them, and after a snapshot import (which changes records without
outbox entries). A change carries its record's version ``(hlc, origin)``, so a cache can keep
an entry at least as new as the change (its own write coming back, an older write that lost
last-writer-wins).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from crosszone.errors import StoreError
from crosszone.storage.outbox import OutboxStore

log = logging.getLogger("crosszone.store.changes")

Version = tuple[int, str]
"""A record's last-writer-wins order: ``(hlc, origin zone)``."""


@dataclass(frozen=True, slots=True)
class Change:
    """One changed record: the feed's number for it, the record's identity and new version."""

    seq: int
    collection: str
    key: str
    hlc: int
    origin: str

    @property
    def version(self) -> Version:
        return (self.hlc, self.origin)

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "collection": self.collection, "key": self.key,
                "hlc": self.hlc, "origin": self.origin}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Change:
        return cls(int(data["seq"]), str(data["collection"]), str(data["key"]),
                   int(data["hlc"]), str(data["origin"]))


@dataclass(frozen=True, slots=True)
class Changes:
    """One answer of the feed: the changes after the subscriber's ``seq`` (oldest first) and
    the seq to ask from next; or ``reset``: forget every cached record, continue from ``seq``."""

    epoch: str
    seq: int
    reset: bool = False
    changes: list[Change] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seq": self.seq, "reset": self.reset,
                "changes": [c.to_json() for c in self.changes]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Changes:
        return cls(str(data["epoch"]), int(data["seq"]), bool(data.get("reset", False)),
                   [Change.from_json(c) for c in data.get("changes", [])])


class ChangeFeed:
    """The newest ``capacity`` changes of ``store``'s records (see the module docstring)."""

    def __init__(self, store: OutboxStore, *, capacity: int = 20_000, batch: int = 2000,
                 idle_poll: float = 1.0) -> None:
        self.store = store
        self.capacity = capacity
        self.batch = batch
        self.idle_poll = idle_poll  # a safety net: commits wake the tailer
        self.epoch = secrets.token_hex(8)
        self.seq = 0  # number of the newest change (or reset)
        self.position: int | None = None  # outbox position tailed so far (None: not yet read)
        self.busy = False  # the last cycle read a full batch: more may be waiting
        self._ring: deque[Change] = deque(maxlen=capacity)
        self._wake = asyncio.Event()
        self._grown = asyncio.Event()  # replaced on every growth: waiters hold the old one
        self._closed = False
        store.add_listener(self._wake.set)

    def __repr__(self) -> str:
        return (f"ChangeFeed({self.store.zone}, epoch={self.epoch}, seq={self.seq}, "
                f"ring={len(self._ring)}, position={self.position})")

    # ---------------------------------------------------------------- the tailer
    async def run_cycle(self) -> str:
        """Read the outbox past the position tailed so far; number what changed."""
        if self.position is None:
            self.position = (await self.store.outbox_bounds())[1]
            return f"change feed {self.epoch} of zone {self.store.zone} starts at outbox " \
                   f"position {self.position}"
        floor, head, entries = await self.store.outbox_since(self.position, self.batch)
        self.busy = len(entries) >= self.batch
        if self.position < floor:
            self.position = head
            self.reset(f"outbox trimmed past the tailer (floor {floor})")
            return f"outbox trimmed past position {self.position}: subscribers reset"
        if not entries:
            return "no change"
        for entry in entries:
            record = entry.record
            self.seq += 1
            self._ring.append(Change(self.seq, record.collection, record.key, record.hlc,
                                     record.origin))
        self.position = entries[-1].pos
        self._signal()
        return f"{len(entries)} change(s), up to seq {self.seq}"

    async def run(self) -> None:
        """Tail until cancelled: after every commit the store reports, and every idle_poll."""
        while not self._closed:
            self._wake.clear()
            try:
                said = await self.run_cycle()
            except StoreError as exc:
                said = f"reading the outbox failed: {exc}"
                log.warning("zone %s change feed: %s", self.store.zone, said)
                await asyncio.sleep(self.idle_poll)
                continue
            if self.busy:
                continue
            log.debug("zone %s change feed: %s", self.store.zone, said)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.idle_poll)

    def reset(self, why: str) -> None:
        """Records changed in a way the ring cannot list: every subscriber starts over."""
        log.info("zone %s change feed reset: %s", self.store.zone, why)
        self.seq += 1
        self._ring.clear()
        self._signal()

    def close(self) -> None:
        """Answer every waiting subscriber now (the service is stopping)."""
        self._closed = True
        self._signal()

    def _signal(self) -> None:
        grown, self._grown = self._grown, asyncio.Event()
        grown.set()

    # ---------------------------------------------------------------- subscribers
    async def since(self, epoch: str | None, after: int | None, *, wait: float = 0.0,
                    limit: int = 5000) -> Changes:
        """The changes after ``after`` in feed ``epoch``, waiting up to ``wait`` seconds for
        one; a reset when the subscriber cannot be told exactly what changed."""
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            oldest_known = self.seq - len(self._ring)  # every change after it is in the ring
            if epoch != self.epoch or after is None or not oldest_known <= after <= self.seq:
                return Changes(self.epoch, self.seq, reset=True)
            if after < self.seq:
                start = after - oldest_known
                changes = list(itertools.islice(self._ring, start, start + limit))
                return Changes(self.epoch, changes[-1].seq, changes=changes)
            grown = self._grown
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 or self._closed:
                return Changes(self.epoch, self.seq)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(grown.wait(), left)
