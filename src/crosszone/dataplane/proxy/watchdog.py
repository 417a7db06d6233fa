"""One idle timer per relayed stream, instead of one timer per chunk.

``asyncio.timeout_at`` around every read costs a timer handle, a heap push and a cancel per
chunk (about 4 us under uvloop, as much as everything else the relay adds per chunk). The
watchdog keeps a single timer per stream: each read only records when it started, and the
timer, when it fires, re-arms itself for the read in progress unless that read has waited
``idle_seconds`` (or the total deadline has passed); then it fails the read by setting
:class:`IdleTimeout` on the upstream's stream reader. A read that is not in progress (the relay
is busy writing to a slow client) is never timed out: only the upstream's silence counts.
"""

from __future__ import annotations

import asyncio

import aiohttp


class IdleTimeout(Exception):
    """The upstream sent nothing for the idle timeout (or the total deadline passed)."""


class IdleWatchdog:
    """Fails a stream's pending read after ``idle_seconds`` of upstream silence."""

    __slots__ = ("_handle", "_loop", "content", "deadline", "idle", "reading", "since")

    def __init__(self, content: aiohttp.StreamReader, idle_seconds: float,
                 deadline: float) -> None:
        self._loop = asyncio.get_running_loop()
        self.content = content
        self.idle = idle_seconds
        self.deadline = deadline
        self.since = 0.0
        self.reading = False
        self._handle: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        """A read starts now."""
        self.since = self._loop.time()
        self.reading = True
        if self._handle is None:
            self._handle = self._loop.call_at(min(self.since + self.idle, self.deadline),
                                              self._check)

    def disarm(self) -> None:
        """The read ended (data, end of stream, or error)."""
        self.reading = False

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        if not self.reading:
            return  # the next arm() starts a timer again
        due = min(self.since + self.idle, self.deadline)
        if self._loop.time() >= due:
            self.content.set_exception(IdleTimeout())
        else:
            self._handle = self._loop.call_at(due, self._check)

    def __repr__(self) -> str:
        return f"<IdleWatchdog idle={self.idle:g}s reading={self.reading}>"
