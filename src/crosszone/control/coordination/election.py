"""The campaign/renew loop: one cycle per tick, a sentence per cycle, demotion before expiry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from crosszone.control.coordination.base import Coordinator, LeaderInfo, Lease
from crosszone.errors import CoordinationError, LeaseLost

log = logging.getLogger(__name__)


class Elector:
    """Keeps (or seeks) the leader lease of one node.

    Callers never cache leadership: they ask :meth:`acting_token` right before each command, and
    it answers ``None`` as soon as the lease's deadline (send time of the last successful renewal +
    TTL - safety margin) has passed, whether or not the store could be reached. A process frozen
    for longer than its lease therefore wakes up as a follower.
    """

    def __init__(self, coordinator: Coordinator, *, renew_seconds: float,
                 loop_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.coordinator = coordinator
        self.renew_seconds = renew_seconds
        self.loop_seconds = loop_seconds
        self.clock = clock
        self.lease: Lease | None = None
        self.known_leader: LeaderInfo | None = None
        self._renewed_at = 0.0
        self._abandoned = False
        self.last_sentence = "not started"

    @property
    def node_id(self) -> str:
        return self.coordinator.node_id

    def acting_token(self) -> int | None:
        """The fencing token to stamp on a command, or None when this node must not act."""
        lease = self.lease
        if lease is None or not lease.valid(self.clock()):
            return None
        return lease.term

    def is_leader(self) -> bool:
        return self.acting_token() is not None

    async def run_cycle(self) -> str:
        if self._abandoned:
            return self._say("abandoned: not campaigning")
        now = self.clock()
        lease = self.lease
        if lease is not None and not lease.valid(now):
            self.lease = None
            return self._say(f"lease of term {lease.term} passed its deadline without a renewal; "
                             "stopped acting")
        if lease is not None:
            if now - self._renewed_at < self.renew_seconds:
                return self._say(f"leader (term {lease.term}, {lease.remaining(now):.2f} s left)")
            return await self._renew(lease)
        return await self._campaign()

    async def _renew(self, lease: Lease) -> str:
        try:
            self.lease = await self.coordinator.renew(lease)
            self._renewed_at = self.clock()
            return self._say(f"leader: renewed term {lease.term}")
        except LeaseLost as exc:
            self.lease = None
            return self._say(f"lost the lease of term {lease.term} ({exc}); stopped acting")
        except CoordinationError as exc:
            left = lease.remaining(self.clock())
            return self._say(f"leader: renewal of term {lease.term} failed ({exc}); "
                             f"acting for at most {max(left, 0):.2f} s more")

    async def _campaign(self) -> str:
        try:
            lease = await self.coordinator.campaign()
        except CoordinationError as exc:
            return self._say(f"follower: campaign failed ({exc})")
        if lease is not None:
            self.lease = lease
            self._renewed_at = self.clock()
            self.known_leader = LeaderInfo(lease.holder, lease.term)
            return self._say(f"became leader with term {lease.term}")
        with contextlib.suppress(CoordinationError):
            self.known_leader = await self.coordinator.leader()
        who = self.known_leader
        held = f"{who.holder} holds term {who.term}" if who else "lease held elsewhere"
        return self._say(f"follower: {held}")

    def demote(self, reason: str) -> None:
        """Stop acting at once (a receiver or the store said a newer leader exists)."""
        if self.lease is not None:
            log.warning("%s: demoted from term %d: %s", self.node_id, self.lease.term, reason)
            self._say(f"demoted from term {self.lease.term}: {reason}")
        self.lease = None

    def abandon(self) -> None:
        """Stop at once without releasing the lease, as a killed process would (drills, tests):
        the store lets the lease expire and another node takes over after the TTL."""
        self._abandoned = True
        self.lease = None

    async def resign(self) -> None:
        lease, self.lease = self.lease, None
        if lease is not None and not self._abandoned:
            with contextlib.suppress(CoordinationError):
                await self.coordinator.resign(lease)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Cycle until cancelled or ``stop`` is set; resign on the way out."""
        stop = stop or asyncio.Event()
        try:
            while not stop.is_set():
                was_leader = self.lease is not None
                sentence = await self.run_cycle()
                if was_leader != (self.lease is not None) or "failed" in sentence:
                    log.info("%s: %s", self.node_id, sentence)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.loop_seconds)
        finally:
            await asyncio.shield(self.resign())

    def _say(self, sentence: str) -> str:
        self.last_sentence = sentence
        return sentence

    def __repr__(self) -> str:
        lease = self.lease
        state = f"leader term {lease.term}" if lease else "follower"
        return f"<Elector {self.node_id} {state}>"
