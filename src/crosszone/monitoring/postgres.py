"""The production metrics database: PostgreSQL through psycopg 3, autocommitted.

Statements keep the base's ``?`` placeholders and are rewritten to psycopg's ``%s`` here (no
statement of the base contains a literal ``?`` or ``%``). A lost connection is reopened once
on the next statement, so a database restart costs one failed cycle, not the monitor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from crosszone.errors import MetricsStoreError
from crosszone.monitoring.store import MetricsStore

CONNECT_TIMEOUT_SECONDS = 5


def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


class PostgresMetricsStore(MetricsStore):
    """``location`` is a libpq DSN."""

    backend = "postgres"

    def __init__(self, location: str, *, read_only: bool = False) -> None:
        super().__init__(location, read_only=read_only)
        self._db: psycopg.Connection[tuple[Any, ...]] | None = None

    def __repr__(self) -> str:
        # A DSN may carry a password: show only where it points.
        where = " ".join(p for p in self.location.split() if p.split("=")[0] in
                         ("host", "port", "dbname"))
        return f"<PostgresMetricsStore {where or 'default'}>"

    def _connect(self) -> None:
        try:
            self._db = psycopg.connect(self.location, autocommit=True,
                                       connect_timeout=CONNECT_TIMEOUT_SECONDS)
            self._db.execute("SET TIME ZONE 'UTC'")
            if self.read_only:
                self._db.execute("SET default_transaction_read_only = on")
        except psycopg.Error as exc:
            raise MetricsStoreError(f"cannot connect to the PostgreSQL metrics database "
                                    f"({self!r}): {exc}".strip()) from exc

    def _disconnect(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            db.close()

    def _conn(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._db is None or self._db.closed:
            self._connect()
        assert self._db is not None
        return self._db

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        try:
            self._conn().execute(_pg(sql), list(params) or None)
        except psycopg.Error as exc:
            raise MetricsStoreError(f"PostgreSQL {self!r}: {exc}".strip()) from exc

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            with self._conn().cursor() as cur:
                cur.executemany(_pg(sql), [list(r) for r in rows])
        except psycopg.Error as exc:
            raise MetricsStoreError(f"PostgreSQL {self!r}: {exc}".strip()) from exc

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._conn().cursor() as cur:
                cur.execute(_pg(sql), list(params) or None)
                return list(cur.fetchall())
        except psycopg.Error as exc:
            raise MetricsStoreError(f"PostgreSQL {self!r}: {exc}".strip()) from exc
