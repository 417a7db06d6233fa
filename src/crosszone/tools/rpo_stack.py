"""The stack the RPO drill starts when it is not given one: fast health checks and restarts
(a kill shows within a second, a heal within a few), zones on 127.0.<first>..<first+2>.0/24
and the LB on 127.0.0.<first>:<18000 + first> (default first: 176). It refuses to start
when any of those addresses already answers: another stack is using them."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from crosszone.config import Placement, load_topology, parse_topology
from crosszone.config.topology import Topology

FIRST_OCTET = 176
_CHECK = {"intervalSeconds": 0.2, "timeoutSeconds": 0.15, "healthyThresholdCount": 1,
          "unhealthyThresholdCount": 2}


def default_document(conversations: str, first: int = FIRST_OCTET) -> dict[str, Any]:
    zones = ("us-west-2a", "us-west-2b", "us-west-2c")
    return {
        "region": "rpo",
        "zones": [{"name": z, "subnet": f"127.0.{first + i}.0/24"}
                  for i, z in enumerate(zones)],
        "worker_group": {"min_size": 1, "max_size": 4, "desired_capacity": 2},
        "gateway": {"timeouts": {"connect_seconds": 0.5, "first_byte_seconds": 10,
                                 "idle_seconds": 5, "total_seconds": 60},
                    "healthCheck": _CHECK},
        "load_balancer": {
            "address": f"127.0.0.{first}",
            "listeners": [{"protocol": "HTTP", "port": 18000 + first, "targetPort": 8080}],
            "healthCheck": _CHECK},
        "failover": {"mode": "active-active"},
        "inference": {"backend": "simulator",
                      "simulator": {"decode_ms_per_token": 1.0, "prefill_ms_per_token": 0.0,
                                    "min_output_tokens": 4, "max_output_tokens": 16}},
        "conversations": {"consistency": conversations},
        "supervision": {"restart": "always", "backoff_initial_seconds": 0.1,
                        "backoff_max_seconds": 1.0},
    }


def drill_topology(config: Path | None, conversations: str | None,
                   first: int = FIRST_OCTET) -> Topology:
    """``config`` (with ``conversations`` overriding its class), else the default above."""
    if config is None:
        return parse_topology(default_document(conversations or "sync", first), "rpo drill")
    topology = load_topology(config)
    if conversations is None:
        return topology
    section = topology.conversations.model_copy(update={"consistency": conversations})
    return topology.model_copy(update={"conversations": section})


def addresses_in_use(topology: Topology) -> list[str]:
    """The node addresses of ``topology`` where something already accepts connections."""
    busy = []
    for node in Placement(topology).all_nodes():
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((node.host, node.port)) == 0:
                busy.append(f"{node.host}:{node.port}")
    return busy
