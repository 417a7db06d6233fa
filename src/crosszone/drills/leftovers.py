"""Nothing left behind: no prepared transaction, no chaos rule or helper, no orphan process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

import httpx

from crosszone.chaos.api import Chaos
from crosszone.errors import CrosszoneError
from crosszone.runtime.processes import is_crosszone_process
from crosszone.runtime.stack import LocalStack


async def prepared_transactions(store_urls: Mapping[str, str], timeout: float = 2.0
                                ) -> dict[str, list[Any] | str]:
    """``GET /tx/prepared`` of every zone's store: its prepared transactions, or why not read."""
    out: dict[str, list[Any] | str] = {}
    async with httpx.AsyncClient(timeout=timeout) as http:
        for zone, url in store_urls.items():
            try:
                resp = await http.get(url + "/tx/prepared")
                resp.raise_for_status()
                prepared = resp.json().get("prepared", [])
                out[zone] = list(prepared) if isinstance(prepared, list) else []
            except (httpx.HTTPError, ValueError, AttributeError) as exc:
                out[zone] = f"cannot read: {type(exc).__name__}"
    return out


async def await_no_prepared(store_urls: Mapping[str, str], deadline: float
                            ) -> dict[str, list[Any] | str]:
    """Poll until no store holds a prepared transaction (the resolver finishes them), or the
    deadline (``time.monotonic()``) passes; returns what was last seen."""
    while True:
        seen = await prepared_transactions(store_urls)
        if all(v == [] for v in seen.values()) or time.monotonic() >= deadline:
            return seen
        await asyncio.sleep(0.5)


def chaos_leftovers(chaos: Chaos, uids: list[str]) -> list[str]:
    """Chaos's own leftover scan plus this drill's experiments that are not destroyed."""
    found: list[str] = []
    with contextlib.suppress(CrosszoneError):
        found += chaos.leftovers()
    for uid in uids:
        try:
            experiment = chaos.status(uid)[0]
        except CrosszoneError:
            continue
        if experiment.status != "destroyed":
            found.append(f"experiment {uid} ({experiment.kind}) is {experiment.status}")
    return found


def orphan_processes(pids_seen: Mapping[int, str], stack: LocalStack, stopped: bool
                     ) -> list[str]:
    """Pids the stack ran that still live without the supervisor owning them.

    ``stopped``: the drill brought the stack down, so every pid must be gone. Otherwise a live
    pid must still be a process (or the supervisor) of the running stack's snapshot.
    """
    owned: set[int] = set()
    if not stopped:
        with contextlib.suppress(CrosszoneError):
            snapshot = stack.snapshot()
            owned = {int(r["pid"]) for r in snapshot.get("processes", [])
                     if isinstance(r, dict) and isinstance(r.get("pid"), int)}
            sup = snapshot.get("supervisor", {}).get("pid")
            if isinstance(sup, int):
                owned.add(sup)
    return [f"{name} (pid {pid}) still runs" + ("" if stopped else " outside the supervisor")
            for pid, name in sorted(pids_seen.items())
            if pid not in owned and is_crosszone_process(pid)]
