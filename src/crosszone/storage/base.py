"""ZoneStore: the durable store of one availability zone, and the policy every backend shares.

The abstract base every backend (``sqlite``, ``postgres``) derives from; its class docstring lists
the guarantees, ``tests/test_store_contract.py`` checks them against every backend.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from crosszone.errors import Fenced, StoreConflict
from crosszone.storage.outbox import OutboxStore
from crosszone.storage.primitives import (
    FENCE_TOKEN,
    KEY_MAX,
    LEASE,
    OUTBOX_FLOOR,
    OUTBOX_POS,
    Decision,
    applied_counter,
)
from crosszone.storage.records import PreparedTx, Record, Write

__all__ = ["KEY_MAX", "Decision", "ZoneStore"]


class ZoneStore(OutboxStore):
    """One zone's durable records, outbox, replication cursors and 2PC participant state.

    The public methods hold the policy (last-writer-wins, idempotent apply, sequence numbering,
    outbox, fencing, two-phase-commit checks) as template methods; backends (``sqlite``,
    ``postgres``) implement the small ``_primitives`` of
    :class:`~crosszone.storage.primitives.StorePrimitives`. Every backend must pass
    ``tests/test_store_contract.py``.

    Guarantees each backend must give, grouped as the abstract methods are:

    *Local transactions* (``_transact``): ``fn(tx)`` runs in exactly one local ACID transaction
    that is durable (fsync'd) when the call returns; ``write=True`` transactions that append to
    the outbox are serialized with each other (SQLite ``BEGIN IMMEDIATE``; PostgreSQL a row lock
    on the ``outbox_pos`` counter), so outbox positions become visible in order and a shipper
    never skips one. Lock waits end after ``conflict_timeout`` with :class:`StoreConflict`;
    driver errors surface as :class:`StoreError` / :class:`StoreUnavailable`, never as a library
    type.

    *Record primitives* (``_fetch``, ``_scan``, ``_store_lww``, ``_all_records``):
    ``_store_lww`` writes a record only if its ``(hlc, origin)`` is greater than the stored
    one's, in the same transaction; keys compare bytewise (UTF-8), as Python compares ``str``.

    *Counters and outbox* (``_counter``, ``_counters``, ``_set_counter``, ``_insert_outbox``,
    ``_select_outbox``, ``_delete_outbox``): plain rows in the same transaction.

    *Prepared state* (``_prepare``, ``_commit_prepared``, ``_rollback_prepared``,
    ``_list_prepared``, ``_held_keys``): a prepared transaction survives a crash of the store
    process and of the machine; while prepared, its keys cannot be written locally (writers
    wait, then get StoreConflict) and strong reads of them wait; commit applies the records by
    LWW and logs them to the outbox exactly once; commit/rollback of an unknown txid return
    False (the second call of a retried phase two).
    """

    backend = "abstract"

    async def open(self) -> None:
        """Create the schema if needed, load fencing state, restart the clock past every version."""
        await self._open()

        def load(tx: Any) -> tuple[int, int, int]:
            for name in (OUTBOX_POS, OUTBOX_FLOOR, FENCE_TOKEN, LEASE,
                         applied_counter(self.zone)):
                if name not in self._counters(tx, name):
                    self._set_counter(tx, name, 0)
            return (self._counter(tx, FENCE_TOKEN), self._counter(tx, LEASE), self._max_hlc(tx))

        self._max_token, lease, max_hlc = await self._transact(load)
        self._durable_lease = lease
        self._lease = None if lease < 0 else lease
        self._lease_until = None
        self.clock.observe(max_hlc)
        self.is_open = True

    async def close(self) -> None:
        self.is_open = False
        await self._close()

    # ---------------------------------------------------------------- reads
    async def get(self, collection: str, key: str, *, strong: bool = False,
                  include_deleted: bool = False) -> Record | None:
        """The current version of a key (None if absent or deleted, unless include_deleted).

        ``strong``: refuse when fenced, and wait while an in-doubt cross-zone transaction holds the
        key, so the read sees every acknowledged strong write.
        """
        if strong:
            await self._await_free([(collection, key)])
        record = await self._transact(lambda tx: self._fetch(tx, collection, key), write=False)
        if record is not None and record.deleted and not include_deleted:
            return None
        return record

    async def scan(self, collection: str, *, prefix: str = "", after: str = "",
                   limit: int = 1000, include_deleted: bool = False,
                   strong: bool = False) -> list[Record]:
        """Records of ``collection`` with keys starting with ``prefix`` and > ``after``, by key."""
        if strong:
            self.check_lease()
        lo = max(prefix, after)
        return await self._transact(
            lambda tx: self._scan(tx, collection, lo, after, prefix + KEY_MAX, limit,
                                  include_deleted), write=False)

    async def iterate(self, collection: str, *, prefix: str = "",
                      page: int = 500) -> AsyncIterator[Record]:
        """Every live record under ``prefix``, paged: for listings and aggregations (usage)."""
        after = ""
        while True:
            records = await self.scan(collection, prefix=prefix, after=after, limit=page)
            for record in records:
                yield record
            if len(records) < page:
                return
            after = records[-1].key

    # ---------------------------------------------------------------- local (async) writes
    async def write(self, writes: Sequence[Write]) -> list[Record]:
        """Commit ``writes`` atomically with their outbox entries; return the new versions.

        Each record gets a fresh HLC (newer than anything this zone has seen, so it wins here) and
        the next sequence numbers of this zone. Waits up to ``conflict_timeout`` while an in-doubt
        cross-zone transaction holds one of the keys, then raises StoreConflict.
        """
        if not writes:
            return []
        keys = [(w.collection, w.key) for w in writes]

        def work(tx: Any) -> list[Record]:
            if self._held_keys(tx, keys):
                raise StoreConflict("key held by an in-doubt cross-zone transaction")
            records = [Record.of(w, self.clock.now(), self.zone) for w in writes]
            self._log_own(tx, records)
            return records

        records = await self._retry_conflicts(lambda: self._transact(work))
        self._notify()
        return records

    async def put(self, collection: str, key: str, value: Any) -> Record:
        return (await self.write([Write.put(collection, key, value)]))[0]

    async def delete(self, collection: str, key: str) -> Record:
        return (await self.write([Write.remove(collection, key)]))[0]

    # ---------------------------------------------------------------- fencing
    @property
    def lease(self) -> int | None:
        """Epoch of the lease this store holds (None: told it lost it, its time-limited grant
        expired, or it awaits its first grant; strong reads and coordinating refused)."""
        if self._lease is not None and self._lease_until is not None \
                and time.monotonic() > self._lease_until:
            return None
        return self._lease

    @property
    def lease_remaining(self) -> float | None:
        """Seconds left of a time-limited lease (None: not time-limited, or not held)."""
        if self._lease_until is None or self.lease is None:
            return None
        return max(0.0, self._lease_until - time.monotonic())

    def await_grant(self) -> None:
        """Hold no lease until a control plane grants one (``set_lease``), whatever the
        durable state says: a store run under a control plane calls this after ``open``, so a
        restarted zone serves no strong read before it has caught up and been re-admitted."""
        self._lease, self._lease_until = None, None

    @property
    def max_token(self) -> int:
        """The newest fencing token (control-plane epoch) this store has seen."""
        return self._max_token

    async def set_lease(self, epoch: int, *, held: bool = True,
                        ttl: float | None = None) -> None:
        """Record, durably, that the control plane of term ``epoch`` granted (``held``) or
        revoked this store's lease. Fenced when ``epoch`` is older than a token already seen:
        a deposed controller can neither grant nor revoke.

        ``ttl``: the grant lapses ``ttl`` seconds after this call unless renewed (the
        controller's leader renews it every few hundred milliseconds and counts from its own
        acknowledgement, so it knows when an unreachable store has surely stopped serving
        strong reads). A renewal of the lease already held does not touch the database.
        """
        value = epoch if held else -1
        if not (value == self._durable_lease and epoch <= self._max_token):
            def work(tx: Any) -> None:
                self._raise_token(tx, epoch)
                self._set_counter(tx, LEASE, value)

            await self._transact(work)
            self._durable_lease = value
        elif epoch < self._max_token:
            raise Fenced(f"stale fencing token {epoch} (zone {self.zone} has seen "
                         f"{self._max_token})")
        self._lease = epoch if held else None
        self._lease_until = time.monotonic() + ttl if held and ttl is not None else None
        self._max_token = max(self._max_token, epoch)

    def check_lease(self) -> None:
        if self.lease is None:
            raise Fenced(f"zone {self.zone} holds no lease (lost, expired or not yet granted): "
                         "strong operations refused")

    async def check_token(self, token: int) -> None:
        """Fenced if ``token`` is older than one seen; remember a newer one durably.

        Participating in a transaction (prepare, commit) needs a current token but no lease:
        a zone re-admitted to the membership takes part in strong writes while it catches up,
        before it is granted the lease that lets it serve strong reads and coordinate."""
        if token < self._max_token:
            raise Fenced(f"stale fencing token {token} (zone {self.zone} has seen "
                         f"{self._max_token})")
        if token > self._max_token:
            await self._transact(lambda tx: self._raise_token(tx, token))
            self._max_token = max(self._max_token, token)

    def _raise_token(self, tx: Any, token: int) -> None:
        seen = self._counter(tx, FENCE_TOKEN, lock=True)
        if token < seen:
            raise Fenced(f"stale fencing token {token} (zone {self.zone} has seen {seen})")
        self._set_counter(tx, FENCE_TOKEN, token)

    # ---------------------------------------------------------------- 2PC participant
    async def prepare(self, txid: str, records: Sequence[Record], token: int) -> None:
        """Phase one: durably promise to commit ``records`` (the coordinator's versions).

        Returns = vote yes. Raises Fenced (stale token / lost lease) or TransactionAborted (a key
        is held by another transaction) = vote no.
        """
        await self.check_token(token)
        for record in records:
            self.clock.observe(record.hlc)
        latest = {(r.collection, r.key): r for r in records}  # one version per key
        ordered = [latest[k] for k in sorted(latest)]
        await self._prepare(txid, ordered)

    async def commit_prepared(self, txid: str, token: int) -> bool:
        """Phase two, commit: False when ``txid`` is not prepared here (already resolved)."""
        await self.check_token(token)
        done = await self._commit_prepared(txid)
        if done:
            self._notify()
        return done

    async def rollback_prepared(self, txid: str) -> bool:
        """Phase two, abort. Allowed whatever the token: rolling back never loses a commit,
        because a coordinator only rolls back transactions it recorded no commit for."""
        return await self._rollback_prepared(txid)

    async def list_prepared(self) -> list[PreparedTx]:
        return await self._list_prepared()

    # ---------------------------------------------------------------- decision log (coordinator)
    async def decide(self, txid: str, decision: Decision) -> Decision:
        """Record ``decision`` for ``txid`` unless one exists; return the one recorded.

        First writer wins, so a recovering coordinator's abort and a slow coordinator's commit
        cannot both take effect. Recording a commit needs the lease.
        """
        if decision == "commit":
            self.check_lease()
        return await self._transact(lambda tx: self._decide(tx, txid, decision, time.time()))

    async def decision(self, txid: str) -> Decision | None:
        return await self._transact(lambda tx: self._decision(tx, txid), write=False)

    # ---------------------------------------------------------------- waiting on intents
    async def _await_free(self, keys: list[tuple[str, str]]) -> None:
        self.check_lease()
        await self._retry_conflicts(lambda: self._transact(lambda tx: self._free(tx, keys),
                                                           write=False))

    def _free(self, tx: Any, keys: list[tuple[str, str]]) -> None:
        if self._held_keys(tx, keys):
            raise StoreConflict("key held by an in-doubt cross-zone transaction")
