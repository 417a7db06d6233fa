"""The zone stores' leases and two-phase-commit membership, kept by the acting leader.

Strong writes run 2PC over the zones *in service* (the membership each store is told), and a
store serves strong reads and coordinates only while it holds a lease. Keeping both right is
what lets strong writes continue when a zone dies without ever letting a zone that missed one
serve a stale strong read:

* **Leases lapse by themselves.** The leader renews every member's lease every
  ``renew_seconds`` for ``ttl_seconds``; a store that cannot be reached (dead, frozen, cut off)
  stops serving strong reads ``ttl_seconds`` after the last renewal it received, on its own.
* **Out only once surely fenced.** A member is taken out of the membership when nothing has
  been heard from it for ``ttl_seconds + margin_seconds`` counted from the leader's last
  acknowledgement -- later than its lease can have lapsed. Only then do the survivors run
  strong writes without it. Never the last member.
* **Lease only once caught up.** A zone that has answered for a second without a break is
  re-admitted: it takes part in every strong write from then on, but holds no lease. It is
  granted its lease once ``settle_seconds`` have passed (no transaction begun with the old
  membership is still on its way), every member reports the new membership, and it has
  acknowledged every write the members committed before it rejoined plus ``settle_seconds``
  (their oldest unacknowledged entry is younger than that): the strong writes it missed.
  Writes made since may still be on their way, so a zone rejoins under a steady load too.
  A member that only restarted (it never left) is granted its lease the same way, at once.
* **A new leader** loads the membership from the coordination store, counts every member as
  heard from at the start of its term, and renews at once every lease a member still holds.
* **Fencing**: every call carries the leader's term; a store that has seen a newer term
  refuses it, and the cycle reports ``stale`` so the controller stops acting.

``run_cycle`` is one observe-decide-act cycle and returns the sentence of what it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from crosszone.config.topology import Topology
from crosszone.control.coordination.base import Coordinator
from crosszone.control.settings import StoreLeaseSettings
from crosszone.errors import CoordinationError, Fenced, StoreError
from crosszone.storage.client import StoreClient, StoreStatus, ZoneStores
from crosszone.storage.records import Lag

MEMBERSHIP_KEY = "stores/membership"
REJOIN_STABLE_SECONDS = 1.0  # a zone answers this long without a break before it rejoins
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreSeen:
    """One store in one cycle: its status (None: no answer) and whether we renewed it."""

    zone: str
    status: StoreStatus | None
    renewed: bool = False
    error: str = ""


@dataclass(frozen=True)
class StoreDecision:
    """What the cycle will do: the new membership and the leases to grant or give up."""

    members: tuple[str, ...]
    removed: dict[str, str] = field(default_factory=dict)  # zone -> why
    admitted: tuple[str, ...] = ()
    grant: tuple[str, ...] = ()
    resync: tuple[str, ...] = ()  # reachable stores told a stale membership

    @property
    def changed(self) -> bool:
        return bool(self.removed or self.admitted)


class StoreMembership:
    """The leader's loop over the zone stores (``run_cycle`` once per ``renew_seconds``)."""

    def __init__(self, topology: Topology, settings: StoreLeaseSettings, *, zone: str,
                 source_host: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.zones = topology.zone_names()
        self.settings = settings
        self.clock = clock
        self.stores = ZoneStores(topology, zone, source_host=source_host)
        self.term: int | None = None
        self.members: tuple[str, ...] = tuple(self.zones)
        self.leased: set[str] = set()  # members whose lease we granted or renewed this term
        self.heard: dict[str, float] = {}  # member -> last answer (clock) this term
        self.joined: dict[str, float] = {}  # member -> when it (re)entered, or the term began
        self.seen: dict[str, StoreSeen] = {}
        self.up_since: dict[str, float] = {}  # zone -> answering without a break since
        self.stale = False  # a store has seen a newer term: stop acting
        self.sentence = "not acting"

    def __repr__(self) -> str:
        return (f"StoreMembership(term={self.term}, members={','.join(self.members)}, "
                f"leased={','.join(sorted(self.leased))})")

    # -- observe -----------------------------------------------------------------------------

    async def begin_term(self, token: int, coordinator: Coordinator) -> None:
        """A new term: the membership from the coordination store (all zones if none).

        Every member counts as heard from now (a previous leader may just have renewed it).
        Members count as joined when the membership last changed (none recorded: a new
        deployment, settled), so after a quorum loss the leases come back as soon as the
        zones have caught up, without waiting ``settle_seconds`` again."""
        text = await coordinator.get(MEMBERSHIP_KEY)
        doc = json.loads(text) if text else {}
        members = tuple(doc.get("members") or self.zones)
        now = self.clock()
        age = max(0.0, time.time() - float(doc["at"])) if "at" in doc \
            else self.settings.settle_seconds
        self.term, self.stale = token, False
        self.members = tuple(z for z in members if z in self.zones) or tuple(self.zones)
        self.leased = set()
        self.heard = {z: now for z in self.members}
        self.joined = {z: now - age for z in self.members}

    async def observe(self, token: int) -> dict[str, StoreSeen]:
        """Renew the leases we hold out; ask every other store for its status."""
        timeout = self.settings.request_timeout_seconds

        async def one(client: StoreClient) -> StoreSeen:
            renew = client.zone in self.leased
            try:
                if renew:
                    status = await client.grant_lease(token, self.settings.ttl_seconds,
                                                      timeout=timeout)
                else:
                    status = await client.status(timeout=timeout)
            except Fenced as exc:
                self.stale = True
                return StoreSeen(client.zone, None, error=str(exc))
            except StoreError as exc:
                return StoreSeen(client.zone, None, error=str(exc))
            return StoreSeen(client.zone, status, renewed=renew)

        seen = await asyncio.gather(*(one(c) for c in self.stores.all()))
        now = self.clock()
        self.seen = {s.zone: s for s in seen}
        for s in seen:
            if s.status is None:
                self.up_since.pop(s.zone, None)
                continue
            self.up_since.setdefault(s.zone, now)
            if s.zone in self.members:
                self.heard[s.zone] = now
        return self.seen

    # -- decide (pure) -----------------------------------------------------------------------

    def decide(self, now: float) -> StoreDecision:
        st = self.settings
        members = list(self.members)
        removed: dict[str, str] = {}
        for z in list(members):
            silent = now - self.heard.get(z, now)
            if silent > st.ttl_seconds + st.margin_seconds and len(members) > 1:
                members.remove(z)
                removed[z] = f"no answer for {silent:.1f}s ({self._error(z)})"
        answering = {z: s.status for z, s in self.seen.items() if s.status is not None}
        all_lags = [lag for z in members if z in answering for lag in answering[z].lag]
        every_member_answers = all(z in answering for z in members)
        admitted = tuple(z for z in self.zones
                         if z not in members and z not in removed and z in answering
                         and every_member_answers
                         and now - self.up_since.get(z, now) >= REJOIN_STABLE_SECONDS)
        members = [z for z in self.zones if z in members or z in admitted]  # topology order
        wanted = set(members)
        agreed = every_member_answers and all(set(answering[z].zones) == wanted for z in members)
        grant = tuple(
            z for z in members
            if z not in self.leased and z not in admitted and z in answering and agreed
            and (answering[z].lease is not None
                 or self._caught_up(z, all_lags, now)))
        resync = tuple(z for z, status in answering.items()
                       if set(status.zones) != wanted or z in admitted)
        return StoreDecision(tuple(members), removed, admitted, grant, resync)

    def _caught_up(self, zone: str, lags: list[Lag], now: float) -> bool:
        """Whether ``zone`` has every write committed before it (re)joined the membership
        plus ``settle_seconds`` (the strong writes that could have committed without it):
        settled, and no member's oldest entry not yet acknowledged by it is that old. Writes
        made since may still be on their way -- it takes part in every strong write by now --
        so a zone rejoins under a steady write load too."""
        since = now - self.joined.get(zone, now) - self.settings.settle_seconds
        return since >= 0 and all(lag.records == 0 or lag.seconds < since
                                  for lag in lags if lag.destination == zone)

    def _error(self, zone: str) -> str:
        seen = self.seen.get(zone)
        return seen.error if seen is not None and seen.error else "no answer"

    # -- act ---------------------------------------------------------------------------------

    async def act(self, decision: StoreDecision, token: int,
                  coordinator: Coordinator) -> list[str]:
        """Persist a changed membership (fenced), tell the stores, grant leases."""
        said: list[str] = []
        now = self.clock()
        if decision.changed:
            doc = json.dumps({"members": list(decision.members), "term": token, "at": time.time()})
            if not await coordinator.put(MEMBERSHIP_KEY, doc, fence=token):
                self.stale = True
                return ["the coordination store refused our term"]
            for z, why in decision.removed.items():
                said.append(f"took {z} out of the 2PC membership: {why}")
                self.leased.discard(z)
                self.heard.pop(z, None)
            for z in decision.admitted:
                said.append(f"re-admitted {z} (caught up); its lease follows once settled")
                self.joined[z], self.heard[z] = now, now
            self.members = decision.members
        timeout = self.settings.request_timeout_seconds
        told = await asyncio.gather(
            *(self.stores.zone(z).set_membership(self.members, token, timeout=timeout)
              for z in decision.resync), return_exceptions=True)
        failed = [z for z, t in zip(decision.resync, told, strict=True)
                  if isinstance(t, BaseException)]
        if any(isinstance(t, Fenced) for t in told):
            self.stale = True
        if failed:
            said.append(f"could not tell {', '.join(failed)} the membership")
        for z in decision.removed:  # best effort: it is most likely unreachable
            if z in self.seen and self.seen[z].status is not None:
                with contextlib.suppress(StoreError):
                    await self.stores.zone(z).revoke_lease(token, timeout=timeout)
        granted = await asyncio.gather(
            *(self.stores.zone(z).grant_lease(token, self.settings.ttl_seconds, timeout=timeout)
              for z in decision.grant), return_exceptions=True)
        for z, g in zip(decision.grant, granted, strict=True):
            if isinstance(g, Fenced):
                self.stale = True
            elif not isinstance(g, BaseException):
                self.leased.add(z)
                self.heard[z] = self.clock()
                said.append(f"granted {z} its lease")
        return said

    async def run_cycle(self, token: int, coordinator: Coordinator) -> str:
        """Observe, decide, act; the sentence of what changed (or the steady state)."""
        try:
            if token != self.term:
                await self.begin_term(token, coordinator)
            await self.observe(token)
            said = await self.act(self.decide(self.clock()), token, coordinator)
        except (CoordinationError, ValueError, KeyError) as exc:
            said = [f"membership not updated: {exc}"]
        if self.stale:
            said.append("a store has seen a newer term: stop acting")
        lost = [z for z in self.leased if not self.seen.get(z, StoreSeen(z, None)).renewed]
        state = (f"stores: {','.join(self.members)} in 2PC membership, "
                 f"{len(self.leased) - len(lost)} lease(s) renewed"
                 + (f", not renewed: {','.join(sorted(lost))}" if lost else ""))
        self.sentence = "; ".join([*said, state]) if said else state
        return self.sentence

    def abandon(self) -> None:
        """We stopped acting: the next term starts afresh (leases lapse by themselves)."""
        self.term = None
        self.leased = set()

    def to_json(self) -> dict[str, object]:
        return {"term": self.term, "members": list(self.members), "leased": sorted(self.leased),
                "sentence": self.sentence,
                "stores": {z: None if s.status is None else
                           {"lease": s.status.lease, "lease_remaining": s.status.lease_remaining,
                            "zones": list(s.status.zones)} for z, s in self.seen.items()}}

    async def close(self) -> None:
        await self.stores.close()
