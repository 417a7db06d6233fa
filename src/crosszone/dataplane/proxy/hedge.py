"""Hedged first tokens: a second copy of a slow streamed request, bounded by a retry budget.

When a streamed request on a hedged route has no answer (response headers: a worker sends them
with its first token, and a gateway only after its worker's first chunk) within
``hedge_first_token_ms``, a copy goes to the pool's next choice, another zone at the load
balancer. Whichever answers first serves the client; the other is cancelled, which closes its
connection and so frees its worker's slot. A failed side is ejected like any failed attempt.
Only the load balancer hedges (``ProxyHop(hedge=True)``): a late first token usually means a slow
zone, and hedging at both hops would multiply the copies of one request.

:class:`RetryBudget` is a token bucket: every hedgeable request adds ``hedge_budget_percent``/100
of a token (at most ``burst`` tokens are kept) and every hedge spends one, so over any stretch of
traffic hedges stay within that percentage of requests, plus the burst.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection

import aiohttp
import orjson
from multidict import CIMultiDict

from crosszone.dataplane.proxy.errors import AttemptError
from crosszone.dataplane.proxy.migration import Opener
from crosszone.dataplane.proxy.pool import Endpoint

Task = asyncio.Task[aiohttp.ClientResponse]


class RetryBudget:
    """Token bucket: :meth:`deposit` per eligible request, :meth:`try_spend` per hedge."""

    def __init__(self, percent: float, burst: float = 10.0) -> None:
        # Kept in hundredths of a hedge, so whole percentages add up exactly.
        self.percent = max(percent, 0.0)
        self.cap = max(burst, 1.0) * 100.0
        self.level = 0.0

    @property
    def tokens(self) -> float:
        return self.level / 100.0

    def deposit(self) -> None:
        self.level = min(self.cap, self.level + self.percent)

    def try_spend(self) -> bool:
        if self.level >= 100.0:
            self.level -= 100.0
            return True
        return False

    def __repr__(self) -> str:
        return f"<RetryBudget {self.percent:g}% tokens={self.tokens:.2f}/{self.cap / 100:g}>"


class Hedger:
    """Opens an attempt, hedging it when its answer is late (see the module docstring)."""

    def __init__(self, delay_seconds: float, budget: RetryBudget, routes: Collection[str]) -> None:
        self.delay = delay_seconds
        self.budget = budget
        self.routes = frozenset(routes)

    def __repr__(self) -> str:
        return f"<Hedger after {self.delay * 1000:g} ms {self.budget!r}>"

    def wants(self, method: str, path: str, body: bytes) -> bool:
        """Whether this request may be hedged (a streamed POST on a hedged route); each one
        that may adds to the budget."""
        if method != "POST" or path not in self.routes or b'"stream"' not in body:
            return False
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(document, dict) or document.get("stream") is not True:
            return False
        self.budget.deposit()
        return True

    async def open(self, opener: Opener, ep: Endpoint, tried: list[Endpoint], method: str,
                   path: str, body: bytes, headers: CIMultiDict[str], headers_by: float,
                   deadline: float) -> tuple[Endpoint, aiohttp.ClientResponse]:
        """The endpoint that answered first and its response (headers received)."""
        primary: Task = asyncio.ensure_future(
            opener.open(ep, method, path, body, headers, headers_by, deadline))
        try:
            done, _ = await asyncio.wait({primary}, timeout=self.delay)
        except asyncio.CancelledError:
            primary.cancel()
            raise
        if done:
            return ep, primary.result()
        backup_ep = opener.pool.pick(tried)
        if backup_ep is None:
            return ep, await primary
        if not self.budget.try_spend():
            opener.metrics.count_hedge("denied")
            return ep, await primary
        tried.append(backup_ep)
        opener.metrics.count_attempt(backup_ep.name)
        backup_ep.outstanding += 1
        loop_time = asyncio.get_running_loop().time
        backup_by = min(loop_time() + opener.timeouts.first_byte_seconds, deadline)
        backup: Task = asyncio.ensure_future(
            opener.open(backup_ep, method, path, body, headers, backup_by, deadline))
        try:
            winner = await _race(opener, {primary: ep, backup: backup_ep})
        except BaseException:
            backup_ep.outstanding -= 1
            raise
        if winner is backup:
            opener.metrics.count_hedge("won")
            return backup_ep, backup.result()
        backup_ep.outstanding -= 1
        opener.metrics.count_hedge("lost")
        return ep, primary.result()


async def _race(opener: Opener, sides: dict[Task, Endpoint]) -> Task:
    """The first side to answer; the other is cancelled (or closed, if it answered too). A side
    that fails is ejected; if both fail, the first side's failure is raised."""
    first = next(iter(sides))
    pending = set(sides)
    failures: dict[Task, BaseException] = {}
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=lambda t: t is not first):
                exc = task.exception()
                if exc is None:
                    for other in done - {task}:
                        if other.exception() is None:
                            other.result().close()
                    lost = failures.get(first)
                    if isinstance(lost, AttemptError):
                        opener.eject(sides[first], lost)
                    return task
                failures[task] = exc
                if isinstance(exc, AttemptError) and task is not first:
                    opener.eject(sides[task], exc)
        raise failures[first]
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
