"""The embedded metrics database (the default): one DuckDB file per monitor.

DuckDB lets one process open a file for writing; another process may open it only read-only
and only while no writer holds it, so the CLI asks a running monitor first and opens the file
itself only when no monitor runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from crosszone.errors import MetricsStoreError
from crosszone.monitoring.store import MetricsStore


class DuckDBMetricsStore(MetricsStore):
    """``location`` is a file path, or ``:memory:``."""

    backend = "duckdb"

    def __init__(self, location: str, *, read_only: bool = False) -> None:
        super().__init__(location, read_only=read_only)
        self._db: duckdb.DuckDBPyConnection | None = None

    def _connect(self) -> None:
        if self.location != ":memory:":
            path = Path(self.location)
            if self.read_only and not path.exists():
                raise MetricsStoreError(f"no metrics database at {path}")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise MetricsStoreError(f"cannot create {path.parent}: {exc.strerror}") from exc
        try:
            self._db = duckdb.connect(self.location, read_only=self.read_only)
            self._db.execute("SET TimeZone = 'UTC'")
        except duckdb.Error as exc:
            raise MetricsStoreError(f"cannot open DuckDB metrics database {self.location}: "
                                    f"{exc}") from exc

    def _disconnect(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            try:
                db.close()
            except duckdb.Error as exc:
                raise MetricsStoreError(f"closing {self.location} failed: {exc}") from exc

    def _conn(self) -> duckdb.DuckDBPyConnection:
        if self._db is None:
            raise MetricsStoreError(f"metrics database {self.location} is closed")
        return self._db

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        try:
            self._conn().execute(sql, list(params))
        except duckdb.Error as exc:
            raise MetricsStoreError(f"DuckDB {self.location}: {exc}") from exc

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            self._conn().executemany(sql, [list(r) for r in rows])
        except duckdb.Error as exc:
            raise MetricsStoreError(f"DuckDB {self.location}: {exc}") from exc

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return list(self._conn().execute(sql, list(params)).fetchall())
        except duckdb.Error as exc:
            raise MetricsStoreError(f"DuckDB {self.location}: {exc}") from exc
