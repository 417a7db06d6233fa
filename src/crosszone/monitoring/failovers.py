"""Copies the control plane's ``failover_events`` into the metrics database.

Two sources, both read-only: the controllers' durable SQLite table on this machine
(``<run_dir>/control/failover_events.sqlite``, unix-second ``time`` and integer ``success``),
and any controller's ``GET /control/events`` (the way across machines). The metrics database
keeps them with ``TIMESTAMPTZ``/``BOOLEAN`` columns so the seed's query runs verbatim; an event
already copied (same time, kind and zones) is skipped.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from crosszone.control.events import COLUMNS
from crosszone.monitoring.store import FailoverRecord, MetricsStore

EVENTS_LIMIT = 1000


def read_sqlite_events(path: Path, after: float) -> list[FailoverRecord]:
    """Rows newer than ``after`` from the control plane's table; [] if there is none yet.

    Opened read-only (``mode=ro``): the monitor never writes the control plane's file.
    """
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error:
        return []
    try:
        db.row_factory = sqlite3.Row
        rows = db.execute(f"SELECT {', '.join(COLUMNS)} FROM failover_events WHERE time > ? "
                          "ORDER BY time LIMIT ?", (after, EVENTS_LIMIT)).fetchall()
        return [FailoverRecord.from_row(dict(r)) for r in rows]
    except sqlite3.Error:
        return []  # not created yet, or locked past the timeout: next cycle
    finally:
        db.close()


def events_from_json(doc: Any) -> list[FailoverRecord]:
    if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
        return []
    out = []
    for row in doc["events"]:
        try:
            out.append(FailoverRecord.from_row(row))
        except (KeyError, TypeError, ValueError):
            continue
    return out


class FailoverImporter:
    def __init__(self, store: MetricsStore, sqlite_path: Path) -> None:
        self.store = store
        self.sqlite_path = sqlite_path

    def __repr__(self) -> str:
        return f"<FailoverImporter {self.sqlite_path}>"

    async def run(self, controller_events: Iterable[Any] = ()) -> int:
        """Copy new events; returns how many were new to the metrics database.

        ``controller_events`` are ``/control/events`` documents already fetched this cycle.
        """
        latest = await asyncio.to_thread(self.store.latest_failover_time)
        after = -1.0 if latest is None else latest - 1.0  # 1 s overlap: float rounding
        found = await asyncio.to_thread(read_sqlite_events, self.sqlite_path, after)
        for doc in controller_events:
            found += [e for e in events_from_json(doc) if e.time > after]
        if not found:
            return 0
        before = len(await asyncio.to_thread(self.store.failover_events, after, EVENTS_LIMIT))
        await asyncio.to_thread(self.store.add_failover_events, found)
        now = len(await asyncio.to_thread(self.store.failover_events, after, EVENTS_LIMIT))
        return now - before
