"""The ZoneStore contract: every backend (SQLite, PostgreSQL) must pass every test here."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from crosszone.errors import Fenced, StoreConflict, TransactionAborted
from crosszone.storage import Batch, Entry, Record, Write, ZoneStore

pytest_plugins = ["pgutil"]  # fixtures: store_backend, pg_servers, stores


async def make(stores: Any, zone: str = "a", name: str | None = None, **kw: Any) -> ZoneStore:
    store: ZoneStore = await stores.make(zone, name, **kw)
    return store


def rec(key: str, value: Any, hlc: int, origin: str, collection: str = "c",
        deleted: bool = False) -> Record:
    return Record(collection, key, value, hlc, origin, deleted)


async def test_put_get_delete_keeps_tombstone(stores: Any) -> None:
    s = await make(stores)
    r = await s.put("keys", "k1", {"owner": "x", "n": [1, 2]})
    assert r.origin == "a" and r.hlc > 0
    got = await s.get("keys", "k1")
    assert got == r and got.value == {"owner": "x", "n": [1, 2]}
    d = await s.delete("keys", "k1")
    assert d.deleted and d.hlc > r.hlc
    assert await s.get("keys", "k1") is None
    tomb = await s.get("keys", "k1", include_deleted=True)
    assert tomb is not None and tomb.deleted and tomb.value is None
    assert await s.get("keys", "missing") is None


async def test_scan_prefix_after_limit_and_iterate(stores: Any) -> None:
    s = await make(stores)
    await s.write([Write.put("usage", f"user1/{i:03d}", {"tokens": i}) for i in range(25)]
                  + [Write.put("usage", "user2/000", {"tokens": 1000}),
                     Write.put("other", "user1/x", 1)])
    await s.delete("usage", "user1/003")
    page = await s.scan("usage", prefix="user1/", limit=10)
    assert [r.key for r in page] == [f"user1/{i:03d}" for i in (0, 1, 2, 4, 5, 6, 7, 8, 9, 10)]
    nxt = await s.scan("usage", prefix="user1/", after=page[-1].key, limit=100)
    assert nxt[0].key == "user1/011" and len(nxt) == 14
    total = [r.value["tokens"] async for r in s.iterate("usage", prefix="user1/", page=7)]
    assert sum(total) == sum(range(25)) - 3
    assert len(await s.scan("usage", include_deleted=True)) == 26
    unicode_keys = ["é", "z", "ü/1", "ü/2"]
    await s.write([Write.put("u", k, k) for k in unicode_keys])
    assert [r.key for r in await s.scan("u")] == sorted(unicode_keys)
    assert [r.key for r in await s.scan("u", prefix="ü/")] == ["ü/1", "ü/2"]


async def test_local_write_logs_outbox_atomically_with_sequence(stores: Any) -> None:
    s = await make(stores)
    await s.put("c", "x", 1)
    group = await s.write([Write.put("c", "y", 2), Write.remove("c", "x"), Write.put("c", "z", 3)])
    entries = await s.read_outbox(0, 100)
    assert [(e.source, e.seq, e.pos) for e in entries] == [("a", i, i) for i in range(1, 5)]
    assert [e.record for e in entries[1:]] == group
    assert {e.group_end for e in entries[1:]} == {4}
    # a batch never ends inside one local transaction
    assert [e.pos for e in await s.read_outbox(1, 1)] == [2, 3, 4]
    assert await s.applied() == {"a": 4}
    assert await s.outbox_bounds() == (0, 4)


async def test_apply_is_idempotent_and_relays(stores: Any) -> None:
    s = await make(stores)
    entries = [Entry("b", i, rec(f"k{i}", i, 1000 + i, "b")) for i in range(1, 6)]
    ack = await s.apply(Batch("b", entries))
    assert (ack.new, ack.duplicates, ack.gaps, ack.applied["b"]) == (5, 0, 0, 5)
    again = await s.apply(Batch("b", [*entries[2:], Entry("b", 6, rec("k6", 6, 1006, "b"))]))
    assert (again.new, again.duplicates, again.applied["b"]) == (1, 3, 6)
    assert (await s.get("c", "k6")).value == 6  # type: ignore[union-attr]
    relayed = await s.read_outbox(0, 100)
    assert [(e.source, e.seq) for e in relayed] == [("b", i) for i in range(1, 7)]
    gap = await s.apply(Batch("c", [Entry("c", 3, rec("g", 1, 5, "c"))]))
    assert gap.gaps == 1 and await s.get("c", "g") is None


async def test_last_writer_wins_by_hlc_then_zone(stores: Any) -> None:
    s = await make(stores)
    await s.apply(Batch("b", [Entry("b", 1, rec("k", "b-new", 2000, "b"))]))
    await s.apply(Batch("c", [Entry("c", 1, rec("k", "c-old", 1000, "c"))]))
    assert (await s.get("c", "k")).value == "b-new"  # type: ignore[union-attr]
    await s.apply(Batch("c", [Entry("c", 2, rec("k", "c-tie", 2000, "c"))]))
    assert (await s.get("c", "k")).value == "c-tie"  # type: ignore[union-attr]
    await s.apply(Batch("b", [Entry("b", 2, rec("k", None, 2000, "b", deleted=True))]))
    assert (await s.get("c", "k")).value == "c-tie"  # type: ignore[union-attr]
    await s.apply(Batch("b", [Entry("b", 3, rec("k", None, 2001, "b", deleted=True))]))
    assert await s.get("c", "k") is None
    mine = await s.put("c", "k", "local")  # the HLC moved past every version seen
    assert mine.hlc > 2001 and (await s.get("c", "k")).value == "local"  # type: ignore[union-attr]


async def test_hlc_survives_restart(stores: Any) -> None:
    s = await make(stores)
    future = int((time.time() + 3600) * 1000) << 16
    await s.apply(Batch("b", [Entry("b", 1, rec("k", 1, future, "b"))]))
    await s.close()
    s2 = await make(stores, "a")
    assert (await s2.put("c", "k2", 2)).hlc > future


async def test_cursors_trim_and_snapshot(stores: Any) -> None:
    s = await make(stores)
    await s.write([Write.put("c", f"k{i}", i) for i in range(10)])
    await s.set_cursor("b", 7)
    await s.set_cursor("c", 4)
    assert await s.trim_outbox(["b", "c"]) == 4
    assert await s.outbox_bounds() == (4, 10)
    assert [e.pos for e in await s.read_outbox(4, 100)] == list(range(5, 11))
    lag = await s.lag("c")
    assert lag.records == 6 and lag.seconds >= 0 and lag.origin == "a"
    assert (await s.lag("b")).records == 3
    assert await s.trim_outbox(["b", "c"], keep_max=2) == 4
    assert await s.outbox_bounds() == (8, 10)
    await s.close()
    s = await make(stores, "a")
    assert await s.cursor("b") == 7 and await s.cursor("zz") == 0
    await s.delete("c", "k0")
    snap = await s.export_snapshot()
    assert snap.pos == 11 and snap.applied == {"a": 11} and len(snap.records) == 10
    other = await make(stores, "b", "b-store")
    newer = await other.put("c", "k1", "b wins")  # newer than a's k1
    ack = await other.import_snapshot(snap)
    assert ack.applied["a"] == 11
    assert await other.get("c", "k0") is None
    assert (await other.get("c", "k1")).value == "b wins"  # type: ignore[union-attr]
    assert (await other.get("c", "k9")).value == 9  # type: ignore[union-attr]
    assert (await other.apply(Batch("a", [Entry("a", 11, snap.records[0])]))).duplicates == 1
    assert newer.hlc > 0


async def test_two_phase_participant_commit_and_rollback(stores: Any) -> None:
    s = await make(stores, conflict_timeout=0.3)
    await s.put("c", "free", 0)
    v1 = [rec("k1", "strong", 5000, "z"), rec("k2", "strong2", 5000, "z")]
    await s.prepare("z~1", v1, token=1)
    await s.prepare("z~1", v1, token=1)  # a retried prepare votes yes again
    assert [p.txid for p in await s.list_prepared()] == ["z~1"]
    with pytest.raises(TransactionAborted):
        await s.prepare("z~2", [rec("k2", "other", 5001, "z")], token=1)
    with pytest.raises(StoreConflict):
        await s.put("c", "k1", "local")
    with pytest.raises(StoreConflict):
        await s.get("c", "k2", strong=True)
    assert (await s.get("c", "free", strong=True)).value == 0  # type: ignore[union-attr]
    assert await s.commit_prepared("z~1", token=1)
    assert not await s.commit_prepared("z~1", token=1)  # second phase-two call: already done
    assert await s.list_prepared() == []
    got = await s.get("c", "k1", strong=True)
    assert got is not None and (got.value, got.hlc, got.origin) == ("strong", 5000, "z")
    await s.quiesce()
    logged = [e for e in await s.read_outbox(0, 100) if e.record.origin == "z"]
    assert sorted(e.record.key for e in logged) == ["k1", "k2"]
    assert all(e.source == "a" for e in logged)
    await s.prepare("z~3", [rec("k3", "never", 6000, "z")], token=1)
    assert await s.rollback_prepared("z~3")
    assert not await s.rollback_prepared("z~3")
    assert await s.get("c", "k3") is None and await s.list_prepared() == []
    await s.put("c", "k1", "after")  # locks released


async def test_prepared_survives_restart(stores: Any) -> None:
    s = await make(stores)
    await s.prepare("z~9", [rec("k", "v", 7000, "z")], token=0)
    await s.prepare("z~10", [rec("k2", "v2", 7000, "z")], token=0)
    await s.close()
    s2 = await make(stores, "a")
    assert sorted(p.txid for p in await s2.list_prepared()) == ["z~10", "z~9"]
    assert await s2.commit_prepared("z~9", token=0)
    assert await s2.rollback_prepared("z~10")
    assert await s2.list_prepared() == []
    assert (await s2.get("c", "k")).value == "v"  # type: ignore[union-attr]
    assert await s2.get("c", "k2") is None
    await s2.quiesce()
    assert any(e.record.key == "k" for e in await s2.read_outbox(0, 10))


async def test_fencing_rejects_stale_tokens_and_lost_lease(stores: Any) -> None:
    s = await make(stores)
    await s.prepare("z~1", [rec("k", 1, 100, "z")], token=5)
    with pytest.raises(Fenced):
        await s.prepare("z~2", [rec("k2", 1, 100, "z")], token=4)
    with pytest.raises(Fenced):
        await s.commit_prepared("z~1", token=4)
    assert await s.commit_prepared("z~1", token=5)
    await s.close()
    s = await make(stores, "a")
    with pytest.raises(Fenced):
        await s.check_token(4)
    with pytest.raises(Fenced):
        await s.set_lease(4, held=False)  # a deposed controller can not revoke
    await s.set_lease(5, held=False)
    with pytest.raises(Fenced):
        await s.get("c", "k", strong=True)
    with pytest.raises(Fenced):
        await s.decide("a~1", "commit")
    with pytest.raises(Fenced):
        await s.prepare("z~3", [rec("k3", 1, 100, "z")], token=4)  # stale token
    # without a lease a zone still takes part in 2PC with a current token (a re-admitted zone
    # catching up), but serves no strong read and coordinates nothing
    await s.prepare("z~3", [rec("k3", 1, 100, "z")], token=9)
    assert await s.rollback_prepared("z~3")
    assert (await s.get("c", "k")).value == 1  # type: ignore[union-attr]  # async reads still work
    await s.put("c", "k4", 1)  # async writes still work
    await s.close()
    s = await make(stores, "a")
    assert s.lease is None
    await s.set_lease(12)
    assert s.lease == 12 and s.max_token == 12
    with pytest.raises(Fenced):
        await s.check_token(11)
    await s.check_token(12)


async def test_time_limited_lease_lapses_and_await_grant(stores: Any) -> None:
    s = await make(stores)
    await s.set_lease(3, ttl=0.3)
    assert s.lease == 3 and s.lease_remaining is not None and 0 < s.lease_remaining <= 0.3
    await s.get("c", "k", strong=True)
    await asyncio.sleep(0.4)
    assert s.lease is None  # not renewed: lapsed by itself
    with pytest.raises(Fenced):
        await s.get("c", "k", strong=True)
    with pytest.raises(Fenced):
        await s.decide("a~1", "commit")
    await s.set_lease(3, ttl=5)  # renewal (no database write) restores it
    assert s.lease == 3
    with pytest.raises(Fenced):
        await s.set_lease(2, ttl=5)  # even a pure renewal from a deposed term is refused
    await s.close()
    s = await make(stores, "a")  # reopened: the durable grant (3) comes back ...
    assert s.lease == 3
    s.await_grant()  # ... unless a control plane must grant it again
    assert s.lease is None
    with pytest.raises(Fenced):
        await s.get("c", "k", strong=True)
    await s.set_lease(4, ttl=5)
    assert s.lease == 4 and s.max_token == 4


async def test_decision_log_first_writer_wins(stores: Any) -> None:
    s = await make(stores)
    assert await s.decision("a~1") is None
    assert await s.decide("a~1", "abort") == "abort"
    assert await s.decide("a~1", "commit") == "abort"
    assert await s.decide("a~2", "commit") == "commit"
    assert await s.decision("a~2") == "commit"


async def test_concurrent_writes_keep_outbox_dense(stores: Any) -> None:
    s = await make(stores)
    await asyncio.gather(*(s.put("c", f"k{i}", i) for i in range(60)))
    entries = await s.read_outbox(0, 1000)
    assert [e.pos for e in entries] == list(range(1, 61))
    assert sorted(e.seq for e in entries) == list(range(1, 61))
