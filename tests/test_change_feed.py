"""The store service's change feed (storage/changes.py, ``GET /changes``) and the cache
follower on it (storage/cache_follower.py): local writes, 2PC commits and records applied by
replication from another zone all show; a restart, a snapshot import or a subscriber behind
the ring answer ``reset``. Store services are real processes on 127.0.244-245.16:7245."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from crosszone.dataplane.gateway.response_cache import RESPONSE_CACHE
from crosszone.storage.cache import LocalCache
from crosszone.storage.cache_follower import ChangeFollower
from crosszone.storage.changes import Change, ChangeFeed
from crosszone.storage.client import StoreClient
from crosszone.storage.sqlite import SQLiteZoneStore

HOSTS = {"a": "127.0.244.16", "b": "127.0.245.16"}
PORT = 7245


def url(zone: str) -> str:
    return f"http://{HOSTS[zone]}:{PORT}"


class Stores:
    """One ``python -m crosszone.storage`` process per zone, killed by pid at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, zone: str) -> None:
        peers = [f"--peer={z}={url(z)}" for z in HOSTS if z != zone]
        with (self.tmp / f"store-{zone}.log").open("ab") as log:
            self.procs[zone] = subprocess.Popen(
                [sys.executable, "-m", "crosszone.storage", "--zone", zone, "--store",
                 str(self.tmp / f"{zone}.db"), "--listen", f"{HOSTS[zone]}:{PORT}", *peers],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(url(zone) + "/health", timeout=1):
                return
            assert self.procs[zone].poll() is None, (self.tmp / f"store-{zone}.log").read_text()
            time.sleep(0.05)
        raise TimeoutError(f"store {zone} did not answer")

    def kill(self, zone: str) -> None:
        proc = self.procs.pop(zone)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Stores]:
    procs = Stores(tmp_path)
    try:
        for zone in HOSTS:
            procs.start(zone)
        yield procs
    finally:
        for zone in list(procs.procs):
            procs.kill(zone)


@pytest.fixture
async def clients(stores: Stores) -> AsyncIterator[dict[str, StoreClient]]:
    session = aiohttp.ClientSession()
    yield {z: StoreClient(z, url(z), lambda: session) for z in HOSTS}
    await session.close()


async def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        value = await value if asyncio.iscoroutine(value) else value
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


class Reader:
    """Follows one store's feed by hand, collecting every change."""

    def __init__(self, client: StoreClient) -> None:
        self.client = client
        self.epoch: str | None = None
        self.seq: int | None = None
        self.seen: list[Change] = []

    async def poll(self, wait: float = 0.5) -> bool:
        answer = await self.client.changes(self.epoch, self.seq, wait=wait)
        reset = answer.reset
        self.epoch, self.seq = answer.epoch, answer.seq
        self.seen += answer.changes
        return reset

    async def change_of(self, key: str, origin: str | None = None) -> Change:
        async def found() -> Change | None:
            await self.poll()
            return next((c for c in self.seen if c.key == key
                         and (origin is None or c.origin == origin)), None)

        change: Change = await until(found)
        return change


async def test_feed_shows_local_writes_2pc_commits_and_replicated_records(
        clients: dict[str, StoreClient]) -> None:
    a, b = clients["a"], clients["b"]
    feed = Reader(a)
    assert await feed.poll(wait=0)  # a new subscriber starts with a reset
    start = feed.seq
    assert start is not None

    written = (await a.put("things", "local", 1)).records[0]
    change = await feed.change_of("local")
    assert (change.collection, change.version) == ("things", written.version)
    assert change.seq > start

    waiting = asyncio.create_task(a.changes(feed.epoch, feed.seq, wait=10))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # a long-poll waits for the next change ...
    began = time.monotonic()
    await a.put("things", "wakes", 2)
    woken = await waiting
    assert [c.key for c in woken.changes] == ["wakes"]
    assert time.monotonic() - began < 2  # ... and answers as soon as there is one

    replicated = (await b.put("things", "from-b", 3)).records[0]
    change = await feed.change_of("from-b", origin="b")  # applied by replication
    assert change.version == replicated.version
    strong = (await b.put("things", "strong", 4, strong=True)).records[0]
    assert (await feed.change_of("strong")).version == strong.version  # a 2PC participant
    deleted = (await b.delete("things", "from-b")).records[0]
    await until(lambda: _tombstone(feed, "from-b", deleted.version))
    seqs = [c.seq for c in feed.seen]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

    assert (await a.changes("another-epoch", feed.seq)).reset
    assert (await a.changes(feed.epoch, (feed.seq or 0) + 5)).reset  # from the future


async def _tombstone(feed: Reader, key: str, version: tuple[int, str]) -> bool:
    await feed.poll()
    return any(c.key == key and c.version == version for c in feed.seen)


async def test_versions_endpoint_answers_the_version_without_the_value(
        clients: dict[str, StoreClient]) -> None:
    a = clients["a"]
    written = (await a.put("things", "v", {"big": "x" * 1000})).records[0]
    assert await a.version("things", "v") == written.version
    assert await a.version("things", "v", strong=True) == written.version
    await a.delete("things", "v")
    assert await a.version("things", "v") is None
    assert await a.version("things", "never") is None


async def test_follower_discards_what_replication_replaced_and_clears_when_the_feed_is_lost(
        stores: Stores, clients: dict[str, StoreClient]) -> None:
    a, b = clients["a"], clients["b"]
    cache: LocalCache[Any] = LocalCache(RESPONSE_CACHE, 60.0, follows_feed=True)
    follower = ChangeFollower(a, {RESPONSE_CACHE: cache}, wait=2.0, retry=0.2)
    follower.start()
    try:
        await until(lambda: follower.live)
        mine = (await a.put(RESPONSE_CACHE, "k", {"answer": "a"})).records[0]
        with cache.reading("k") as read:
            record = await a.get(RESPONSE_CACHE, "k")
            assert record is not None and cache.fill(read, record.value, record.version)
        await until(lambda: follower.invalidations >= 1)  # its own write came back ...
        assert cache.get("k") == {"answer": "a"}  # ... and is no newer than the entry
        newer = (await b.put(RESPONSE_CACHE, "k", {"answer": "b"})).records[0]
        assert newer.version > mine.version
        await until(lambda: cache.get("k") is None)  # replication brought a newer record
        assert (await a.get(RESPONSE_CACHE, "k")).value == {"answer": "b"}  # type: ignore[union-attr]

        with cache.reading("k") as read:
            assert cache.fill(read, {"answer": "b"}, newer.version)
        stores.kill("a")
        await until(lambda: not follower.live)
        assert cache.get("k") is None and not cache.feed_live  # cleared, takes no fills
        epoch = follower.epoch
        stores.start("a")
        await until(lambda: follower.live, timeout=15)
        assert follower.epoch != epoch and follower.resets == 2  # a new feed: start over
        with cache.reading("k") as read:
            assert cache.fill(read, {"answer": "b"}, newer.version)
    finally:
        await follower.stop()


async def test_snapshot_import_resets_subscribers(tmp_path: Path,
                                                  clients: dict[str, StoreClient]) -> None:
    a = clients["a"]
    feed = Reader(a)
    await feed.poll(wait=0)
    other = SQLiteZoneStore("c", tmp_path / "c.db")
    await other.open()
    try:
        await other.put("things", "from-snapshot", 1)
        snapshot = await other.export_snapshot()
    finally:
        await other.close()
    await a.call("POST", "/replication/snapshot", snapshot.to_json())
    assert await feed.poll(wait=0)  # records changed without outbox entries: reset
    assert not await feed.poll(wait=0)


# ---------------------------------------------------------------- the feed in-process
async def test_subscriber_behind_the_ring_is_reset(tmp_path: Path) -> None:
    store = SQLiteZoneStore("a", tmp_path / "a.db")
    await store.open()
    try:
        feed = ChangeFeed(store, capacity=3)
        await feed.run_cycle()  # starts at the outbox head
        first = await feed.since(None, None)
        assert first.reset
        for i in range(5):
            await store.put("things", f"k{i}", i)
        await feed.run_cycle()
        assert feed.seq == first.seq + 5
        assert (await feed.since(feed.epoch, first.seq)).reset  # 2 changes fell off the ring
        kept = await feed.since(feed.epoch, feed.seq - 3)
        assert not kept.reset and [c.key for c in kept.changes] == ["k2", "k3", "k4"]
        assert (await feed.since(feed.epoch, feed.seq - 4)).reset
        quiet = await feed.since(feed.epoch, feed.seq, wait=0.1)
        assert not quiet.reset and quiet.changes == [] and quiet.seq == feed.seq
        feed.reset("test")
        assert (await feed.since(feed.epoch, feed.seq - 1)).reset
    finally:
        await store.close()
