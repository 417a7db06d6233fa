"""The Coordinator contract, run against every backend: embedded Raft and etcd.

In-process tests check the interface's guarantees (create-if-absent, increasing terms,
compare-and-set renew/release, expiry, fenced KV, bounded time). Process tests run three
``leader_agent`` processes that send fenced commands to a real receiver, then kill or freeze
the one acting: a new leader must act within 3 s, and the frozen one, once resumed, must not
get a single command accepted.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controlutil import Agent, FencedReceiver, wait_until
from crosszone.control.coordination.base import Coordinator, Lease
from crosszone.control.coordination.etcd import EtcdCoordinator
from crosszone.control.coordination.etcd_local import LocalEtcdCluster
from crosszone.control.coordination.raft import RaftCoordinator
from crosszone.control.settings import LeaseSettings
from crosszone.errors import CoordinationError, LeaseLost
from etcdutil import SKIP_REASON, etcd_cluster, free_common_port, have_etcd
from needs import missing

RAFT_HOSTS = ("127.0.109.1", "127.0.109.2", "127.0.109.3")
RECEIVER_HOST = "127.0.111.1"
LEASE = LeaseSettings(ttl_seconds=1.5, renew_seconds=0.3, request_timeout_seconds=0.4,
                      safety_margin_seconds=0.2)
STORE_TTL = {"raft": 1.5, "etcd": 2.0}  # etcd leases are whole seconds (ceil of the TTL)
NEW_LEADER_TARGET = 3.0  # ANCHORS.md: losing the leader yields a new acting leader within 3 s


@dataclass
class Backend:
    name: str
    etcd: LocalEtcdCluster | None
    prefix: str = ""
    raft_port: int = 0

    def coordinators(self, lease: LeaseSettings = LEASE) -> list[Coordinator]:
        if self.name == "raft":
            peers = [f"{h}:{self.raft_port}" for h in RAFT_HOSTS]
            return [RaftCoordinator(f"n{i}", p, peers, lease) for i, p in enumerate(peers)]
        assert self.etcd is not None
        return [EtcdCoordinator(f"n{i}", self.etcd.endpoints, lease, prefix=self.prefix)
                for i in range(3)]

    def agent_args(self, index: int, receiver: str, data_dir: Path) -> list[str]:
        common = ["--receiver", receiver, "--ttl", str(LEASE.ttl_seconds),
                  "--renew", str(LEASE.renew_seconds),
                  "--request-timeout", str(LEASE.request_timeout_seconds),
                  "--margin", str(LEASE.safety_margin_seconds), "--stale-on-resume"]
        if self.name == "raft":
            peers = ",".join(f"{h}:{self.raft_port}" for h in RAFT_HOSTS)
            return ["--backend", "raft", "--raft-self", f"{RAFT_HOSTS[index]}:{self.raft_port}",
                    "--raft-peers", peers, "--data-dir", str(data_dir / f"raft{index}"), *common]
        assert self.etcd is not None
        endpoints = self.etcd.endpoints[index:] + self.etcd.endpoints[:index]
        return ["--backend", "etcd", "--etcd", ",".join(endpoints), "--prefix", self.prefix,
                *common]


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEtcdCluster | None]:
    if not have_etcd():
        yield None
        return
    with etcd_cluster(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


@pytest.fixture(params=["raft", "etcd"])
def backend(request: pytest.FixtureRequest, etcd: LocalEtcdCluster | None) -> Backend:
    if request.param == "etcd" and etcd is None:
        missing(SKIP_REASON)
    return Backend(request.param, etcd, prefix=f"/test-{secrets.token_hex(4)}/",
                   raft_port=free_common_port(RAFT_HOSTS, 17100, 17400))


@pytest.fixture
async def trio(backend: Backend) -> AsyncIterator[list[Coordinator]]:
    coordinators = backend.coordinators()
    try:
        for c in coordinators:
            await c.start()
        yield coordinators
    finally:
        for c in coordinators:
            await c.close()


async def lead(c: Coordinator, timeout: float = 5.0) -> Lease:
    """Campaign until this node leads (the Raft cluster first needs a Raft leader)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            lease = await c.campaign()
            if lease is not None:
                return lease
        except CoordinationError:
            pass
        assert time.monotonic() < deadline, f"{c} did not get the lease in {timeout} s"
        await asyncio.sleep(0.05)


# -- the interface's guarantees --------------------------------------------------------------------


async def test_one_holder_and_terms_only_grow(trio: list[Coordinator]) -> None:
    a, b, c = trio
    first = await lead(a)
    assert await b.campaign() is None and await c.campaign() is None
    assert (await a.campaign() or first).term == first.term  # the holder gets its own lease back
    await wait_until_async(lambda: b.leader(), lambda info: info is not None
                           and info.holder == first.holder)
    await a.resign(first)
    second = await lead(b)
    assert second.term > first.term and await a.campaign() is None
    await b.resign(second)
    third = await lead(c)
    assert third.term > second.term


async def test_renew_extends_and_a_lost_lease_says_so(trio: list[Coordinator]) -> None:
    a, b, _ = trio
    lease = await lead(a)
    await asyncio.sleep(0.2)
    renewed = await a.renew(lease)
    assert renewed.term == lease.term and renewed.deadline > lease.deadline
    await a.resign(renewed)
    with pytest.raises(LeaseLost):
        await a.renew(renewed)
    taken = await lead(b)
    assert taken.term > lease.term


async def test_an_abandoned_lease_expires_and_the_next_term_is_higher(
        backend: Backend, trio: list[Coordinator]) -> None:
    a, b, _ = trio
    lease = await lead(a)
    started = time.monotonic()
    assert lease.remaining() <= LEASE.ttl_seconds - LEASE.safety_margin_seconds
    taken = await lead(b, timeout=STORE_TTL[backend.name] + 2.0)
    waited = time.monotonic() - started
    assert taken.term > lease.term
    assert waited >= LEASE.ttl_seconds - LEASE.safety_margin_seconds  # never before a's deadline
    assert not lease.valid()
    with pytest.raises(LeaseLost):
        await a.renew(lease)


async def test_fenced_kv_writes(trio: list[Coordinator]) -> None:
    a, b, c = trio
    lease = await lead(a)
    assert await c.put("shifts/x", "1")
    assert await a.put("routing", "r1", fence=lease.term)
    assert not await a.put("routing", "old", fence=lease.term - 1)
    assert not await b.delete("shifts/x", fence=lease.term + 1)
    await a.resign(lease)
    newer = await lead(b)
    assert not await a.put("routing", "stale", fence=lease.term)
    assert await b.put("routing", "r2", fence=newer.term)
    assert await b.put("shifts/y", "2")

    async def settled() -> bool:
        return await c.get("routing") == "r2" and \
            await c.items("shifts/") == {"shifts/x": "1", "shifts/y": "2"}

    await wait_until_async(settled, bool)
    assert await b.delete("shifts/x", fence=newer.term)
    await wait_until_async(lambda: a.items("shifts/"), lambda v: v == {"shifts/y": "2"})
    assert await a.get("missing") is None


async def test_requests_are_bounded_when_the_store_is_unreachable(backend: Backend) -> None:
    if backend.name == "raft":  # a member whose peers never answer: no quorum, no leader
        lonely = RaftCoordinator("alone", f"{RAFT_HOSTS[0]}:{backend.raft_port}",
                                 [f"{h}:{backend.raft_port}" for h in RAFT_HOSTS], LEASE)
    else:  # nothing listens on these ports
        dead = free_common_port(("127.0.110.9",), 24000, 24100)
        lonely = EtcdCoordinator("alone", [f"http://127.0.110.9:{dead}"], LEASE)
    await lonely.start()
    try:
        started = time.monotonic()
        with pytest.raises(CoordinationError):
            await lonely.campaign()
        assert time.monotonic() - started < LEASE.request_timeout_seconds + 0.3
        with pytest.raises(CoordinationError):
            await lonely.put("k", "v")
    finally:
        await lonely.close()


# -- processes: kill and freeze the acting leader --------------------------------------------------


@pytest.fixture
async def agents(backend: Backend, tmp_path: Path
                 ) -> AsyncIterator[tuple[FencedReceiver, list[Agent]]]:
    receiver = FencedReceiver(RECEIVER_HOST)
    await receiver.start()
    started: list[Agent] = []
    try:
        for i in range(3):
            agent = Agent(f"n{i}", backend.agent_args(i, receiver.url, tmp_path),
                          tmp_path / f"agent{i}.log")
            agent.start()
            started.append(agent)
        await wait_until(lambda: receiver.acting() is not None, 15.0)
        yield receiver, started
    finally:
        for agent in started:
            agent.stop()
        await receiver.close()


def assert_one_leader_per_term(receiver: FencedReceiver) -> None:
    owners: dict[int, str] = {}
    last = 0
    for cmd in receiver.accepted():
        assert owners.setdefault(cmd.token, cmd.node) == cmd.node, "two nodes acted in one term"
        assert cmd.token >= last, "an older term took effect after a newer one"
        last = cmd.token


async def test_killing_the_leader_yields_a_new_acting_leader_within_3s(
        agents: tuple[FencedReceiver, list[Agent]]) -> None:
    receiver, procs = agents
    old = receiver.acting()
    assert old is not None
    victim = next(a for a in procs if a.node == old.node)
    killed_at = time.monotonic()
    victim.signal(signal.SIGKILL)
    await wait_until(lambda: (receiver.acting() or old).token > old.token, 8.0)
    new = receiver.acting()
    assert new is not None and new.node != old.node
    elapsed = next(c.at for c in receiver.accepted() if c.token > old.token) - killed_at
    assert elapsed < NEW_LEADER_TARGET, f"new acting leader after {elapsed:.2f} s"
    assert_one_leader_per_term(receiver)


async def test_a_frozen_leader_is_fenced_after_it_resumes(
        agents: tuple[FencedReceiver, list[Agent]]) -> None:
    receiver, procs = agents
    old = receiver.acting()
    assert old is not None
    frozen = next(a for a in procs if a.node == old.node)
    frozen.signal(signal.SIGSTOP)
    await wait_until(lambda: (receiver.acting() or old).token > old.token, 8.0)
    await asyncio.sleep(0.3)  # the new leader acts for a while; the old one is past its lease
    resumed_at = time.monotonic()
    frozen.signal(signal.SIGCONT)
    await wait_until(lambda: any(e["event"] == "stale-probe" for e in frozen.events()), 5.0)
    await asyncio.sleep(0.5)
    [probe] = [e for e in frozen.events() if e["event"] == "stale-probe"]
    assert probe["term"] == old.token and probe["status"] == 409
    rejected = [c for c in receiver.log if c.node == old.node and not c.accepted]
    assert rejected and all(c.token == old.token for c in rejected)
    after = [c for c in receiver.accepted() if c.at >= resumed_at]
    assert after and all(c.node != old.node and c.token > old.token for c in after)
    assert_one_leader_per_term(receiver)


async def wait_until_async(fetch: object, check: object, timeout: float = 3.0) -> None:
    """Poll an async getter until ``check(value)`` holds (follower reads may lag a moment)."""
    assert callable(fetch) and callable(check)
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if check(value):
            return
        assert time.monotonic() < deadline, f"last value {value!r}"
        await asyncio.sleep(0.05)
