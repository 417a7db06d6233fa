"""The measuring side of the streaming benchmark: many SSE streams, each token's arrival time.

Token events are counted straight from the bytes (``"delta":{"content":"`` starts a token
chunk of deepseek-chat), so the client costs little per event and its own delay stays small next
to what is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

TOKEN_MARK = b'"delta":{"content":"'
ERROR_MARK = b'{"error"'


@dataclass
class StreamRecord:
    """One stream as the client saw it."""

    status: int = 0
    node: str = ""  # the worker that answered first (x-crosszone-node)
    zone: str = ""  # the zone the LB chose (x-crosszone-gateway-zone)
    arrivals: list[float] = field(default_factory=list)  # monotonic time of each token
    done: bool = False
    error: str = ""
    opened: float = 0.0
    closed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done and not self.error

    def gaps(self) -> list[float]:
        a = self.arrivals
        return [a[i] - a[i - 1] for i in range(1, len(a))]


def chat_body(prompt: str, max_tokens: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "deepseek-chat", "stream": True,
                            "messages": [{"role": "user", "content": prompt}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def session(limit: int = 0) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, force_close=False),
        timeout=aiohttp.ClientTimeout(total=300, sock_connect=10))


async def one_stream(http: aiohttp.ClientSession, url: str, body: dict[str, Any],
                     headers: dict[str, str], rec: StreamRecord) -> StreamRecord:
    """Stream ``body`` to ``url``, timing every token chunk into ``rec``."""
    clock = time.monotonic
    rec.opened = clock()
    tail = b""
    try:
        async with http.post(url, json=body, headers=headers) as resp:
            rec.status = resp.status
            rec.node = resp.headers.get("x-crosszone-node", "")
            rec.zone = resp.headers.get("x-crosszone-gateway-zone", "")
            async for chunk in resp.content.iter_any():
                now = clock()
                tokens = chunk.count(TOKEN_MARK)
                if tokens:
                    rec.arrivals.extend([now] * tokens)
                if ERROR_MARK in chunk:
                    rec.error = chunk.decode("utf-8", "replace")[-300:]
                tail = (tail + chunk)[-32:]
            rec.done = b"[DONE]" in tail
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
    rec.closed = clock()
    return rec


async def many_streams(url: str, count: int, ramp_seconds: float, headers: dict[str, str],
                       prompt: str = "stream") -> list[StreamRecord]:
    """``count`` streams, started evenly over ``ramp_seconds``; all of them, once finished."""
    records = [StreamRecord() for _ in range(count)]
    async with session() as http:
        tasks = []
        for i, rec in enumerate(records):
            tasks.append(asyncio.create_task(
                one_stream(http, url, chat_body(f"{prompt} {i}"), headers, rec)))
            await asyncio.sleep(ramp_seconds / count)
        await asyncio.gather(*tasks)
    return records


async def keep_open(url: str, streams: int, seconds: float, headers: dict[str, str]) -> int:
    """Keep ``streams`` streams open for ``seconds`` (background load); streams completed."""
    end = time.monotonic() + seconds
    completed = 0
    async with session() as http:
        async def loop(i: int) -> None:
            nonlocal completed
            n = 0
            await asyncio.sleep(i * 0.002)
            while time.monotonic() < end:
                rec = await one_stream(http, url, chat_body(f"load {i} {n}"), headers,
                                       StreamRecord())
                completed += rec.ok
                n += 1

        await asyncio.gather(*(loop(i) for i in range(streams)))
    return completed


def load_process_main(url: str, streams: int, seconds: float, headers: dict[str, str]) -> None:
    """Entry point of the background-load process."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(keep_open(url, streams, seconds, headers))


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_split(pid: int) -> tuple[float, float]:
    """CPU seconds of ``pid`` so far: (user, kernel)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))
