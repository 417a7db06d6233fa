"""CrossZoneTransaction: atomic strong writes over the zones in service, recoverable after a
coordinator crash at any step (in-process and with SIGKILL on real processes), fencing."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from crosszone.errors import Fenced, StoreError, StoreUnavailable, TransactionAborted
from crosszone.replication import CrossZoneTransaction, DataReplicator, HttpPeer, LocalPeer
from crosszone.replication.peers import TxParticipant
from crosszone.storage import Record, Write, ZoneStore

pytest_plugins = ["pgutil"]  # fixtures: store_backend, pg_servers, stores
ZONES = ["a", "b", "c"]


class Crash(BaseException):
    """Stops the coordinator where it stands, skipping every cleanup, as a crash would."""


def crash_at(point: str) -> Any:
    def hit(name: str) -> None:
        if name == point:
            raise Crash(point)
    return hit


class Hanging(LocalPeer):
    """A participant whose prepare never answers (a frozen zone)."""

    async def prepare(self, txid: str, records: Sequence[Record], token: int) -> None:
        await asyncio.sleep(3600)


async def open_three(stores: Any, **kw: Any) -> dict[str, ZoneStore]:
    return {z: await stores.make(z, **kw) for z in ZONES}


def coordinator(zs: dict[str, ZoneStore], **kw: Any) -> CrossZoneTransaction:
    parts: dict[str, TxParticipant] = {z: LocalPeer(s) for z, s in zs.items()}
    parts.update(kw.pop("participants", {}))
    return CrossZoneTransaction(zs["a"], parts, **kw)


async def nothing_prepared(zs: dict[str, ZoneStore]) -> bool:
    return all([not await s.list_prepared() for s in zs.values()])


async def test_commit_reaches_every_zone_with_one_version(stores: Any) -> None:
    zs = await open_three(stores)
    tx = coordinator(zs)
    out = await tx.execute([Write.put("keys", "k1", {"owner": "u"}), Write.put("keys", "k2", 2),
                            Write.remove("keys", "gone")])
    assert out.pending == [] and sorted(out.participants) == ZONES
    for s in zs.values():
        await s.quiesce()
        got = await s.get("keys", "k1", strong=True)
        assert got is not None and got.version == out.records[0].version
        assert got.origin == "a" and await s.get("keys", "gone", include_deleted=True)
        assert {e.record.key for e in await s.read_outbox(0, 100)} == {"k1", "k2", "gone"}
    assert await nothing_prepared(zs)
    assert await zs["a"].decision(out.txid) == "commit"


async def test_no_vote_aborts_everywhere(stores: Any) -> None:
    zs = await open_three(stores, conflict_timeout=0.3)
    await zs["b"].prepare("z~other", [Record("keys", "k", 1, 1, "z")], token=0)
    with pytest.raises(TransactionAborted):
        await coordinator(zs).execute([Write.put("keys", "k", "mine")])
    assert [p.txid for p in await zs["b"].list_prepared()] == ["z~other"]
    await zs["b"].rollback_prepared("z~other")
    for s in zs.values():
        assert await s.get("keys", "k") is None
    assert await nothing_prepared(zs)


async def test_prepare_timeout_aborts_and_recovery_cleans_up(stores: Any) -> None:
    zs = await open_three(stores)
    tx = coordinator(zs, participants={"c": Hanging(zs["c"])}, prepare_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(TransactionAborted, match="timed out"):
        await tx.execute([Write.put("keys", "k", 1)])
    assert time.monotonic() - started < 2
    assert await nothing_prepared(zs)
    assert all([await s.get("keys", "k") is None for s in zs.values()])


async def test_out_of_service_zone_is_skipped_and_catches_up(stores: Any) -> None:
    zs = await open_three(stores)
    tx = coordinator(zs, membership=lambda: ["a", "b"])
    out = await tx.execute([Write.put("keys", "k", "strong")])
    assert out.participants == ["a", "b"]
    assert await zs["c"].get("keys", "k") is None
    await zs["a"].quiesce()
    await zs["b"].quiesce()
    reps = [DataReplicator(zs[z], {d: LocalPeer(zs[d]) for d in ZONES if d != z})
            for z in ("a", "b")]
    for rep in reps:
        await rep.run_cycle()
    got = await zs["c"].get("keys", "k")
    assert got is not None and got.version == out.records[0].version


async def test_fencing_stale_token_and_lost_lease(stores: Any) -> None:
    zs = await open_three(stores)
    await zs["b"].check_token(7)  # b has seen a newer coordinator
    with pytest.raises(Fenced):
        await coordinator(zs, token=lambda: 6).execute([Write.put("keys", "k", 1)])
    assert await nothing_prepared(zs)
    await coordinator(zs, token=lambda: 7).execute([Write.put("keys", "k", 2)])
    await zs["a"].set_lease(7, held=False)  # the coordinator's zone was told it lost its lease
    with pytest.raises(Fenced):
        await coordinator(zs, token=lambda: 7).execute([Write.put("keys", "k", 3)])
    with pytest.raises(Fenced):
        await zs["a"].get("keys", "k", strong=True)
    assert (await zs["b"].get("keys", "k", strong=True)).value == 2  # type: ignore[union-attr]


@pytest.mark.parametrize("point", ["before_prepare", "after_prepare", "after_decision"])
async def test_coordinator_crash_then_recovery(stores: Any, point: str) -> None:
    zs = await open_three(stores)
    with pytest.raises(Crash):
        await coordinator(zs, failpoint=crash_at(point)).execute([Write.put("keys", "k", 1)])
    await zs["a"].close()  # restart the coordinator's zone store
    zs["a"] = await stores.make("a")
    said = await coordinator(zs).recover_until_clean()
    assert "still in doubt" not in said
    assert await nothing_prepared(zs)
    present = [await s.get("keys", "k") is not None for s in zs.values()]
    assert present == [point == "after_decision"] * 3


async def test_recovery_finishes_a_half_done_phase_two(stores: Any) -> None:
    zs = await open_three(stores)
    record = Record("keys", "k", "v", zs["a"].clock.now(), "a")
    for s in zs.values():
        await s.prepare("a~half", [record], token=0)
    assert await zs["a"].decide("a~half", "commit") == "commit"
    await zs["b"].commit_prepared("a~half", token=0)
    said = await coordinator(zs).recover()
    assert said.startswith("recovery: 1 in-doubt transaction(s) committed")
    assert await nothing_prepared(zs)
    assert all([(await s.get("keys", "k")) == record for s in zs.values()])
    # another coordinator's orphan, with no decision logged: aborted once old enough
    await zs["b"].prepare("b~orphan", [Record("keys", "o", 1, 1, "b")], token=0)
    tx = coordinator(zs, foreign_after=0.0)
    assert "1 rolled back" in await tx.run_cycle()
    assert await zs["b"].decision("b~orphan") == "abort"


# ---------------------------------------------------------------- real processes, SIGKILL
async def presence(peers: dict[str, HttpPeer], key: str) -> list[Any]:
    found = []
    for peer in peers.values():
        try:
            found.append((await peer.call("GET", f"/kv/k/{key}"))["hlc"])
        except StoreError as exc:
            if "no record" not in str(exc):
                raise
            found.append(None)
    return found


async def until_clean(peers: dict[str, HttpPeer], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if all([not (await p.call("GET", "/tx/prepared"))["prepared"]
                    for p in peers.values()]):
                return
        except StoreUnavailable:
            pass
        assert time.monotonic() < deadline, "prepared transactions left after recovery"
        await asyncio.sleep(0.1)


async def strong_writes(peer: HttpPeer, prefix: str, n: int, acked: list[str],
                        tried: list[str]) -> None:
    for i in range(n):
        key = f"{prefix}{i}"
        tried.append(key)
        try:
            await peer.call("PUT", f"/kv/k/{key}?consistency=strong", {"value": i})
        except StoreUnavailable:
            return  # the coordinator died: the outcome of this one is unknown
        acked.append(key)


async def check_atomic(peers: dict[str, HttpPeer], acked: list[str], tried: list[str]) -> None:
    for key in tried:
        found = await presence(peers, key)
        assert len(set(found)) == 1, f"{key} is not all-or-nothing: {found}"
        if key in acked:
            assert found[0] is not None, f"acknowledged {key} lost"


@pytest.fixture
def cluster(store_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    from pgutil import StoreFactory, StoreServices

    servers = request.getfixturevalue("pg_servers") if store_backend == "postgres" else None
    factory = StoreFactory(store_backend, tmp_path, servers)
    procs = StoreServices({z: factory.location(z) for z in ZONES}, tmp_path,
                          "--prepare-timeout", "1.0")
    yield procs
    procs.stop_all()


def open_peers() -> dict[str, HttpPeer]:
    from pgutil import store_service_url

    return {z: HttpPeer(z, store_service_url(z), timeout=3.0) for z in ZONES}


@pytest.mark.parametrize("point", ["before_prepare", "after_prepare", "after_decision",
                                   "mid_commit"])
async def test_coordinator_killed_at_each_step(cluster: Any, point: str) -> None:
    nth = random.randint(1, 6)
    for z in ZONES:
        cluster.start(z, env={"CROSSZONE_FAILPOINT": f"{point}:{nth}"} if z == "a" else None,
                      wait=False)
    for z in ZONES:
        cluster.wait_healthy(z)
    peers = open_peers()
    acked: list[str] = []
    tried: list[str] = []
    try:
        await strong_writes(peers["a"], "w", 50, acked, tried)
        assert cluster.wait_exit("a") == -9, "the failpoint did not kill the coordinator"
        assert len(acked) == nth - 1
        cluster.start("a")
        await until_clean(peers)
        await check_atomic(peers, acked, tried)
        if point in ("after_decision", "mid_commit"):  # a logged commit survives the crash
            assert (await presence(peers, tried[-1]))[0] is not None
    finally:
        for p in peers.values():
            await p.close()


async def test_coordinator_killed_at_random_moments(cluster: Any) -> None:
    for z in ZONES:
        cluster.start(z, wait=False)
    for z in ZONES:
        cluster.wait_healthy(z)
    peers = open_peers()
    acked: list[str] = []
    tried: list[str] = []
    try:
        for round_ in range(3):
            async def kill_later() -> None:
                await asyncio.sleep(random.uniform(0.05, 0.3))
                cluster.kill("a")

            await asyncio.gather(strong_writes(peers["a"], f"r{round_}-", 10_000, acked, tried),
                                 kill_later())
            cluster.start("a")
        await until_clean(peers)
        await check_atomic(peers, acked, tried)
        assert len(acked) > 3
    finally:
        for p in peers.values():
            await p.close()
