"""Relay of one upstream server-sent-event stream to the client, chunk by chunk.

Two phases. Until the first body chunk has arrived the client has seen nothing (not even the
status line), so any failure raises :class:`AttemptError` and the forwarder retries elsewhere;
this covers a worker that dies right after sending its headers. Once the first chunk is written the
stream is committed, and a failure (reset, end of stream without its end marker, an error event,
no data for ``idle_seconds``) is handed to the :class:`~.migration.Migrator`, which continues the
stream on another endpoint; the continuation's events go through a :class:`~.splice.Splicer`.
Without a migrator, or when it gives up, the stream ends with one OpenAI-style error event, never
a silent cut.

The cost when nothing fails: with a migrator, each chunk is checked for an error event and for
ending on an event boundary (a partial event is held back, so a migration always splices at a
boundary) and appended to the :class:`~.transcript.StreamRecorder`; nothing is parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from aiohttp import web

from crosszone.dataplane.openai_errors import error_body
from crosszone.dataplane.proxy.errors import AttemptError, MigrationFailed, describe, silent
from crosszone.dataplane.proxy.headers import client_headers
from crosszone.dataplane.proxy.pool import Endpoint
from crosszone.dataplane.proxy.tap import stream_tap
from crosszone.dataplane.proxy.watchdog import IdleTimeout, IdleWatchdog
from crosszone.dataplane.sse import encode_event, split_events

if TYPE_CHECKING:
    from crosszone.dataplane.proxy.migration import Migrator
    from crosszone.dataplane.proxy.splice import Splicer
    from crosszone.dataplane.proxy.transcript import StreamRecorder

_CLIENT_GONE = (OSError, aiohttp.ClientError)
_ERROR_MARK = b'{"error"'  # how every error event starts (JSON text cannot hold it unescaped)
_TAIL = 32

# Codes of error events that end a stream for good: the limit is reached, or no backend can
# continue a prefix. ``migration_failed`` is not one: the hop below found no backend *it* could
# reach (a gateway cut off with its zone), and the hop above, which sees the other zones, tries
# them (the migrations header carries the count, so the limit still holds).
TERMINAL_CODES = frozenset({"migration_limit_reached", "continuation_unsupported"})

FailureHook = Callable[[Endpoint, AttemptError], None]


async def read_first_chunk(upstream: aiohttp.ClientResponse, endpoint: Endpoint,
                           by: float) -> bytes:
    """The first body chunk of a stream; AttemptError if none comes by loop time ``by``."""
    name = endpoint.name
    waiting = endpoint.waiting
    try:
        async with asyncio.timeout_at(by) as timer:
            waiting.add(timer)
            try:
                chunk = await upstream.content.readany()
            finally:
                waiting.discard(timer)
    except TimeoutError as exc:
        raise AttemptError("timeout", silent(endpoint, "sent no stream data in time")) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise AttemptError("reset", f"{name} broke the stream before its first event: "
                           f"{describe(exc)}") from exc
    if not chunk:
        raise AttemptError("reset", f"{name} closed the stream before its first event")
    return chunk


class StreamRelay:
    """Relays ``upstream`` (an SSE response) to the client of ``request``."""

    def __init__(self, request: web.Request, upstream: aiohttp.ClientResponse,
                 endpoint: Endpoint, *, idle_seconds: float, deadline: float,
                 extra_headers: Mapping[str, str], migrator: Migrator | None = None,
                 on_failure: FailureHook | None = None) -> None:
        self.request = request
        self.upstream = upstream
        self.endpoint = endpoint
        self.idle_seconds = idle_seconds
        self.deadline = deadline
        self.extra_headers = extra_headers
        self.migrator = migrator
        self.tap = stream_tap(request)  # the hop's hook on what the client gets (usage)
        self.on_failure = on_failure
        self.first_byte_at: float | None = None  # loop time the client got the headers
        self.failure: AttemptError | None = None  # the last failure of the committed stream
        self.client_gone = False
        self._loop = asyncio.get_running_loop()
        self._tail = b""  # the last bytes written to the client
        self._held = b""  # a partial event not yet sent (only with a migrator)
        self._owned: Endpoint | None = None  # a continuation's endpoint, counted outstanding

    def __repr__(self) -> str:
        return (f"<StreamRelay {self.endpoint.name} failure={self.failure} "
                f"migrator={self.migrator!r}>")

    async def run(self, first_chunk_by: float) -> web.StreamResponse:
        """Relay the whole stream; raise AttemptError if it fails before the first chunk."""
        first = await read_first_chunk(self.upstream, self.endpoint,
                                       min(first_chunk_by, self.deadline))
        response = web.StreamResponse(
            status=self.upstream.status,
            headers=client_headers(self.upstream.headers, self.extra_headers))
        try:
            await response.prepare(self.request)
        except _CLIENT_GONE:
            self._drop_client()
            return response
        self.first_byte_at = self._loop.time()
        try:
            await self._relay(response, first)
        finally:
            self._end_segment()
        return response

    async def _relay(self, response: web.StreamResponse, chunk: bytes) -> None:
        splicer: Splicer | None = None
        while True:
            failure = await self._pump(response, chunk, splicer)
            if failure is None:
                return
            self.failure = failure
            lost_at = self._loop.time()
            self.upstream.close()
            if self.on_failure is not None:
                self.on_failure(self.endpoint, failure)
            if self.migrator is None or lost_at >= self.deadline:
                code = "upstream_timeout" if failure.reason == "timeout" \
                    else "upstream_stream_error"
                await self._end_with_error(response, code, f"stream interrupted: {failure}")
                return
            self._end_segment()
            try:
                segment = await self.migrator.resume(failure, lost_at)
            except MigrationFailed as exc:
                await self._end_with_error(response, exc.code, str(exc))
                return
            self.upstream, self.endpoint = segment.upstream, segment.endpoint
            self._owned = segment.endpoint
            chunk, splicer = segment.first, segment.splicer

    async def _pump(self, response: web.StreamResponse, chunk: bytes,
                    splicer: Splicer | None) -> AttemptError | None:
        """Relay one upstream until it ends (None) or fails (the failure)."""
        content = self.upstream.content
        recorder = self.migrator.recorder if self.migrator is not None else None
        tail = self._tail
        failure: AttemptError | None = None
        watchdog = IdleWatchdog(content, self.idle_seconds, self.deadline)

        async def flush(out: bytes) -> None:
            nonlocal tail
            tail = out if len(out) >= _TAIL else (tail + out)[-_TAIL:]
            await response.write(out)

        try:
            while True:
                error: dict[str, Any] | None = None
                if splicer is not None:
                    out, error = splicer.feed(chunk)
                elif recorder is not None:
                    out, error = self._record(chunk, recorder)
                else:
                    out = chunk
                try:
                    if out and self.tap is not None:
                        out = await self.tap.feed(out, flush)
                    if out:
                        await flush(out)
                except _CLIENT_GONE:
                    self._drop_client()
                    return None
                if error is not None:
                    return await self._error_event(response, error)
                watchdog.arm()
                try:
                    chunk = await content.readany()
                except IdleTimeout:
                    what = ("exceeded the total timeout" if self._loop.time() >= self.deadline
                            else f"sent nothing for {self.idle_seconds:g}s")
                    failure = AttemptError("timeout", f"{self.endpoint.name} {what}")
                    break
                except (aiohttp.ClientError, OSError) as exc:
                    failure = AttemptError("reset", f"{self.endpoint.name} broke the stream: "
                                           f"{describe(exc)}")
                    break
                finally:
                    watchdog.disarm()
                if not chunk:
                    break
        finally:
            watchdog.close()
            self._tail = tail
        if failure is not None and not self._complete(splicer, recorder):
            return failure
        return await self._at_eof(response, splicer, recorder)

    def _record(self, chunk: bytes, recorder: StreamRecorder
                ) -> tuple[bytes, dict[str, Any] | None]:
        """Whole events of ``chunk`` to send (recorded), and an error event if one came."""
        if self._held:
            chunk, self._held = self._held + chunk, b""
        if _ERROR_MARK in chunk:
            return self._split_error(chunk, recorder)
        if not chunk.endswith(b"\n\n"):
            cut = _boundary(chunk)
            chunk, self._held = chunk[:cut], chunk[cut:]
            if not chunk:
                return b"", None
        recorder.record(chunk)
        return chunk, None

    def _split_error(self, chunk: bytes, recorder: StreamRecorder
                     ) -> tuple[bytes, dict[str, Any] | None]:
        """The events before the first error event of ``chunk``, and that event."""
        start = 0
        while (mark := chunk.find(_ERROR_MARK, start)) >= 0:
            begin = _boundary(chunk[:mark])
            end = chunk.find(b"\n\n", mark)
            if end < 0:  # the error event is not complete yet: wait for its end
                before, self._held = chunk[:begin], chunk[begin:]
                if before:
                    recorder.record(before)
                return before, None
            event = _event(chunk[begin:end + 2])
            if event is not None and "error" in event:
                before = chunk[:begin]
                if before:
                    recorder.record(before)
                return before, event
            start = mark + 1  # an "error" key inside some other event
        cut = _boundary(chunk)
        chunk, self._held = chunk[:cut], chunk[cut:]
        if chunk:
            recorder.record(chunk)
        return chunk, None

    async def _error_event(self, response: web.StreamResponse,
                           event: dict[str, Any]) -> AttemptError | None:
        """An upstream error event: a failure to recover from, or (if the hop below has tried
        already) the end of the stream, passed on as it came."""
        error = event.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        if code in TERMINAL_CODES:
            with contextlib.suppress(*_CLIENT_GONE):
                await response.write(encode_event(event))
                await response.write_eof()
            return None
        message = error.get("message") if isinstance(error, dict) else error
        return AttemptError("stream_error", f"{self.endpoint.name} failed mid-stream: "
                            f"{message or 'error event'}")

    def _complete(self, splicer: Splicer | None, recorder: StreamRecorder | None) -> bool:
        """Whether the client has the whole stream (its end marker), so a later failure of the
        connection does not matter. Never true without a migrator: nothing is followed then."""
        if splicer is not None:
            return splicer.transcript.done
        return recorder is not None and recorder.ended(self._tail)

    async def _at_eof(self, response: web.StreamResponse, splicer: Splicer | None,
                      recorder: StreamRecorder | None) -> AttemptError | None:
        name = self.endpoint.name
        if splicer is not None:
            cut = splicer.pending
        elif recorder is not None:
            cut = bool(self._held.strip())
        else:
            cut = not self._tail.endswith((b"\n\n", b"\r\n\r\n"))
        if cut:
            return AttemptError("reset", f"{name} ended the stream in the middle of an event")
        if (splicer is not None or recorder is not None) and not self._complete(splicer,
                                                                                 recorder):
            return AttemptError("reset", f"{name} ended the stream before its end marker")
        with contextlib.suppress(*_CLIENT_GONE):
            await response.write_eof()
        return None

    async def _end_with_error(self, response: web.StreamResponse, code: str,
                              message: str) -> None:
        # A stream cut inside an event gets that event terminated first, so the error event
        # below is parsed as an event of its own.
        prefix = b"" if self._tail.endswith((b"\n\n", b"\r\n\r\n")) or not self._tail \
            else b"\n\n"
        event = encode_event(error_body(502, message, code=code))
        with contextlib.suppress(*_CLIENT_GONE):
            await response.write(prefix + event)
            await response.write_eof()

    def _end_segment(self) -> None:
        """Let go of a continuation's endpoint and connection (the forwarder owns the first)."""
        if self._owned is not None:
            self._owned.outstanding -= 1
            self._owned = None
            self.upstream.release()

    def _drop_client(self) -> None:
        """The client went away: stop the upstream (frees the worker's slot)."""
        self.client_gone = True
        self.upstream.close()


def _boundary(data: bytes) -> int:
    """Where the last complete event of ``data`` ends (0 if none does)."""
    lf = data.rfind(b"\n\n")
    crlf = data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def _event(block: bytes) -> dict[str, Any] | None:
    events, _ = split_events(block)
    if not events:
        return None
    try:
        event = orjson.loads(events[0])
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None
