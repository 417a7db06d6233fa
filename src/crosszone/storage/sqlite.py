"""SQLite zone store: one database file per zone, WAL journal, ``synchronous=FULL``.

Writes run on one dedicated thread and connection with ``BEGIN IMMEDIATE`` (SQLite has one
writer anyway, so outbox positions are handed out in commit order), group-committed: the write
transactions queued while one commit is in flight share the next commit (and its fsync), each in
its own savepoint. Reads use a second thread and connection, which WAL lets run beside a writer.

Two-phase commit: SQLite has no ``PREPARE TRANSACTION``, so a prepared transaction is a committed
row in ``prepared`` (the records to write) plus one row per key in ``prepared_keys``, whose
primary key is the lock: a second transaction touching the same key votes no, and local writes and
strong reads of the key wait until the first resolves. Commit applies the records by LWW, logs
them to the outbox and deletes the rows, in one local transaction, so it happens exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from crosszone.errors import StoreConflict, StoreError, StoreUnavailable, TransactionAborted
from crosszone.storage.records import HybridLogicalClock, PreparedTx, Record
from crosszone.storage.sql import SqlZoneStore

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
  collection TEXT NOT NULL, key TEXT NOT NULL, value TEXT, hlc INTEGER NOT NULL,
  origin TEXT NOT NULL, deleted INTEGER NOT NULL, PRIMARY KEY (collection, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
  pos INTEGER PRIMARY KEY, group_end INTEGER NOT NULL, source TEXT NOT NULL,
  seq INTEGER NOT NULL, created REAL NOT NULL, collection TEXT NOT NULL, key TEXT NOT NULL,
  value TEXT, hlc INTEGER NOT NULL, origin TEXT NOT NULL, deleted INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
  txid TEXT PRIMARY KEY, decision TEXT NOT NULL, decided_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS prepared (
  txid TEXT PRIMARY KEY, records TEXT NOT NULL, prepared_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS prepared_keys (
  collection TEXT NOT NULL, key TEXT NOT NULL, txid TEXT NOT NULL,
  PRIMARY KEY (collection, key)) WITHOUT ROWID;
"""


class SQLiteZoneStore(SqlZoneStore):
    """A zone store in one SQLite file."""

    backend = "sqlite"

    def __init__(self, zone: str, path: str | Path, *, conflict_timeout: float = 2.0,
                 clock: HybridLogicalClock | None = None) -> None:
        super().__init__(zone, conflict_timeout=conflict_timeout, clock=clock)
        self.path = Path(path)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix=f"sqlite-w-{zone}")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix=f"sqlite-r-{zone}")
        self._conns: dict[bool, sqlite3.Connection] = {}
        self._queue: list[tuple[Callable[[Any], Any], asyncio.Future[Any]]] = []
        self._flushing = False
        self._flusher: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, path={str(self.path)!r})"

    # ---------------------------------------------------------------- connections
    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self.conflict_timeout)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            return conn
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open SQLite store {self.path}: {exc}") from exc

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        for write, pool in ((True, self._writer), (False, self._reader)):
            self._conns[write] = await loop.run_in_executor(pool, self._connect)
        def create(conn: Any) -> None:
            conn.executescript(SCHEMA)

        await self._transact(create, script=True)

    async def _close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._flusher is not None and not self._flusher.done():
            await asyncio.wait([self._flusher])
        for write, pool in ((True, self._writer), (False, self._reader)):
            conn = self._conns.pop(write, None)
            if conn is not None:
                await loop.run_in_executor(pool, conn.close)
            pool.shutdown(wait=True)

    async def _transact(self, fn: Callable[[Any], T], *, write: bool = True,
                        script: bool = False) -> T:
        conn = self._conns.get(write)
        if conn is None:
            raise StoreUnavailable(f"SQLite store {self.path} is not open")
        loop = asyncio.get_running_loop()
        if not write or script:
            return await loop.run_in_executor(self._reader if not write else self._writer,
                                              self._run_one, conn, fn, script)
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((fn, future))
        if not self._flushing:
            self._flushing = True
            self._flusher = loop.create_task(self._flush())
        result: T = await future
        return result

    def _translate(self, exc: sqlite3.Error) -> StoreError:
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc)
                                                          or "busy" in str(exc)):
            return StoreConflict(f"SQLite store {self.path} is busy: {exc}")
        return StoreError(f"SQLite store {self.path}: {exc}")

    def _run_one(self, conn: sqlite3.Connection, fn: Callable[[Any], T], script: bool) -> T:
        try:
            if script:
                return fn(conn)
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("ROLLBACK")  # readers never change anything
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    async def _flush(self) -> None:
        """Group commit: every write transaction queued meanwhile shares one BEGIN IMMEDIATE /
        COMMIT (one fsync), each inside its own savepoint so one failing leaves the others."""
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                results = await loop.run_in_executor(self._writer, self._run_batch,
                                                     [fn for fn, _ in batch])
                for (_, future), (ok, value) in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
        finally:
            self._flushing = False

    def _run_batch(self, fns: list[Callable[[Any], Any]]) -> list[tuple[bool, Any]]:
        conn = self._conns[True]
        out: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn in fns:
                conn.execute("SAVEPOINT one")
                try:
                    out.append((True, fn(conn)))
                except Exception as exc:
                    conn.execute("ROLLBACK TO one")
                    error = self._translate(exc) if isinstance(exc, sqlite3.Error) else exc
                    out.append((False, error))
                conn.execute("RELEASE one")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            return [(False, self._translate(exc))] * len(fns)
        return out

    # ---------------------------------------------------------------- prepared state
    def _held_keys(self, tx: Any, keys: Sequence[tuple[str, str]]) -> list[str]:
        held = []
        for collection, key in keys:
            row = tx.execute("SELECT txid FROM prepared_keys WHERE collection = ? AND key = ?",
                             (collection, key)).fetchone()
            if row is not None:
                held.append(str(row[0]))
        return held

    async def _prepare(self, txid: str, records: Sequence[Record]) -> None:
        def work(tx: Any) -> None:
            if tx.execute("SELECT 1 FROM prepared WHERE txid = ?", (txid,)).fetchone():
                return  # a retried prepare: already voted yes
            others = [t for t in self._held_keys(tx, [(r.collection, r.key) for r in records])
                      if t != txid]
            if others:
                raise TransactionAborted(f"zone {self.zone}: keys held by transaction {others[0]}")
            tx.execute("INSERT INTO prepared (txid, records, prepared_at) VALUES (?, ?, ?)",
                       (txid, orjson.dumps([r.to_json() for r in records]).decode(), time.time()))
            tx.executemany("INSERT INTO prepared_keys (collection, key, txid) VALUES (?, ?, ?)",
                           [(r.collection, r.key, txid) for r in records])

        await self._transact(work)

    async def _commit_prepared(self, txid: str) -> bool:
        def work(tx: Any) -> bool:
            row = tx.execute("SELECT records FROM prepared WHERE txid = ?", (txid,)).fetchone()
            if row is None:
                return False
            self._log_own(tx, [Record.from_json(r) for r in orjson.loads(row[0])])
            self._forget(tx, txid)
            return True

        return await self._transact(work)

    async def _rollback_prepared(self, txid: str) -> bool:
        return await self._transact(lambda tx: self._forget(tx, txid))

    @staticmethod
    def _forget(tx: Any, txid: str) -> bool:
        tx.execute("DELETE FROM prepared_keys WHERE txid = ?", (txid,))
        return int(tx.execute("DELETE FROM prepared WHERE txid = ?", (txid,)).rowcount) > 0

    async def _list_prepared(self) -> list[PreparedTx]:
        rows = await self._transact(
            lambda tx: tx.execute("SELECT txid, prepared_at, records FROM prepared "
                                  "ORDER BY prepared_at").fetchall(), write=False)
        return [PreparedTx(t, float(at), [Record.from_json(r) for r in orjson.loads(recs)])
                for t, at, recs in rows]
