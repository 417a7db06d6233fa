"""Cross-zone latency probes into ``cross_zone_latency(time, zone, peer_zone, latency_ms)``.

Each zone's monitor probes from its own address to every other zone: an HTTP ``GET /health``
of the peer zone's gateway over a fresh connection (connection setup included, as a cold
cross-zone request would pay it). Any answer, even a 503, measures the network; no answer is a
probe failure, counted and not stored (a timeout is not a latency).

A monitor stores only its own zone's probes; it pulls the other zones' rows from their
monitors (``GET /api/latency/samples?zone=Z&after=T``), after the newest row of that zone it
already has. With one shared PostgreSQL database the pull finds nothing new, so no row is ever
stored twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from crosszone.errors import MetricsStoreError
from crosszone.monitoring.scrape import Scraper
from crosszone.monitoring.store import LatencySample, MetricsStore

PULL_LOOKBACK_SECONDS = 3600.0  # a new monitor fetches the last hour, the seed query's window
PULL_LIMIT = 10_000


@dataclass
class ProbeRound:
    """What one round of probes and pulls did."""

    samples: list[LatencySample] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # peer zone -> reason
    pulled: dict[str, int] = field(default_factory=dict)  # peer zone -> rows fetched

    def describe(self) -> str:
        parts = [f"{len(self.samples)} probe(s)"]
        if self.failures:
            parts.append("failed to " + ", ".join(sorted(self.failures)))
        got = sum(self.pulled.values())
        if got:
            parts.append(f"pulled {got} row(s) from peers")
        return ", ".join(parts)


class LatencyProber:
    """Probes ``targets`` (peer zone -> URL) from ``zone``; pulls ``peer_monitors``' rows."""

    def __init__(self, zone: str, targets: Mapping[str, str], peer_monitors: Mapping[str, str],
                 scraper: Scraper, store: MetricsStore, timeout: float) -> None:
        self.zone = zone
        self.targets = dict(targets)
        self.peer_monitors = dict(peer_monitors)
        self.scraper = scraper
        self.store = store
        self.timeout = timeout
        self.latest: dict[str, float] = {}  # peer zone -> last latency (ms)
        self.failures: dict[str, int] = dict.fromkeys(self.targets, 0)

    def __repr__(self) -> str:
        return f"<LatencyProber {self.zone} -> {', '.join(self.targets)}>"

    async def probe(self) -> ProbeRound:
        """Probe every peer once, concurrently; store this zone's samples."""
        round_ = ProbeRound()
        now = time.time()
        peers = list(self.targets)
        answers = await asyncio.gather(*(self.scraper.get(self.targets[p], self.timeout)
                                         for p in peers))
        for peer, answer in zip(peers, answers, strict=True):
            if answer.status is None:
                round_.failures[peer] = answer.error or "no answer"
                self.failures[peer] += 1
                continue
            self.latest[peer] = answer.elapsed_ms
            round_.samples.append(LatencySample(now, self.zone, peer, answer.elapsed_ms))
        await asyncio.to_thread(self.store.add_latency, round_.samples)
        return round_

    async def pull(self, round_: ProbeRound) -> None:
        """Fetch the rows other zones' monitors probed since the newest one stored here."""
        async def one(peer: str, url: str) -> None:
            cursor = await asyncio.to_thread(self.store.latest_latency_time, peer)
            after = cursor if cursor is not None else time.time() - PULL_LOOKBACK_SECONDS
            answer = await self.scraper.get(f"{url}/api/latency/samples?zone={peer}"
                                            f"&after={after!r}&limit={PULL_LIMIT}")
            doc = answer.json() if answer.ok else None
            if not isinstance(doc, dict) or not isinstance(doc.get("samples"), list):
                return
            rows = [LatencySample(float(s["time"]), peer, str(s["peer_zone"]),
                                  float(s["latency_ms"]))
                    for s in doc["samples"] if isinstance(s, dict) and s.get("zone") == peer]
            rows = [r for r in rows if r.time > after]
            await asyncio.to_thread(self.store.add_latency, rows)
            round_.pulled[peer] = len(rows)

        results = await asyncio.gather(*(one(p, u) for p, u in self.peer_monitors.items()),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, MetricsStoreError):
                raise result
            if isinstance(result, (KeyError, TypeError, ValueError)):
                continue  # a malformed answer from a peer: skip it this round
            if isinstance(result, BaseException):
                raise result
