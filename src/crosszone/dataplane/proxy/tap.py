"""A per-request hook on the bytes a stream relay is about to send its client.

A hop that needs to see a stream (the gateway's usage accounting) puts a :class:`StreamTap` in
the request's storage under :data:`STREAM_TAP` before proxying; :class:`~.relay.StreamRelay`
passes every piece it would write through :meth:`StreamTap.feed` and writes what comes back.
The tap may await (to record the usage before the client sees the end of the stream), may send
a first part of the piece itself through ``flush`` before it awaits (so the tokens in front of
a usage block are not held up by its recording), and may drop whole events (a usage block the
client did not ask for). With a migrator the pieces are
whole events; without one they are raw chunks and a tap must cope with split events.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

Flush = Callable[[bytes], Awaitable[None]]
"""Sends bytes to the relay's client now (what the relay writes, in order)."""


class StreamTap(Protocol):
    async def feed(self, out: bytes, flush: Flush) -> bytes:
        """What to send instead of ``out`` (``out`` itself to change nothing), after what the
        tap sent through ``flush``, if anything."""
        ...


STREAM_TAP: web.RequestKey[StreamTap] = web.RequestKey("crosszone_stream_tap")


def stream_tap(request: web.Request) -> StreamTap | None:
    """The tap the hop put on ``request``, if any."""
    return request.get(STREAM_TAP)
