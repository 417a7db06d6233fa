"""In-process cost of what the relay does per chunk so that a stream can be migrated.

Runs the relay's own per-chunk path (:meth:`StreamRelay._record`: error-event check, event
boundary check, append to the recorder, batch parse every 16 KiB) over real worker chunks, and
the same loop without it; and the per-read cost of the idle timeout, as a timer per read (the
relay before) and as the one-timer-per-stream watchdog (now). Microseconds per chunk.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from aiohttp import StreamReader
from aiohttp.test_utils import make_mocked_request

from crosszone.dataplane.engines.base import Delta
from crosszone.dataplane.proxy.dialects import ChatDialect
from crosszone.dataplane.proxy.pool import Endpoint
from crosszone.dataplane.proxy.relay import StreamRelay
from crosszone.dataplane.proxy.transcript import StreamRecorder
from crosszone.dataplane.proxy.watchdog import IdleWatchdog
from crosszone.dataplane.worker.protocol import Framer

CHUNKS = 200_000
STREAM_TOKENS = 500  # a new recorder (a new stream) every this many chunks


def recording_cost() -> dict[str, Any]:
    framer = Framer(chat=True, id_="chatcmpl-" + "0" * 32, model="deepseek-chat")
    chunks = [framer.token(Delta(content=w)) for w in ("the ", "harbor ", "glacier ", "of ")]

    async def measure() -> dict[str, Any]:
        relay = StreamRelay(make_mocked_request("POST", "/v1/chat/completions"), cast(Any, None),
                            Endpoint("w", "z", "http://x"), idle_seconds=1, deadline=1,
                            extra_headers={})
        dialect = ChatDialect()
        sink: list[bytes] = []
        clock = time.perf_counter
        start = clock()
        for i in range(CHUNKS):
            sink.append(chunks[i & 3])
            if len(sink) > 64:
                sink.clear()
        plain = clock() - start
        start = clock()
        recorder = StreamRecorder(dialect)
        for i in range(CHUNKS):
            if i % STREAM_TOKENS == 0:
                recorder = StreamRecorder(dialect)
            out, _ = relay._record(chunks[i & 3], recorder)
            sink.append(out)
            if len(sink) > 64:
                sink.clear()
        record = clock() - start
        timers = await _idle_timers()
        return {"chunks": CHUNKS, "chunk_bytes": len(chunks[0]),
                "plain_us": plain / CHUNKS * 1e6, "record_us": record / CHUNKS * 1e6,
                **timers}

    return asyncio.run(measure())


async def _idle_timers() -> dict[str, float]:
    """Per read: ``asyncio.timeout_at`` around it (the relay before issue 7) vs the watchdog."""
    loop = asyncio.get_running_loop()
    reader = StreamReader(cast(Any, _Protocol()), 2**16, loop=loop)
    watchdog = IdleWatchdog(reader, 5.0, loop.time() + 3600)
    clock = time.perf_counter
    reads = CHUNKS // 2

    async def read() -> bytes:
        return b"x"

    start = clock()
    for _ in range(reads):
        await read()
    bare = clock() - start
    start = clock()
    for _ in range(reads):
        async with asyncio.timeout_at(loop.time() + 5.0):
            await read()
    per_read = clock() - start
    start = clock()
    for _ in range(reads):
        watchdog.arm()
        try:
            await read()
        finally:
            watchdog.disarm()
    watched = clock() - start
    watchdog.close()
    return {"timeout_at_us": (per_read - bare) / reads * 1e6,
            "watchdog_us": (watched - bare) / reads * 1e6}


class _Protocol:
    """Enough of a protocol for a detached StreamReader."""

    _reading_paused = False

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...
