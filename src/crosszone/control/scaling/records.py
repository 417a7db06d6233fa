"""The groups' records in the coordination store, and what ``GET /control/scaling`` answers.

The acting leader publishes its decisions under :data:`GROUPS_KEY` (a write fenced by its term);
``crosszone scale`` stores operator settings under :data:`SCALING_PREFIX` ``<zone>``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from crosszone.control.scaling.model import GroupBounds, GroupState, OperatorSetting

SCALING_PREFIX = "scaling/"  # operator settings: scaling/<zone> -> {"desired", "set_at"}
GROUPS_KEY = "groups"  # the leader's decisions: {"term", "decided_at", "zones": {...}}


def groups_to_json(groups: Mapping[str, GroupState], term: int, now: float) -> str:
    return json.dumps({"term": term, "decided_at": now,
                       "zones": {z: g.to_dict() for z, g in groups.items()}}, sort_keys=True)


def parse_groups(text: str | None) -> tuple[int, dict[str, GroupState]]:
    """The published record: (term, groups); (0, {}) when nothing was published."""
    if not text:
        return 0, {}
    doc: dict[str, Any] = json.loads(text)
    zones: dict[str, GroupState] = {}
    for zone, g in dict(doc.get("zones") or {}).items():
        zones[str(zone)] = GroupState(int(g["desired"]), str(g.get("reason", "")),
                                      float(g.get("changed_at", 0.0)))
    return int(doc.get("term", 0)), zones


def parse_operator(items: Mapping[str, str]) -> dict[str, OperatorSetting]:
    """Operator settings from the ``scaling/<zone>`` keys (unreadable ones are skipped)."""
    out: dict[str, OperatorSetting] = {}
    for key, value in items.items():
        if not key.startswith(SCALING_PREFIX):
            continue
        try:
            doc = json.loads(value)
            out[key[len(SCALING_PREFIX):]] = OperatorSetting(int(doc["desired"]),
                                                             float(doc["set_at"]))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def effective_groups(bounds: Mapping[str, GroupBounds], groups: Mapping[str, GroupState],
                     operator: Mapping[str, OperatorSetting], term: int) -> dict[str, Any]:
    """What ``GET /control/scaling`` answers: the desired capacity every zone should run now.

    An operator setting newer than the leader's last decision wins until the leader has seen it.
    ``version`` ([term, updated_at]) orders answers from different controllers.
    """
    out: dict[str, Any] = {}
    for zone, b in bounds.items():
        g = groups.get(zone) or GroupState(b.desired_capacity, "desired_capacity of the topology")
        op = operator.get(zone)
        desired, reason, updated = g.desired, g.reason, g.changed_at
        if op is not None and op.set_at > g.changed_at:
            desired, reason, updated = b.clamp(op.desired), "operator setting", op.set_at
        out[zone] = {"desired": b.clamp(desired), "min_size": b.min_size,
                     "max_size": b.max_size,
                     "baseline": b.clamp(op.desired) if op else b.desired_capacity,
                     "reason": reason, "updated_at": updated, "term": term,
                     "version": [term, updated],
                     "operator": None if op is None else {"desired": op.desired,
                                                          "set_at": op.set_at}}
    return out
