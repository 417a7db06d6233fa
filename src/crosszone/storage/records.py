"""The data a zone store holds and ships: versioned records, log entries, batches, snapshots.

A record is ``(collection, key) -> JSON value`` plus its version: a hybrid logical clock (HLC)
timestamp and the zone that wrote it. Versions are totally ordered by ``(hlc, origin)``, so
last-writer-wins picks the same record in every zone whatever order the writes arrive in.

Log entries carry a second, unrelated identity: ``(source, seq)``, the position of the entry in
the write log of the zone that first logged it. Destinations apply each ``(source, seq)`` once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

HLC_LOGICAL_BITS = 16


def hlc_wall_seconds(hlc: int) -> float:
    """The physical (wall-clock) part of an HLC timestamp, in seconds since the epoch."""
    return (hlc >> HLC_LOGICAL_BITS) / 1000.0


class HybridLogicalClock:
    """Kulkarni et al.'s HLC packed into one integer: milliseconds << 16 | logical counter.

    ``now()`` is strictly increasing and never behind the wall clock or anything ``observe``d, so a
    zone's new write always beats every version it has already seen, even if its clock is behind.
    """

    def __init__(self, wall: Any = time.time) -> None:
        self._wall = wall
        self._last = 0
        self._lock = threading.Lock()

    def now(self) -> int:
        physical = int(self._wall() * 1000) << HLC_LOGICAL_BITS
        with self._lock:
            self._last = max(self._last + 1, physical)
            return self._last

    def observe(self, remote: int) -> None:
        with self._lock:
            self._last = max(self._last, remote)

    def __repr__(self) -> str:
        return f"HybridLogicalClock(last={self._last})"


@dataclass(frozen=True, slots=True)
class Write:
    """One intended change: a put (``value``) or a delete (``delete=True``)."""

    collection: str
    key: str
    value: Any = None
    delete: bool = False

    @classmethod
    def put(cls, collection: str, key: str, value: Any) -> Write:
        return cls(collection, key, value, False)

    @classmethod
    def remove(cls, collection: str, key: str) -> Write:
        return cls(collection, key, None, True)

    def to_json(self) -> dict[str, Any]:
        return {"collection": self.collection, "key": self.key, "value": self.value,
                "delete": self.delete}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Write:
        return cls(str(data["collection"]), str(data["key"]), data.get("value"),
                   bool(data.get("delete", False)))


@dataclass(frozen=True, slots=True)
class Record:
    """One version of one key. ``deleted`` marks a tombstone (value None), kept so deletes win."""

    collection: str
    key: str
    value: Any
    hlc: int
    origin: str
    deleted: bool = False

    @property
    def version(self) -> tuple[int, str]:
        """The last-writer-wins order: HLC first, zone name breaks ties."""
        return (self.hlc, self.origin)

    def newer_than(self, other: Record | None) -> bool:
        return other is None or self.version > other.version

    @classmethod
    def of(cls, write: Write, hlc: int, origin: str) -> Record:
        return cls(write.collection, write.key, None if write.delete else write.value, hlc,
                   origin, write.delete)

    def to_json(self) -> dict[str, Any]:
        return {"collection": self.collection, "key": self.key, "value": self.value,
                "hlc": self.hlc, "origin": self.origin, "deleted": self.deleted}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        return cls(str(data["collection"]), str(data["key"]), data.get("value"),
                   int(data["hlc"]), str(data["origin"]), bool(data.get("deleted", False)))


@dataclass(frozen=True, slots=True)
class Entry:
    """One record in a zone's outbox: ``(source, seq)`` identifies it across zones.

    ``pos`` is its position in *this* zone's outbox (relayed entries get a new one), ``group_end``
    the position of the last entry committed in the same local transaction, so a batch never
    splits one transaction, and ``created`` the wall time it entered this outbox.
    """

    source: str
    seq: int
    record: Record
    pos: int = 0
    group_end: int = 0
    created: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "seq": self.seq, "record": self.record.to_json(),
                "created": self.created}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        return cls(str(data["source"]), int(data["seq"]), Record.from_json(data["record"]),
                   created=float(data.get("created", 0.0)))


@dataclass(frozen=True, slots=True)
class Batch:
    """Entries shipped from ``sender``'s outbox, in outbox order."""

    sender: str
    entries: list[Entry]

    def to_json(self) -> dict[str, Any]:
        return {"sender": self.sender, "entries": [e.to_json() for e in self.entries]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Batch:
        return cls(str(data["sender"]), [Entry.from_json(e) for e in data["entries"]])


@dataclass(frozen=True, slots=True)
class Ack:
    """What a destination answers after durably applying a batch or snapshot."""

    zone: str
    applied: dict[str, int]  # highest contiguous seq applied, per source zone
    new: int = 0
    duplicates: int = 0
    gaps: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"zone": self.zone, "applied": self.applied, "new": self.new,
                "duplicates": self.duplicates, "gaps": self.gaps}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ack:
        return cls(str(data["zone"]), {str(k): int(v) for k, v in data["applied"].items()},
                   int(data.get("new", 0)), int(data.get("duplicates", 0)),
                   int(data.get("gaps", 0)))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every record (tombstones included) of ``source`` as of outbox position ``pos``."""

    source: str
    pos: int
    applied: dict[str, int]
    records: list[Record]

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "pos": self.pos, "applied": self.applied,
                "records": [r.to_json() for r in self.records]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Snapshot:
        return cls(str(data["source"]), int(data["pos"]),
                   {str(k): int(v) for k, v in data["applied"].items()},
                   [Record.from_json(r) for r in data["records"]])


@dataclass(frozen=True, slots=True)
class Lag:
    """How far ``destination`` is behind ``origin``'s outbox: entries not acknowledged, and the
    age of the oldest of them (0 when caught up)."""

    origin: str
    destination: str
    seconds: float
    records: int

    def to_json(self) -> dict[str, Any]:
        return {"origin": self.origin, "destination": self.destination,
                "seconds": self.seconds, "records": self.records}


@dataclass(frozen=True, slots=True)
class PreparedTx:
    """A cross-zone transaction a participant has durably prepared and not yet resolved."""

    txid: str
    prepared_at: float  # wall time
    records: list[Record] = field(default_factory=list)

    @property
    def coordinator(self) -> str:
        return coordinator_of(self.txid)

    def to_json(self) -> dict[str, Any]:
        return {"txid": self.txid, "prepared_at": self.prepared_at,
                "records": [r.to_json() for r in self.records]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PreparedTx:
        return cls(str(data["txid"]), float(data["prepared_at"]),
                   [Record.from_json(r) for r in data.get("records", [])])


TXID_SEPARATOR = "~"


def coordinator_of(txid: str) -> str:
    """Transaction ids are ``<coordinator zone>~<unique>``: recovery finds the decision log."""
    return txid.split(TXID_SEPARATOR, 1)[0]
