"""One controller per zone: observe, decide, and -- only while holding the lease -- act.

Every controller probes every node, runs the FailoverManager and serves DNS, so a follower is
always warm; only the elected leader publishes (fenced writes to the coordination store), pushes
weights stamped with its fencing token, records failover events, and publishes the auto-scaling
groups' desired capacities (the supervisors read them from any controller). ``run_cycle``
returns the sentence of what it did; ``run`` loops it with the elector and the health checker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crosszone.config.placement import Placement
from crosszone.config.topology import Topology
from crosszone.control.actuator import PushReport, RoutingPusher, Target, default_targets
from crosszone.control.addresses import controller_nodes
from crosszone.control.coordination.base import Coordinator
from crosszone.control.coordination.election import Elector
from crosszone.control.coordination.etcd import EtcdCoordinator
from crosszone.control.coordination.raft import RaftCoordinator
from crosszone.control.dns import DnsServer
from crosszone.control.events import EventLog, FailoverEvent
from crosszone.control.failover import FailoverManager
from crosszone.control.health import HealthChecker
from crosszone.control.model import Decision, Observation, Routing, ZoneObservation
from crosszone.control.scaling import (
    GROUPS_KEY,
    SCALING_PREFIX,
    GroupState,
    OperatorSetting,
    ScalingDecision,
    ScalingObservation,
    ScalingPolicy,
    effective_groups,
    groups_to_json,
    parse_groups,
    parse_operator,
)
from crosszone.control.settings import ControlSettings, check_control, control_settings
from crosszone.control.shifts import SHIFT_PREFIX, ZonalShift, parse_shifts
from crosszone.control.stores import StoreMembership
from crosszone.errors import ConfigError, CoordinationError, CrosszoneError, RuntimeStateError

log = logging.getLogger(__name__)

ROUTING_KEY = "routing"


@dataclass
class ControllerState:
    """What the controller last saw and did (the control API's status)."""

    zones: dict[str, ZoneObservation] = field(default_factory=dict)
    shifts: list[ZonalShift] = field(default_factory=list)
    published: Routing | None = None
    decision: Decision | None = None
    last_push: PushReport | None = None
    sentence: str = "not started"
    history: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=100))
    cycles: int = 0
    groups: dict[str, GroupState] = field(default_factory=dict)  # published by the leader
    groups_term: int = 0
    operator: dict[str, OperatorSetting] = field(default_factory=dict)  # `crosszone scale`
    scaling: ScalingDecision | None = None


class Controller:
    def __init__(self, *, zone: str, topology: Topology, settings: ControlSettings,
                 coordinator: Coordinator, checker: HealthChecker, manager: FailoverManager,
                 pusher: RoutingPusher, dns: DnsServer | None, events: EventLog,
                 api_address: tuple[str, int] | None = None,
                 scaler: ScalingPolicy | None = None,
                 stores: StoreMembership | None = None) -> None:
        self.zone = zone
        self.topology = topology
        self.settings = settings
        self.coordinator = coordinator
        self.checker = checker
        self.manager = manager
        self.pusher = pusher
        self.dns = dns
        self.events = events
        self.api_address = api_address
        self.scaler = scaler or ScalingPolicy.from_topology(topology, settings.scaling)
        self.stores = stores  # the zone stores' leases and 2PC membership (leader only)
        self.elector = Elector(coordinator, renew_seconds=settings.lease.renew_seconds,
                               loop_seconds=min(settings.loop_seconds,
                                                settings.lease.renew_seconds / 2))
        placement = Placement(topology)
        self.gateway_hosts = {z: placement.gateway(z).host for z in topology.zone_names()}
        self.state = ControllerState()
        self._runner: object | None = None
        self._stop = asyncio.Event()
        self._alerted: str | None = None

    @property
    def node_id(self) -> str:
        return self.coordinator.node_id

    # -- one cycle ---------------------------------------------------------------------------------

    async def observe(self, now: float) -> tuple[Observation, str]:
        note = ""
        try:
            items = await self.coordinator.items(SHIFT_PREFIX)
            text = await self.coordinator.get(ROUTING_KEY)
            scaling = await self.coordinator.items(SCALING_PREFIX)
            groups = await self.coordinator.get(GROUPS_KEY)
            self.state.shifts = parse_shifts(items)
            self.state.published = Routing.from_json(text) if text else None
            self.state.operator = parse_operator(scaling)
            self.state.groups_term, self.state.groups = parse_groups(groups)
        except (CoordinationError, ValueError, KeyError, TypeError) as exc:
            note = f"; store unreadable ({exc}), using the last shifts and routing seen"
        for zone, group in self.scaling_view().items():  # only in-service workers count
            self.checker.set_group(zone, int(group["desired"]))
        self.state.zones = self.checker.snapshot(now)
        return Observation(self.state.zones, tuple(self.state.shifts),
                           self.state.published), note

    async def run_cycle(self) -> str:
        now = time.time()
        observation, note = await self.observe(now)
        decision = self.manager.run_cycle(observation, now)
        self.state.decision = decision
        scaling = self.scaler.run_cycle(self._scaling_observation(decision, now), now)
        self.state.scaling = scaling
        self.state.cycles += 1
        resize = f"; {scaling.sentence}" if scaling.changed else ""
        token = self.elector.acting_token()
        if token is None:
            self._serve_dns(self.state.published)
            who = self.elector.known_leader
            leader = f"leader {who.node_id} term {who.term}" if who else "no leader known"
            return self._say(f"follower ({leader}), not acting; would decide: "
                             f"{decision.sentence}{resize}{note}")
        outcome = await self.act(decision, token, now)
        if scaling.changed and self.elector.acting_token() == token:
            resize = await self.resize(scaling, token, now)
        return self._say(f"leader term {token}: {decision.sentence}{outcome}{resize}{note}")

    def _scaling_observation(self, decision: Decision, now: float) -> ScalingObservation:
        out = {z for z, ob in self.state.zones.items() if ob.status == "unhealthy"}
        out |= {s.zone for s in self.state.shifts} | {s.zone for s in decision.start_shifts}
        out -= {s.zone for s in decision.end_shifts}
        return ScalingObservation(
            self.state.groups, self.state.operator,
            self.checker.loads(now, self.settings.scaling.load_max_age_seconds),
            frozenset(out), frozenset(self.checker.established()))

    async def resize(self, scaling: ScalingDecision, token: int, now: float) -> str:
        """Publish the groups' new desired capacities, fenced with our term."""
        try:
            ok = await self.coordinator.put(GROUPS_KEY, groups_to_json(scaling.groups, token, now),
                                            fence=token)
        except CoordinationError as exc:
            log.warning("%s: publishing the scaling groups failed: %s", self.node_id, exc)
            return f"; {scaling.sentence} (not published: {exc})"
        if not ok:
            self.elector.demote("the store refused a write fenced with our term")
            return f"; the store refused term {token}: a newer leader exists, stopped acting"
        self.state.groups, self.state.groups_term = dict(scaling.groups), token
        return f"; {scaling.sentence}"

    def scaling_view(self) -> dict[str, Any]:
        """Every zone's desired capacity as ``GET /control/scaling`` answers it."""
        return effective_groups(self.scaler.bounds, self.state.groups, self.state.operator,
                                self.state.groups_term)

    async def act(self, decision: Decision, token: int, decided_at: float) -> str:
        """Publish (fenced), push (fenced), serve DNS, record events."""
        refused = False
        published = not decision.changed
        try:
            for s in decision.start_shifts:
                refused |= not await self.coordinator.put(s.key, s.to_json(), fence=token)
            for s in decision.end_shifts:
                refused |= not await self.coordinator.delete(s.key, fence=token)
            if decision.changed and not refused:
                published = await self.coordinator.put(ROUTING_KEY, decision.routing.to_json(),
                                                       fence=token)
                refused |= not published
        except CoordinationError as exc:
            log.warning("%s: publishing failed: %s", self.node_id, exc)
        if refused:
            self.elector.demote("the store refused a write fenced with our term")
            return f"; the store refused term {token}: a newer leader exists, stopped acting"
        if published and decision.changed:
            self.state.published = decision.routing
        self._serve_dns(decision.routing)
        if decision.alert != self._alerted:  # log an alert when it starts, not every cycle
            if decision.alert:
                log.error("%s: ALERT %s", self.node_id, decision.alert)
            self._alerted = decision.alert
        report: PushReport | None = None
        if self.pusher.needs_push(decision.routing, token):
            report = await self.pusher.push(decision.routing, token,
                                            lambda: self.elector.acting_token() == token)
            self.state.last_push = report
            if report.stale:
                self.elector.demote(f"{', '.join(report.stale)} saw a newer fencing token")
        if published and decision.transitions:
            await self._record(decision, token, decided_at, report)
        required_failed = report is not None and not report.success(self.pusher.targets)
        if report is None or not (decision.changed or required_failed):
            return ""
        return f"; {report.describe()}"

    async def _record(self, decision: Decision, token: int, decided_at: float,
                      report: PushReport | None) -> None:
        done = time.time()
        ok = report is not None and report.success(self.pusher.targets)
        for t in decision.transitions:
            delay = None if t.detected_at is None else max(0.0, decided_at - t.detected_at) * 1000
            event = FailoverEvent(decided_at, t.kind, ",".join(t.from_zones),
                                  ",".join(t.to_zones), t.reason, delay,
                                  (done - decided_at) * 1000, ok, token, self.node_id)
            try:
                await asyncio.to_thread(self.events.record, event)
            except Exception as exc:  # sqlite3 errors must not stop failover
                log.error("%s: cannot record failover event: %s", self.node_id, exc)

    def _serve_dns(self, routing: Routing | None) -> None:
        if self.dns is None:
            return
        if routing is None:  # nothing published yet: every zone (fail open)
            self.dns.set_addresses(list(self.gateway_hosts.values()))
            return
        order = list(self.gateway_hosts)
        serving = sorted(routing.serving(), key=lambda z: (-routing.weights[z], order.index(z)))
        self.dns.set_addresses([self.gateway_hosts[z] for z in serving if z in self.gateway_hosts])

    def _say(self, sentence: str) -> str:
        if sentence != self.state.sentence:
            self.state.history.append((time.time(), sentence))
        self.state.sentence = sentence
        return sentence

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.coordinator.start()
        if self.dns is not None:
            await self.dns.start()
        if self.api_address is not None:
            from crosszone.control.api import start_api

            self._runner = await start_api(self, *self.api_address)

    async def close(self) -> None:
        from crosszone.control.api import stop_api

        await stop_api(self._runner)
        self._runner = None
        if self.dns is not None:
            await self.dns.close()
        await self.pusher.close()
        if self.stores is not None:
            await self.stores.close()
        await self.coordinator.close()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.events.close)

    def abort(self) -> None:
        """Stop at once without resigning, as a killed process would (drills and tests)."""
        self.elector.abandon()
        self._stop.set()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set or the task is cancelled; resign the lease on the way out."""
        stop = self._stop = stop or self._stop
        await self.start()
        elector = asyncio.create_task(self.elector.run(stop), name=f"elector-{self.zone}")
        checker = asyncio.create_task(self.checker.run(), name=f"health-{self.zone}")
        stores = asyncio.create_task(self.run_stores(stop), name=f"stores-{self.zone}")
        last = ""
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    sentence = await self.run_cycle()
                except CrosszoneError as exc:
                    sentence = self._say(f"cycle failed: {exc}")
                if sentence != last:
                    log.info("%s: %s", self.node_id, sentence)
                last = sentence
                with contextlib.suppress(TimeoutError):
                    wait = max(0.0, self.settings.loop_seconds - (time.monotonic() - started))
                    await asyncio.wait_for(stop.wait(), wait)
        finally:
            stop.set()
            checker.cancel()
            stores.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await checker
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await stores
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(elector, 2.0)
            await self.close()

    async def run_stores(self, stop: asyncio.Event) -> None:
        """The store-membership cycle, every ``control.stores.renew_seconds``, while acting."""
        if self.stores is None:
            return
        last = ""
        every = self.settings.stores.renew_seconds
        while not stop.is_set():
            started = time.monotonic()
            token = self.elector.acting_token()
            if token is None:
                self.stores.abandon()
            else:
                sentence = await self.stores.run_cycle(token, self.coordinator)
                if self.stores.stale:
                    self.elector.demote("a zone store saw a newer fencing token")
                    self.stores.abandon()
                if sentence != last:
                    log.info("%s: %s", self.node_id, sentence)
                last = sentence
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, every - (time.monotonic() - started)))

    def __repr__(self) -> str:
        return f"<Controller {self.zone} {self.elector!r}: {self.state.sentence[:80]!r}>"


def create_controller(topology: Topology, zone: str, *, run_dir: Path,
                      settings: ControlSettings | None = None,
                      backend: str | None = None, coordinator: Coordinator | None = None,
                      targets: list[Target] | None = None, events_path: Path | None = None,
                      with_api: bool = True, with_dns: bool = True,
                      with_stores: bool = True) -> Controller:
    """The controller of ``zone``, wired from the topology (``await controller.run()``).

    ``settings`` replaces the topology's ``control`` section and ``backend`` its backend
    (``raft`` or ``etcd``); ``coordinator`` and ``targets`` replace the defaults (tests, or
    receivers at other addresses). Raft state goes to ``run_dir/control/<zone>/raft``; events
    to ``run_dir/control/failover_events.sqlite``, shared by the controllers of one machine.
    """
    settings = settings or control_settings(topology)
    problems = check_control(settings)
    if problems:
        raise ConfigError("control settings", problems)
    nodes = controller_nodes(topology, settings)
    if zone not in nodes:
        raise RuntimeStateError(f"no zone {zone!r} in the topology ({', '.join(nodes)})")
    me = nodes[zone]
    if coordinator is None:
        kind = backend or settings.backend
        if kind == "raft":
            coordinator = RaftCoordinator(me.name, me.raft_address,
                                          [n.raft_address for n in nodes.values()],
                                          settings.lease,
                                          data_dir=run_dir / "control" / zone / "raft")
        elif kind == "etcd":
            urls = [me.etcd_member.client_url] + [n.etcd_member.client_url
                                                  for n in nodes.values() if n is not me]
            coordinator = EtcdCoordinator(me.name, urls, settings.lease)
        else:
            raise RuntimeStateError(f"unknown coordination backend {kind!r} (raft or etcd)")
    placement = Placement(topology)
    probed = [n for z in topology.zone_names()
              for n in [placement.gateway(z), *placement.max_workers(z)]]
    checker = HealthChecker(probed, topology.load_balancer.health_check, settings.gray_failure,
                            min_healthy_fraction=settings.min_healthy_fraction)
    for z in topology.zone_names():  # the supervisors start with desired_capacity workers
        checker.set_group(z, topology.worker_group_of(z).desired_capacity)
    pusher = RoutingPusher(targets if targets is not None else default_targets(topology),
                           timeout=settings.push_timeout_seconds,
                           repush_seconds=settings.repush_seconds,
                           admin_token=topology.auth.admin_token)
    dns = (DnsServer(settings.dns.name, me.host, settings.dns.port, ttl=settings.dns.ttl_seconds)
           if with_dns else None)
    events = EventLog(events_path or run_dir / "control" / "failover_events.sqlite")
    stores = (StoreMembership(topology, settings.stores, zone=zone, source_host=me.host)
              if settings.stores.enabled and with_stores else None)
    return Controller(zone=zone, topology=topology, settings=settings, coordinator=coordinator,
                      checker=checker, manager=FailoverManager.from_topology(
                          topology, settings.failover),
                      pusher=pusher, dns=dns, events=events,
                      api_address=(me.host, settings.api_port) if with_api else None,
                      stores=stores)
