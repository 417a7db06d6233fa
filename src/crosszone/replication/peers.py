"""How one zone talks to another zone's store: the replication transport and the 2PC participant.

Two small interfaces, each implemented in-process (:class:`LocalPeer`, for tests and for a
coordinator's own zone) and over HTTP to the zone's store service
(:class:`crosszone.replication.http.HttpPeer`). Implementations raise only
:class:`crosszone.errors.StoreError` subclasses: StoreUnavailable when the zone cannot be reached.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from crosszone.storage import Ack, Batch, Decision, PreparedTx, Record, Snapshot, ZoneStore


class ReplicationTransport(ABC):
    """Delivers outbox batches and snapshots to one destination zone.

    ``apply`` returns only once the destination has durably applied the batch (idempotently, so a
    retry after a lost answer is harmless); ``import_snapshot`` likewise.
    """

    zone: str

    @abstractmethod
    async def apply(self, batch: Batch) -> Ack: ...

    @abstractmethod
    async def import_snapshot(self, snapshot: Snapshot) -> Ack: ...

    async def close(self) -> None:
        return None


class TxParticipant(ABC):
    """One zone's side of a cross-zone transaction (see ZoneStore's 2PC methods).

    ``prepare`` returning is a yes vote; every call is idempotent so the coordinator may retry it.
    ``decide`` records a decision at the zone whose store holds the coordinator's log (first
    writer wins) and returns the recorded one: recovery uses it to abort orphans safely.
    """

    zone: str

    @abstractmethod
    async def prepare(self, txid: str, records: Sequence[Record], token: int) -> None: ...

    @abstractmethod
    async def commit(self, txid: str, token: int) -> bool: ...

    @abstractmethod
    async def rollback(self, txid: str) -> bool: ...

    @abstractmethod
    async def prepared(self) -> list[PreparedTx]: ...

    @abstractmethod
    async def decide(self, txid: str, decision: Decision) -> Decision: ...

    async def close(self) -> None:
        return None


class LocalPeer(ReplicationTransport, TxParticipant):
    """A zone store in this process."""

    def __init__(self, store: ZoneStore) -> None:
        self.store = store
        self.zone = store.zone

    def __repr__(self) -> str:
        return f"LocalPeer({self.store!r})"

    async def apply(self, batch: Batch) -> Ack:
        return await self.store.apply(batch)

    async def import_snapshot(self, snapshot: Snapshot) -> Ack:
        return await self.store.import_snapshot(snapshot)

    async def prepare(self, txid: str, records: Sequence[Record], token: int) -> None:
        await self.store.prepare(txid, records, token)

    async def commit(self, txid: str, token: int) -> bool:
        return await self.store.commit_prepared(txid, token)

    async def rollback(self, txid: str) -> bool:
        return await self.store.rollback_prepared(txid)

    async def prepared(self) -> list[PreparedTx]:
        return await self.store.list_prepared()

    async def decide(self, txid: str, decision: Decision) -> Decision:
        return await self.store.decide(txid, decision)
