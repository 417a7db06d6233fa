"""PostgreSQL zone store (psycopg 3), one server (or database) per zone.

Blocking psycopg connections run on a small thread pool. Local transactions that append to the
outbox lock the ``outbox_pos`` counter row (``SELECT ... FOR UPDATE``) after their record writes,
so outbox positions become visible in commit order while record row locks are taken first.

Two-phase commit is PostgreSQL's own: ``tpc_begin(xid)`` with the records written by LWW and one
``tx_pending`` row per record, then ``tpc_prepare()`` (``PREPARE TRANSACTION``: the transaction,
its row locks included, survives a crash). ``tpc_commit``/``tpc_rollback`` finish it, on the same
connection or, after a restart, by xid; ``tpc_recover()`` lists what is still prepared. The outbox
entries (this zone's next sequence numbers) cannot be allocated inside the prepared transaction
without serializing every writer behind it, so ``tx_pending`` rows, committed with the records,
are published to the outbox in the background after COMMIT PREPARED (many commits per pass), and
at open for any a crash left.
Xids are ``(0x637A, txid, zone)``, so zones sharing one server (tests) keep apart.
Needs ``max_prepared_transactions`` > 0 on the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson
import psycopg
from psycopg import errors as pgerrors

from crosszone.errors import StoreConflict, StoreError, StoreUnavailable, TransactionAborted
from crosszone.storage.records import HybridLogicalClock, PreparedTx, Record
from crosszone.storage.sql import UPSERT_LWW, SqlZoneStore, record_row

T = TypeVar("T")
XID_FORMAT = 0x637A  # "cz": marks the prepared transactions crosszone owns

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
  collection TEXT COLLATE "C" NOT NULL, key TEXT COLLATE "C" NOT NULL, value TEXT,
  hlc BIGINT NOT NULL, origin TEXT COLLATE "C" NOT NULL, deleted BOOLEAN NOT NULL,
  PRIMARY KEY (collection, key));
CREATE TABLE IF NOT EXISTS outbox (
  pos BIGINT PRIMARY KEY, group_end BIGINT NOT NULL, source TEXT NOT NULL, seq BIGINT NOT NULL,
  created DOUBLE PRECISION NOT NULL, collection TEXT NOT NULL, key TEXT NOT NULL, value TEXT,
  hlc BIGINT NOT NULL, origin TEXT NOT NULL, deleted BOOLEAN NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT COLLATE "C" PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
  txid TEXT PRIMARY KEY, decision TEXT NOT NULL, decided_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS tx_pending (
  txid TEXT NOT NULL, idx INTEGER NOT NULL, record TEXT NOT NULL, PRIMARY KEY (txid, idx));
"""

_CONFLICTS = (pgerrors.LockNotAvailable, pgerrors.DeadlockDetected,
              pgerrors.SerializationFailure)


def _translate(exc: psycopg.Error, where: str) -> StoreError:
    if isinstance(exc, _CONFLICTS):
        return StoreConflict(f"{where}: {exc}")
    if isinstance(exc, psycopg.OperationalError):
        return StoreUnavailable(f"{where}: {exc}")
    return StoreError(f"{where}: {exc}")


def _prepare_sql(n: int) -> str:
    rows = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * n)
    pending = ", ".join(["(%s, %s, %s)"] * n)
    upsert = UPSERT_LWW.replace("VALUES (?, ?, ?, ?, ?, ?)", f"VALUES {rows}")
    return (f"WITH stored AS ({upsert}) "
            f"INSERT INTO tx_pending (txid, idx, record) VALUES {pending}")


def _rollback_quietly(conn: psycopg.Connection[Any]) -> None:
    try:
        conn.rollback()
    except psycopg.Error:
        conn.close()


class PostgresZoneStore(SqlZoneStore):
    """A zone store in a PostgreSQL database given by ``dsn``."""

    backend = "postgres"
    placeholder = "%s"
    for_update = " FOR UPDATE"

    def __init__(self, zone: str, dsn: str, *, conflict_timeout: float = 2.0,
                 clock: HybridLogicalClock | None = None, threads: int = 16) -> None:
        super().__init__(zone, conflict_timeout=conflict_timeout, clock=clock)
        self.dsn = dsn
        self._pool: ThreadPoolExecutor | None = None
        self._threads = threads
        self._idle: queue.SimpleQueue[psycopg.Connection[Any]] = queue.SimpleQueue()
        self._held: dict[str, psycopg.Connection[Any]] = {}  # txid -> conn that prepared it
        self._lock_ms = int(conflict_timeout * 1000)
        self._publisher: asyncio.Task[None] | None = None
        self._publish_wanted = False

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, prepared_here={len(self._held)})"

    # ---------------------------------------------------------------- connections
    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self.dsn, connect_timeout=5)
            conn.execute(f"SET lock_timeout = {self._lock_ms}")
            conn.commit()
            return conn
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL for zone {self.zone}: "
                                   f"{exc}") from exc

    def _checkout(self) -> psycopg.Connection[Any]:
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return self._connect()
            if not conn.closed:
                return conn

    def _checkin(self, conn: psycopg.Connection[Any]) -> None:
        if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.close()
        else:
            self._idle.put(conn)

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._pool is None:
            raise StoreUnavailable(f"PostgreSQL store of zone {self.zone} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def _open(self) -> None:
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix=f"pg-{self.zone}")

        def create(tx: Any) -> None:
            tx.execute("SELECT pg_advisory_xact_lock(7063)")
            tx.execute(SCHEMA)

        await self._transact(create)
        await self.publish_pending()

    async def _close(self) -> None:
        if self._pool is None:
            return
        await self.quiesce()
        pool, self._pool = self._pool, None

        def close_all() -> None:
            for conn in self._held.values():
                conn.close()
            self._held.clear()
            while True:
                try:
                    self._idle.get_nowait().close()
                except queue.Empty:
                    return

        await asyncio.get_running_loop().run_in_executor(pool, close_all)
        pool.shutdown(wait=True)

    async def _transact(self, fn: Callable[[Any], T], *, write: bool = True) -> T:
        def run() -> T:
            conn = self._checkout()
            try:
                with conn.cursor() as cur:
                    result = fn(cur)
                if write:
                    conn.commit()
                else:
                    conn.rollback()
                return result
            except psycopg.Error as exc:
                _rollback_quietly(conn)
                raise _translate(exc, f"PostgreSQL store of zone {self.zone}") from exc
            except BaseException:
                _rollback_quietly(conn)
                raise
            finally:
                self._checkin(conn)

        return await self._run(run)

    # ---------------------------------------------------------------- locks as intents
    def _held_keys(self, tx: Any, keys: Sequence[tuple[str, str]]) -> list[str]:
        """A prepared transaction holds its rows' locks: probe them with a short lock timeout.

        A key the prepared transaction inserts has no visible row, so probe it by inserting a
        placeholder (version 0, which any real version beats), which waits on the uncommitted
        insert; callers roll back read-only transactions and overwrite it in write ones.
        """
        tx.execute("SET LOCAL lock_timeout = 20")
        try:
            for collection, key in keys:
                if tx.execute("SELECT 1 FROM records WHERE collection = %s AND key = %s "
                              "FOR SHARE", (collection, key)).fetchone() is None:
                    tx.execute("INSERT INTO records (collection, key, value, hlc, origin, deleted)"
                               " VALUES (%s, %s, NULL, 0, '', TRUE) ON CONFLICT DO NOTHING",
                               (collection, key))
        except pgerrors.LockNotAvailable as exc:
            raise StoreConflict(f"zone {self.zone}: key held by an in-doubt transaction") from exc
        tx.execute(f"SET LOCAL lock_timeout = {self._lock_ms}")
        return []

    # ---------------------------------------------------------------- two-phase commit
    async def _prepare(self, txid: str, records: Sequence[Record]) -> None:
        def run() -> None:
            if txid in self._held:
                return  # a retried prepare: already voted yes
            conn = self._checkout()
            xid = conn.xid(XID_FORMAT, txid, self.zone)
            try:
                conn.tpc_begin(xid)
                with conn.cursor() as cur:  # records and pending rows in one statement
                    cur.execute(_prepare_sql(len(records)), [
                        *(v for r in records for v in record_row(r)),
                        *(v for i, r in enumerate(records)
                          for v in (txid, i, orjson.dumps(r.to_json()).decode()))])
                conn.tpc_prepare()
            except pgerrors.DuplicateObject:
                conn.close()  # the gid is in use: a retried prepare that already voted yes
                return
            except pgerrors.UniqueViolation:
                conn.close()
                return
            except psycopg.Error as exc:
                conn.close()
                if isinstance(exc, _CONFLICTS):
                    raise TransactionAborted(f"zone {self.zone}: keys locked: {exc}") from exc
                raise _translate(exc, f"prepare {txid} in zone {self.zone}") from exc
            self._held[txid] = conn

        await self._run(run)

    def _finish(self, txid: str, action: str) -> bool:
        held = self._held.pop(txid, None)
        conn = held or self._checkout()
        if held is None and not conn.autocommit:
            conn.autocommit = True
        try:
            if held is not None:
                conn.tpc_commit() if action == "commit" else conn.tpc_rollback()
            else:
                xid = conn.xid(XID_FORMAT, txid, self.zone)
                conn.tpc_commit(xid) if action == "commit" else conn.tpc_rollback(xid)
            return True
        except pgerrors.UndefinedObject:
            if held is not None:
                conn.close()  # psycopg still thinks it is inside the two-phase transaction
            return False  # not prepared (any more): resolved earlier
        except psycopg.Error as exc:
            conn.close()
            raise _translate(exc, f"{action} {txid} in zone {self.zone}") from exc
        finally:
            if not conn.closed:
                conn.autocommit = False
                self._checkin(conn)

    async def _commit_prepared(self, txid: str) -> bool:
        done = await self._run(lambda: self._finish(txid, "commit"))
        self._publish_soon()
        return done

    async def quiesce(self) -> None:
        while self._publisher is not None and not self._publisher.done():
            with contextlib.suppress(StoreError):
                await asyncio.shield(self._publisher)

    def _publish_soon(self) -> None:
        """Publish committed two-phase records in the background, many commits per pass: the
        records are already durable; only their outbox entries (for zones out of service) wait."""
        self._publish_wanted = True
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.get_running_loop().create_task(self._publish_loop())

    async def _publish_loop(self) -> None:
        while self._publish_wanted and self._pool is not None:
            self._publish_wanted = False
            try:
                if await self.publish_pending():
                    self._notify()
            except StoreError:
                await asyncio.sleep(0.1)
                self._publish_wanted = True

    async def _rollback_prepared(self, txid: str) -> bool:
        return await self._run(lambda: self._finish(txid, "rollback"))

    async def publish_pending(self, txid: str | None = None) -> int:
        """Log committed two-phase records to the outbox (records are already stored)."""
        def work(tx: Any) -> int:
            where, params = ("WHERE txid = %s", (txid,)) if txid else ("", ())
            rows = tx.execute(f"SELECT txid, idx, record FROM tx_pending {where} "
                              "ORDER BY txid, idx FOR UPDATE", params).fetchall()
            if not rows:
                return 0
            self._log_own(tx, [Record.from_json(orjson.loads(r[2])) for r in rows], store=False)
            tx.executemany("DELETE FROM tx_pending WHERE txid = %s AND idx = %s",
                           [(r[0], r[1]) for r in rows])
            return len(rows)

        return await self._transact(work)

    async def _list_prepared(self) -> list[PreparedTx]:
        def run() -> list[PreparedTx]:
            conn = self._checkout()
            try:
                dbname = conn.info.dbname
                xids = conn.tpc_recover()
                conn.rollback()
            except psycopg.Error as exc:
                conn.close()
                raise _translate(exc, f"tpc_recover in zone {self.zone}") from exc
            self._checkin(conn)
            return [PreparedTx(x.gtrid, x.prepared.timestamp() if x.prepared else 0.0)
                    for x in xids if x.format_id == XID_FORMAT and x.database == dbname
                    and x.bqual == self.zone]

        return await self._run(run)
