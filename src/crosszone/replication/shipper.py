"""DataReplicator: the seed's section 3.1, made durable.

The seed appended writes to in-memory queues and a ``sync()`` loop copied them to the other
zones: a crash lost acknowledged writes, a zone that was down never caught up, and retries had
no order or idempotency. Here a write is acknowledged only once it is committed in the zone's
store together with its outbox entry; one :class:`Shipper` per destination zone sends outbox
batches in order, the destination applies them idempotently (by source zone and sequence
number, last-writer-wins by HLC) and the shipper persists its cursor only after the destination
acknowledged. A destination that was down or cut off resumes from its cursor; when the entries it
needs were trimmed it gets a snapshot first. Destinations relay what they apply, so surviving
zones converge even when the zone that took a write dies after shipping it to only one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping

from crosszone.errors import StoreError
from crosszone.replication.peers import ReplicationTransport
from crosszone.storage import Batch, Lag, ZoneStore

log = logging.getLogger("crosszone.replication")


class Shipper:
    """Ships ``store``'s outbox to one destination zone. ``run_cycle`` does one step."""

    def __init__(self, store: ZoneStore, transport: ReplicationTransport, *,
                 batch_size: int = 500, backoff_initial: float = 0.05,
                 backoff_max: float = 2.0, samples: int = 100_000) -> None:
        self.store = store
        self.transport = transport
        self.destination = transport.zone
        self.batch_size = batch_size
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.cursor: int | None = None
        self.remote_applied: dict[str, int] = {}
        self.failures = 0
        self.retry_at = 0.0
        self.busy = False  # the last cycle shipped a full batch: more is waiting
        self.wake = asyncio.Event()
        self.samples: deque[float] = deque(maxlen=samples)  # seconds from commit to ack

    def __repr__(self) -> str:
        return (f"Shipper({self.store.zone}->{self.destination}, cursor={self.cursor}, "
                f"failures={self.failures})")

    def retry_in(self) -> float:
        return max(0.0, self.retry_at - time.monotonic())

    async def run_cycle(self) -> str:
        """Observe the outbox and cursor, decide (wait, snapshot, batch, idle), act; say what."""
        self.busy = False
        dest = self.destination
        if self.retry_in() > 0:
            return f"waiting {self.retry_in():.2f}s before retrying {dest}"
        try:
            if self.cursor is None:
                self.cursor = await self.store.cursor(dest)
            floor, head, entries = await self.store.outbox_since(self.cursor, self.batch_size)
            if self.cursor < floor:
                return await self._ship_snapshot(floor)
            if not entries:
                return f"{dest} is up to date at position {self.cursor}"
            send = [e for e in entries if e.source != dest
                    and e.seq > self.remote_applied.get(e.source, 0)]
            new = dup = 0
            if send:
                ack = await self.transport.apply(Batch(self.store.zone, send))
                self.remote_applied = ack.applied
                new, dup = ack.new, ack.duplicates
            last = entries[-1].pos
            await self.store.set_cursor(dest, last)
        except StoreError as exc:
            return self._failed(exc)
        now = time.time()
        self.samples.extend(now - e.created for e in send if e.source == self.store.zone)
        self.cursor, self.failures, self.busy = last, 0, last < head
        return (f"shipped positions {entries[0].pos}..{last} to {dest}: {len(send)} sent, "
                f"{new} applied, {dup} already there")

    async def _ship_snapshot(self, floor: int) -> str:
        snapshot = await self.store.export_snapshot()
        ack = await self.transport.import_snapshot(snapshot)
        await self.store.set_cursor(self.destination, snapshot.pos)
        self.cursor, self.remote_applied, self.failures = snapshot.pos, ack.applied, 0
        self.busy = True
        return (f"{self.destination} was behind the trimmed log (cursor < {floor}): sent a "
                f"snapshot of {len(snapshot.records)} records up to position {snapshot.pos}")

    def _failed(self, exc: StoreError) -> str:
        self.failures += 1
        delay = min(self.backoff_max, self.backoff_initial * 2 ** (self.failures - 1))
        self.retry_at = time.monotonic() + delay
        self.cursor = None  # re-read the durable cursor: the store may have restarted
        return (f"could not ship to {self.destination} ({exc}); attempt {self.failures} "
                f"failed, retrying in {delay:.2f}s")

    async def run(self, stop: asyncio.Event, idle_poll: float = 1.0) -> None:
        """Ship until ``stop`` is set: immediately while busy, else on wake-up or poll."""
        last = ""
        while not stop.is_set():
            try:
                said = await self.run_cycle()
            except Exception as exc:  # a bug must not stop shipping for good
                log.exception("shipper %s->%s failed", self.store.zone, self.destination)
                said = self._failed(StoreError(f"unexpected {type(exc).__name__}: {exc}"))
            if said != last:
                notable = "snapshot" in said or ("could not" in said and self.failures == 1)
                log.log(logging.INFO if notable else logging.DEBUG, "%s", said)
                last = said
            if self.busy:
                continue
            self.wake.clear()
            wait = self.retry_in() or idle_poll
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), wait)


class DataReplicator:
    """Ships one zone's store to every other zone and trims what all of them acknowledged."""

    def __init__(self, store: ZoneStore, transports: Mapping[str, ReplicationTransport], *,
                 keep_max: int = 200_000, trim_every: float = 5.0, batch_size: int = 500,
                 backoff_max: float = 2.0) -> None:
        self.store = store
        self.shippers = {zone: Shipper(store, t, batch_size=batch_size, backoff_max=backoff_max)
                         for zone, t in transports.items() if zone != store.zone}
        self.keep_max = keep_max
        self.trim_every = trim_every
        self._last_trim = 0.0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        store.add_listener(self.wake)

    def __repr__(self) -> str:
        return f"DataReplicator({self.store.zone}, {list(self.shippers.values())})"

    def wake(self) -> None:
        for shipper in self.shippers.values():
            shipper.wake.set()

    @property
    def destinations(self) -> list[str]:
        return list(self.shippers)

    async def run_cycle(self) -> str:
        """One step of every shipper, then trimming when due; one sentence per action."""
        said = await asyncio.gather(*(s.run_cycle() for s in self.shippers.values()))
        trimmed = await self.trim(force=False)
        if trimmed:
            said.append(f"trimmed {trimmed} outbox entries")
        return "; ".join(said) or "no destinations"

    async def trim(self, *, force: bool = True) -> int:
        now = time.monotonic()
        if not force and now - self._last_trim < self.trim_every:
            return 0
        self._last_trim = now
        try:
            return await self.store.trim_outbox(self.destinations, keep_max=self.keep_max)
        except StoreError as exc:
            log.warning("trimming the outbox of %s failed: %s", self.store.zone, exc)
            return 0

    async def lag(self) -> list[Lag]:
        """Replication lag of every (this zone -> destination) pair, in seconds and records."""
        return [await self.store.lag(zone) for zone in self.shippers]

    def lag_samples(self) -> dict[str, list[float]]:
        """Recent commit-to-acknowledgement delays (seconds) of this zone's writes, per
        destination."""
        return {zone: list(s.samples) for zone, s in self.shippers.items()}

    async def caught_up(self) -> bool:
        return all(lag.records == 0 for lag in await self.lag())

    # ---------------------------------------------------------------- background
    def start(self) -> None:
        self._stop.clear()
        for shipper in self.shippers.values():
            self._tasks.append(asyncio.create_task(shipper.run(self._stop),
                                                   name=f"ship-{shipper.destination}"))
        self._tasks.append(asyncio.create_task(self._trim_loop(), name="trim"))

    async def _trim_loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.trim_every)
            await self.trim()

    async def stop(self) -> None:
        self._stop.set()
        self.wake()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, StoreError):
                await task
        self._tasks.clear()

