"""Store operations under chaos, recorded as a history for the checker.

Client loops talk to the zone stores' HTTP API directly (``http://127.0.N.6:7000``), each
operation going to the next zone in turn, so every zone's store takes writes and reads and a
fault on a zone hits the operations sent there:

* async writers and strong writers: each writes new keys ``<run>/<process>-<n>`` (one write
  per key) with ``consistency=async`` or ``strong`` (2PC);
* register writers: one per register ``<run>/reg<k>``, writing 1, 2, 3, ... with
  ``consistency=strong``;
* readers: strong reads of a random register at a random zone.

Outcomes: HTTP 2xx is ``ok``; a connection that was never made, a 4xx (a transaction abort,
fencing, a conflict, a bad request) is ``fail``; a timeout, a reset or a 5xx is ``unknown``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from crosszone.workload.history import History, Op, OpStatus
from crosszone.workload.product import sleep_until

COLLECTION = "drill"


@dataclass(frozen=True)
class KvConfig:
    store_urls: Mapping[str, str]  # zone -> store service URL
    run_id: str  # key prefix: one drill's keys never mix with another's
    duration_seconds: float = 30.0
    async_writers: int = 2
    strong_writers: int = 1
    registers: int = 2
    readers: int = 2
    rate: float = 10.0  # operations per second per client loop
    timeout: float = 2.0


def classify(exc: BaseException | None, response: httpx.Response | None
             ) -> tuple[OpStatus, str | None]:
    """An HTTP exchange's outcome for the history."""
    if exc is not None:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return OpStatus.FAIL, f"{type(exc).__name__}: not connected"
        return OpStatus.UNKNOWN, f"{type(exc).__name__}: {exc}"[:200]
    assert response is not None
    if 200 <= response.status_code < 300:
        return OpStatus.OK, None
    try:
        error = response.json().get("error", {})
        code = error.get("code") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        code = None
    why = f"HTTP {response.status_code} {code or ''}".strip()
    if 400 <= response.status_code < 500:
        return OpStatus.FAIL, why
    return OpStatus.UNKNOWN, why


class KvWorkload:
    def __init__(self, config: KvConfig, history: History | None = None, *,
                 origin: float | None = None, seed: int = 5) -> None:
        self.config = config
        self.history = history or History()
        self.zones = list(config.store_urls)
        self._t0 = origin if origin is not None else time.monotonic()
        self._stop = asyncio.Event()
        self._rng = random.Random(seed)
        self._register_values = {f"{config.run_id}/reg{k}": 0 for k in range(config.registers)}

    def now(self) -> float:
        return time.monotonic() - self._t0

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> History:
        c = self.config
        async with httpx.AsyncClient(timeout=c.timeout) as http:
            loops = [self._writer(http, f"a{i}", "async") for i in range(c.async_writers)]
            loops += [self._writer(http, f"s{i}", "strong") for i in range(c.strong_writers)]
            loops += [self._register_writer(http, key) for key in self._register_values]
            loops += [self._reader(http, f"r{i}") for i in range(c.readers)]
            await asyncio.gather(*loops)
        return self.history

    async def _ticks(self, offset: int) -> Any:
        """Yield op numbers 0, 1, ... paced at ``rate`` until the duration ends or stop()."""
        n = 0
        period = 1.0 / self.config.rate
        start = self.now() + (offset % 7) * period / 7
        while await sleep_until(self.now, start + n * period, self._stop) \
                and self.now() < self.config.duration_seconds:
            yield n
            n += 1

    def _zone(self, n: int, offset: int) -> str:
        return self.zones[(n + offset) % len(self.zones)]

    async def _writer(self, http: httpx.AsyncClient, name: str, consistency: str) -> None:
        offset = sum(map(ord, name))
        async for n in self._ticks(offset):
            key = f"{self.config.run_id}/{name}-{n}"
            await self._write(http, name, key, n + 1, consistency, self._zone(n, offset))

    async def _register_writer(self, http: httpx.AsyncClient, key: str) -> None:
        offset = sum(map(ord, key))
        async for n in self._ticks(offset):
            value = self._register_values[key] + 1
            self._register_values[key] = value
            await self._write(http, f"w:{key.rsplit('/', 1)[-1]}", key, value, "strong",
                              self._zone(n, offset))

    async def _reader(self, http: httpx.AsyncClient, name: str) -> None:
        keys = list(self._register_values)
        if not keys:
            return
        async for _ in self._ticks(sum(map(ord, name))):
            key = self._rng.choice(keys)
            await self._read(http, name, key, self._rng.choice(self.zones))

    def _url(self, zone: str, key: str) -> str:
        return f"{self.config.store_urls[zone]}/kv/{COLLECTION}/{quote(key, safe='/')}"

    async def _write(self, http: httpx.AsyncClient, process: str, key: str, value: int,
                     consistency: str, zone: str) -> Op:
        op = self.history.invoke(process, "write", key, consistency, zone, self.now(), value)
        exc: BaseException | None = None
        response: httpx.Response | None = None
        try:
            response = await http.put(self._url(zone, key), params={"consistency": consistency},
                                      json={"value": {"v": value}})
        except httpx.HTTPError as error:
            exc = error
        status, why = classify(exc, response)
        self.history.complete(op, status, self.now(), error=why)
        return op

    async def _read(self, http: httpx.AsyncClient, process: str, key: str, zone: str) -> Op:
        op = self.history.invoke(process, "read", key, "strong", zone, self.now())
        try:
            response = await http.get(self._url(zone, key), params={"consistency": "strong"})
        except httpx.HTTPError as error:
            status, why = classify(error, None)
            self.history.complete(op, status, self.now(), error=why)
            return op
        if response.status_code == 404 and _code(response) == "not_found":
            self.history.complete(op, OpStatus.OK, self.now(), None)
            return op
        status, why = classify(None, response)
        value = _value(response.json()) if status is OpStatus.OK else None
        self.history.complete(op, status, self.now(), value, why)
        return op


def _code(response: httpx.Response) -> str | None:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return None
    return error.get("code") if isinstance(error, dict) else None


def _value(record: Any) -> int | None:
    if not isinstance(record, dict) or record.get("deleted"):
        return None
    value = record.get("value")
    v = value.get("v") if isinstance(value, dict) else None
    return v if isinstance(v, int) else None


async def read_final_state(store_urls: Mapping[str, str], run_id: str, timeout: float = 5.0
                           ) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """Every zone's values of this run's keys (a local scan of each store), and the zones that
    could not be read with why."""
    states: dict[str, dict[str, int]] = {}
    errors: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=timeout) as http:
        for zone, url in store_urls.items():
            values: dict[str, int] = {}
            after = ""
            try:
                while True:
                    resp = await http.get(f"{url}/kv/{COLLECTION}",
                                          params={"prefix": f"{run_id}/", "after": after,
                                                  "limit": "5000"})
                    resp.raise_for_status()
                    page = resp.json()
                    for record in page.get("records", []):
                        value = _value(record)
                        if value is not None:
                            values[str(record["key"])] = value
                    after = page.get("next") or ""
                    if not after:
                        break
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                errors[zone] = f"{type(exc).__name__}: {exc}"[:200]
                continue
            states[zone] = values
    return states, errors
