"""The Python API of chaos experiments, by zone name (what the CLI and the drills call).

    chaos = Chaos(run_dir)                      # the topology of the stack running there
    exp = chaos.network_loss("us-west-2a", percent=100, timeout=300)
    ...
    chaos.destroy(exp.uid)                      # or let the timeout do it
    assert chaos.leftovers() == []
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crosszone.chaos.base import FaultInjector
from crosszone.chaos.cpu import GROUP_PARENT, CpuFullload, cpu_cgroup_root
from crosszone.chaos.experiments import Experiment, ExperimentRunner, new_uid
from crosszone.chaos.network import NetworkDelay, NetworkLoss, NetworkPartition
from crosszone.chaos.nft import NftTable
from crosszone.chaos.process import ProcessFault, ZoneDown, supervisor_control
from crosszone.config import Topology, load_topology, localize
from crosszone.errors import ChaosError, InvalidExperiment


class Chaos:
    def __init__(self, run_dir: str | Path, topology: Topology | None = None,
                 config: str | Path | None = None) -> None:
        self.run_dir = Path(run_dir).absolute()
        self.runner = ExperimentRunner(self.run_dir)
        self._topology = topology
        self._config = config

    @property
    def topology(self) -> Topology:
        """Given, else the running stack's (``topology.json``), else ``config`` or the default."""
        if self._topology is None:
            running = self.run_dir / "topology.json"
            if self._config is None and running.exists():
                self._topology = load_topology(running)
            else:
                self._topology = localize(load_topology(self._config))[0]
        return self._topology

    def zone_subnets(self, *zones: str) -> list[str]:
        names = self.topology.zone_names()
        unknown = [z for z in zones if z not in names]
        if unknown:
            raise InvalidExperiment(f"no such zone: {', '.join(map(repr, unknown))} "
                                    f"(this topology has {', '.join(names)})")
        return [self.topology.zone(z).subnet for z in zones]

    # --- creating ------------------------------------------------------------------------------

    def create(self, injector: FaultInjector, timeout: float | None = None) -> Experiment:
        return self.runner.create(injector, timeout)

    def network_loss(self, zone: str, percent: int = 100, peer_zone: str | None = None,
                     timeout: float | None = None) -> Experiment:
        spec = {"zone": zone, "subnets": self.zone_subnets(zone), "percent": percent,
                "peer": peer_zone,
                "peer_subnets": self.zone_subnets(peer_zone) if peer_zone else []}
        return self.create(NetworkLoss(new_uid(), spec), timeout)

    def network_partition(self, zones: Sequence[str], other_zones: Sequence[str] | None = None,
                          include_clients: bool = True,
                          timeout: float | None = None) -> Experiment:
        """Cut ``zones`` off from ``other_zones`` (default: every other zone) and clients."""
        if not zones:
            raise InvalidExperiment("a partition needs at least one zone")
        others = list(other_zones) if other_zones is not None else [
            z for z in self.topology.zone_names() if z not in zones]
        if set(zones) & set(others):
            raise InvalidExperiment("a zone cannot be on both sides of a partition")
        spec = {"zones": list(zones), "subnets": self.zone_subnets(*zones),
                "other_zones": others, "other_subnets": self.zone_subnets(*others),
                "zone_subnets": self.zone_subnets(*self.topology.zone_names()),
                "include_clients": include_clients}
        return self.create(NetworkPartition(new_uid(), spec), timeout)

    def network_delay(self, zone: str, time_ms: float, offset_ms: float = 0.0,
                      peer_zone: str | None = None,
                      timeout: float | None = None) -> Experiment:
        spec = {"zone": zone, "subnets": self.zone_subnets(zone), "time_ms": time_ms,
                "offset_ms": offset_ms, "peer": peer_zone,
                "peer_subnets": self.zone_subnets(peer_zone) if peer_zone else []}
        return self.create(NetworkDelay(new_uid(), spec), timeout)

    def cpu_fullload(self, zone: str, workers: int = 1, cpu_percent: int = 100,
                     timeout: float | None = None,
                     pids: Sequence[int] | None = None) -> Experiment:
        """Burn ``workers`` x ``cpu_percent`` % in ``zone``; ``pids``: default the zone's."""
        self.zone_subnets(zone)
        if pids is None:
            pids = self.zone_pids(zone)
        spec = {"zone": zone, "workers": workers, "percent": cpu_percent, "pids": list(pids)}
        return self.create(CpuFullload(new_uid(), spec), timeout)

    def zone_pids(self, zone: str) -> list[int]:
        control = supervisor_control(self.run_dir)
        if not control.is_running():
            raise ChaosError(f"no stack runs in {self.run_dir}, so zone {zone} has no "
                             f"processes to load (start one with `crosszone up`)")
        return [int(r["pid"]) for r in control.snapshot().get("processes", [])
                if isinstance(r, dict) and r.get("zone") == zone and isinstance(r.get("pid"), int)]

    def process_fault(self, zone: str | None, component: str, signal: str = "KILL",
                      count: int | None = None, hold: bool = True,
                      timeout: float | None = None) -> Experiment:
        if zone is not None:
            self.zone_subnets(zone)
        spec: dict[str, Any] = {"run_dir": str(self.run_dir), "zone": zone,
                                "component": component, "signal": signal, "count": count,
                                "hold": hold}
        return self.create(ProcessFault(new_uid(), spec), timeout)

    def zone_down(self, zone: str, timeout: float | None = None,
                  signal: str = "KILL") -> Experiment:
        self.zone_subnets(zone)
        spec = {"run_dir": str(self.run_dir), "zone": zone, "signal": signal}
        return self.create(ZoneDown(new_uid(), spec), timeout)

    # --- inspecting and destroying -------------------------------------------------------------

    def status(self, uid: str | None = None) -> list[Experiment]:
        return self.runner.status(uid)

    def is_active(self, uid: str) -> bool:
        return self.runner.is_active(uid)

    def destroy(self, uid: str) -> Experiment:
        return self.runner.destroy(uid)

    def destroy_all(self) -> list[Experiment]:
        return self.runner.destroy_all()

    def leftovers(self) -> list[str]:
        """Everything chaos left on this host that no live experiment of this run dir owns."""
        live = {e.uid for e in self.status() if e.status in ("creating", "active")}
        found: list[str] = []
        for experiment in self.status():
            if experiment.uid not in live and experiment.injector().is_active():
                found.append(f"experiment {experiment.uid} ({experiment.kind}) is "
                             f"{experiment.status} but still in place")
        with contextlib.suppress(ChaosError):
            found += [f"nft chains of experiment {uid} in table inet {NftTable().name}"
                      for uid in sorted(NftTable().experiment_uids() - live)]
        with contextlib.suppress(ChaosError, OSError):
            parent = cpu_cgroup_root() / GROUP_PARENT
            found += [f"cgroup {d}" for d in sorted(parent.iterdir())
                      if d.is_dir() and d.name not in live]
        return found
