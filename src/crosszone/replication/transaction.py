"""CrossZoneTransaction: the seed's section 3.2 two-phase commit, made recoverable.

The seed prepared on every zone, then committed on every zone, with no decision log: a
coordinator that died between the phases left participants holding locks forever, and because
every zone took part, one dead zone blocked every write. Here:

* **Participants are the zones in service** (``membership()``, supplied by the control plane;
  default all zones), not all zones. A zone taken out of service is skipped and catches up from
  the other zones' outboxes (each participant logs the committed records, with the coordinator's
  version, to its outbox), and the control plane lets it rejoin only once its replication lag is
  zero. Trade-off against the seed: the seed's strong write reached every zone or failed, so any
  single zone could serve a strong read alone but one dead zone stopped all strong writes; here
  strong writes continue on the zones in service, and an out-of-service zone must not serve
  strong reads (it has lost its lease, so its store refuses them: ``Fenced``) until it rejoins.
  Strong writes cost one more round trip than async ones and block on any in-service zone that
  stops answering until the control plane takes it out of service (prepare times out -> abort).
* **The decision is logged durably** in the coordinator's own zone store (``decide``: first
  writer wins) before phase two, and phase two is retried until every participant acknowledges.
* **Recovery** (``recover``, run at start-up and by ``run_cycle``): every transaction still
  prepared anywhere is finished per the coordinator's logged decision; with no decision logged,
  an abort is recorded first (so a slow coordinator cannot commit it later) and it is rolled back.
  Only a transaction whose coordinator zone is unreachable stays in doubt: that is 2PC's
  inherent blocking case, limited here to the keys that transaction holds.
* **Fencing**: every prepare and commit carries the coordinator's lease epoch (``token``);
  participants reject tokens older than the newest they have seen, and a store told it lost its
  lease refuses strong operations, so a deposed coordinator cannot commit anything new.
* **Versions**: all records of one transaction get one HLC timestamp from the coordinator and its
  zone as origin, so zones reading asynchronously converge on exactly the committed values.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from crosszone.errors import Fenced, StoreError, StoreUnavailable, TransactionAborted
from crosszone.replication.peers import TxParticipant
from crosszone.storage import Decision, Record, Write, ZoneStore
from crosszone.storage.records import TXID_SEPARATOR, coordinator_of

Failpoint = Callable[[str], None]


@dataclass(frozen=True)
class TxOutcome:
    """A committed transaction: its records (one version) and zones still to acknowledge."""

    txid: str
    records: list[Record]
    participants: list[str]
    pending: list[str] = field(default_factory=list)


class CrossZoneTransaction:
    """Coordinates strong (all in-service zones or none) writes from ``store``'s zone."""

    def __init__(self, store: ZoneStore, participants: Mapping[str, TxParticipant], *,
                 membership: Callable[[], Iterable[str]] | None = None,
                 token: Callable[[], int] | None = None, prepare_timeout: float = 2.0,
                 phase_two_timeout: float = 5.0, foreign_after: float = 10.0,
                 failpoint: Failpoint | None = None) -> None:
        self.store = store
        self.zone = store.zone
        self.participants = dict(participants)
        self.membership = membership or (lambda: list(self.participants))
        self.token = token or (lambda: store.lease or 0)
        self.prepare_timeout = prepare_timeout
        self.phase_two_timeout = phase_two_timeout
        self.foreign_after = foreign_after
        self.failpoint = failpoint or (lambda point: None)
        self._active: set[str] = set()
        self._boot = uuid.uuid4().hex[:16]
        self._counter = 0

    def __repr__(self) -> str:
        return (f"CrossZoneTransaction({self.zone}, participants={sorted(self.participants)}, "
                f"active={len(self._active)})")

    def in_service(self) -> list[str]:
        return [z for z in self.membership() if z in self.participants]

    # ---------------------------------------------------------------- one transaction
    async def execute(self, writes: Sequence[Write]) -> TxOutcome:
        """Commit ``writes`` on every zone in service, or raise TransactionAborted / Fenced."""
        self.store.check_lease()
        zones = self.in_service()
        if not zones:
            raise TransactionAborted("no zone in service to write to")
        token = self.token()
        self._counter += 1  # a random boot id plus a counter: unique, and cheaper than uuid4
        txid = f"{self.zone}{TXID_SEPARATOR}{self._boot}-{self._counter}"
        hlc = self.store.clock.now()
        latest = {(w.collection, w.key): w for w in writes}
        records = [Record.of(w, hlc, self.zone) for w in latest.values()]
        self._active.add(txid)
        try:
            self.failpoint("before_prepare")
            await self._prepare_all(txid, zones, records, token)
            self.failpoint("after_prepare")
            try:
                decision = await self.store.decide(txid, "commit")
            except StoreError as exc:
                await self._abort(txid, zones)
                raise TransactionAborted(f"{txid}: could not log the decision: {exc}") from exc
            if decision != "commit":
                await self._abort(txid, zones)
                raise TransactionAborted(f"{txid} was aborted by recovery")
            self.failpoint("after_decision")
            pending = await self._commit_all(txid, zones, token)
            return TxOutcome(txid, records, zones, pending)
        finally:
            self._active.discard(txid)

    async def _prepare_all(self, txid: str, zones: list[str], records: list[Record],
                           token: int) -> None:
        calls = [self.participants[z].prepare(txid, records, token) for z in zones]
        try:
            async with asyncio.timeout(self.prepare_timeout):
                await asyncio.gather(*calls)
        except (StoreError, TimeoutError) as exc:
            await self._abort(txid, zones)
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            if isinstance(exc, Fenced):
                raise Fenced(f"{txid} aborted: {reason}") from exc
            raise TransactionAborted(f"{txid} aborted in prepare: {reason}") from exc

    async def _abort(self, txid: str, zones: Iterable[str]) -> None:
        """Log abort (best effort: no decision means abort anyway) and roll back everywhere."""
        with contextlib.suppress(StoreError):
            await self.store.decide(txid, "abort")
        # Unreachable zones keep it prepared and recovery rolls it back later, so a silent one
        # (frozen) is not waited for beyond half a second.
        calls = [asyncio.ensure_future(self.participants[z].rollback(txid)) for z in zones]
        if not calls:
            return
        _, late = await asyncio.wait(calls, timeout=min(self.prepare_timeout, 0.5))
        for call in late:
            call.cancel()
        for call in calls:
            if call.done() and not call.cancelled():
                call.exception()  # retrieved: a failed rollback is expected here

    async def _commit_all(self, txid: str, zones: list[str], token: int) -> list[str]:
        """Phase two, retried with backoff until every zone acknowledged or the deadline;
        returns the zones still pending (recovery finishes them)."""
        pending = list(zones)
        deadline = time.monotonic() + self.phase_two_timeout
        delay = 0.02
        acked: list[str] = []

        async def commit(zone: str) -> bool:
            done = await self.participants[zone].commit(txid, token)
            acked.append(zone)
            if len(acked) == 1:
                self.failpoint("mid_commit")  # one zone committed, the others not yet
            return done

        while pending:
            results = await asyncio.gather(*(commit(z) for z in pending),
                                           return_exceptions=True)
            pending = [z for z, r in zip(pending, results, strict=True)
                       if isinstance(r, BaseException)]
            if not pending or time.monotonic() + delay > deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        return pending

    # ---------------------------------------------------------------- recovery
    async def recover(self, *, foreign: bool = False) -> str:
        """Finish every in-doubt transaction this coordinator logged (and, with ``foreign``,
        those of other coordinators older than ``foreign_after`` seconds); say what happened."""
        held: dict[str, list[str]] = {}
        ages: dict[str, float] = {}
        unreachable: list[str] = []
        for zone, participant in self.participants.items():
            try:
                prepared = await participant.prepared()
            except StoreError:
                unreachable.append(zone)
                continue
            for tx in prepared:
                held.setdefault(tx.txid, []).append(zone)
                ages[tx.txid] = min(ages.get(tx.txid, 1e18), tx.prepared_at)
        committed = rolled_back = 0
        stuck: list[str] = []
        now = time.time()
        for txid, zones in held.items():
            coordinator = coordinator_of(txid)
            if txid in self._active:
                continue
            if coordinator != self.zone and (not foreign or now - ages[txid] < self.foreign_after):
                continue
            try:
                decision = await self._decision_for(txid, coordinator)
                await self._finish(txid, zones, decision)
            except StoreError:
                stuck.append(txid)
                continue
            if decision == "commit":
                committed += 1
            else:
                rolled_back += 1
        said = (f"recovery: {committed} in-doubt transaction(s) committed, "
                f"{rolled_back} rolled back")
        if stuck:
            said += f", {len(stuck)} still in doubt ({', '.join(stuck[:3])})"
        if unreachable:
            said += f"; zones not answering: {', '.join(sorted(unreachable))}"
        return said

    async def _decision_for(self, txid: str, coordinator: str) -> Decision:
        """The logged decision, recording abort first when none was logged (presumed abort)."""
        if coordinator == self.zone:
            return await self.store.decide(txid, "abort")
        if coordinator not in self.participants:
            raise StoreUnavailable(f"no way to reach coordinator zone {coordinator}")
        return await self.participants[coordinator].decide(txid, "abort")

    async def _finish(self, txid: str, zones: list[str], decision: Decision) -> None:
        token = self.token()
        for zone in zones:
            participant = self.participants[zone]
            if decision == "commit":
                await participant.commit(txid, token)
            else:
                await participant.rollback(txid)

    async def recover_until_clean(self, timeout: float = 30.0) -> str:
        """At start-up: recover this coordinator's transactions until none is in doubt."""
        deadline = time.monotonic() + timeout
        while True:
            said = await self.recover()
            if "in doubt" not in said and "not answering" not in said:
                return said
            if time.monotonic() > deadline:
                return said + " (giving up for now; run_cycle keeps trying)"
            await asyncio.sleep(0.2)

    async def run_cycle(self) -> str:
        """The periodic resolver: finish in-doubt transactions of this and dead coordinators."""
        return await self.recover(foreign=True)
