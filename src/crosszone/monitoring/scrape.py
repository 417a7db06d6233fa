"""Reading the components: HTTP GETs within a timeout, Prometheus text parsing, and rates.

aiohttp errors stay inside :meth:`Scraper.get`: a component that does not answer is a
:class:`Fetched` with ``status=None`` and the reason, which is what the monitor reports.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

Labels = Mapping[str, str]


@dataclass(frozen=True)
class Fetched:
    url: str
    status: int | None
    body: bytes = b""
    error: str | None = None
    elapsed_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == 200

    def json(self) -> Any:
        """The decoded body, or None when it is not JSON."""
        try:
            return orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError:
            return None

    def describe(self) -> str:
        if self.status is None:
            return f"no answer ({self.error})"
        return "ok" if self.ok else f"HTTP {self.status}"


class Scraper:
    """GETs from ``source_host`` (the monitor's own address, so a fault on its zone's subnet
    cuts the monitor off exactly like the zone's other nodes)."""

    def __init__(self, timeout: float, source_host: str | None = None) -> None:
        self.timeout = timeout
        self.source_host = source_host
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<Scraper from {self.source_host or 'any'} timeout {self.timeout:g}s>"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            local = (self.source_host, 0) if self.source_host else None
            # A fresh connection per request: a dead peer shows at once, and the probe's
            # latency includes connection setup, as a cold cross-zone request's would.
            connector = aiohttp.TCPConnector(local_addr=local, force_close=True, limit=64)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def get(self, url: str, timeout: float | None = None) -> Fetched:
        limit = aiohttp.ClientTimeout(total=timeout or self.timeout)
        started = time.perf_counter()
        try:
            async with self._client().get(url, timeout=limit, ssl=False) as resp:
                body = await resp.read()
                return Fetched(url, resp.status, body,
                               elapsed_ms=(time.perf_counter() - started) * 1000)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Fetched(url, None, error=_reason(exc),
                           elapsed_ms=(time.perf_counter() - started) * 1000)

    async def get_all(self, urls: Iterable[str]) -> dict[str, Fetched]:
        wanted = list(dict.fromkeys(urls))
        found = await asyncio.gather(*(self.get(u) for u in wanted))
        return dict(zip(wanted, found, strict=True))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _reason(exc: BaseException) -> str:
    """A short reason for an operator: "connection refused", "timeout"."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.os_error
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        return os.strerror(cause.errno).lower() if cause.errno else "cannot connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


# --- Prometheus text ----------------------------------------------------------------------


def parse_samples(text: bytes | str) -> list[Sample]:
    """Every sample of a ``/metrics`` page; [] when the page does not parse."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        return [s for family in text_string_to_metric_families(text) for s in family.samples]
    except (ValueError, TypeError, IndexError):
        return []


def total(samples: Iterable[Sample], name: str,
          where: Callable[[Labels], bool] = lambda _: True) -> float:
    """Sum of the samples called ``name`` whose labels pass ``where``."""
    return sum(s.value for s in samples if s.name == name and where(s.labels))


def buckets(samples: Iterable[Sample], histogram: str) -> dict[float, float]:
    """Cumulative bucket counts of ``histogram`` (summed over its other labels), by bound."""
    out: dict[float, float] = {}
    for s in samples:
        if s.name == f"{histogram}_bucket":
            bound = float(s.labels.get("le", "+Inf"))
            out[bound] = out.get(bound, 0.0) + s.value
    return out


def quantile(q: float, cumulative: Mapping[float, float]) -> float | None:
    """``histogram_quantile``: linear interpolation inside the bucket holding rank q*count."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return None
    count = cumulative[bounds[-1]]
    rank = q * count
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        upper_count = cumulative[bound]
        if upper_count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bucket: its bound, as Prometheus
            in_bucket = upper_count - lower_count
            if in_bucket <= 0:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / in_bucket
        lower_bound, lower_count = bound, upper_count
    return bounds[-1]


class Deltas:
    """Increase of monotonic counters between two scrapes; a restarted process (counter went
    down) counts from zero, as Prometheus' ``increase`` does."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def increase(self, key: str, value: float) -> float:
        before = self._last.get(key)
        self._last[key] = value
        if before is None:
            return 0.0
        return value if value < before else value - before

    def bucket_increase(self, key: str, cumulative: Mapping[float, float]) -> dict[float, float]:
        return {b: self.increase(f"{key}|{b}", v) for b, v in cumulative.items()}

    def forget(self, prefix: str) -> None:
        for key in [k for k in self._last if k.startswith(prefix)]:
            del self._last[key]
