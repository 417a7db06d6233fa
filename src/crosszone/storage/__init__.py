"""Zone stores: one durable store per availability zone (SQLite or PostgreSQL).

``open_store(zone, location)`` picks the backend from the location: a PostgreSQL DSN
(``postgresql://...`` or ``host=... dbname=...``) or a SQLite file path.
"""

from __future__ import annotations

from crosszone.storage.base import Decision, ZoneStore
from crosszone.storage.records import (
    Ack,
    Batch,
    Entry,
    HybridLogicalClock,
    Lag,
    PreparedTx,
    Record,
    Snapshot,
    Write,
)


def is_postgres_location(location: str) -> bool:
    return location.startswith(("postgres://", "postgresql://")) or "host=" in location \
        or "dbname=" in location


def make_store(zone: str, location: str, *, conflict_timeout: float = 2.0) -> ZoneStore:
    """The (not yet opened) store of ``zone`` at a SQLite path or PostgreSQL DSN."""
    if is_postgres_location(location):
        from crosszone.storage.postgres import PostgresZoneStore

        return PostgresZoneStore(zone, location, conflict_timeout=conflict_timeout)
    from crosszone.storage.sqlite import SQLiteZoneStore

    return SQLiteZoneStore(zone, location, conflict_timeout=conflict_timeout)


async def open_store(zone: str, location: str, *, conflict_timeout: float = 2.0) -> ZoneStore:
    """Open (creating if needed) the store of ``zone`` at a SQLite path or PostgreSQL DSN."""
    store = make_store(zone, location, conflict_timeout=conflict_timeout)
    await store.open()
    return store


__all__ = [
    "Ack",
    "Batch",
    "Decision",
    "Entry",
    "HybridLogicalClock",
    "Lag",
    "PreparedTx",
    "Record",
    "Snapshot",
    "Write",
    "ZoneStore",
    "is_postgres_location",
    "make_store",
    "open_store",
]
