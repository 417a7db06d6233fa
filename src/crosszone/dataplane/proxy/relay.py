"""Relay of one upstream server-sent-event stream to the client, chunk by chunk.

Two phases. Until the first body chunk has arrived the client has seen nothing (not even the
status line), so any failure raises :class:`AttemptError` and the forwarder retries elsewhere;
this covers a worker that dies right after sending its headers. Once the first chunk is written the
stream is committed: a failure ends it with one OpenAI-style error event, never a silent cut.
Mid-stream migration (continuing on another endpoint) will hook in at :meth:`StreamRelay.recover`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

import aiohttp
from aiohttp import web

from crosszone.dataplane.openai_errors import error_body
from crosszone.dataplane.proxy.errors import AttemptError, describe, silent
from crosszone.dataplane.proxy.headers import client_headers
from crosszone.dataplane.proxy.pool import Endpoint
from crosszone.dataplane.sse import encode_event

_CLIENT_GONE = (OSError, aiohttp.ClientError)


class StreamRelay:
    """Relays ``upstream`` (an SSE response) to the client of ``request``."""

    def __init__(self, request: web.Request, upstream: aiohttp.ClientResponse,
                 endpoint: Endpoint, *, idle_seconds: float, deadline: float,
                 extra_headers: Mapping[str, str]) -> None:
        self.request = request
        self.upstream = upstream
        self.endpoint = endpoint
        self.idle_seconds = idle_seconds
        self.deadline = deadline
        self.extra_headers = extra_headers
        self.first_byte_at: float | None = None  # loop time the client got the headers
        self.failure: AttemptError | None = None  # set when the committed stream broke upstream
        self.client_gone = False
        self._loop = asyncio.get_running_loop()

    async def run(self, first_chunk_by: float) -> web.StreamResponse:
        """Relay the whole stream; raise AttemptError if it fails before the first chunk."""
        first = await self._first_chunk(min(first_chunk_by, self.deadline))
        response = web.StreamResponse(
            status=self.upstream.status,
            headers=client_headers(self.upstream.headers, self.extra_headers))
        try:
            await response.prepare(self.request)
            await response.write(first)
        except _CLIENT_GONE:
            self._drop_client()
            return response
        self.first_byte_at = self._loop.time()
        await self._pump(response, first)
        return response

    async def _first_chunk(self, by: float) -> bytes:
        name = self.endpoint.name
        waiting = self.endpoint.waiting
        try:
            async with asyncio.timeout_at(by) as timer:
                waiting.add(timer)
                try:
                    chunk = await self.upstream.content.readany()
                finally:
                    waiting.discard(timer)
        except TimeoutError as exc:
            raise AttemptError("timeout", silent(self.endpoint, "sent no stream data in time")
                               ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise AttemptError("reset", f"{name} broke the stream before its first event: "
                               f"{describe(exc)}") from exc
        if not chunk:
            raise AttemptError("reset", f"{name} closed the stream before its first event")
        return chunk

    async def _pump(self, response: web.StreamResponse, tail: bytes) -> None:
        content = self.upstream.content
        loop_time = self._loop.time
        name = self.endpoint.name
        while True:
            try:
                async with asyncio.timeout_at(min(loop_time() + self.idle_seconds,
                                                  self.deadline)):
                    chunk = await content.readany()
            except TimeoutError:
                what = ("exceeded the total timeout" if loop_time() >= self.deadline
                        else f"sent nothing for {self.idle_seconds:g}s")
                await self._broken(response, AttemptError("timeout", f"{name} {what}"), tail)
                return
            except (aiohttp.ClientError, OSError) as exc:
                await self._broken(response, AttemptError(
                    "reset", f"{name} broke the stream: {describe(exc)}"), tail)
                return
            if not chunk:
                break
            tail = chunk if len(chunk) >= 4 else (tail + chunk)[-4:]  # ends an event?
            try:
                await response.write(chunk)
            except _CLIENT_GONE:
                self._drop_client()
                return
        if not tail.endswith((b"\n\n", b"\r\n\r\n")):
            await self._broken(response, AttemptError(
                "reset", f"{name} ended the stream in the middle of an event"), tail)
            return
        with contextlib.suppress(*_CLIENT_GONE):
            await response.write_eof()

    async def recover(self, response: web.StreamResponse, failure: AttemptError) -> bool:
        """Continue a broken stream elsewhere; True if done. Hook for mid-stream migration."""
        return False

    async def _broken(self, response: web.StreamResponse, failure: AttemptError,
                      tail: bytes) -> None:
        self.failure = failure
        self.upstream.close()
        if await self.recover(response, failure):
            return
        # A stream cut inside an event gets that event terminated first, so the error event
        # below is parsed as an event of its own.
        prefix = b"" if tail.endswith((b"\n\n", b"\r\n\r\n")) else b"\n\n"
        code = "upstream_timeout" if failure.reason == "timeout" else "upstream_stream_error"
        event = encode_event(error_body(502, f"stream interrupted: {failure}", code=code))
        with contextlib.suppress(*_CLIENT_GONE):
            await response.write(prefix + event)
            await response.write_eof()

    def _drop_client(self) -> None:
        """The client went away: stop the upstream (frees the worker's slot)."""
        self.client_gone = True
        self.upstream.close()
