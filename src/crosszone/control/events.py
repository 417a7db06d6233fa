"""The durable ``failover_events`` table (SQLite), one row per traffic move the leader made.

The seed's metric reads it: failover success rate = successful rows / all rows over the last
7 days. ``time`` is unix seconds, so the query is::

    SELECT 100.0 * SUM(success) / COUNT(*) FROM failover_events
    WHERE time > strftime('%s', 'now') - 7 * 86400;
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS failover_events (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    time               REAL    NOT NULL,  -- unix seconds when the controller decided
    kind               TEXT    NOT NULL,  -- failover | failback | shift | restore | fail-open
    from_zone          TEXT    NOT NULL,  -- comma-separated when traffic left several zones
    to_zone            TEXT    NOT NULL,  -- comma-separated when several zones took it over
    reason             TEXT    NOT NULL,
    detection_delay_ms REAL,              -- first bad evidence -> decision; NULL if none failed
    duration_ms        REAL    NOT NULL,  -- decision -> receivers acknowledged (or gave up)
    success            INTEGER NOT NULL,  -- 1 when the LB took the new routing and it was published
    term               INTEGER,           -- fencing token of the leader that acted
    controller         TEXT               -- node id of that leader
);
CREATE INDEX IF NOT EXISTS failover_events_time ON failover_events (time);
"""


@dataclass(frozen=True)
class FailoverEvent:
    time: float
    kind: str
    from_zone: str
    to_zone: str
    reason: str
    detection_delay_ms: float | None
    duration_ms: float
    success: bool
    term: int | None = None
    controller: str | None = None
    id: int | None = None

    @property
    def rto_ms(self) -> float:
        """Recovery time: first bad evidence -> traffic moved (detection + action)."""
        return (self.detection_delay_ms or 0.0) + self.duration_ms

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> FailoverEvent:
        """An event from a row of the table (a ``sqlite3.Row`` as a dict) or from
        ``GET /control/events`` JSON."""
        delay, term, controller = row.get("detection_delay_ms"), row.get("term"), \
            row.get("controller")
        return cls(float(row["time"]), str(row["kind"]), str(row["from_zone"]),
                   str(row["to_zone"]), str(row.get("reason") or ""),
                   None if delay is None else float(delay), float(row["duration_ms"]),
                   bool(row["success"]), None if term is None else int(term),
                   None if controller is None else str(controller))


COLUMNS = ("time", "kind", "from_zone", "to_zone", "reason", "detection_delay_ms",
           "duration_ms", "success", "term", "controller")
"""The table's columns but ``id``, in :class:`FailoverEvent`'s order."""


class EventLog:
    """Appends and reads failover events; safe to call from worker threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Several controllers on one machine may share the file: wait for each other's locks.
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                   timeout=5.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an event is durable once recorded
        self._db.executescript(SCHEMA)

    def record(self, event: FailoverEvent) -> int:
        values = [getattr(event, c) for c in COLUMNS]
        values[COLUMNS.index("success")] = int(event.success)
        with self._lock:
            cur = self._db.execute(
                f"INSERT INTO failover_events ({', '.join(COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in COLUMNS)})", values)
            return int(cur.lastrowid or 0)

    def recent(self, limit: int = 50) -> list[FailoverEvent]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(COLUMNS)}, id FROM failover_events "
                "ORDER BY time DESC, id DESC LIMIT ?", (limit,)).fetchall()
        return [FailoverEvent(time=row[0], kind=row[1], from_zone=row[2], to_zone=row[3],
                              reason=row[4], detection_delay_ms=row[5], duration_ms=row[6],
                              success=bool(row[7]), term=row[8], controller=row[9], id=row[10])
                for row in rows]

    def success_rate(self, since: float) -> float | None:
        """Percentage of successful events since ``since`` (the seed's metric); None if none."""
        with self._lock:
            total, ok = self._db.execute(
                "SELECT COUNT(*), SUM(success) FROM failover_events WHERE time > ?",
                (since,)).fetchone()
        return None if not total else 100.0 * (ok or 0) / total

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __repr__(self) -> str:
        return f"<EventLog {self.path}>"
