"""Which worker slots of each zone the monitor expects to answer (the auto-scaling groups).

A zone's group may run any of its ``max_size`` slots (``Placement.max_workers``); the controllers
publish how many should run (``GET /control/scaling``), and the supervisors start and stop slots
1..desired to match. The monitor reads the same answers with the supervisors' own rule
(:class:`~crosszone.runtime.groups.DesiredCapacity`: the newest answer per zone, the last one
kept while no controller answers) and looks at every slot:

* a slot inside the group (index <= desired) that answers is up; one that does not is down,
  unless it joined the group less than ``grace_seconds`` ago and has not answered yet: a
  worker being started is *starting*, left out like the controller leaves out its pending
  members, so a scale-out does not page anybody;
* a slot outside the group that still answers (being drained, or the supervisor has not caught
  up) is shown as up: it serves traffic;
* a slot outside the group that does not answer is absent, not down: nothing should run there.

Probing only the topology's ``desired_capacity`` slots instead would miss the workers a
scale-out adds and call the workers a scale-in stopped down (``ZoneDegraded``); probing every
slot and calling every silent one absent would hide a crashed worker.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from crosszone.config import Node, Placement, Topology
from crosszone.runtime.groups import DesiredCapacity

SlotState = Literal["up", "down", "starting", "absent"]


class WorkerSlots:
    """The in-service worker slots of every zone, as the monitor last learnt them."""

    def __init__(self, topology: Topology, grace_seconds: float | None = None) -> None:
        placement = Placement(topology)
        self.capacity = DesiredCapacity(topology)
        self.slots: dict[str, list[Node]] = {z: placement.max_workers(z)
                                             for z in topology.zone_names()}
        self.grace_seconds = (topology.control.scaling.health_check_grace_seconds
                              if grace_seconds is None else grace_seconds)
        # Slots that joined their group since the monitor started and have not answered yet:
        # node name -> monotonic time they joined. The initial group is taken as running.
        self.joined: dict[str, float] = {}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{z} {self.desired(z)}/{len(s)}" for z, s in self.slots.items())
        return f"<WorkerSlots {sizes}>"

    def desired(self, zone: str) -> int:
        return self.capacity.desired(zone)

    def nodes(self) -> list[Node]:
        """Every slot of every zone: what the monitor probes."""
        return [n for slots in self.slots.values() for n in slots]

    def update(self, answers: Iterable[Any], now: float | None = None) -> list[str]:
        """Adopt the controllers' ``GET /control/scaling`` answers (non-dicts are skipped);
        slots that joined a group start their grace period. What changed, as sentences."""
        now = time.monotonic() if now is None else now
        before = {z: self.desired(z) for z in self.slots}
        changes = self.capacity.apply(a for a in answers if isinstance(a, Mapping))
        for zone, slots in self.slots.items():
            for node in slots[before[zone]:self.desired(zone)]:
                self.joined.setdefault(node.name, now)
        return changes

    def classify(self, node: Node, answered: bool, now: float | None = None) -> SlotState:
        """What the monitor should make of worker slot ``node`` answering or not."""
        now = time.monotonic() if now is None else now
        zone = node.zone or ""
        in_group = node.index <= self.desired(zone)
        if answered:
            self.joined.pop(node.name, None)
            return "up"
        if not in_group:
            self.joined.pop(node.name, None)
            return "absent"
        joined = self.joined.get(node.name)
        if joined is not None and now - joined < self.grace_seconds:
            return "starting"
        self.joined.pop(node.name, None)
        return "down"

    def describe(self) -> Mapping[str, int]:
        return {z: self.desired(z) for z in self.slots}
