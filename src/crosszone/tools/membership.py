"""Standing in for the control plane towards the zone stores: which zones are in service.

Strong writes (API keys, ``sync`` conversations) run two-phase commit over the zones in service,
so after a zone dies someone must take it out of service on the survivors, and put it back once
it has caught up (``rejoin_ready``). That is the control plane's job; until it pushes store
membership itself, drills (``crosszone.tools.rpo``) and tests use these helpers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from crosszone.config.topology import Topology
from crosszone.errors import StoreError, StoreUnavailable
from crosszone.storage.client import ZoneStores
from crosszone.storage.records import Lag


def zone_stores(topology: Topology) -> ZoneStores:
    return ZoneStores(topology, topology.zone_names()[0])


async def set_in_service(topology: Topology, zones: Iterable[str]) -> list[str]:
    """Tell the stores of ``zones`` that exactly ``zones`` are in service; the zones that did
    not answer."""
    wanted = list(zones)
    stores = zone_stores(topology)
    try:
        answers = await asyncio.gather(*(stores.zone(z).set_membership(wanted) for z in wanted),
                                       return_exceptions=True)
    finally:
        await stores.close()
    return [z for z, a in zip(wanted, answers, strict=True) if isinstance(a, BaseException)]


async def lags(topology: Topology, among: Iterable[str] | None = None) -> list[Lag]:
    """Replication lag of every pair of ``among`` (default: all) zones; StoreUnavailable if
    one of their stores does not answer."""
    names = list(among) if among is not None else topology.zone_names()
    stores = zone_stores(topology)
    try:
        per_zone = await asyncio.gather(*(stores.zone(z).lag() for z in names))
    finally:
        await stores.close()
    return [lag for zone in per_zone for lag in zone if lag.destination in names]


async def wait_caught_up(topology: Topology, timeout: float = 30.0,
                         among: Iterable[str] | None = None) -> None:
    """Until no zone of ``among`` (default: all) has anything left to ship to another of them
    (StoreUnavailable after ``timeout``)."""
    names = list(among) if among is not None else None
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            pending = [x for x in await lags(topology, names) if x.records]
        except StoreError as exc:
            last = str(exc)
        else:
            if not pending:
                return
            last = ", ".join(f"{x.origin}->{x.destination}: {x.records}" for x in pending)
        await asyncio.sleep(0.1)
    raise StoreUnavailable(f"replication not caught up after {timeout:g}s ({last})")


async def take_out_of_service(topology: Topology, zone: str) -> list[str]:
    """The survivors stop waiting for ``zone`` in two-phase commits."""
    return await set_in_service(topology, [z for z in topology.zone_names() if z != zone])


async def restore_service(topology: Topology, timeout: float = 30.0) -> list[str]:
    """Once every zone has caught up, every zone is in service again."""
    await wait_caught_up(topology, timeout)
    return await set_in_service(topology, topology.zone_names())
