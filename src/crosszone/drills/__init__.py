"""DR drills: scenarios of faults under load, judged against SLOs (RTO, RPO, split brain...).

Public API (imported lazily: the CLI lists scenarios without loading the stack)::

    from crosszone.drills import load_scenario, run_drill
    result = run_drill(load_scenario("drills/zone-killed.yaml", short=True), ".crosszone")

Modules: ``scenario`` (the YAML model), ``faults`` (inject and heal on schedule), ``observe``
(controllers, LB, supervisor), ``checker`` (the Jepsen-style history checker), ``rto``,
``splitbrain``, ``leftovers``, ``judge`` (one verdict per SLO), ``report`` and ``timeline``
(report.md, report.json, timeline.png), ``runner`` (the drill) and ``cli`` (``crosszone drill``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crosszone.drills.checker import CheckResult, Violation, check_history
    from crosszone.drills.runner import DrillResult, run_drill
    from crosszone.drills.scenario import Scenario, load_scenario, parse_scenario

_EXPORTS = {
    "CheckResult": "checker",
    "DrillResult": "runner",
    "Scenario": "scenario",
    "Violation": "checker",
    "check_history": "checker",
    "load_scenario": "scenario",
    "parse_scenario": "scenario",
    "run_drill": "runner",
}

__all__ = [
    "CheckResult",
    "DrillResult",
    "Scenario",
    "Violation",
    "check_history",
    "load_scenario",
    "parse_scenario",
    "run_drill",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'crosszone.drills' has no attribute {name!r}")
    return getattr(importlib.import_module(f"crosszone.drills.{module}"), name)
