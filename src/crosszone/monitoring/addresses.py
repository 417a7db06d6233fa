"""Where each zone's monitor lives: host ``.7`` of the zone subnet, port 9100 by default
(``monitoring.host`` / ``monitoring.port``)."""

from __future__ import annotations

import ipaddress

from crosszone.config.placement import Node
from crosszone.config.topology import Topology
from crosszone.monitoring.settings import MonitoringSettings, monitoring_settings


def monitor_node(topology: Topology, zone: str,
                 settings: MonitoringSettings | None = None) -> Node:
    """The monitor of ``zone``: host ``.7`` of the zone subnet, port 9100 by default."""
    s = settings or monitoring_settings(topology)
    net = ipaddress.IPv4Network(topology.zone(zone).subnet, strict=False)
    return Node(zone, "monitor", 0, str(net.network_address + s.host), s.port)


def monitor_nodes(topology: Topology, settings: MonitoringSettings | None = None) -> list[Node]:
    """One monitor per zone, in failover order (the first reachable one sends notifications)."""
    order = topology.zone_order()
    order += [z for z in topology.zone_names() if z not in order]
    return [monitor_node(topology, z, settings) for z in order]
