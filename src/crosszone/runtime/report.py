"""The status document of a running stack (``crosszone status --json`` and LocalStack.status)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crosszone.config import Node, Placement, Topology
from crosszone.runtime.health import Probe


def ca_cert_path(topology: Topology, run_dir: Path) -> Path | None:
    """The certificate clients must trust for the HTTPS listener (None without one)."""
    lb = topology.load_balancer
    if not any(lst.protocol == "HTTPS" for lst in lb.listeners):
        return None
    if lb.tls.cert_file is not None:
        return Path(lb.tls.cert_file)
    try:
        from crosszone.dataplane.lb.tls import certificate_path
    except ImportError:  # the LB is not installed: say where its certificate would be
        return run_dir / "tls" / "cert.pem"
    return Path(certificate_path(run_dir))


def node_of(record: dict[str, Any]) -> Node:
    return Node(record.get("zone"), str(record["component"]), int(record.get("index", 0)),
                str(record["host"]), int(record["port"]))


def zone_summary(topology: Topology, processes: list[dict[str, Any]]) -> dict[str, Any]:
    """A zone is healthy when its gateway and at least one of its workers are."""
    zones: dict[str, Any] = {}
    for zone in topology.zone_names():
        mine = [p for p in processes if p.get("zone") == zone]
        gateway = any(p["healthy"] for p in mine if p["component"] == "gateway")
        workers = [p for p in mine if p["component"] == "worker"]
        healthy_workers = sum(bool(p["healthy"]) for p in workers)
        zones[zone] = {"healthy": gateway and healthy_workers > 0, "gateway": gateway,
                       "workers_healthy": healthy_workers, "workers": len(workers)}
    return zones


def build_status(run_dir: Path, topology: Topology, snapshot: dict[str, Any],
                 probes: dict[str, Probe]) -> dict[str, Any]:
    processes = []
    for record in snapshot.get("processes", []):
        probe = probes.get(record["name"])
        healthy = probe is not None and probe.healthy
        processes.append({**record, "address": f"{record['host']}:{record['port']}",
                          "healthy": healthy,
                          "health": probe.describe() if probe is not None else "unknown"})
    zones = zone_summary(topology, processes)
    lb_healthy = any(p["healthy"] for p in processes if p["component"] == "lb")
    ca = ca_cert_path(topology, run_dir)
    return {
        "run_dir": str(run_dir),
        "running": True,
        "region": topology.region,
        "supervisor": snapshot.get("supervisor", {}),
        "urls": Placement(topology).lb_urls(),
        "api_key": topology.auth.api_keys[0] if topology.auth.api_keys else None,
        "ca_cert": str(ca) if ca is not None else None,
        "failover": {"mode": topology.failover.mode, "zones": topology.zone_order()},
        "processes": processes,
        "zones": zones,
        "groups": snapshot.get("groups", {}),  # the auto-scaling groups as the supervisor runs them
        "lb": {"healthy": lb_healthy},
        "healthy": lb_healthy and all(z["healthy"] for z in zones.values()),
    }
