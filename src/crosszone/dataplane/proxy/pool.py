"""Upstream endpoints, their health state, and how one is chosen for a request.

An endpoint is *available* when the active checker has not declared it unhealthy and no passive
failure has ejected it. Endpoints sit in tiers: ``(drained, priority)``, where a drained endpoint is
one whose weight is zero. A request goes to the lowest tier that has an available endpoint (own zone
before other zones at a gateway; the primary zone before the backups at an active/backup load
balancer), and the pool's :class:`SelectionPolicy` chooses inside that tier.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Protocol


class Endpoint:
    """One upstream (a worker behind a gateway, or a zone gateway behind the load balancer)."""

    __slots__ = ("ejected", "ejections", "epoch", "failures", "healthy", "last_error", "name",
                 "outstanding", "priority", "successes", "swrr", "tier", "url", "waiting",
                 "weight", "zone")

    def __init__(self, name: str, zone: str, url: str, *, priority: int = 0,
                 weight: float = 1.0, healthy: bool | None = None) -> None:
        self.name = name
        self.zone = zone
        self.url = url.rstrip("/")
        self.priority = priority
        self.weight = weight
        # None: not checked yet; treated as available (optimistic) until the first check decides.
        self.healthy = healthy
        self.ejected = False
        self.outstanding = 0
        self.successes = 0  # consecutive active-check successes
        self.failures = 0  # consecutive active-check failures
        self.ejections = 0
        self.epoch = 0  # bumped on every ejection, so a check started before it cannot undo it
        self.last_error: str | None = None
        self.tier: tuple[bool, int] = (weight <= 0, priority)
        self.swrr = 0.0  # smooth weighted round-robin state
        # deadlines of attempts still waiting for this endpoint's first byte (see fail_waiting)
        self.waiting: set[asyncio.Timeout] = set()

    @property
    def available(self) -> bool:
        return self.healthy is not False and not self.ejected

    def set_weight(self, weight: float) -> None:
        self.weight = weight
        self.tier = (weight <= 0, self.priority)

    def fail_waiting(self) -> int:
        """Make every attempt still waiting for this endpoint's first byte time out now.

        Called when the endpoint turns unhealthy: those attempts have sent nothing to their
        clients yet, so they move to another endpoint instead of waiting out a long first-byte
        timeout on a silent one. Returns how many were cut short.
        """
        waiting, self.waiting = self.waiting, set()
        if waiting:
            now = asyncio.get_running_loop().time()
            for timer in waiting:
                if not timer.expired():
                    timer.reschedule(now)
        return len(waiting)

    def state(self) -> str:
        if self.ejected:
            return "ejected"
        return {None: "unknown", True: "healthy", False: "unhealthy"}[self.healthy]

    def __repr__(self) -> str:
        return (f"<Endpoint {self.name} {self.url} {self.state()} outstanding={self.outstanding}"
                f" tier={self.tier} weight={self.weight:g}>")


class SelectionPolicy(Protocol):
    """Chooses one endpoint among two or more available endpoints of the same tier."""

    def choose(self, candidates: Sequence[Endpoint]) -> Endpoint: ...


class LeastOutstanding:
    """Fewest requests in flight; ties broken at random."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[Endpoint]) -> Endpoint:
        low = min(ep.outstanding for ep in candidates)
        ties = [ep for ep in candidates if ep.outstanding == low]
        return ties[0] if len(ties) == 1 else self._rng.choice(ties)


class WeightedLeastOutstanding:
    """Least outstanding, weighted (Envoy's weighted least-request, in spirit).

    With equal weights this is :class:`LeastOutstanding`. With unequal weights it runs smooth
    weighted round robin (nginx) over the effective weights ``weight / (outstanding + 1)``: an idle
    pool splits traffic exactly by weight, and a busier endpoint gets proportionally less.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._least = LeastOutstanding(rng)

    def choose(self, candidates: Sequence[Endpoint]) -> Endpoint:
        first = candidates[0].weight
        if all(ep.weight == first for ep in candidates):
            return self._least.choose(candidates)
        total = 0.0
        best = candidates[0]
        for ep in candidates:
            effective = ep.weight / (ep.outstanding + 1)
            ep.swrr += effective
            total += effective
            if ep.swrr > best.swrr:
                best = ep
        best.swrr -= total
        return best


class UpstreamPool:
    """A fixed set of endpoints plus the rule for choosing one.

    ``fail_open`` is Envoy's panic mode: when no endpoint is available, still try every endpoint
    in tier order rather than refusing the request.
    """

    def __init__(self, endpoints: Iterable[Endpoint], policy: SelectionPolicy | None = None,
                 *, fail_open: bool = False) -> None:
        self.endpoints: list[Endpoint] = list(endpoints)
        names = [ep.name for ep in self.endpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"endpoint names must be unique: {names}")
        self.policy: SelectionPolicy = policy or LeastOutstanding()
        self.fail_open = fail_open

    def pick(self, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        """The endpoint for the next attempt, never one in ``exclude`` (already tried)."""
        best: tuple[bool, int] | None = None
        candidates: list[Endpoint] = []
        for ep in self.endpoints:
            if not ep.available or ep in exclude:
                continue
            if best is None or ep.tier < best:
                best = ep.tier
                candidates = [ep]
            elif ep.tier == best:
                candidates.append(ep)
        if candidates:
            return candidates[0] if len(candidates) == 1 else self.policy.choose(candidates)
        if self.fail_open:
            for ep in self.in_order():
                if ep not in exclude:
                    return ep
        return None

    def in_order(self) -> list[Endpoint]:
        """The fail-open order: by tier, and within a tier the endpoint that failed the fewest
        health checks in a row first -- one that just turned unhealthy (starved, slow) is more
        likely to answer than one that has refused connections for a while."""
        return sorted(self.endpoints, key=lambda ep: (ep.tier, ep.failures))

    def eject(self, ep: Endpoint, reason: str) -> bool:
        """Passive ejection after a failed request; True if it was not ejected already.

        It returns to service once the active checker has seen ``healthyThresholdCount``
        consecutive successes after this moment.
        """
        ep.epoch += 1
        ep.successes = 0
        ep.last_error = reason
        if ep.ejected:
            return False
        ep.ejected = True
        ep.ejections += 1
        return True

    def get(self, name: str) -> Endpoint:
        for ep in self.endpoints:
            if ep.name == name:
                return ep
        raise KeyError(name)

    def available(self, zone: str | None = None) -> list[Endpoint]:
        return [ep for ep in self.endpoints
                if ep.available and (zone is None or ep.zone == zone)]

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Set the weight of every endpoint named in ``weights`` (by endpoint name)."""
        for name, weight in weights.items():
            self.get(name).set_weight(weight)

    @property
    def outstanding(self) -> int:
        return sum(ep.outstanding for ep in self.endpoints)

    def __repr__(self) -> str:
        inner = ", ".join(repr(ep) for ep in self.endpoints)
        return f"<UpstreamPool fail_open={self.fail_open} [{inner}]>"
