"""Auto-scaling groups (SUMMARY.md 2.2): how many workers each zone runs, decided once per tick.

Pure decision logic, like the FailoverManager: ``ScalingPolicy.run_cycle(observation, now)``
returns a :class:`ScalingDecision` whose ``sentence`` says what it decided and why. The controller
observes (worker load from its health probes, zone health and shifts, the published group state,
operator settings), calls it, and only the acting leader publishes the result, with a write
fenced by its term; the supervisors start and stop workers to match.

Rules, per zone, always within ``min_size..max_size``:

* **Baseline**: the operator's ``crosszone scale`` value, else the topology's desired_capacity.
  An operator setting newer than the group's last change applies at once.
* **Load**: enough workers for the zone's planned share of the region's in-flight requests
  (running plus queued, as the workers report on ``/health``) at ``target_in_flight_per_worker``.
  Static stability: by default the planned share is the largest share the zone would carry if
  any one other serving zone were lost (N-1 planning; with three equal zones, 50 % over its
  current share); with ``headroom_percent`` it is the current share plus that much.
* **Zone loss**: a zone that is unhealthy or shifted away is out of service: its traffic share
  moves to the others and its own group is left as it is, ready for its return. Once a zone that
  had been serving stays out for ``zone_loss_seconds`` it is lost: its baseline is spread over
  the survivors (by traffic weight), which scale up at once. (A zone that never served since
  this controller started, e.g. during start-up, is coming up, not lost.) Guardrail: at most one
  zone's capacity moves at a time (the first lost), as static stability plans for one zone loss;
  several zones down at once more likely means the observer is in trouble.
* **Cooldowns**: a scale-out for load waits ``scale_out_cooldown_seconds`` after the group's last
  change; a scale-in needs the lower target for ``scale_in_cooldown_seconds`` (and as long since
  the last change), and goes to the highest target seen meanwhile. Baseline and zone-loss
  increases do not wait.
"""

from crosszone.control.scaling.model import (
    GroupBounds,
    GroupState,
    Mode,
    OperatorSetting,
    ScalingDecision,
    ScalingObservation,
    ZoneLoad,
    ZonePlan,
    group_bounds,
)
from crosszone.control.scaling.policy import ScalingPolicy
from crosszone.control.scaling.records import (
    GROUPS_KEY,
    SCALING_PREFIX,
    effective_groups,
    groups_to_json,
    parse_groups,
    parse_operator,
)

__all__ = [
    "GROUPS_KEY",
    "SCALING_PREFIX",
    "GroupBounds",
    "GroupState",
    "Mode",
    "OperatorSetting",
    "ScalingDecision",
    "ScalingObservation",
    "ScalingPolicy",
    "ZoneLoad",
    "ZonePlan",
    "effective_groups",
    "group_bounds",
    "groups_to_json",
    "parse_groups",
    "parse_operator",
]
