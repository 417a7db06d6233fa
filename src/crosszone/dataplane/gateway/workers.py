"""Chat completions the gateway itself sends to its workers (for the Responses API).

Reuses the gateway hop's :class:`~crosszone.dataplane.proxy.forward.Forwarder`: its pool (own
zone first), session, timeouts, passive ejection and retries before the first byte; a stream
that breaks after its first event continues on another worker through the hop's
:class:`~crosszone.dataplane.proxy.migration.Migrator` and :class:`~.proxy.splice.Splicer`,
exactly as a relayed chat stream would, so its callers see one uninterrupted list of chunks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict

from crosszone.config.topology import CHAT_ROUTE
from crosszone.dataplane.proxy.dialects import dialect_for
from crosszone.dataplane.proxy.errors import AttemptError, describe
from crosszone.dataplane.proxy.forward import Forwarder
from crosszone.dataplane.proxy.migration import Migrator
from crosszone.dataplane.proxy.pool import Endpoint
from crosszone.dataplane.proxy.relay import read_first_chunk
from crosszone.dataplane.proxy.splice import Splicer
from crosszone.dataplane.sse import split_events
from crosszone.errors import ApiRequestError, NoHealthyUpstream, UpstreamError

_SSE = "text/event-stream"


def refused(status: int, raw: bytes) -> ApiRequestError:
    """A worker's 4xx answer, to pass on to the client as it came."""
    try:
        error = orjson.loads(raw).get("error") or {}
    except (orjson.JSONDecodeError, AttributeError):
        error = {}
    error = error if isinstance(error, dict) else {"message": str(error)}
    exc = ApiRequestError(str(error.get("message") or f"the worker answered HTTP {status}"),
                          param=error.get("param"), code=error.get("code"))
    exc.status = status
    return exc


class WorkerCalls:
    """Sends chat completions through ``forwarder`` (set up and started by the gateway hop)."""

    def __init__(self, forwarder: Forwarder) -> None:
        self.fw = forwarder

    def __repr__(self) -> str:
        return f"WorkerCalls({self.fw.pool!r})"

    async def complete(self, body: dict[str, Any], headers: CIMultiDict[str]) -> dict[str, Any]:
        """One non-streamed chat completion (retried on other workers until one answers)."""
        raw = orjson.dumps({**body, "stream": False})
        loop_time = asyncio.get_running_loop().time
        deadline = loop_time() + self.fw.timeouts.total_seconds
        tried: list[Endpoint] = []
        last: AttemptError | None = None
        while len(tried) < self.fw.max_attempts and loop_time() < deadline:
            ep = self._next(tried)
            if ep is None:
                break
            try:
                upstream = await self.fw.open(ep, "POST", CHAT_ROUTE, raw, headers,
                                              self._headers_by(deadline), deadline)
                try:
                    status, data = upstream.status, await self._read(upstream, ep, deadline)
                finally:
                    upstream.release()
            except AttemptError as exc:
                last = exc
                self.fw.eject(ep, exc)
                continue
            finally:
                ep.outstanding -= 1
            if status >= 400:
                raise refused(status, data)
            answer = orjson.loads(data)
            if not isinstance(answer, dict):
                raise UpstreamError(f"{ep.name} answered something other than a JSON object")
            return answer
        raise _gave_up(tried, last)

    async def stream(self, body: dict[str, Any],
                     headers: CIMultiDict[str]) -> AsyncGenerator[dict[str, Any], None]:
        """The chunks of one streamed chat completion (usage included), until ``[DONE]``."""
        raw = orjson.dumps({**body, "stream": True, "stream_options": {"include_usage": True}})
        loop_time = asyncio.get_running_loop().time
        deadline = loop_time() + self.fw.timeouts.total_seconds
        tried: list[Endpoint] = []
        ep, upstream, chunk = await self._open_stream(raw, headers, tried, deadline)
        dialect = dialect_for(CHAT_ROUTE)
        migrator = (Migrator(self.fw, dialect, method="POST", path=CHAT_ROUTE, body=raw,
                             headers=headers, max_migrations=self.fw.max_migrations,
                             tried=tried, deadline=deadline)
                    if dialect is not None and self.fw.max_migrations else None)
        splicer: Splicer | None = None
        rest = b""
        try:
            while True:
                if splicer is not None:
                    out, error = splicer.feed(chunk)
                    events, _ = split_events(out)
                else:
                    events, rest = split_events(rest + chunk)
                    error = None
                    if migrator is not None and events:
                        migrator.recorder.record(b"".join(b"data: " + e + b"\n\n"
                                                          for e in events))
                failure: AttemptError | None = None
                for data in events:
                    if data == b"[DONE]":
                        return
                    event = orjson.loads(data)
                    if isinstance(event, dict) and "error" in event:
                        failure = AttemptError("stream_error", f"{ep.name} failed mid-stream: "
                                               f"{event['error']}")
                        break
                    if isinstance(event, dict):
                        yield event
                if error is not None and failure is None:
                    failure = AttemptError("stream_error", f"{ep.name} failed mid-stream")
                if failure is None:
                    chunk, failure = await self._next_chunk(upstream, ep, deadline)
                    if failure is None:
                        continue
                upstream.close()
                self.fw.eject(ep, failure)
                if migrator is None:
                    raise UpstreamError(f"stream interrupted: {failure}")
                lost_at = loop_time()
                segment = await migrator.resume(failure, lost_at)  # or MigrationFailed
                ep.outstanding -= 1
                ep, upstream, chunk, splicer = (segment.endpoint, segment.upstream,
                                                segment.first, segment.splicer)
        finally:
            upstream.release()
            ep.outstanding -= 1

    # ------------------------------------------------------------------------------------
    def _next(self, tried: list[Endpoint]) -> Endpoint | None:
        ep = self.fw.pool.pick(tried)
        if ep is not None:
            tried.append(ep)
            self.fw.metrics.count_attempt(ep.name)
            ep.outstanding += 1
        return ep

    def _headers_by(self, deadline: float) -> float:
        return min(asyncio.get_running_loop().time() + self.fw.timeouts.first_byte_seconds,
                   deadline)

    async def _open_stream(self, raw: bytes, headers: CIMultiDict[str], tried: list[Endpoint],
                           deadline: float) -> tuple[Endpoint, aiohttp.ClientResponse, bytes]:
        """A worker that has started streaming (its first chunk read); the endpoint stays
        counted outstanding until the caller is done."""
        last: AttemptError | None = None
        loop_time = asyncio.get_running_loop().time
        while len(tried) < self.fw.max_attempts and loop_time() < deadline:
            ep = self._next(tried)
            if ep is None:
                break
            try:
                upstream = await self.fw.open(ep, "POST", CHAT_ROUTE, raw, headers,
                                              self._headers_by(deadline), deadline)
            except AttemptError as exc:
                ep.outstanding -= 1
                last = exc
                self.fw.eject(ep, exc)
                continue
            try:
                if upstream.content_type != _SSE:
                    data = await self._read(upstream, ep, deadline)
                    raise refused(upstream.status, data) if upstream.status >= 400 else \
                        UpstreamError(f"{ep.name} did not stream (HTTP {upstream.status})")
                first = await read_first_chunk(
                    upstream, ep, max(self._headers_by(deadline),
                                      loop_time() + self.fw.timeouts.idle_seconds))
            except AttemptError as exc:
                upstream.release()
                ep.outstanding -= 1
                last = exc
                self.fw.eject(ep, exc)
                continue
            except BaseException:
                upstream.release()
                ep.outstanding -= 1
                raise
            return ep, upstream, first
        raise _gave_up(tried, last)

    async def _next_chunk(self, upstream: aiohttp.ClientResponse, ep: Endpoint,
                          deadline: float) -> tuple[bytes, AttemptError | None]:
        loop_time = asyncio.get_running_loop().time
        try:
            async with asyncio.timeout_at(min(loop_time() + self.fw.timeouts.idle_seconds,
                                              deadline)):
                chunk = await upstream.content.readany()
        except TimeoutError:
            return b"", AttemptError("timeout", f"{ep.name} stalled mid-stream")
        except (aiohttp.ClientError, OSError) as exc:
            return b"", AttemptError("reset", f"{ep.name} broke the stream: {describe(exc)}")
        if not chunk:
            return b"", AttemptError("reset", f"{ep.name} ended the stream before [DONE]")
        return chunk, None

    async def _read(self, upstream: aiohttp.ClientResponse, ep: Endpoint,
                    deadline: float) -> bytes:
        loop_time = asyncio.get_running_loop().time
        try:
            async with asyncio.timeout_at(min(loop_time() + self.fw.timeouts.idle_seconds,
                                              deadline)):
                return await upstream.read()
        except TimeoutError as exc:
            raise AttemptError("timeout", f"{ep.name} stalled while sending its body") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise AttemptError("reset", f"{ep.name} broke its body: {describe(exc)}") from exc


def _gave_up(tried: list[Endpoint], last: AttemptError | None) -> UpstreamError:
    if last is None:
        return NoHealthyUpstream("no healthy worker is available")
    return UpstreamError(f"no worker could serve the request after {len(tried)} attempt(s); "
                         f"last: {last}", status=504 if last.reason == "timeout" else 503)
