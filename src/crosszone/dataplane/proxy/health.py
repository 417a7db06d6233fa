"""Active health checks: ELB's four parameters, applied exactly.

Every ``intervalSeconds`` each endpoint gets one ``GET <path>``, all concurrently, each bounded by
``timeoutSeconds``, so a silent endpoint never delays the others. A 2xx answer is a success.
``unhealthyThresholdCount`` consecutive failures turn a healthy endpoint unhealthy and
``healthyThresholdCount`` consecutive successes turn it healthy again; the same successes bring a
passively ejected endpoint back. An endpoint not checked yet is given the benefit of the doubt: one
success makes it healthy, and it takes the full failure count to make it unhealthy (a slow first
probe during start-up must not take a whole zone out; passive ejection covers a dead one).
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from crosszone.config.topology import HealthCheck
from crosszone.dataplane.proxy.pool import Endpoint, UpstreamPool
from crosszone.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class ActiveHealthChecker:
    """Checks every endpoint of a pool; :meth:`run_cycle` is one tick, :meth:`run` the loop."""

    def __init__(self, pool: UpstreamPool, check: HealthCheck, *,
                 session: aiohttp.ClientSession | None = None, label: str = "health",
                 source_host: str | None = None) -> None:
        self.pool = pool
        self.source_host = source_host
        self.check = check
        self.label = label
        self.cycles = 0
        self._session = session
        self._own_session = session is None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the probe session (unless one was given) and start the loop."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30,
                                               local_addr=_local_addr(self.source_host)),
                cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"{self.label}-checker")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def run(self) -> None:
        """Run :meth:`run_cycle` at a fixed rate until cancelled; log what changed."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                sentence, changed = await self._cycle()
                log.log(logging.INFO if changed else logging.DEBUG, "%s: %s", self.label, sentence)
            except Exception:  # one bad cycle must not end health checking
                log.exception("%s: health-check cycle failed", self.label)
            next_at += self.check.interval_seconds
            delay = next_at - loop.time()
            if delay < 0:  # fell behind (suspended process): restart the schedule from now
                next_at, delay = loop.time(), 0.0
            await asyncio.sleep(delay)

    async def run_cycle(self) -> str:
        """Check every endpoint once; return a sentence saying what changed."""
        sentence, _ = await self._cycle()
        return sentence

    async def _cycle(self) -> tuple[str, bool]:
        endpoints = list(self.pool.endpoints)
        epochs = [ep.epoch for ep in endpoints]
        errors = await asyncio.gather(*(self._probe(ep) for ep in endpoints))
        changes = [change for ep, epoch, error in zip(endpoints, epochs, errors, strict=True)
                   if (change := self._apply(ep, error, epoch)) is not None]
        self.cycles += 1
        if changes:
            return f"checked {len(endpoints)} endpoints: " + "; ".join(changes), True
        up = sum(1 for ep in endpoints if ep.available)
        return (f"checked {len(endpoints)} endpoints: no change "
                f"({up} available, {len(endpoints) - up} not)"), False

    async def _probe(self, ep: Endpoint) -> str | None:
        """None on success, else a short description of the failure."""
        if self._session is None:
            raise RuntimeError("ActiveHealthChecker.start() was not called")
        timeout = self.check.timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                async with self._session.get(ep.url + self.check.path,
                                             allow_redirects=False) as resp:
                    await resp.read()
                    status = resp.status
        except TimeoutError:
            return f"no answer within {timeout:g}s"
        except aiohttp.ClientConnectorError as exc:
            return f"cannot connect ({exc.strerror or exc.os_error})"
        except (aiohttp.ClientError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return None if 200 <= status < 300 else f"HTTP {status}"

    def _apply(self, ep: Endpoint, error: str | None, epoch: int) -> str | None:
        """Update one endpoint's counters and state; describe the change, if any."""
        hc = self.check
        if error is not None:
            ep.successes = 0
            ep.failures += 1
            ep.last_error = error
            if ep.healthy is not False and ep.failures >= hc.unhealthy_threshold_count:
                ep.healthy = False
                cut = ep.fail_waiting()
                moved = f"; {cut} waiting request(s) moved elsewhere" if cut else ""
                return (f"{ep.name} became unhealthy after {ep.failures} consecutive failures"
                        f" (last: {error}){moved}")
            return None
        ep.failures = 0
        if ep.epoch != epoch:  # ejected while this probe ran: the success predates the failure
            return None
        ep.successes += 1
        changes: list[str] = []
        if ep.healthy is None:
            ep.healthy = True
            changes.append(f"{ep.name} is healthy (first check)")
        elif not ep.healthy and ep.successes >= hc.healthy_threshold_count:
            ep.healthy = True
            changes.append(f"{ep.name} became healthy after {ep.successes} consecutive successes")
        if ep.ejected and ep.successes >= hc.healthy_threshold_count:
            ep.ejected = False
            changes.append(f"{ep.name} returned from ejection after {ep.successes}"
                           " consecutive successes")
        return "; ".join(changes) or None


def _local_addr(host: str | None) -> tuple[str, int] | None:
    """Bind outgoing probes to the node's own address so faults on its zone subnet hit them."""
    return (host, 0) if host else None
