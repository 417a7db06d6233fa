"""Watching the control plane keep the zone stores' 2PC membership (for tools, drills, tests).

The acting controller takes a dead zone out of the stores' membership once its lease has surely
lapsed, and puts it back (then grants its lease) once it has caught up
(:mod:`crosszone.control.stores`). These helpers ask the stores what they were told and wait
for it, so a tool can measure how long it took -- they never set the membership themselves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from crosszone.config.topology import Topology
from crosszone.errors import StoreError, StoreUnavailable
from crosszone.storage.client import StoreStatus, ZoneStores
from crosszone.storage.records import Lag


def zone_stores(topology: Topology) -> ZoneStores:
    return ZoneStores(topology, topology.zone_names()[0])


async def statuses(topology: Topology, among: Iterable[str] | None = None,
                   timeout: float = 1.0) -> dict[str, StoreStatus | None]:
    """What each store of ``among`` (default: all zones) says; None where none answers."""
    names = list(among) if among is not None else topology.zone_names()
    stores = zone_stores(topology)

    async def one(zone: str) -> StoreStatus | None:
        try:
            return await stores.zone(zone).status(timeout=timeout)
        except StoreError:
            return None

    try:
        found = await asyncio.gather(*(one(z) for z in names))
    finally:
        await stores.close()
    return dict(zip(names, found, strict=True))


Check = Callable[[dict[str, StoreStatus | None]], tuple[bool, str]]


async def _wait(topology: Topology, timeout: float, what: str, done: Check) -> float:
    started = time.monotonic()
    last = "no answer yet"
    while True:
        seen = await statuses(topology)
        ok, last = done(seen)
        if ok:
            return time.monotonic() - started
        if time.monotonic() - started >= timeout:
            raise StoreUnavailable(f"{what} not reached after {timeout:g}s ({last})")
        await asyncio.sleep(0.05)


def _describe(seen: dict[str, StoreStatus | None]) -> str:
    return "; ".join(f"{z}: no answer" if s is None else
                     f"{z}: lease {s.lease}, members {','.join(s.zones)}"
                     for z, s in seen.items())


async def wait_out_of_service(topology: Topology, zone: str, timeout: float = 30.0) -> float:
    """Until every other answering store runs strong writes without ``zone``; seconds taken."""
    def done(seen: dict[str, StoreStatus | None]) -> tuple[bool, str]:
        others = [s for z, s in seen.items() if z != zone and s is not None]
        return bool(others) and all(zone not in s.zones for s in others), _describe(seen)

    return await _wait(topology, timeout, f"{zone} out of the 2PC membership", done)


async def wait_in_service(topology: Topology, timeout: float = 60.0) -> float:
    """Until every zone's store is a member everywhere and holds a lease; seconds taken."""
    zones = set(topology.zone_names())

    def done(seen: dict[str, StoreStatus | None]) -> tuple[bool, str]:
        ok = all(s is not None and set(s.zones) == zones and s.lease is not None
                 for s in seen.values())
        return ok, _describe(seen)

    return await _wait(topology, timeout, "every zone in service with a lease", done)


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
