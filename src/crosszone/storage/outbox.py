"""The replication side of a zone store: idempotent apply, outbox reads, cursors, trimming,
snapshots and lag (template methods over :class:`~crosszone.storage.primitives.StorePrimitives`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from crosszone.storage.primitives import (
    OUTBOX_FLOOR,
    OUTBOX_POS,
    StorePrimitives,
    applied_counter,
    cursor_counter,
)
from crosszone.storage.records import Ack, Batch, Entry, Lag, Record, Snapshot


class OutboxStore(StorePrimitives):
    """Replication policy shared by every backend."""

    async def apply(self, batch: Batch) -> Ack:
        """Apply a replicated batch once per ``(source, seq)``, by last-writer-wins.

        An entry whose seq is at or below what was applied from its source is a duplicate; one
        beyond the next expected seq is a gap and skipped (another path will bring the missing
        entries). Applied entries are appended to this zone's outbox for relay, so zones converge
        even when the zone that wrote an entry dies after shipping it to only some of them.
        """
        def work(tx: Any) -> Ack:
            self._counter(tx, OUTBOX_POS, lock=True)
            applied = self._applied(tx)
            before = dict(applied)
            fresh: list[tuple[str, int, Record]] = []
            dup = gap = 0
            for entry in batch.entries:
                last = applied.get(entry.source, 0)
                if entry.seq <= last:
                    dup += 1
                elif entry.seq > last + 1:
                    gap += 1
                else:
                    applied[entry.source] = entry.seq
                    fresh.append((entry.source, entry.seq, entry.record))
                    self.clock.observe(entry.record.hlc)
            self._store_lww(tx, sorted((r for _, _, r in fresh),
                                       key=lambda r: (r.collection, r.key)))
            self._append_outbox(tx, fresh)
            for source, seq in applied.items():
                if before.get(source) != seq:
                    self._set_counter(tx, applied_counter(source), seq)
            return Ack(self.zone, applied, len(fresh), dup, gap)

        ack = await self._retry_conflicts(lambda: self._transact(work))
        if ack.new:
            self._notify()
        return ack

    async def applied(self) -> dict[str, int]:
        """Highest contiguous seq applied per source zone (this zone: last seq it assigned)."""
        return await self._transact(self._applied, write=False)

    async def read_outbox(self, after: int, limit: int = 500) -> list[Entry]:
        """Entries with position > ``after`` in order; never ends inside one local transaction."""
        def work(tx: Any) -> list[Entry]:
            entries = self._select_outbox(tx, after, limit)
            if entries and entries[-1].group_end > entries[-1].pos:
                entries += self._select_outbox(tx, entries[-1].pos,
                                               entries[-1].group_end - entries[-1].pos)
            return entries

        return await self._transact(work, write=False)

    async def outbox_since(self, after: int, limit: int = 500) -> tuple[int, int, list[Entry]]:
        """``(floor, head, entries after ``after``)`` in one read: what a shipper needs."""
        def work(tx: Any) -> tuple[int, int, list[Entry]]:
            floor, head = self._counter(tx, OUTBOX_FLOOR), self._counter(tx, OUTBOX_POS)
            if after < floor or after >= head:
                return floor, head, []
            entries = self._select_outbox(tx, after, limit)
            if entries and entries[-1].group_end > entries[-1].pos:
                entries += self._select_outbox(tx, entries[-1].pos,
                                               entries[-1].group_end - entries[-1].pos)
            return floor, head, entries

        return await self._transact(work, write=False)

    async def outbox_bounds(self) -> tuple[int, int]:
        """``(floor, head)``: positions <= floor are trimmed, head is the last position used."""
        return await self._transact(
            lambda tx: (self._counter(tx, OUTBOX_FLOOR), self._counter(tx, OUTBOX_POS)),
            write=False)

    async def cursor(self, destination: str) -> int:
        return await self._transact(lambda tx: self._counter(tx, cursor_counter(destination)),
                                    write=False)

    async def set_cursor(self, destination: str, pos: int) -> None:
        """Persist that ``destination`` acknowledged every outbox entry up to ``pos``."""
        await self._transact(lambda tx: self._set_counter(tx, cursor_counter(destination), pos))

    async def lag(self, destination: str) -> Lag:
        """Entries ``destination`` has not acknowledged and the age of the oldest, in seconds."""
        def work(tx: Any) -> Lag:
            cursor = self._counter(tx, cursor_counter(destination))
            head = self._counter(tx, OUTBOX_POS)
            oldest = self._select_outbox(tx, cursor, 1) if head > cursor else []
            seconds = max(0.0, time.time() - oldest[0].created) if oldest else 0.0
            return Lag(self.zone, destination, seconds, max(0, head - cursor))

        return await self._transact(work, write=False)

    async def trim_outbox(self, destinations: Sequence[str], *, keep_max: int | None = None) -> int:
        """Delete entries every destination acknowledged; keep at most ``keep_max`` entries
        (a destination behind that must then catch up from a snapshot). Returns entries removed."""
        def work(tx: Any) -> int:
            head = self._counter(tx, OUTBOX_POS, lock=True)
            floor = self._counter(tx, OUTBOX_FLOOR)
            upto = min((self._counter(tx, cursor_counter(d)) for d in destinations), default=head)
            if keep_max is not None:
                upto = max(upto, head - keep_max)
            if upto <= floor:
                return 0
            removed = self._delete_outbox(tx, upto)
            self._set_counter(tx, OUTBOX_FLOOR, upto)
            return removed

        return await self._transact(work)

    async def export_snapshot(self) -> Snapshot:
        """Every record (tombstones too) with the applied vector and outbox head, consistently."""
        def work(tx: Any) -> Snapshot:
            return Snapshot(self.zone, self._counter(tx, OUTBOX_POS), self._applied(tx),
                            self._all_records(tx))

        return await self._transact(work, write=False)

    async def import_snapshot(self, snapshot: Snapshot) -> Ack:
        """Merge a snapshot by LWW and raise the applied vector to the snapshot's."""
        def work(tx: Any) -> Ack:
            self._counter(tx, OUTBOX_POS, lock=True)
            applied = self._applied(tx)
            self._store_lww(tx, sorted(snapshot.records, key=lambda r: (r.collection, r.key)))
            for source, seq in snapshot.applied.items():
                if seq > applied.get(source, 0):
                    applied[source] = seq
                    self._set_counter(tx, applied_counter(source), seq)
            return Ack(self.zone, applied, len(snapshot.records))

        for record in snapshot.records:
            self.clock.observe(record.hlc)
        return await self._retry_conflicts(lambda: self._transact(work))
