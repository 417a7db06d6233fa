"""Chaos experiments: faults injected into a running crosszone stack, and removed exactly.

Public API (imported lazily, so the helper processes that live in this package start fast)::

    from crosszone.chaos import Chaos
    chaos = Chaos(run_dir)
    exp = chaos.network_loss("us-west-2a", percent=100, timeout=300)
    chaos.destroy(exp.uid)

Modules: ``base`` (the FaultInjector contract), ``nft``/``nfnetlink`` (the project's own
nftables table), ``network``, ``cpu``, ``process`` (the injectors), ``experiments`` (UIDs,
persistence, timeouts), ``api`` (by zone name), ``cli`` (``crosszone chaos``), and the helper
processes ``delayer``, ``burner`` and ``watchdog``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crosszone.chaos.api import Chaos
    from crosszone.chaos.base import FaultInjector, injector_from_record
    from crosszone.chaos.cpu import CpuFullload
    from crosszone.chaos.experiments import Experiment, ExperimentRunner
    from crosszone.chaos.network import NetworkDelay, NetworkLoss, NetworkPartition
    from crosszone.chaos.process import ProcessFault, ZoneDown

_EXPORTS = {
    "Chaos": "api",
    "CpuFullload": "cpu",
    "Experiment": "experiments",
    "ExperimentRunner": "experiments",
    "FaultInjector": "base",
    "NetworkDelay": "network",
    "NetworkLoss": "network",
    "NetworkPartition": "network",
    "ProcessFault": "process",
    "ZoneDown": "process",
    "injector_from_record": "base",
}

__all__ = [
    "Chaos",
    "CpuFullload",
    "Experiment",
    "ExperimentRunner",
    "FaultInjector",
    "NetworkDelay",
    "NetworkLoss",
    "NetworkPartition",
    "ProcessFault",
    "ZoneDown",
    "injector_from_record",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'crosszone.chaos' has no attribute {name!r}")
    return getattr(importlib.import_module(f"crosszone.chaos.{module}"), name)
