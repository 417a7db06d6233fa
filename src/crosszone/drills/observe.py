"""What a drill watches besides its own requests: the controllers, the LB, the supervisor.

* Controllers (only when the stack runs ``controller`` processes): every controller's
  ``GET /control/status`` a few times a second; claims of leadership feed the split-brain check,
  and ``GET /control/events`` at the end gives the failover events for the timeline.
* The load balancer's ``GET /lb/status``: when a zone stops or starts being available to it (a
  data-plane failover, with or without a control plane).
* The supervisor's snapshot: every pid the stack ran, for the orphan check.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from crosszone.drills.splitbrain import LeaderClaim
from crosszone.errors import CrosszoneError
from crosszone.runtime.stack import LocalStack
from crosszone.workload.product import lb_root

CONTROL_EVERY = 0.2
LB_EVERY = 0.25
PIDS_EVERY = 0.5


@dataclass
class ControlPlane:
    """Whether the stack has controllers, and where their APIs are."""

    present: bool
    urls: dict[str, str] = field(default_factory=dict)  # zone -> API base URL
    note: str = ""

    @property
    def observable(self) -> bool:
        return self.present and bool(self.urls)


def detect_control_plane(stack: LocalStack, snapshot: dict[str, Any]) -> ControlPlane:
    zones = sorted({str(r.get("zone")) for r in snapshot.get("processes", [])
                    if isinstance(r, dict) and r.get("component") == "controller"})
    if not zones:
        return ControlPlane(False, note="the stack runs no controller process")
    try:
        from crosszone.control.addresses import controller_nodes

        nodes = controller_nodes(stack.topology)
    except (ImportError, AttributeError, KeyError, ValueError) as exc:
        return ControlPlane(True, note=f"controllers run in {', '.join(zones)} but their "
                                       f"addresses are unknown: {exc}")
    urls = {z: n.api_url for z, n in nodes.items() if z in zones}
    return ControlPlane(True, urls, f"controllers in {', '.join(zones)}")


class Observers:
    def __init__(self, stack: LocalStack, control: ControlPlane, now: Callable[[], float],
                 wall_origin: float) -> None:
        self.stack = stack
        self.control = control
        self.now = now
        self.wall_origin = wall_origin
        self.claims: list[LeaderClaim] = []
        self.control_samples = 0
        self.control_errors = 0
        self.lb_events: list[tuple[float, str]] = []
        self.control_events: list[dict[str, Any]] = []
        self.pids_seen: dict[int, str] = {}
        self._lb_available: dict[str, bool] = {}
        self._stop = asyncio.Event()

    async def run(self) -> None:
        tasks = [self._every(PIDS_EVERY, self._sample_pids)]
        async with httpx.AsyncClient(timeout=0.5) as http:
            tasks.append(self._every(LB_EVERY, lambda: self._sample_lb(http)))
            if self.control.observable:
                tasks.append(self._every(CONTROL_EVERY, lambda: self._sample_control(http)))
            await asyncio.gather(*tasks)
            if self.control.observable:
                await self._fetch_events(http)

    def stop(self) -> None:
        self._stop.set()

    async def _every(self, period: float, sample: Callable[[], Any]) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(CrosszoneError, httpx.HTTPError, ValueError):
                await sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), period)

    # --- supervisor ------------------------------------------------------------------------------

    async def _sample_pids(self) -> None:
        snapshot = await asyncio.to_thread(self.stack.snapshot)
        self.record_pids(snapshot)

    def record_pids(self, snapshot: dict[str, Any]) -> None:
        for r in snapshot.get("processes", []):
            if isinstance(r, dict) and isinstance(r.get("pid"), int):
                self.pids_seen[int(r["pid"])] = str(r.get("name"))
        sup = snapshot.get("supervisor", {}).get("pid")
        if isinstance(sup, int):
            self.pids_seen[sup] = "supervisor"

    # --- load balancer ---------------------------------------------------------------------------

    async def _sample_lb(self, http: httpx.AsyncClient) -> None:
        resp = await http.get(lb_root(self.stack.lb_url("http")) + "/lb/status")
        zones = resp.json().get("zones", {})
        for zone, state in zones.items():
            available = bool(state.get("available"))
            before = self._lb_available.get(zone)
            if before is not None and before != available:
                what = "back in" if available else "out of"
                self.lb_events.append((self.now(), f"LB: {zone} {what} rotation"))
            self._lb_available[zone] = available

    # --- controllers -----------------------------------------------------------------------------

    async def _sample_control(self, http: httpx.AsyncClient) -> None:
        await asyncio.gather(*(self._ask(http, z, url) for z, url in self.control.urls.items()))

    async def _ask(self, http: httpx.AsyncClient, zone: str, url: str) -> None:
        sent = self.now()
        try:
            resp = await http.get(url + "/control/status")
            doc = resp.json()
        except (httpx.HTTPError, ValueError):
            self.control_errors += 1
            return
        received = self.now()
        self.control_samples += 1
        term = doc.get("term")
        if doc.get("leader") is True and isinstance(term, int):
            routing = doc.get("routing") if isinstance(doc.get("routing"), dict) else {}
            active = routing.get("active") if not routing.get("fail_open") else None
            self.claims.append(LeaderClaim(str(doc.get("node") or zone), zone, term, sent,
                                           received, active if isinstance(active, str) else None))

    def leader_zone(self) -> str | None:
        """The zone of the newest leader claimed so far."""
        if not self.claims:
            return None
        return max(self.claims, key=lambda c: (c.term, c.received)).zone

    async def ask_leader_now(self) -> str | None:
        async with httpx.AsyncClient(timeout=1.0) as http:
            await self._sample_control(http)
        return self.leader_zone()

    async def _fetch_events(self, http: httpx.AsyncClient) -> None:
        for url in self.control.urls.values():
            try:
                resp = await http.get(url + "/control/events", params={"limit": "200"},
                                      timeout=2.0)
                events = resp.json().get("events", [])
            except (httpx.HTTPError, ValueError, AttributeError):
                continue
            start = self.wall_origin
            for e in events:
                if isinstance(e, dict) and isinstance(e.get("time"), int | float) \
                        and e["time"] >= start:
                    self.control_events.append({**e, "at": round(e["time"] - start, 3)})
            return



async def readiness_problems(stack: LocalStack, control: ControlPlane) -> list[str]:
    """Why the stack is not ready for a drill ([] when it is)."""
    problems: list[str] = []
    probes = await asyncio.to_thread(stack.health, 1.0)
    down = sorted(name for name, p in probes.items() if not p.healthy)
    if down:
        problems.append(f"not healthy: {', '.join(down)}")
    active_active = stack.topology.failover.mode == "active-active"
    async with httpx.AsyncClient(timeout=1.0) as http:
        try:
            zones = (await http.get(lb_root(stack.lb_url("http")) + "/lb/status")
                     ).json().get("zones", {})
            out = sorted(z for z, st in zones.items() if not st.get("available")
                         or (active_active and not st.get("weight")))
            if out:
                problems.append(f"out of the LB's rotation: {', '.join(out)}")
        except (httpx.HTTPError, ValueError, AttributeError, CrosszoneError) as exc:
            problems.append(f"LB status unavailable: {type(exc).__name__}")
        if control.observable:
            leaders = 0
            for url in control.urls.values():
                with contextlib.suppress(httpx.HTTPError, ValueError, AttributeError):
                    leaders += (await http.get(url + "/control/status")).json().get(
                        "leader") is True
            if leaders != 1:
                problems.append(f"{leaders} controllers claim leadership")
    return problems
