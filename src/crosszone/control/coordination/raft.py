"""Embedded Raft (pysyncobj) across the zone controllers: the default coordination backend.

Each controller process runs one Raft member. The replicated state is tiny: the lease (holder,
term, expiry), the last term ever granted, and the KV. As in Patroni's Raft backend, the clock
never enters the replicated commands: a lease carries an absolute expiry computed by its holder,
and only the Raft leader, on its tick, proposes ``_expire`` for a lease past that time, which the
state machine applies only if the lease is still exactly the one it saw.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated  # type: ignore[import-untyped]

from crosszone.control.coordination.base import Coordinator, Grant, LeaderInfo
from crosszone.control.settings import LeaseSettings
from crosszone.errors import CoordinationError, LeaseLost

log = logging.getLogger(__name__)

_REASONS = {v: k for k, v in vars(FAIL_REASON).items() if not k.startswith("_")}


@dataclass(frozen=True)
class RaftTimings:
    """pysyncobj timings; elections finish well inside a 1.5 s lease."""

    tick_seconds: float = 0.02
    append_entries_seconds: float = 0.05
    election_min_seconds: float = 0.3
    election_max_seconds: float = 0.7
    connection_timeout_seconds: float = 1.0
    connection_retry_seconds: float = 0.25
    leader_fallback_seconds: float = 1.0


class _LeaseMachine(SyncObj):  # type: ignore[misc]
    """The replicated state machine. Runs on its own tick thread; readers take ``_guard``."""

    def __init__(self, self_address: str, peers: list[str], conf: Any) -> None:
        # Attributes set before SyncObj.__init__ are excluded from snapshots (not replicated).
        self._guard = threading.Lock()
        self._limbo: set[tuple[int, float]] = set()
        super().__init__(self_address, peers, conf)
        self._lease: dict[str, Any] | None = None
        self._last_term = 0
        self._kv: dict[str, str] = {}

    # -- replicated commands (applied in log order on every member) -----------------------------

    @replicated  # type: ignore[untyped-decorator]
    def _acquire(self, holder: str, expire: float) -> int | None:
        with self._guard:
            lease = self._lease
            if lease is not None and lease["holder"] != holder:
                return None
            if lease is None:
                self._last_term += 1
                lease = {"holder": holder, "term": self._last_term, "expire": expire}
            else:
                lease = {**lease, "expire": max(lease["expire"], expire)}
            self._lease = lease
            return int(lease["term"])

    @replicated  # type: ignore[untyped-decorator]
    def _refresh(self, term: int, expire: float) -> bool:
        with self._guard:
            if self._lease is None or self._lease["term"] != term:
                return False
            self._lease = {**self._lease, "expire": max(self._lease["expire"], expire)}
            return True

    @replicated  # type: ignore[untyped-decorator]
    def _release(self, term: int) -> None:
        with self._guard:
            if self._lease is not None and self._lease["term"] == term:
                self._lease = None

    @replicated  # type: ignore[untyped-decorator]
    def _expire(self, term: int, expire: float) -> None:
        with self._guard:
            lease = self._lease
            if lease is not None and lease["term"] == term and lease["expire"] == expire:
                self._lease = None

    @replicated  # type: ignore[untyped-decorator]
    def _put(self, key: str, value: str, fence: int | None) -> bool:
        with self._guard:
            if fence is not None and (self._lease is None or self._lease["term"] != fence):
                return False
            self._kv[key] = value
            return True

    @replicated  # type: ignore[untyped-decorator]
    def _delete(self, key: str, fence: int | None) -> bool:
        with self._guard:
            if fence is not None and (self._lease is None or self._lease["term"] != fence):
                return False
            self._kv.pop(key, None)
            return True

    # -- local reads ------------------------------------------------------------------------------

    def read_lease(self) -> tuple[str, int] | None:
        with self._guard:
            lease = self._lease
            return None if lease is None else (str(lease["holder"]), int(lease["term"]))

    def read(self, key: str) -> str | None:
        with self._guard:
            return self._kv.get(key)

    def read_prefix(self, prefix: str) -> dict[str, str]:
        with self._guard:
            return {k: v for k, v in self._kv.items() if k.startswith(prefix)}

    # -- leader duty: expire leases (runs on the tick thread) ------------------------------------

    def expire_due(self) -> None:
        if not self._isLeader():
            self._limbo.clear()
            return
        with self._guard:
            lease = self._lease
            due = lease is not None and lease["expire"] <= time.time()
            key = (int(lease["term"]), float(lease["expire"])) if lease is not None else None
        if due and key is not None and key not in self._limbo:
            self._limbo.add(key)
            self._expire(*key, callback=lambda _res, _err: self._limbo.discard(key))


class RaftCoordinator(Coordinator):
    """One embedded Raft member (pysyncobj) plus the lease/KV interface.

    ``self_address`` and ``peers`` are ``host:port`` strings; all members of a cluster must list
    the same set. With ``data_dir`` the Raft journal survives restarts, so terms keep increasing
    even after the whole cluster was down.
    """

    def __init__(self, node_id: str, self_address: str, peers: list[str],
                 settings: LeaseSettings, *, data_dir: Path | None = None,
                 timings: RaftTimings | None = None) -> None:
        super().__init__(node_id, settings)
        self.self_address = self_address
        self.peers = [p for p in peers if p != self_address]
        self.data_dir = data_dir
        self.timings = timings or RaftTimings()
        self._machine: _LeaseMachine | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        if self._machine is None:
            self._machine = await asyncio.to_thread(self._build)
            self._thread = threading.Thread(target=self._tick_loop, daemon=True,
                                            name=f"raft-{self.node_id}")
            self._thread.start()

    def _build(self) -> _LeaseMachine:
        t = self.timings
        extra: dict[str, Any] = {}
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            extra = {"journalFile": str(self.data_dir / "raft.journal"),
                     "fullDumpFile": str(self.data_dir / "raft.dump")}
        conf = SyncObjConf(
            autoTick=False, appendEntriesPeriod=t.append_entries_seconds,
            raftMinTimeout=t.election_min_seconds, raftMaxTimeout=t.election_max_seconds,
            connectionTimeout=t.connection_timeout_seconds,
            connectionRetryTime=t.connection_retry_seconds,
            leaderFallbackTimeout=t.leader_fallback_seconds,
            useFork=False, bindRetryTime=0.2, maxBindRetries=10,
            bindAddress=self.self_address, **extra)
        try:
            machine = _LeaseMachine(self.self_address, self.peers, conf)
        except Exception as exc:  # pysyncobj raises its own SyncObjException on bind errors
            raise CoordinationError(
                f"raft member {self.node_id} cannot start on {self.self_address}: {exc}") from exc
        machine.addOnTickCallback(machine.expire_due)
        return machine

    def _tick_loop(self) -> None:
        machine = self._machine
        assert machine is not None
        while not self._stop.is_set():
            try:
                machine.doTick(self.timings.tick_seconds)
            except Exception:  # as pysyncobj's own tick thread does: log, pause, go on
                log.exception("raft member %s: tick failed", self.node_id)
                time.sleep(self.timings.tick_seconds)
        machine.destroy()

    async def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
        self._thread = None
        self._machine = None

    @property
    def machine(self) -> _LeaseMachine:
        if self._machine is None:
            raise CoordinationError(f"raft member {self.node_id} is not started")
        return self._machine

    async def _call(self, command: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()

        def settle(result: Any, error: int) -> None:
            if done.done():
                return
            if error == FAIL_REASON.SUCCESS:
                done.set_result(result)
            else:
                done.set_exception(CoordinationError(
                    f"raft command failed: {_REASONS.get(error, error)}"))

        def from_tick_thread(result: Any, error: int) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(settle, result, error)

        command(*args, callback=from_tick_thread)
        return await done

    # -- primitives --------------------------------------------------------------------------------

    async def _acquire(self, ttl: float) -> Grant | None:
        current = self.machine.read_lease()
        if current is not None and current[0] != self.holder:
            return None  # cheap local read first: no log entry while someone else leads
        term = await self._call(self.machine._acquire, self.holder, time.time() + ttl)
        return None if term is None else Grant(int(term))

    async def _refresh(self, grant: Grant, ttl: float) -> Grant:
        if not await self._call(self.machine._refresh, grant.term, time.time() + ttl):
            raise LeaseLost(f"lease of term {grant.term} is gone")
        return grant

    async def _release(self, grant: Grant) -> None:
        await self._call(self.machine._release, grant.term)

    async def _leader(self) -> LeaderInfo | None:
        found = self.machine.read_lease()
        return None if found is None else LeaderInfo(*found)

    async def _get(self, key: str) -> str | None:
        return self.machine.read(key)

    async def _items(self, prefix: str) -> dict[str, str]:
        return self.machine.read_prefix(prefix)

    async def _put(self, key: str, value: str, fence: int | None) -> bool:
        return bool(await self._call(self.machine._put, key, value, fence))

    async def _delete(self, key: str, fence: int | None) -> bool:
        return bool(await self._call(self.machine._delete, key, fence))
