"""Where every node of a topology lives: one address per node inside its zone's subnet.

Host numbers are fixed so an operator can tell a node's role from its address alone:
``.5`` is the zone's controller (and DNS server), ``.6`` its store, ``.7`` its monitor,
``.10`` its gateway, ``.21`` upwards its workers.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from crosszone.config.topology import Topology

STORE_HOST = 6
GATEWAY_HOST = 10
FIRST_WORKER_HOST = 21


@dataclass(frozen=True)
class Node:
    """One process of the deployment."""

    zone: str | None  # None for the load balancer, which spans zones
    component: str  # "worker" | "gateway" | "store" | "controller" | "monitor" | "lb"
    index: int
    host: str
    port: int

    @property
    def name(self) -> str:
        if self.zone is None:
            return self.component
        suffix = f"-{self.index}" if self.component == "worker" else ""
        return f"{self.zone}/{self.component}{suffix}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class Placement:
    """Computes node addresses from a topology."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology

    def _host(self, zone: str, number: int) -> str:
        net = ipaddress.IPv4Network(self.topology.zone(zone).subnet, strict=False)
        return str(net.network_address + number)

    def gateway(self, zone: str) -> Node:
        return Node(zone, "gateway", 0, self._host(zone, GATEWAY_HOST), self.topology.gateway.port)

    def controller(self, zone: str) -> Node:
        c = self.topology.control
        return Node(zone, "controller", 0, self._host(zone, c.host), c.api_port)

    def controllers(self) -> list[Node]:
        return [self.controller(z) for z in self.topology.zone_names()]

    def dns_address(self, zone: str) -> tuple[str, int]:
        """The zone's authoritative DNS server: UDP and TCP on the controller's address."""
        return self._host(zone, self.topology.control.host), self.topology.control.dns.port

    def monitor(self, zone: str) -> Node:
        m = self.topology.monitoring
        return Node(zone, "monitor", 0, self._host(zone, m.host), m.port)

    def store(self, zone: str) -> Node:
        return Node(zone, "store", 0, self._host(zone, STORE_HOST), self.topology.storage.port)

    def worker(self, zone: str, index: int) -> Node:
        group = self.topology.worker_group_of(zone)
        return Node(zone, "worker", index, self._host(zone, FIRST_WORKER_HOST + index - 1),
                    group.port)

    def workers(self, zone: str, count: int | None = None) -> list[Node]:
        n = self.topology.worker_group_of(zone).desired_capacity if count is None else count
        return [self.worker(zone, i) for i in range(1, n + 1)]

    def max_workers(self, zone: str) -> list[Node]:
        return self.workers(zone, self.topology.worker_group_of(zone).max_size)

    def gateways(self) -> list[Node]:
        return [self.gateway(z) for z in self.topology.zone_names()]

    def lb(self) -> Node:
        lb = self.topology.load_balancer
        http = [lst.port for lst in lb.listeners if lst.protocol == "HTTP"]
        port = http[0] if http else lb.listeners[0].port
        return Node(None, "lb", 0, lb.address, port)

    def lb_urls(self) -> dict[str, str]:
        lb = self.topology.load_balancer
        return {lst.protocol.lower(): f"{lst.protocol.lower()}://{lb.address}:{lst.port}/v1"
                for lst in lb.listeners}

    def all_nodes(self) -> list[Node]:
        nodes: list[Node] = []
        for zone in self.topology.zone_names():
            nodes.append(self.controller(zone))
            nodes.append(self.store(zone))
            nodes.append(self.monitor(zone))
            nodes += self.workers(zone)
            nodes.append(self.gateway(zone))
        nodes.append(self.lb())
        return nodes

    def find(self, name: str) -> Node:
        for node in self.all_nodes():
            if node.name == name:
                return node
        raise KeyError(name)
