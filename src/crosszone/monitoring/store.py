"""The metrics database behind one interface: :class:`MetricsStore` and its SQL.

As in Patroni's ``AbstractDCS``, the base keeps the policy (schema, the seed's queries, what an
empty window means, locking) and each backend module implements a few primitives:

* ``_connect`` / ``_disconnect`` -- open or close the one connection; raise
  :class:`MetricsStoreError` naming the location when it cannot be opened;
* ``_execute`` / ``_executemany`` -- run a statement with ``?`` placeholders, autocommitted;
* ``_fetch`` -- run a query and return every row as a tuple of Python values.

Every primitive translates its driver's exceptions into :class:`MetricsStoreError`. The base
serialises calls with a lock, so one store may be used from worker threads.

The seed's two queries (section 5.2) run verbatim: :data:`LATENCY_QUERY` and
:data:`FAILOVER_QUERY`. Times are stored as ``TIMESTAMPTZ`` and travel as unix seconds
(``to_timestamp(?)`` in, ``EXTRACT(EPOCH FROM time)`` out), which both backends understand.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from crosszone.control.events import FailoverEvent
from crosszone.monitoring.settings import MonitoringSettings, duckdb_path

# Seed 5.2, first query: average and p95 cross-zone latency per zone over the last hour.
LATENCY_QUERY = "\n".join([
    "SELECT ",
    "    zone,",
    "    AVG(latency_ms) as avg_latency,",
    "    PERCENTILE_CONT(0.95) WITHIN GROUP (ORDER BY latency_ms) as p95_latency",
    "FROM cross_zone_latency",
    "WHERE time > now() - INTERVAL '1 hour'",
    "GROUP BY zone;",
])

# Seed 5.2, second query: failover success rate over the last seven days, as a percentage.
FAILOVER_QUERY = "\n".join([
    "SELECT ",
    "    COUNT(CASE WHEN success THEN 1 END) * 100.0 / COUNT(*) as success_rate",
    "FROM failover_events",
    "WHERE time > now() - INTERVAL '7 days';",
])

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS cross_zone_latency (
        time       TIMESTAMPTZ      NOT NULL,
        zone       VARCHAR          NOT NULL,  -- where the probe started
        peer_zone  VARCHAR          NOT NULL,  -- the zone it reached
        latency_ms DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS cross_zone_latency_zone_time ON cross_zone_latency (zone, time)",
    """CREATE TABLE IF NOT EXISTS failover_events (
        time               TIMESTAMPTZ      NOT NULL,
        kind               VARCHAR          NOT NULL,
        from_zone          VARCHAR          NOT NULL,
        to_zone            VARCHAR          NOT NULL,
        reason             VARCHAR          NOT NULL,
        detection_delay_ms DOUBLE PRECISION,
        duration_ms        DOUBLE PRECISION NOT NULL,
        success            BOOLEAN          NOT NULL,
        term               BIGINT,
        controller         VARCHAR,
        PRIMARY KEY (time, kind, from_zone, to_zone))""",
    """CREATE TABLE IF NOT EXISTS metric_samples (
        time      TIMESTAMPTZ      NOT NULL,
        monitor   VARCHAR          NOT NULL,  -- zone of the monitor that observed it
        name      VARCHAR          NOT NULL,
        zone      VARCHAR          NOT NULL,  -- '' for service-wide series
        peer_zone VARCHAR          NOT NULL,  -- '' unless the series is per zone pair
        value     DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS metric_samples_name_time ON metric_samples (name, time)",
)

_EPOCH = "CAST(EXTRACT(EPOCH FROM time) AS DOUBLE PRECISION)"


@dataclass(frozen=True)
class LatencySample:
    """One row of ``cross_zone_latency``; ``time`` in unix seconds."""

    time: float
    zone: str
    peer_zone: str
    latency_ms: float


@dataclass(frozen=True)
class LatencyRow:
    """One row of the seed's latency query."""

    zone: str
    avg_latency: float
    p95_latency: float


FailoverRecord = FailoverEvent
"""One row of ``failover_events``: the control plane's event as the monitor copies it."""


@dataclass(frozen=True)
class SeriesPoint:
    """One value of a time series kept by a monitor."""

    time: float
    name: str
    value: float
    zone: str = ""
    peer_zone: str = ""
    monitor: str = ""


_FAILOVER_COLUMNS = ("kind", "from_zone", "to_zone", "reason", "detection_delay_ms",
                     "duration_ms", "success", "term", "controller")


class MetricsStore(ABC):
    """A metrics database. Use as a context manager, or ``open()`` / ``close()``."""

    backend = "abstract"

    def __init__(self, location: str, *, read_only: bool = False) -> None:
        self.location = location
        self.read_only = read_only
        self._lock = threading.RLock()
        self._open = False

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        return f"<{type(self).__name__} {self.location} {state}>"

    # --- primitives (one backend module each) ----------------------------------------------

    @abstractmethod
    def _connect(self) -> None: ...

    @abstractmethod
    def _disconnect(self) -> None: ...

    @abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...

    @abstractmethod
    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    @abstractmethod
    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    # --- lifecycle -------------------------------------------------------------------------

    def open(self) -> MetricsStore:
        with self._lock:
            if not self._open:
                self._connect()
                self._open = True
                if not self.read_only:
                    for statement in SCHEMA:
                        self._execute(statement)
        return self

    def close(self) -> None:
        with self._lock:
            if self._open:
                self._open = False
                self._disconnect()

    def __enter__(self) -> MetricsStore:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            self.open()
            return self._fetch(sql, params)

    def _write(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        with self._lock:
            self.open()
            self._executemany(sql, rows)

    # --- the seed's queries ----------------------------------------------------------------

    def latency_by_zone(self) -> list[LatencyRow]:
        """Seed 5.2: average and p95 latency of each zone's probes over the last hour."""
        rows = self._rows(LATENCY_QUERY)
        return sorted((LatencyRow(str(z), float(avg), float(p95)) for z, avg, p95 in rows),
                      key=lambda r: r.zone)

    def failover_success_rate(self) -> float | None:
        """Seed 5.2: successful / all failover events of the last 7 days, in percent.

        None when there was no event (the seed's query divides by zero then: PostgreSQL raises,
        DuckDB answers NULL), so the query runs only when the window holds rows.
        """
        count = self._rows("SELECT COUNT(*) FROM failover_events "
                           "WHERE time > now() - INTERVAL '7 days'")
        if not count or not count[0][0]:
            return None
        rows = self._rows(FAILOVER_QUERY)
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    # --- cross-zone latency ----------------------------------------------------------------

    def add_latency(self, samples: Sequence[LatencySample]) -> None:
        self._write("INSERT INTO cross_zone_latency (time, zone, peer_zone, latency_ms) "
                    "VALUES (to_timestamp(?), ?, ?, ?)",
                    [(s.time, s.zone, s.peer_zone, s.latency_ms) for s in samples])

    def latest_latency_time(self, zone: str) -> float | None:
        """Time of the newest sample probed from ``zone`` (a pull cursor), None if none."""
        rows = self._rows(f"SELECT MAX({_EPOCH}) FROM cross_zone_latency WHERE zone = ?",
                          (zone,))
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    def latency_samples(self, zone: str, after: float, limit: int = 10_000
                        ) -> list[LatencySample]:
        """Samples probed from ``zone`` strictly after ``after``, oldest first."""
        rows = self._rows(f"SELECT {_EPOCH}, zone, peer_zone, latency_ms FROM cross_zone_latency "
                          "WHERE zone = ? AND time > to_timestamp(?) ORDER BY time LIMIT ?",
                          (zone, after, limit))
        return [LatencySample(float(t), str(z), str(p), float(v)) for t, z, p, v in rows]

    def latency_matrix(self, since: float) -> list[tuple[str, str, float, int]]:
        """(zone, peer_zone, average ms, samples) since ``since``."""
        rows = self._rows("SELECT zone, peer_zone, AVG(latency_ms), COUNT(*) "
                          "FROM cross_zone_latency WHERE time > to_timestamp(?) "
                          "GROUP BY zone, peer_zone ORDER BY zone, peer_zone", (since,))
        return [(str(z), str(p), float(a), int(n)) for z, p, a, n in rows]

    # --- failover events -------------------------------------------------------------------

    def add_failover_events(self, events: Sequence[FailoverRecord]) -> None:
        """Insert events; one already present (same time, kind and zones) is skipped."""
        marks = ", ".join("?" for _ in _FAILOVER_COLUMNS)
        self._write(f"INSERT INTO failover_events (time, {', '.join(_FAILOVER_COLUMNS)}) "
                    f"VALUES (to_timestamp(?), {marks}) ON CONFLICT DO NOTHING",
                    [(e.time, *(getattr(e, c) for c in _FAILOVER_COLUMNS)) for e in events])

    def failover_events(self, since: float, limit: int = 1000) -> list[FailoverRecord]:
        """Events after ``since``, newest first."""
        rows = self._rows(f"SELECT {_EPOCH}, {', '.join(_FAILOVER_COLUMNS)} FROM failover_events "
                          "WHERE time > to_timestamp(?) ORDER BY time DESC LIMIT ?",
                          (since, limit))
        return [FailoverRecord(float(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]),
                               None if r[5] is None else float(r[5]), float(r[6]), bool(r[7]),
                               None if r[8] is None else int(r[8]),
                               None if r[9] is None else str(r[9])) for r in rows]

    def failover_counts(self) -> dict[tuple[str, bool], int]:
        """Every event ever recorded, counted by (kind, success)."""
        rows = self._rows("SELECT kind, success, COUNT(*) FROM failover_events "
                          "GROUP BY kind, success")
        return {(str(k), bool(s)): int(n) for k, s, n in rows}

    def latest_failover_time(self) -> float | None:
        rows = self._rows(f"SELECT MAX({_EPOCH}) FROM failover_events")
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    # --- time series -----------------------------------------------------------------------

    def add_series(self, points: Sequence[SeriesPoint]) -> None:
        self._write("INSERT INTO metric_samples (time, monitor, name, zone, peer_zone, value) "
                    "VALUES (to_timestamp(?), ?, ?, ?, ?, ?)",
                    [(p.time, p.monitor, p.name, p.zone, p.peer_zone, p.value) for p in points])

    def series(self, name: str, since: float, monitor: str | None = None) -> list[SeriesPoint]:
        """Points of ``name`` after ``since`` (of one monitor when given), oldest first."""
        where, params = "name = ? AND time > to_timestamp(?)", [name, since]
        if monitor is not None:
            where += " AND monitor = ?"
            params.append(monitor)
        rows = self._rows(f"SELECT {_EPOCH}, name, value, zone, peer_zone, monitor "
                          f"FROM metric_samples WHERE {where} ORDER BY time", params)
        return [SeriesPoint(float(t), str(n), float(v), str(z), str(p), str(m))
                for t, n, v, z, p, m in rows]

    # --- housekeeping ----------------------------------------------------------------------

    def prune(self, before: float) -> None:
        """Drop latency samples and series points older than ``before`` (events are kept)."""
        with self._lock:
            self.open()
            for table in ("cross_zone_latency", "metric_samples"):
                self._execute(f"DELETE FROM {table} WHERE time < to_timestamp(?)", (before,))


def make_metrics_store(settings: MonitoringSettings, zone: str, run_dir: Path, *,
                       read_only: bool = False) -> MetricsStore:
    """The configured backend for the monitor of ``zone`` (not yet opened)."""
    if settings.backend == "postgres":
        from crosszone.monitoring.postgres import PostgresMetricsStore

        return PostgresMetricsStore(settings.dsn or "", read_only=read_only)
    from crosszone.monitoring.duckdb import DuckDBMetricsStore

    return DuckDBMetricsStore(str(duckdb_path(run_dir, zone)), read_only=read_only)
