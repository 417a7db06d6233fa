"""Mid-stream migration: continue a broken stream on another endpoint, on the same connection.

The policy half (the API-specific half is :mod:`.dialects`, the byte rewriting :mod:`.splice`).
When the relay reports a failure, :meth:`Migrator.resume`:

1. refuses once the request has migrated ``max_migrations`` times (counting migrations done by
   the hop above, which it announces in ``x-crosszone-migrations``, as this hop does to the hop
   below, with ``x-crosszone-prefix-tokens``: how many tokens the prefix holds);
2. asks the dialect for a continuation body: the original request with the text the client
   already has as an assistant prefix, and what is left of ``max_tokens``;
3. sends it to the pool's next choice, never an endpoint this request has seen fail (each
   failure ejects its endpoint), trying up to ``max_attempts`` endpoints until one streams;
4. hands the relay the new upstream, its first chunk and a splicer.

A backend that answers the continuation with a 4xx cannot continue a prefix: the stream ends
with a ``continuation_unsupported`` error event. The codes of the error events it ends streams
with (:data:`~.relay.TERMINAL_CODES`) tell the hop above not to try again itself; when it
finds no backend it can reach (``migration_failed``), the hop above tries its own.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson
from multidict import CIMultiDict

from crosszone.config.topology import Timeouts
from crosszone.dataplane.proxy.dialects import CannotContinue, StreamDialect
from crosszone.dataplane.proxy.errors import AttemptError, MigrationFailed
from crosszone.dataplane.proxy.metrics import HopMetrics
from crosszone.dataplane.proxy.pool import Endpoint, UpstreamPool
from crosszone.dataplane.proxy.relay import read_first_chunk
from crosszone.dataplane.proxy.splice import Splicer, client_max_tokens
from crosszone.dataplane.proxy.transcript import StreamRecorder

MIGRATIONS_HEADER = "x-crosszone-migrations"
# Tokens the client already has, sent with a continuation: the hop below (a gateway recording
# usage) can tell the re-prefilled prefix from the request's own prompt.
PREFIX_TOKENS_HEADER = "x-crosszone-prefix-tokens"
_SSE = "text/event-stream"


class Opener(Protocol):
    """What a migrator needs from its hop (the :class:`~.forward.Forwarder`)."""

    pool: UpstreamPool
    timeouts: Timeouts
    max_attempts: int
    metrics: HopMetrics

    async def open(self, ep: Endpoint, method: str, path: str, body: bytes,
                   headers: CIMultiDict[str], headers_by: float,
                   deadline: float) -> aiohttp.ClientResponse: ...

    def eject(self, ep: Endpoint, failure: AttemptError) -> None: ...


@dataclass(frozen=True, slots=True)
class Segment:
    """A continuation that has started streaming."""

    upstream: aiohttp.ClientResponse
    endpoint: Endpoint
    first: bytes
    splicer: Splicer


def migrations_used(headers: CIMultiDict[str] | Any) -> int:
    """Migrations the hop above has already made for this request (its header, else 0)."""
    raw = headers.get(MIGRATIONS_HEADER)
    try:
        return max(int(raw), 0) if raw else 0
    except ValueError:
        return 0


class Migrator:
    """Continues one request's stream when it breaks (see the module docstring)."""

    def __init__(self, opener: Opener, dialect: StreamDialect, *, method: str, path: str,
                 body: bytes, headers: CIMultiDict[str], max_migrations: int,
                 tried: list[Endpoint], deadline: float) -> None:
        self.opener = opener
        self.dialect = dialect
        self.method = method
        self.path = path
        self.body = body
        self.headers = headers
        self.max_migrations = max_migrations
        self.used = migrations_used(headers)
        self.tried = tried
        self.deadline = deadline
        self.recorder = StreamRecorder(dialect)
        self.migrations = 0  # made by this hop for this request

    def __repr__(self) -> str:
        return (f"<Migrator {self.path} {self.used}+{self.migrations}/{self.max_migrations} "
                f"{self.recorder!r}>")

    async def resume(self, failure: AttemptError, lost_at: float) -> Segment:
        """A continuation of the stream that broke with ``failure``; MigrationFailed if none."""
        metrics = self.opener.metrics
        reason = failure.reason
        if self.used + self.migrations >= self.max_migrations:
            metrics.count_migration(reason, "limit")
            raise MigrationFailed("migration_limit_reached",
                                  f"stream interrupted ({failure}) after "
                                  f"{self.used + self.migrations} migration(s); the limit is "
                                  f"{self.max_migrations}")
        transcript = self.recorder.catch_up()
        try:
            request = _json(self.body)
            body = orjson.dumps(self.dialect.continuation(request, transcript))
        except CannotContinue as exc:
            metrics.count_migration(reason, "unsupported")
            raise MigrationFailed("continuation_unsupported",
                                  f"stream interrupted ({failure}); {exc}") from exc
        self.migrations += 1
        metrics.reprefilled_tokens.inc(transcript.tokens)
        headers = self.headers.copy()
        headers[MIGRATIONS_HEADER] = str(self.used + self.migrations)
        headers[PREFIX_TOKENS_HEADER] = str(transcript.tokens)
        cap = client_max_tokens(request)
        loop_time = asyncio.get_running_loop().time
        last: AttemptError | None = None
        for _ in range(self.opener.max_attempts):
            ep = self.opener.pool.pick(self.tried)
            if ep is None or loop_time() >= self.deadline:
                break
            self.tried.append(ep)
            metrics.count_attempt(ep.name)
            ep.outstanding += 1
            try:
                upstream, first = await self._open(ep, body, headers)
            except AttemptError as exc:
                ep.outstanding -= 1
                self.opener.eject(ep, exc)
                last = exc
                continue
            except MigrationFailed:
                ep.outstanding -= 1
                metrics.count_migration(reason, "unsupported")
                raise
            metrics.count_migration(reason, "resumed")
            metrics.migration_pause.observe(loop_time() - lost_at)
            return Segment(upstream, ep, first, Splicer(self.dialect, transcript, cap))
        metrics.count_migration(reason, "failed")
        raise MigrationFailed("migration_failed",
                              f"stream interrupted ({failure}) and no backend could continue "
                              f"it" + (f"; last: {last}" if last else ""))

    async def _open(self, ep: Endpoint, body: bytes,
                    headers: CIMultiDict[str]) -> tuple[aiohttp.ClientResponse, bytes]:
        loop_time = asyncio.get_running_loop().time
        by = min(loop_time() + self.opener.timeouts.first_byte_seconds, self.deadline)
        upstream = await self.opener.open(ep, self.method, self.path, body, headers, by,
                                          self.deadline)
        try:
            if upstream.content_type != _SSE:
                status = upstream.status
                if 400 <= status < 500 and status != 429:
                    detail = await _error_message(upstream, by)
                    raise MigrationFailed("continuation_unsupported",
                                          f"{ep.name} cannot continue the stream: HTTP "
                                          f"{status}: {detail}")
                raise AttemptError("status", f"{ep.name} answered a continuation with HTTP "
                                   f"{status} ({upstream.content_type})")
            idle = self.opener.timeouts.idle_seconds
            first = await read_first_chunk(upstream, ep, min(max(by, loop_time() + idle),
                                                             self.deadline))
        except BaseException:
            upstream.close()
            raise
        return upstream, first


def _json(body: bytes) -> dict[str, Any]:
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CannotContinue("the request body is not JSON") from exc
    if not isinstance(request, dict):
        raise CannotContinue("the request body is not a JSON object")
    return request


async def _error_message(upstream: aiohttp.ClientResponse, by: float) -> str:
    """The message of an OpenAI-style error answer (or its raw start)."""
    try:
        async with asyncio.timeout_at(by):
            raw = await upstream.read()
    except (TimeoutError, aiohttp.ClientError, OSError):
        return "(no body)"
    try:
        error = orjson.loads(raw)["error"]
        return str(error.get("message") if isinstance(error, dict) else error)
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return raw[:200].decode("utf-8", "replace")
