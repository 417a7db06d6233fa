"""Act on a decision: push weights, stamped with the fencing token, to the LB and the gateways.

Receivers keep serving with the last weights they accepted when the controller is unreachable
(static stability), so a push that fails is simply retried on the next cycle, and unchanged
routing is re-sent every ``repush_seconds`` in case a receiver restarted and forgot it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from crosszone.config.placement import Placement
from crosszone.config.topology import Topology
from crosszone.control.fencing import fencing_headers
from crosszone.control.model import Routing

LB_WEIGHTS_PATH = "/lb/weights"
GATEWAY_WEIGHTS_PATH = "/gateway/weights"


@dataclass(frozen=True)
class Target:
    """One receiver of weights. ``required``: the push counts toward an event's success."""

    name: str
    url: str
    required: bool = True


@dataclass
class PushReport:
    ok: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)  # 404/405: receiver has no endpoint
    failed: dict[str, str] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)  # 409: a newer leader exists
    skipped: bool = False  # the lease lapsed before sending: nothing was sent
    duration_ms: float = 0.0

    def success(self, targets: list[Target]) -> bool:
        """Every required target acknowledged (now or earlier: it is not in ``failed``)."""
        required = [t.name for t in targets if t.required]
        return not self.skipped and not self.stale and not any(n in self.failed
                                                               for n in required)

    def describe(self) -> str:
        if self.skipped:
            return "lease lapsed before the push: nothing sent"
        parts = [f"pushed to {', '.join(self.ok) or 'nobody'}"]
        if self.failed:
            parts.append("failed: " + ", ".join(f"{k} ({v})" for k, v in self.failed.items()))
        if self.stale:
            parts.append(f"rejected as stale by {', '.join(self.stale)}")
        if self.unsupported:
            parts.append(f"no weights endpoint on {', '.join(self.unsupported)}")
        return "; ".join(parts) + f" in {self.duration_ms:.0f} ms"


def default_targets(topology: Topology) -> list[Target]:
    """The LB (required) and every zone gateway (best effort).

    The LB decides which zone serves, so a push counts as done only once it has acknowledged.
    Gateways use the weights only to choose the other zones that take their cross-zone fallback
    (``PUT /gateway/weights``); a failed zone's gateway is usually the one that cannot answer, so
    requiring gateways would mark every zone failover as failed. They are pushed to on every
    cycle until they acknowledge, and re-sent every ``repush_seconds``.
    """
    placement = Placement(topology)
    lb = topology.load_balancer
    http = [lst for lst in lb.listeners if lst.protocol == "HTTP"]
    listener = http[0] if http else lb.listeners[0]
    scheme = listener.protocol.lower()
    out = [Target("lb", f"{scheme}://{lb.address}:{listener.port}{LB_WEIGHTS_PATH}")]
    out += [Target(f"{gw.zone}/gateway", gw.url + GATEWAY_WEIGHTS_PATH, required=False)
            for gw in placement.gateways()]
    return out


class RoutingPusher:
    """Sends routing to every target concurrently; remembers what each one acknowledged."""

    def __init__(self, targets: list[Target], *, timeout: float, repush_seconds: float,
                 admin_token: str | None = None) -> None:
        self.targets = targets
        self.timeout = timeout
        self.repush_seconds = repush_seconds
        self.admin_token = admin_token
        self._acked: dict[str, tuple[str, int, float]] = {}  # name -> (routing, token, when)
        self._retry: dict[str, tuple[float, float]] = {}  # name -> (next attempt, backoff)
        self._session: aiohttp.ClientSession | None = None

    def due(self, routing: Routing, token: int) -> list[Target]:
        """Targets that have not acknowledged this routing and term (or not recently), except
        those backing off after a failure (0.1 s doubling up to ``repush_seconds``)."""
        now = time.monotonic()
        doc = routing.to_json()
        out = []
        for t in self.targets:
            acked = self._acked.get(t.name)
            fresh = acked is not None and acked[0] == doc and acked[1] == token
            if fresh and acked is not None and now - acked[2] < self.repush_seconds:
                continue
            if fresh or now >= self._retry.get(t.name, (0.0, 0.0))[0]:
                out.append(t)
        return out

    def needs_push(self, routing: Routing, token: int) -> bool:
        return bool(self.due(routing, token))

    async def push(self, routing: Routing, token: int,
                   still_leader: Callable[[], bool]) -> PushReport:
        """Push to every due target; ``still_leader`` is asked right before sending."""
        report = PushReport()
        if not still_leader():
            report.skipped = True
            return report
        if self._session is None:
            self._session = aiohttp.ClientSession()
        started = time.monotonic()
        body = {"weights": dict(routing.weights), "fencing_token": token}
        headers = fencing_headers(token)
        if self.admin_token:
            headers["Authorization"] = f"Bearer {self.admin_token}"
        targets = self.due(routing, token)
        results = await asyncio.gather(*(self._put(self._session, t, body, headers)
                                         for t in targets))
        doc = routing.to_json()
        for target, (status, error) in zip(targets, results, strict=True):
            if status is not None and 200 <= status < 300:
                report.ok.append(target.name)
                self._acked[target.name] = (doc, token, time.monotonic())
                self._retry.pop(target.name, None)
            elif status == 409:
                report.stale.append(target.name)
            elif status in (404, 405):
                report.unsupported.append(target.name)
                self._acked[target.name] = (doc, token, time.monotonic())
            else:
                report.failed[target.name] = error or f"HTTP {status}"
                backoff = min(self._retry.get(target.name, (0.0, 0.05))[1] * 2,
                              self.repush_seconds)
                self._retry[target.name] = (time.monotonic() + backoff, backoff)
        report.duration_ms = (time.monotonic() - started) * 1000
        return report

    async def _put(self, session: aiohttp.ClientSession, target: Target, body: dict[str, object],
                   headers: dict[str, str]) -> tuple[int | None, str]:
        try:
            async with session.put(target.url, json=body, headers=headers, ssl=False,
                                   timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                await resp.read()
                return resp.status, ""
        except TimeoutError:
            return None, f"no answer within {self.timeout:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            return None, type(exc).__name__

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def __repr__(self) -> str:
        return f"<RoutingPusher {[t.name for t in self.targets]}>"
