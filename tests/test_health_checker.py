"""Active health checks: thresholds exactly, concurrency, the sentence a cycle returns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from crosszone.config.topology import HealthCheck
from crosszone.dataplane.proxy.health import ActiveHealthChecker
from crosszone.dataplane.proxy.pool import Endpoint, UpstreamPool
from proxyfakes import FakeWorker, free_port

HOSTS = ["127.0.112.61", "127.0.112.62", "127.0.112.63"]


@pytest.fixture
async def workers() -> AsyncIterator[list[FakeWorker]]:
    port = free_port(*HOSTS)
    fakes = [FakeWorker(host, port, f"z/w{i}") for i, host in enumerate(HOSTS)]
    for fake in fakes:
        await fake.start()
    yield fakes
    for fake in fakes:
        await fake.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def make(workers: list[FakeWorker], session: aiohttp.ClientSession, *, healthy: int = 3,
         unhealthy: int = 2, timeout: float = 0.2) -> tuple[UpstreamPool, ActiveHealthChecker]:
    pool = UpstreamPool(Endpoint(w.name, "z", f"http://{w.host}:{w.port}", healthy=True)
                        for w in workers)
    check = HealthCheck(path="/health", interval_seconds=1.0, timeout_seconds=timeout,
                        healthy_threshold_count=healthy, unhealthy_threshold_count=unhealthy)
    return pool, ActiveHealthChecker(pool, check, session=session)


async def test_unhealthy_after_exactly_n_failures_healthy_after_exactly_m_successes(
        workers: list[FakeWorker], session: aiohttp.ClientSession) -> None:
    pool, checker = make(workers, session, healthy=3, unhealthy=2)
    ep = pool.get("z/w0")
    workers[0].health_status = 503
    first = await checker.run_cycle()
    assert ep.healthy is True and ep.failures == 1
    assert "no change" in first
    second = await checker.run_cycle()
    assert ep.healthy is False
    assert second == ("checked 3 endpoints: z/w0 became unhealthy after 2 consecutive failures"
                      " (last: HTTP 503)")
    workers[0].health_status = 200
    for _ in range(2):
        assert "no change" in await checker.run_cycle()
        assert ep.healthy is False
    third = await checker.run_cycle()
    assert ep.healthy is True
    assert "z/w0 became healthy after 3 consecutive successes" in third


async def test_a_success_resets_the_failure_count(
        workers: list[FakeWorker], session: aiohttp.ClientSession) -> None:
    pool, checker = make(workers, session, unhealthy=2)
    ep = pool.get("z/w1")
    for status in (500, 200, 500, 200):
        workers[1].health_status = status
        await checker.run_cycle()
        assert ep.healthy is True


async def test_ejected_endpoint_returns_after_healthy_threshold(
        workers: list[FakeWorker], session: aiohttp.ClientSession) -> None:
    pool, checker = make(workers, session, healthy=2)
    ep = pool.get("z/w2")
    pool.eject(ep, "connection reset")
    assert not ep.available
    await checker.run_cycle()
    assert ep.ejected
    sentence = await checker.run_cycle()
    assert not ep.ejected and ep.available
    assert "z/w2 returned from ejection after 2 consecutive successes" in sentence


async def test_unknown_endpoint_healthy_at_once_unhealthy_after_threshold(
        workers: list[FakeWorker], session: aiohttp.ClientSession) -> None:
    pool = UpstreamPool([Endpoint("up", "z", f"http://{workers[0].host}:{workers[0].port}"),
                         Endpoint("down", "z", f"http://{HOSTS[0]}:1")])
    checker = ActiveHealthChecker(pool, HealthCheck(interval_seconds=1, timeout_seconds=0.2,
                                                    unhealthy_threshold_count=2),
                                  session=session)
    sentence = await checker.run_cycle()
    assert pool.get("up").healthy is True and pool.get("down").healthy is None
    assert sentence == "checked 2 endpoints: up is healthy (first check)"
    sentence = await checker.run_cycle()
    assert pool.get("down").healthy is False
    assert "down became unhealthy after 2 consecutive failures (last: cannot connect" in sentence


async def test_slow_endpoint_does_not_block_the_others(
        workers: list[FakeWorker], session: aiohttp.ClientSession) -> None:
    pool, checker = make(workers, session, unhealthy=1, timeout=0.2)
    workers[0].health_delay = 5.0
    started = time.monotonic()
    sentence = await checker.run_cycle()
    elapsed = time.monotonic() - started
    assert elapsed < 0.6
    assert pool.get("z/w0").healthy is False
    assert pool.get("z/w1").healthy is True and pool.get("z/w2").healthy is True
    assert "z/w0 became unhealthy after 1 consecutive failures (last: no answer within 0.2s)" \
        in sentence


async def test_loop_runs_at_the_interval_and_stops(workers: list[FakeWorker]) -> None:
    pool = UpstreamPool(Endpoint(w.name, "z", f"http://{w.host}:{w.port}") for w in workers)
    checker = ActiveHealthChecker(pool, HealthCheck(interval_seconds=0.1, timeout_seconds=0.05))
    await checker.start()
    try:
        await asyncio.sleep(0.55)
    finally:
        await checker.stop()
    assert 3 <= checker.cycles <= 7
    assert all(ep.healthy for ep in pool.endpoints)
    cycles = checker.cycles
    await asyncio.sleep(0.25)
    assert checker.cycles == cycles
