"""Record, counter, outbox and decision-log primitives in the SQL both backends understand.

SQLite and PostgreSQL share these statements (written with ``?`` placeholders; the PostgreSQL
backend turns them into ``%s``). Each backend keeps what really differs: connections, locking,
schema types and the prepared (two-phase) state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from crosszone.storage.base import KEY_MAX, Decision, ZoneStore
from crosszone.storage.records import Entry, Record

_RECORD_COLUMNS = "collection, key, value, hlc, origin, deleted"

UPSERT_LWW = f"""
INSERT INTO records ({_RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (collection, key) DO UPDATE SET
  value = excluded.value, hlc = excluded.hlc, origin = excluded.origin, deleted = excluded.deleted
WHERE excluded.hlc > records.hlc
   OR (excluded.hlc = records.hlc AND excluded.origin > records.origin)
"""


def dump_value(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def load_value(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def record_row(r: Record) -> tuple[Any, ...]:
    return (r.collection, r.key, dump_value(r.value), r.hlc, r.origin, bool(r.deleted))


def row_record(row: Sequence[Any]) -> Record:
    return Record(row[0], row[1], load_value(row[2]), int(row[3]), row[4], bool(row[5]))


class SqlZoneStore(ZoneStore):
    """The primitives that are plain SQL; subclasses set ``placeholder`` and ``for_update``."""

    placeholder = "?"
    for_update = ""

    def _q(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _fetch(self, tx: Any, collection: str, key: str) -> Record | None:
        row = tx.execute(self._q(f"SELECT {_RECORD_COLUMNS} FROM records "
                                 "WHERE collection = ? AND key = ?"), (collection, key)).fetchone()
        return None if row is None else row_record(row)

    def _scan(self, tx: Any, collection: str, lo: str, after: str, hi: str, limit: int,
              include_deleted: bool) -> list[Record]:
        where = "collection = ? AND key >= ? AND key < ?"
        params: list[Any] = [collection, lo, hi]
        if after:
            where += " AND key > ?"
            params.append(after)
        if not include_deleted:
            where += " AND deleted = ?"
            params.append(False)
        rows = tx.execute(self._q(f"SELECT {_RECORD_COLUMNS} FROM records WHERE {where} "
                                  "ORDER BY key LIMIT ?"), (*params, limit)).fetchall()
        return [row_record(r) for r in rows]

    def _store_lww(self, tx: Any, records: Sequence[Record]) -> None:
        if records:
            tx.executemany(self._q(UPSERT_LWW), [record_row(r) for r in records])

    def _all_records(self, tx: Any) -> list[Record]:
        rows = tx.execute(f"SELECT {_RECORD_COLUMNS} FROM records "
                          "ORDER BY collection, key").fetchall()
        return [row_record(r) for r in rows]

    def _max_hlc(self, tx: Any) -> int:
        row = tx.execute("SELECT max(hlc) FROM records").fetchone()
        return int(row[0] or 0)

    def _counter(self, tx: Any, name: str, *, lock: bool = False) -> int:
        suffix = self.for_update if lock else ""
        row = tx.execute(self._q(f"SELECT value FROM counters WHERE name = ?{suffix}"),
                         (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def _counters(self, tx: Any, prefix: str) -> dict[str, int]:
        rows = tx.execute(self._q("SELECT name, value FROM counters WHERE name >= ? AND name < ?"),
                          (prefix, prefix + KEY_MAX)).fetchall()
        return {str(name): int(value) for name, value in rows}

    def _set_counter(self, tx: Any, name: str, value: int) -> None:
        tx.execute(self._q("INSERT INTO counters (name, value) VALUES (?, ?) "
                           "ON CONFLICT (name) DO UPDATE SET value = excluded.value"),
                   (name, value))

    def _insert_outbox(self, tx: Any, entries: Sequence[Entry]) -> None:
        tx.executemany(self._q(
            f"INSERT INTO outbox (pos, group_end, source, seq, created, {_RECORD_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
            [(e.pos, e.group_end, e.source, e.seq, e.created, *record_row(e.record))
             for e in entries])

    def _select_outbox(self, tx: Any, after: int, limit: int) -> list[Entry]:
        rows = tx.execute(self._q(
            f"SELECT pos, group_end, source, seq, created, {_RECORD_COLUMNS} FROM outbox "
            "WHERE pos > ? ORDER BY pos LIMIT ?"), (after, limit)).fetchall()
        return [Entry(r[2], int(r[3]), row_record(r[5:]), int(r[0]), int(r[1]), float(r[4]))
                for r in rows]

    def _delete_outbox(self, tx: Any, upto: int) -> int:
        cur = tx.execute(self._q("DELETE FROM outbox WHERE pos <= ?"), (upto,))
        return int(cur.rowcount)

    def _decide(self, tx: Any, txid: str, decision: Decision, now: float) -> Decision:
        row = tx.execute(self._q(
            "INSERT INTO decisions (txid, decision, decided_at) VALUES (?, ?, ?) "
            "ON CONFLICT (txid) DO UPDATE SET decision = decisions.decision "
            "RETURNING decision"), (txid, decision, now)).fetchone()
        return "commit" if row[0] == "commit" else "abort"

    def _decision(self, tx: Any, txid: str) -> Decision | None:
        row = tx.execute(self._q("SELECT decision FROM decisions WHERE txid = ?"),
                         (txid,)).fetchone()
        if row is None:
            return None
        return "commit" if row[0] == "commit" else "abort"
