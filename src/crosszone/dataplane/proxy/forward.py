"""Forward one request to a pool, retrying on another endpoint until a byte reaches the client.

Each attempt picks an endpoint the request has not tried yet. A refused or broken connection, a
timeout or a 5xx answer ejects that endpoint at once (passive health) and, as long as the client
has received nothing, the request moves on, up to ``max_attempts`` tries and the total timeout.
A 4xx answer is the client's problem and is passed through unchanged.

Streams are relayed by :class:`~.relay.StreamRelay`; with ``migration.max_migrations`` > 0 a
stream of an API with a dialect (chat, completions, Responses) that breaks after its first byte
continues on another endpoint (:mod:`.migration`). With a :class:`~.hedge.Hedger`, the first
attempt of a streamed request on a hedged route is hedged when its answer is late. Every
attempt's outcome is counted per destination zone in :class:`~.signals.PassiveSignals`, which
the hop reports to the controllers (gray-failure detection).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from crosszone.config.topology import Migration, Timeouts
from crosszone.dataplane.openai_errors import error_response
from crosszone.dataplane.proxy.dialects import dialect_for
from crosszone.dataplane.proxy.errors import AttemptError, BufferedResponse, describe, silent
from crosszone.dataplane.proxy.headers import REQUEST_ID, client_headers
from crosszone.dataplane.proxy.hedge import Hedger, RetryBudget
from crosszone.dataplane.proxy.metrics import HopMetrics
from crosszone.dataplane.proxy.migration import Migrator
from crosszone.dataplane.proxy.pool import Endpoint, UpstreamPool
from crosszone.dataplane.proxy.relay import StreamRelay
from crosszone.dataplane.proxy.signals import PassiveSignals

log = logging.getLogger(__name__)

# Headers a hop adds to its answer: (endpoint that served or None, attempts made) -> headers.
ServedHeaders = Callable[[Endpoint | None, int], dict[str, str]]


class Forwarder:
    """Sends requests to a pool over one shared keep-alive session (set before use)."""

    def __init__(self, pool: UpstreamPool, timeouts: Timeouts, max_attempts: int,
                 metrics: HopMetrics, served_headers: ServedHeaders, *,
                 migration: Migration | None = None, hedge: bool = False,
                 signals: PassiveSignals | None = None) -> None:
        self.pool = pool
        self.signals = signals or PassiveSignals()
        self.timeouts = timeouts
        self.max_attempts = max_attempts
        # When a whole round of attempts failed before anything reached the client (every
        # zone refused or timed out: a mass restart, a CPU-starved survivor), try every
        # endpoint again with backoff for up to this long after the request came in: a
        # transient total outage becomes latency instead of an error (0: one round only).
        self.patience_seconds = 0.0
        self.metrics = metrics
        self.served_headers = served_headers
        self.max_migrations = migration.max_migrations if migration is not None else 0
        self.hedger: Hedger | None = None
        if hedge and migration is not None and migration.hedge_first_token_ms is not None:
            self.hedger = Hedger(migration.hedge_first_token_ms / 1000,
                                 RetryBudget(migration.hedge_budget_percent),
                                 migration.hedge_routes)
        self.session: aiohttp.ClientSession | None = None
        # Only the connect phase is left to aiohttp; the other phases use deadlines below.
        self._client_timeout = aiohttp.ClientTimeout(
            total=None, connect=timeouts.connect_seconds, sock_connect=timeouts.connect_seconds)

    async def forward(self, request: web.Request, body: bytes, headers: CIMultiDict[str],
                      rid: str) -> web.StreamResponse:
        """Answer ``request`` from the pool; never raises for upstream failures."""
        loop_time = asyncio.get_running_loop().time
        started = loop_time()
        deadline = started + self.timeouts.total_seconds
        tried: list[Endpoint] = []
        last: AttemptError | None = None
        answered: AttemptError | None = None  # the last attempt an upstream answered (5xx)
        hedge = self.hedger is not None and self.hedger.wants(request.method, request.path,
                                                              body)
        patient_until = min(started + self.patience_seconds, deadline)
        backoff, attempts = 0.05, 0
        while True:
            while len(tried) < self.max_attempts and loop_time() < deadline:
                ep = self.pool.pick(tried)
                if ep is None:
                    break
                if last is not None:
                    self.metrics.count_retry(last.reason)
                tried.append(ep)
                self.metrics.count_attempt(ep.name)
                ep.outstanding += 1
                try:
                    return await self._attempt(ep, tried, request, body, headers, rid, started,
                                               deadline, hedge)
                except AttemptError as exc:
                    last = exc
                    if exc.response is not None:
                        answered = exc
                    self.eject(exc.endpoint or ep, exc)
                finally:
                    ep.outstanding -= 1
                hedge = False  # only the first attempt is hedged
            attempts += len(tried)
            if not _worth_another_round(last) or loop_time() + backoff >= patient_until:
                break
            await asyncio.sleep(backoff)
            backoff, tried = min(backoff * 2, 1.0), []
        # what an upstream said beats a later "cannot connect" to a zone that is down
        return self._give_up(attempts, answered or last, rid, started)

    async def open(self, ep: Endpoint, method: str, path: str, body: bytes,
                   headers: CIMultiDict[str], headers_by: float,
                   deadline: float) -> aiohttp.ClientResponse:
        """Send one request to ``ep`` and wait for its response headers until ``headers_by``.

        A 5xx answer raises AttemptError (its body kept, to pass on if nothing does better).
        Every attempt, of the forwarder or of a migrator, hedger or gateway call, passes here
        and is counted in :attr:`signals` with its time to headers.
        """
        loop_time = asyncio.get_running_loop().time
        started = loop_time()
        try:
            upstream = await self._open(ep, method, path, body, headers, headers_by, deadline)
        except AttemptError:
            self.signals.attempt_ended(ep, None)  # the failure is counted where ep is ejected
            raise
        except asyncio.CancelledError:
            # a hedge that lost, or a client that left: the wait so far is a lower bound
            self.signals.attempt_ended(ep, loop_time() - started)
            raise
        self.signals.attempt_ended(ep, loop_time() - started)
        return upstream

    async def _open(self, ep: Endpoint, method: str, path: str, body: bytes,
                    headers: CIMultiDict[str], headers_by: float,
                    deadline: float) -> aiohttp.ClientResponse:
        if self.session is None:
            raise RuntimeError("Forwarder.session is not set (app not started)")
        attempt_start = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout_at(headers_by) as timer:
                ep.waiting.add(timer)
                try:
                    upstream = await self.session.request(
                        method, URL(ep.url + path, encoded=True), data=body or None,
                        headers=headers, timeout=self._client_timeout, allow_redirects=False)
                finally:
                    ep.waiting.discard(timer)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise AttemptError("connect", f"cannot connect to {ep.name}: {describe(exc)}"
                               ) from exc
        except TimeoutError as exc:
            raise AttemptError("timeout", silent(ep, f"sent no response headers within "
                                                     f"{headers_by - attempt_start:.3g}s")
                               ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise AttemptError("reset", f"{ep.name}: {describe(exc)}") from exc
        if upstream.status >= 500:
            try:
                raise AttemptError("status", f"{ep.name} answered HTTP {upstream.status}",
                                   response=await self._read_quietly(upstream, deadline))
            finally:
                upstream.release()
        return upstream

    async def _attempt(self, ep: Endpoint, tried: list[Endpoint], request: web.Request,
                       body: bytes, headers: CIMultiDict[str], rid: str, started: float,
                       deadline: float, hedge: bool) -> web.StreamResponse:
        loop_time = asyncio.get_running_loop().time
        headers_by = min(loop_time() + self.timeouts.first_byte_seconds, deadline)
        served = ep
        if hedge and self.hedger is not None:
            served, upstream = await self.hedger.open(
                self, ep, tried, request.method, request.raw_path, body, headers, headers_by,
                deadline)
        else:
            upstream = await self.open(ep, request.method, request.raw_path, body, headers,
                                       headers_by, deadline)
        extra = self.served_headers(served, len(tried))
        extra[REQUEST_ID] = rid
        try:
            if upstream.content_type == "text/event-stream":
                idle = self.timeouts.idle_seconds
                relay = StreamRelay(request, upstream, served, idle_seconds=idle,
                                    deadline=deadline, extra_headers=extra,
                                    migrator=self._migrator(request, body, headers, tried,
                                                            deadline),
                                    on_failure=self.eject)
                response = await relay.run(max(headers_by, loop_time() + idle))
                end = loop_time()
                self.metrics.ttfb.observe((relay.first_byte_at or end) - started)
                self.metrics.duration.observe(end - started)
                return response
            data = await self._read(upstream, served, deadline)
        except AttemptError as exc:
            if served is not ep:
                exc.endpoint = served  # the hedge won, then failed: eject it, not ep
            raise
        finally:
            upstream.release()
            if served is not ep:
                served.outstanding -= 1
        elapsed = loop_time() - started
        self.metrics.ttfb.observe(elapsed)
        self.metrics.duration.observe(elapsed)
        return web.Response(status=upstream.status, body=data,
                            headers=client_headers(upstream.headers, extra))

    def _migrator(self, request: web.Request, body: bytes, headers: CIMultiDict[str],
                  tried: list[Endpoint], deadline: float) -> Migrator | None:
        """A migrator for this stream, if its API can be continued and migration is on."""
        if not self.max_migrations or request.method != "POST":
            return None
        dialect = dialect_for(request.path)
        if dialect is None:
            return None
        return Migrator(self, dialect, method=request.method, path=request.raw_path, body=body,
                        headers=headers, max_migrations=self.max_migrations, tried=tried,
                        deadline=deadline)

    async def _read(self, upstream: aiohttp.ClientResponse, ep: Endpoint,
                    deadline: float) -> bytes:
        """The whole body of a non-streaming answer, before the client sees anything."""
        loop_time = asyncio.get_running_loop().time
        try:
            async with asyncio.timeout_at(min(loop_time() + self.timeouts.idle_seconds,
                                              deadline)) as timer:
                ep.waiting.add(timer)
                try:
                    return await upstream.read()
                finally:
                    ep.waiting.discard(timer)
        except TimeoutError as exc:
            raise AttemptError("timeout", silent(ep, "stalled while sending its body")) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise AttemptError("reset", f"{ep.name} broke its body: {describe(exc)}") from exc

    async def _read_quietly(self, upstream: aiohttp.ClientResponse,
                            deadline: float) -> BufferedResponse | None:
        """A 5xx answer kept whole, to pass through if no other endpoint does better."""
        loop_time = asyncio.get_running_loop().time
        try:
            async with asyncio.timeout_at(min(loop_time() + self.timeouts.idle_seconds,
                                              deadline)):
                body = await upstream.read()
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None
        return BufferedResponse(upstream.status, upstream.headers, body)

    def eject(self, ep: Endpoint, failure: AttemptError) -> None:
        """Passive ejection of ``ep`` after ``failure`` (counted and logged once)."""
        self.signals.failed(ep)
        if self.pool.eject(ep, str(failure)):
            self.metrics.count_ejection(ep.name, failure.reason)
            if ep.healthy is not False:
                # the hop's own evidence; an endpoint its active checks already failed (the
                # attempt was cut short for that) tells the controllers nothing their probes
                # of the same node do not
                self.signals.ejected(ep, f"{failure.reason}: {failure}")
            log.warning("ejected %s: %s", ep.name, failure)

    def _give_up(self, attempts: int, last: AttemptError | None, rid: str,
                 started: float) -> web.Response:
        """Nothing could serve: the last 5xx as it came, else an OpenAI-style error."""
        extra = self.served_headers(None, attempts)
        extra[REQUEST_ID] = rid
        self.metrics.duration.observe(asyncio.get_running_loop().time() - started)
        if last is not None and last.response is not None:
            kept = last.response
            return web.Response(status=kept.status, body=kept.body,
                                headers=client_headers(kept.headers, extra))
        if last is None:
            return error_response(503, "no healthy upstream is available",
                                  code="no_healthy_upstream", headers=extra)
        if last.reason == "timeout":
            return error_response(504, f"upstream timed out after {attempts} attempt(s): "
                                  f"{last}", code="upstream_timeout", headers=extra)
        return error_response(503, f"no upstream could serve the request after {attempts} "
                              f"attempt(s); last: {last}", code="no_healthy_upstream",
                              headers=extra)


def _worth_another_round(last: AttemptError | None) -> bool:
    """A round failed in a way that may pass: nobody answered, or a gateway said it could not
    serve right now (502/503/504); not a 500, which would fail again."""
    if last is None:
        return True  # nothing was available at all
    if last.reason in ("connect", "timeout", "reset"):
        return True
    return last.response is not None and last.response.status in (502, 503, 504)
