"""Posts a hop's passive signals to every zone's controller, in the background.

Every ``interval`` (0.5 s by default) :meth:`SignalReporter.run_cycle` takes the window
:class:`~.signals.PassiveSignals` counted and sends it as ``POST /control/signals`` to each
controller at once (every controller observes; only the leader acts). The controllers add each
report to their sliding window as it arrives, so a report holds the window's deltas, never
running totals. A report is sent once: a controller that does not answer within ``timeout``
(shorter than the interval, so cycles never overlap) misses it, exactly as it would miss the
requests of a zone it cannot see. Outgoing connections are bound to the hop's own address, so a
network fault on its zone's subnet cuts its reports as it cuts its traffic.

The data path never waits for any of this: it only bumps counters (see :mod:`.signals`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import aiohttp

from crosszone.config.placement import Placement
from crosszone.config.topology import Topology
from crosszone.dataplane.proxy.signals import PassiveSignals, SignalWindow
from crosszone.tasks import cancel_and_wait

log = logging.getLogger(__name__)

SIGNALS_PATH = "/control/signals"
REPORT_SECONDS = 0.5  # one window per report
REPORT_TIMEOUT_FRACTION = 0.8  # of the interval: a report is abandoned before the next is due


def controller_signal_urls(topology: Topology) -> list[str]:
    """``POST /control/signals`` of every zone's controller, in zone order."""
    return [node.url + SIGNALS_PATH for node in Placement(topology).controllers()]


class SignalReporter:
    """Sends :class:`PassiveSignals` windows to ``urls`` every ``interval`` seconds."""

    def __init__(self, signals: PassiveSignals, urls: Sequence[str], *,
                 admin_token: str | None = None, source_host: str | None = None,
                 interval: float = REPORT_SECONDS, timeout: float | None = None,
                 label: str = "signals") -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        self.signals = signals
        self.urls = list(urls)
        self.interval = interval
        self.timeout = min(timeout, interval) if timeout is not None \
            else interval * REPORT_TIMEOUT_FRACTION
        self.source_host = source_host
        self.label = label
        self.headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
        self.reports = 0  # windows sent to at least one controller
        self.unreachable: frozenset[str] = frozenset()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def for_topology(cls, signals: PassiveSignals, topology: Topology, *,
                     source_host: str | None, label: str) -> SignalReporter:
        return cls(signals, controller_signal_urls(topology),
                   admin_token=topology.auth.admin_token, source_host=source_host, label=label)

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=0, keepalive_timeout=30,
                local_addr=(self.source_host, 0) if self.source_host else None)
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout, connect=self.timeout))
        if self._task is None and self.urls:
            self._task = asyncio.create_task(self.run(), name=f"{self.label}-reporter")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def run(self) -> None:
        """:meth:`run_cycle` every ``interval`` until cancelled."""
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.interval
        while True:
            delay = next_at - loop.time()
            if delay < 0:  # fell behind (a suspended process): restart the schedule from now
                next_at, delay = loop.time(), 0.0
            await asyncio.sleep(delay)
            next_at += self.interval
            try:
                sentence = await self.run_cycle()
                log.debug("%s: %s", self.label, sentence)
            except Exception:  # one bad report must not end reporting
                log.exception("%s: reporting passive signals failed", self.label)

    async def run_cycle(self) -> str:
        """Send the current window to every controller; return a sentence saying what it did."""
        window = self.signals.take()
        if window.empty:
            return "nothing to report"
        if self._session is None:
            return "not started: window dropped"
        body = window.to_json()
        results = await asyncio.gather(*(self._post(url, body) for url in self.urls))
        failed = {url: error for url, error in zip(self.urls, results, strict=True) if error}
        self._note_reachability(frozenset(failed), failed)
        if len(failed) < len(self.urls):
            self.reports += 1
        return (f"reported {_summary(window)} to {len(self.urls) - len(failed)}/"
                f"{len(self.urls)} controllers"
                + (f"; failed: {', '.join(f'{u} ({e})' for u, e in failed.items())}"
                   if failed else ""))

    async def _post(self, url: str, body: dict[str, object]) -> str:
        """'' when the controller took the report, else why not."""
        assert self._session is not None
        try:
            async with self._session.post(url, json=body, headers=self.headers) as resp:
                await resp.read()
                return "" if resp.status < 300 else f"HTTP {resp.status}"
        except TimeoutError:
            return f"no answer within {self.timeout:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            return type(exc).__name__

    def _note_reachability(self, unreachable: frozenset[str], why: dict[str, str]) -> None:
        """Log when the set of controllers that miss reports changes (not every 0.5 s)."""
        if unreachable == self.unreachable:
            return
        lost = unreachable - self.unreachable
        back = self.unreachable - unreachable
        self.unreachable = unreachable
        for url in sorted(lost):
            log.info("%s: controller %s misses passive signals (%s)", self.label, url, why[url])
        for url in sorted(back):
            log.info("%s: controller %s receives passive signals again", self.label, url)

    def __repr__(self) -> str:
        return (f"<SignalReporter {self.label} every {self.interval:g} s to {len(self.urls)} "
                f"controllers, {self.reports} reports, {len(self.unreachable)} unreachable>")


def _summary(window: SignalWindow) -> str:
    zones = ", ".join(f"{z} {t.requests} req/{t.errors} err" for z, t in window.zones.items())
    ejected = f", {len(window.ejected)} ejection(s)" if window.ejected else ""
    return (zones or "no requests") + ejected
