"""DataReplicator: ordered, idempotent, durable shipping; catch-up by cursor and by snapshot;
convergence under any interleaving (hypothesis); shipper and applier killed with SIGKILL."""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crosszone.errors import StoreUnavailable
from crosszone.replication import DataReplicator, HttpPeer, LocalPeer
from crosszone.replication.peers import ReplicationTransport
from crosszone.storage import Ack, Batch, Entry, Record, Snapshot, ZoneStore
from crosszone.storage.sqlite import SQLiteZoneStore

pytest_plugins = ["pgutil"]  # StoreServices (imported lazily: pytest rewrites the plugin)
ZONES = ["a", "b", "c"]


class Flaky(ReplicationTransport):
    """A transport that can be cut (raises StoreUnavailable) or lose acks after applying."""

    def __init__(self, store: ZoneStore) -> None:
        self.inner = LocalPeer(store)
        self.zone = store.zone
        self.down = False
        self.lose_acks = 0
        self.calls = 0

    async def apply(self, batch: Batch) -> Ack:
        self.calls += 1
        if self.down:
            raise StoreUnavailable(f"zone {self.zone} cut off")
        ack = await self.inner.apply(batch)
        if self.lose_acks:
            self.lose_acks -= 1
            raise StoreUnavailable("connection reset before the answer")
        return ack

    async def import_snapshot(self, snapshot: Snapshot) -> Ack:
        if self.down:
            raise StoreUnavailable(f"zone {self.zone} cut off")
        return await self.inner.import_snapshot(snapshot)


async def open_zones(tmp: Path, keep_max: int = 200_000) -> tuple[
        dict[str, ZoneStore], dict[str, DataReplicator], dict[str, dict[str, Flaky]]]:
    stores: dict[str, ZoneStore] = {}
    for z in ZONES:
        stores[z] = SQLiteZoneStore(z, tmp / f"{z}.db")
        await stores[z].open()
    links = {src: {dst: Flaky(stores[dst]) for dst in ZONES if dst != src} for src in ZONES}
    reps = {z: DataReplicator(stores[z], links[z], keep_max=keep_max, backoff_max=0.0)
            for z in ZONES}
    return stores, reps, links


async def settle(reps: dict[str, DataReplicator], rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.gather(*(r.run_cycle() for r in reps.values()))
        await asyncio.sleep(0)


async def state(store: ZoneStore) -> list[tuple[Any, ...]]:
    snap = await store.export_snapshot()
    return [(r.collection, r.key, r.value, r.hlc, r.origin, r.deleted) for r in snap.records]


async def test_writes_in_every_zone_converge(tmp_path: Path) -> None:
    stores, reps, _ = await open_zones(tmp_path)
    for i, z in enumerate(ZONES * 5):
        await stores[z].put("c", f"k{i % 4}", f"{z}{i}")
    await stores["b"].delete("c", "k1")
    await settle(reps)
    states = [await state(s) for s in stores.values()]
    assert states[0] == states[1] == states[2] and len(states[0]) == 4
    for r in reps.values():
        assert len(await r.lag()) == 2 and await r.caught_up()
    assert "up to date" in await reps["a"].run_cycle()
    for s in stores.values():
        await s.close()


async def test_cut_off_zone_catches_up_from_cursor_and_lost_acks_are_harmless(
        tmp_path: Path) -> None:
    stores, reps, links = await open_zones(tmp_path)
    links["a"]["c"].down = links["b"]["c"].down = True
    for i in range(30):
        await stores["a"].put("c", f"a{i}", i)
    said = await reps["a"].run_cycle()
    assert "could not ship to c" in said and "retrying" in said
    lag = {x.destination: x for x in await reps["a"].lag()}
    assert lag["c"].records == 30 and lag["c"].seconds > 0 and lag["b"].records == 0
    links["a"]["b"].lose_acks = 1  # b applies, the answer is lost: a resends, b dedups
    await stores["a"].put("c", "dup", 1)
    said = await reps["a"].run_cycle()
    assert "could not ship to b" in said
    said = await reps["a"].run_cycle()
    assert "already there" in said and "1 already there" in said.split(";")[0]
    links["a"]["c"].down = links["b"]["c"].down = False
    await settle(reps)
    assert await state(stores["c"]) == await state(stores["a"])
    assert all(x.records == 0 for x in await reps["a"].lag() if x.destination == "c")
    assert (await stores["c"].applied())["a"] == 31


async def test_trimmed_log_catches_up_by_snapshot(tmp_path: Path) -> None:
    stores, reps, links = await open_zones(tmp_path, keep_max=5)
    links["a"]["c"].down = links["b"]["c"].down = True
    await stores["c"].put("c", "mine", "c-only")
    for i in range(40):
        await stores["a"].put("c", f"a{i}", i)
    await settle(reps, 3)
    await reps["a"].trim()
    floor, head = await stores["a"].outbox_bounds()
    assert floor >= head - 5 > 0
    links["a"]["c"].down = links["b"]["c"].down = False
    said = await reps["a"].run_cycle()
    assert "snapshot" in said
    await settle(reps)
    states = [await state(s) for s in stores.values()]
    assert states[0] == states[1] == states[2] and len(states[0]) == 41


async def test_relay_converges_after_origin_dies(tmp_path: Path) -> None:
    stores, reps, links = await open_zones(tmp_path)
    links["a"]["c"].down = True
    for i in range(10):
        await stores["a"].put("c", f"a{i}", i)
    await reps["a"].run_cycle()  # reaches b only; then a "dies"
    del reps["a"]
    await settle(reps)
    assert len(await stores["c"].scan("c")) == 10


# ---------------------------------------------------------------- convergence property
SOURCES = ["a", "b", "c"]
ops = st.lists(st.tuples(st.sampled_from(SOURCES), st.sampled_from(["k1", "k2", "k3"]),
                         st.integers(1, 6), st.booleans()), min_size=1, max_size=25)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, seed=st.integers(0, 2**32 - 1), dup=st.integers(0, 12))
def test_any_interleaving_and_duplication_converges(ops: list[tuple[str, str, int, bool]],
                                                   seed: int, dup: int) -> None:
    """Entries with colliding HLCs (ties broken by zone), delivered to each zone as random
    slices of each source's log (duplicated, overlapping, out of order), then once in full."""
    logs: dict[str, list[Entry]] = {s: [] for s in SOURCES}
    for i, (src, key, hlc, delete) in enumerate(ops):
        record = Record("c", key, None if delete else f"{src}{i}", hlc, src, delete)
        logs[src].append(Entry(src, len(logs[src]) + 1, record))
    expected = {}
    for log in logs.values():
        for e in log:
            r = e.record
            if r.key not in expected or r.version > expected[r.key].version:
                expected[r.key] = r

    async def run() -> list[list[tuple[Any, ...]]]:
        rng = random.Random(seed)
        with tempfile.TemporaryDirectory() as tmp:
            results = []
            for zone in ["x", "y", "z"]:
                store = SQLiteZoneStore(zone, Path(tmp) / f"{zone}.db")
                await store.open()
                for _ in range(dup):
                    src = rng.choice(SOURCES)
                    if logs[src]:
                        i = rng.randrange(len(logs[src]))
                        j = rng.randrange(i, len(logs[src])) + 1
                        await store.apply(Batch(src, logs[src][i:j]))
                for src in rng.sample(SOURCES, len(SOURCES)):
                    await store.apply(Batch(src, logs[src]))
                results.append(await state(store))
                await store.close()
            return results

    results = asyncio.run(run())
    want = sorted((r.collection, r.key, r.value, r.hlc, r.origin, r.deleted)
                  for r in expected.values())
    assert results[0] == results[1] == results[2] == want


# ---------------------------------------------------------------- real processes, SIGKILL
async def wait_for(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


def store_service_url(zone: str) -> str:
    from pgutil import store_service_url as url

    return str(url(zone))


@pytest.fixture
def services(tmp_path: Path) -> Any:
    from pgutil import StoreServices

    procs = StoreServices({z: str(tmp_path / f"{z}.db") for z in ZONES}, tmp_path,
                          "--keep-max", "50", "--trim-every", "0.2")
    yield procs
    procs.stop_all()


async def keys_at(peer: HttpPeer) -> set[str]:
    answer = await peer.call("GET", "/kv/c?limit=10000")
    return {r["key"] for r in answer["records"]}


async def test_shipper_and_applier_killed_mid_stream_lose_nothing(services: Any) -> None:
    for z in ZONES:
        services.start(z, wait=False)
    for z in ZONES:
        services.wait_healthy(z)
    peers = {z: HttpPeer(z, store_service_url(z), timeout=2.0) for z in ZONES}
    acked: set[str] = set()
    try:
        async def writer(zone: str, n: int) -> None:
            for i in range(n):
                try:
                    await peers[zone].call("PUT", f"/kv/c/{zone}-{i}", {"value": i})
                    acked.add(f"{zone}-{i}")
                except StoreUnavailable:
                    await asyncio.sleep(0.05)

        async def killer() -> None:
            await asyncio.sleep(0.4)
            services.kill("a")  # the shipper of a's writes dies mid-stream
            await asyncio.sleep(0.3)
            services.start("a", wait=False)
            await asyncio.sleep(0.4)
            services.kill("b")  # an applier dies mid-stream
            await asyncio.sleep(0.6)  # ... long enough for a's log to be trimmed past b
            services.start("b", wait=False)

        await asyncio.gather(writer("a", 300), writer("c", 150), killer())
        services.wait_healthy("a")
        services.wait_healthy("b")

        async def converged() -> bool:
            try:
                for p in peers.values():
                    if not acked <= await keys_at(p):
                        return False
                return True
            except StoreUnavailable:
                return False

        await wait_for(converged, 30)
        assert len(acked) > 300
        lags = await peers["a"].call("GET", "/replication/lag?samples=1")
        assert {x["destination"] for x in lags["lag"]} == {"b", "c"}
    finally:
        for p in peers.values():
            await p.close()


async def test_zone_down_for_a_while_catches_up(services: Any) -> None:
    for z in ZONES:
        services.start(z)
    peers = {z: HttpPeer(z, store_service_url(z), timeout=2.0) for z in ZONES}
    try:
        await peers["a"].call("PUT", "/kv/c/before", {"value": 0})
        await wait_for(lambda: _has(peers["c"], "before"))
        services.kill("c")
        for i in range(20):  # few: c resumes from its cursor
            await peers["a"].call("PUT", f"/kv/c/x{i}", {"value": i})
        await asyncio.sleep(0.5)
        services.start("c")
        await wait_for(lambda: _has(peers["c"], "x19"))
        services.kill("c")
        for i in range(120):  # beyond --keep-max 50: c needs a snapshot
            await peers["b"].call("PUT", f"/kv/c/y{i}", {"value": i})
        await asyncio.sleep(0.6)
        services.start("c")
        await wait_for(lambda: _has(peers["c"], "y119"))
        assert len(await keys_at(peers["c"])) == 141
        logs = "".join((services.logdir / f"store-{z}.log").read_text() for z in ("a", "b"))
        assert "sent a snapshot" in logs
    finally:
        for p in peers.values():
            await p.close()


async def _has(peer: HttpPeer, key: str) -> bool:
    try:
        await peer.call("GET", f"/kv/c/{key}")
        return True
    except Exception:
        return False


# ---------------------------------------------------------------- the store service in-process
async def test_store_service_endpoints(tmp_path: Path) -> None:
    from aiohttp import web

    from crosszone.config import Node, parse_topology
    from crosszone.errors import Fenced, StoreError
    from crosszone.storage.service import create_store_app

    topology = parse_topology({"zones": [{"name": z, "subnet": f"127.0.{106 + i}.0/24"}
                                         for i, z in enumerate(ZONES)]})
    urls = {z: f"http://127.0.{106 + i}.6:7001" for i, z in enumerate(ZONES)}
    runners = []
    for i, z in enumerate(ZONES):
        store = SQLiteZoneStore(z, tmp_path / f"{z}.db")
        app = create_store_app(topology, Node(z, "store", 0, f"127.0.{106 + i}.6", 7001), store,
                               peers=urls)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, f"127.0.{106 + i}.6", 7001).start()
        runners.append(runner)
    peers = {z: HttpPeer(z, url) for z, url in urls.items()}
    try:
        a, b, c = peers["a"], peers["b"], peers["c"]
        assert (await a.call("GET", "/health"))["status"] == "ok"
        await a.call("PUT", "/kv/keys/k1", {"value": {"owner": "u1"}})
        await a.call("DELETE", "/kv/keys/k1")
        with pytest.raises(StoreError, match="no record"):
            await a.call("GET", "/kv/keys/k1")
        out = await a.call("POST", "/kv", {"consistency": "strong", "writes": [
            {"collection": "usage", "key": "u1/1", "value": {"tokens": 3}},
            {"collection": "usage", "key": "u1/2", "value": {"tokens": 4}}]})
        assert sorted(out["zones"]) == ZONES and out["pending"] == []
        listed = await b.call("GET", "/kv/usage?prefix=u1/&consistency=strong")
        assert sum(r["value"]["tokens"] for r in listed["records"]) == 7
        with pytest.raises(StoreError, match="consistency"):
            await a.call("GET", "/kv/usage/u1?consistency=eventual")
        with pytest.raises(StoreError, match="unknown path"):
            await a.call("GET", "/nope")
        await b.call("POST", "/lease", {"epoch": 1, "held": False})  # b out of service
        with pytest.raises(Fenced):
            await b.call("GET", "/kv/usage/u1/1?consistency=strong")
        with pytest.raises(Fenced):
            await a.call("PUT", "/kv/keys/k2?consistency=strong", {"value": 1})
        await a.call("POST", "/lease", {"epoch": 1})
        await c.call("POST", "/lease", {"epoch": 1})
        with pytest.raises(Fenced):
            await a.call("POST", "/membership", {"zones": ["a", "c"], "epoch": 0})
        await a.call("POST", "/membership", {"zones": ["a", "c"], "epoch": 1})
        done = await a.call("PUT", "/kv/keys/k2?consistency=strong", {"value": 2})
        assert sorted(done["zones"]) == ["a", "c"]
        async def b_has_k2() -> bool:
            try:
                return bool((await b.call("GET", "/kv/keys/k2"))["value"] == 2)
            except StoreError:
                return False

        await wait_for(b_has_k2, 10)  # b catches up asynchronously
        lag = await a.call("GET", "/replication/lag")
        assert {x["destination"] for x in lag["lag"]} == {"b", "c"}
        assert all(isinstance(x["seconds"], float) for x in lag["lag"])
    finally:
        for p in peers.values():
            await p.close()
        for runner in runners:
            await runner.cleanup()
