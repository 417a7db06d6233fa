"""Passive signals of one proxy hop: what its upstream attempts saw, per destination zone.

The controllers judge gray failures (a zone much slower or more error-prone than the others while
its health endpoints answer) from what the data plane sees. The hop's
:class:`~.forward.Forwarder` tells this recorder about every attempt, and :class:`PassiveSignals`
keeps, per destination zone and since the last :meth:`PassiveSignals.take`:

* ``requests``: attempts that ended (answered, failed, or were cancelled);
* ``errors``: failed attempts: refused/broken connections, timeouts, 5xx answers, streams that
  broke (counted where the hop ejects the endpoint, so every failure is counted once);
* latencies: time from sending an attempt to its response headers (a worker sends them with its
  first token; a gateway only after its worker's first chunk), reported as the median;
* the passive ejections the hop made, by the controllers' node name.

Nothing here does I/O or awaits: the hot path only bumps counters.
:class:`~.reporter.SignalReporter` posts each window to the controllers in the background.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from crosszone.dataplane.proxy.pool import Endpoint

MAX_LATENCIES = 256  # per zone and window; a uniform sample is kept beyond this
MAX_EJECTIONS = 64  # per window; more in half a second says enough

NodeName = Callable[[Endpoint], str]


@dataclass
class ZoneTally:
    """One destination zone over one window."""

    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds
    seen: int = 0  # latencies offered, for the uniform sample

    def latency_ms(self) -> float | None:
        return statistics.median(self.latencies) * 1000 if self.latencies else None

    def to_json(self) -> dict[str, int | float | None]:
        # A stream that breaks after its attempt was counted in an earlier window adds an error
        # without a request; counting it as one keeps the error rate a rate.
        latency = self.latency_ms()
        return {"requests": max(self.requests, self.errors), "errors": self.errors,
                "latency_ms": None if latency is None else round(latency, 3)}


@dataclass(frozen=True)
class SignalWindow:
    """What one hop saw since the previous window: the body of ``POST /control/signals``."""

    zones: dict[str, ZoneTally]
    ejected: list[tuple[str, str]]  # (node name, reason)

    @property
    def empty(self) -> bool:
        return not self.ejected and not any(t.requests or t.errors for t in self.zones.values())

    def to_json(self) -> dict[str, object]:
        return {"zones": {z: t.to_json() for z, t in self.zones.items()
                          if t.requests or t.errors},
                "ejected": [{"node": n, "reason": r} for n, r in self.ejected]}


class PassiveSignals:
    """Counts attempt outcomes per destination zone (see the module docstring).

    ``node_name`` maps an endpoint to the name the controllers know it by: a gateway's endpoints
    are its workers, named as the controllers name them; the load balancer's are zone gateways,
    named after their zone.
    """

    def __init__(self, node_name: NodeName | None = None,
                 rng: random.Random | None = None) -> None:
        self.node_name: NodeName = node_name or (lambda ep: ep.name)
        self._rng = rng or random.Random()
        self._zones: dict[str, ZoneTally] = {}
        self._ejected: list[tuple[str, str]] = []
        self.windows = 0

    def _tally(self, zone: str) -> ZoneTally:
        tally = self._zones.get(zone)
        if tally is None:
            tally = self._zones[zone] = ZoneTally()
        return tally

    def attempt_ended(self, ep: Endpoint, seconds: float | None) -> None:
        """An attempt on ``ep`` ended; ``seconds`` until its response headers, None if it
        failed before them (the failure itself is counted by :meth:`failed`)."""
        tally = self._tally(ep.zone)
        tally.requests += 1
        if seconds is None:
            return
        tally.seen += 1
        if len(tally.latencies) < MAX_LATENCIES:
            tally.latencies.append(seconds)
        else:  # reservoir sampling keeps a uniform sample of the window
            slot = self._rng.randrange(tally.seen)
            if slot < MAX_LATENCIES:
                tally.latencies[slot] = seconds

    def failed(self, ep: Endpoint) -> None:
        """An attempt on ``ep`` failed (at any point: before or after its headers)."""
        self._tally(ep.zone).errors += 1

    def ejected(self, ep: Endpoint, reason: str) -> None:
        """The hop ejected ``ep`` (passive health)."""
        if len(self._ejected) < MAX_EJECTIONS:
            self._ejected.append((self.node_name(ep), reason))

    def take(self) -> SignalWindow:
        """The window so far; counting starts afresh."""
        window = SignalWindow(self._zones, self._ejected)
        self._zones, self._ejected = {}, []
        self.windows += 1
        return window

    def __repr__(self) -> str:
        counts = ", ".join(f"{z} {t.requests}/{t.errors}" for z, t in self._zones.items())
        return f"<PassiveSignals window {self.windows}: {counts or 'nothing yet'}>"
