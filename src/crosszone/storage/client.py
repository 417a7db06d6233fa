"""StoreClient: a zone's store service (``crosszone.storage.service``) seen from a product.

What the gateway's API keys, conversations and usage records use to read and write zone stores:
``async`` writes commit in the called zone and replicate; ``strong`` writes run two-phase commit
over the zones in service (the called zone's store coordinates). aiohttp errors are translated
here: a zone that cannot be reached raises :class:`StoreUnavailable`, an error answer the
StoreError subclass its ``code`` names; a missing record is ``None``, not an error.

:class:`ZoneStores` holds one client per zone over one shared session, own zone first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

from crosszone.config.topology import Topology
from crosszone.errors import StoreError
from crosszone.storage.changes import Changes, Version
from crosszone.storage.records import Lag, Record, Write
from crosszone.storage.service import store_url
from crosszone.storage.wire import store_request

READ_TIMEOUT = 5.0
WRITE_TIMEOUT = 12.0  # a strong write: prepare timeout + phase two retries


def _lag(x: Any) -> Lag:
    return Lag(str(x["origin"]), str(x["destination"]), float(x["seconds"]), int(x["records"]))


Page = tuple[list[Record], str | None]  # records, and the key to continue after (None: done)


async def pages(scan: Callable[[str], Awaitable[Page]]) -> AsyncIterator[Record]:
    """Every record of the pages ``scan(after)`` returns, one page after another."""
    after = ""
    while True:
        records, nxt = await scan(after)
        for record in records:
            yield record
        if nxt is None:
            return
        after = nxt


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """What a store says of its place in the control plane (``GET /membership``): the lease
    it holds (None: none), seconds left of it, the zones it runs strong writes over, and its
    replication lag towards every other zone."""

    zone: str
    lease: int | None
    lease_remaining: float | None
    zones: tuple[str, ...]
    lag: tuple[Lag, ...]
    max_token: int = 0

    @classmethod
    def from_json(cls, data: Any) -> StoreStatus:
        lease, left = data.get("lease"), data.get("lease_remaining")
        return cls(str(data["zone"]), None if lease is None else int(lease),
                   None if left is None else float(left), tuple(str(z) for z in data["zones"]),
                   tuple(_lag(x) for x in data.get("lag", [])), int(data.get("max_token", 0)))


@dataclass(frozen=True, slots=True)
class Written:
    """What a write answered: the new versions and, for a strong write, the zones that took
    part and those that had not acknowledged phase two yet (they will: the decision is logged)."""

    records: list[Record]
    txid: str | None = None
    zones: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)


def _consistency(strong: bool) -> str:
    return "strong" if strong else "async"


class StoreClient:
    """The store service of ``zone`` at ``base_url`` (``http://127.0.N.6:7000``)."""

    def __init__(self, zone: str, base_url: str,
                 session: Callable[[], aiohttp.ClientSession]) -> None:
        self.zone = zone
        self.base_url = base_url.rstrip("/")
        self._session = session  # opened lazily, inside the running loop

    def __repr__(self) -> str:
        return f"StoreClient({self.zone!r}, {self.base_url!r})"

    async def call(self, method: str, path: str, body: Any = None, *,
                   timeout: float = READ_TIMEOUT, missing_ok: bool = False) -> Any:
        """One request: the decoded JSON answer (None for a 404 when ``missing_ok``)."""
        return await store_request(
            self._session(), self.zone, self.base_url, method, path, body,
            timeout=aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 1.0)),
            missing_ok=missing_ok)

    # ------------------------------------------------------------------ reads
    async def get(self, collection: str, key: str, *, strong: bool = False,
                  timeout: float = READ_TIMEOUT) -> Record | None:
        """The live record (None when absent or deleted). ``strong``: refused by a fenced zone,
        and waits while an in-doubt transaction holds the key."""
        answer = await self.call("GET", f"/kv/{quote(collection)}/{quote(key, safe='')}"
                                 f"?consistency={_consistency(strong)}", missing_ok=True,
                                 timeout=timeout)
        if answer is None:
            return None
        record = Record.from_json(answer)
        return None if record.deleted else record

    async def version(self, collection: str, key: str, *, strong: bool = False,
                      timeout: float = READ_TIMEOUT) -> Version | None:
        """The version ``(hlc, origin)`` of a live record without its value (None: absent
        or deleted); ``strong`` as for :meth:`get`."""
        answer = await self.call("GET", f"/versions/{quote(collection)}/{quote(key, safe='')}"
                                 f"?consistency={_consistency(strong)}", missing_ok=True,
                                 timeout=timeout)
        if answer is None or answer.get("deleted"):
            return None
        return (int(answer["hlc"]), str(answer["origin"]))

    async def changes(self, epoch: str | None, after: int | None, *, wait: float = 0.0,
                      limit: int = 5000) -> Changes:
        """The store's change feed after ``after`` (long-polled up to ``wait`` seconds); a
        reset when ``epoch``/``after`` are None or the feed cannot list what changed since."""
        query = f"?wait={wait:g}&limit={limit}"
        if epoch is not None and after is not None:
            query += f"&epoch={quote(epoch, safe='')}&after={after}"
        return Changes.from_json(await self.call("GET", "/changes" + query,
                                                 timeout=wait + READ_TIMEOUT))

    async def scan(self, collection: str, *, prefix: str = "", after: str = "",
                   limit: int = 1000, strong: bool = False) -> tuple[list[Record], str | None]:
        """One page of live records by key, and the key to continue ``after`` (None: done)."""
        query = (f"?prefix={quote(prefix, safe='')}&after={quote(after, safe='')}"
                 f"&limit={limit}&consistency={_consistency(strong)}")
        answer = await self.call("GET", f"/kv/{quote(collection)}{query}")
        records = [Record.from_json(r) for r in answer["records"]]
        nxt = answer.get("next")
        return records, (str(nxt) if nxt is not None else None)

    def iterate(self, collection: str, *, prefix: str = "", page: int = 1000,
                strong: bool = False) -> AsyncIterator[Record]:
        """Every live record under ``prefix``, page by page."""
        return pages(lambda after: self.scan(collection, prefix=prefix, after=after,
                                             limit=page, strong=strong))

    # ------------------------------------------------------------------ writes
    async def write(self, writes: Sequence[Write], *, strong: bool = False) -> Written:
        """Several writes, atomically (all zones in service by 2PC when ``strong``)."""
        answer = await self.call("POST", "/kv",
                                 {"writes": [w.to_json() for w in writes],
                                  "consistency": _consistency(strong)},
                                 timeout=WRITE_TIMEOUT if strong else READ_TIMEOUT)
        return Written([Record.from_json(r) for r in answer["records"]], answer.get("txid"),
                       list(answer.get("zones", [])), list(answer.get("pending", [])))

    async def put(self, collection: str, key: str, value: Any, *,
                  strong: bool = False) -> Written:
        return await self.write([Write.put(collection, key, value)], strong=strong)

    async def delete(self, collection: str, key: str, *, strong: bool = False) -> Written:
        return await self.write([Write.remove(collection, key)], strong=strong)

    # ------------------------------------------------------------------ operations
    async def lag(self) -> list[Lag]:
        """Replication lag from this zone to every other zone."""
        answer = await self.call("GET", "/replication/lag")
        return [_lag(x) for x in answer["lag"]]

    async def set_membership(self, zones: Iterable[str], epoch: int | None = None, *,
                             timeout: float = READ_TIMEOUT) -> StoreStatus:
        """Tell this store which zones are in service (what the control plane does)."""
        body: dict[str, Any] = {"zones": list(zones)}
        if epoch is not None:
            body["epoch"] = epoch
        return StoreStatus.from_json(await self.call("POST", "/membership", body,
                                                     timeout=timeout))

    async def status(self, *, timeout: float = READ_TIMEOUT) -> StoreStatus:
        return StoreStatus.from_json(await self.call("GET", "/membership", timeout=timeout))

    async def grant_lease(self, epoch: int, ttl: float | None, *,
                          timeout: float = READ_TIMEOUT) -> StoreStatus:
        """Grant (or renew) this store's lease for ``ttl`` seconds; Fenced for a stale epoch."""
        body: dict[str, Any] = {"epoch": epoch, "held": True}
        if ttl is not None:
            body["ttl"] = ttl
        return StoreStatus.from_json(await self.call("POST", "/lease", body, timeout=timeout))

    async def revoke_lease(self, epoch: int, *, timeout: float = READ_TIMEOUT) -> StoreStatus:
        return StoreStatus.from_json(await self.call("POST", "/lease",
                                                     {"epoch": epoch, "held": False},
                                                     timeout=timeout))

    async def health(self, *, timeout: float = 2.0) -> dict[str, Any]:
        """The store's ``/health``; StoreUnavailable when it does not answer in time or says
        it is not in service (503: no lease under a control plane)."""
        answer = await self.call("GET", "/health", timeout=timeout)
        return dict(answer)


class ZoneStores:
    """One :class:`StoreClient` per zone of ``topology`` over one session; ``local`` first.

    ``source_host`` binds outgoing connections to the caller's own address, so a network fault
    on its zone's subnet cuts its store traffic as it would a real zone's.
    """

    def __init__(self, topology: Topology, local: str, *, source_host: str | None = None,
                 urls: dict[str, str] | None = None) -> None:
        self.local_zone = local
        self.source_host = source_host
        self._urls = urls or {z: store_url(topology, z) for z in topology.zone_names()}
        self._session: aiohttp.ClientSession | None = None
        self._clients = {z: StoreClient(z, url, self.session) for z, url in self._urls.items()}

    def __repr__(self) -> str:
        return f"ZoneStores(local={self.local_zone!r}, zones={sorted(self._urls)})"

    def session(self) -> aiohttp.ClientSession:
        """The shared session (opened on first use, inside the running loop)."""
        if self._session is None or self._session.closed:
            local = (self.source_host, 0) if self.source_host else None
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, local_addr=local)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._session

    @property
    def local(self) -> StoreClient:
        return self._clients[self.local_zone]

    def zone(self, name: str) -> StoreClient:
        try:
            return self._clients[name]
        except KeyError:
            raise StoreError(f"no store for zone {name!r}") from None

    def others(self) -> list[StoreClient]:
        """Every other zone's store, in topology order."""
        return [c for z, c in self._clients.items() if z != self.local_zone]

    def all(self) -> list[StoreClient]:
        """The local store first, then the others."""
        return [self.local, *self.others()]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
