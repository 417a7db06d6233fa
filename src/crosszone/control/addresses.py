"""Where each zone's controller lives: host ``.5`` of the zone subnet (``control.host``).

The controller's address carries its HTTP control API, its embedded Raft member (or the zone's
etcd member, on the same host) and its DNS server, so losing a zone loses exactly one of each.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from crosszone.config.topology import Topology
from crosszone.control.coordination.etcd_local import EtcdMember
from crosszone.control.settings import ControlSettings, control_settings


@dataclass(frozen=True)
class ControllerNode:
    zone: str
    host: str
    settings: ControlSettings

    @property
    def name(self) -> str:
        return f"{self.zone}/controller"

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.settings.api_port}"

    @property
    def raft_address(self) -> str:
        return f"{self.host}:{self.settings.raft_port}"

    @property
    def dns(self) -> tuple[str, int]:
        return self.host, self.settings.dns.port

    @property
    def etcd_member(self) -> EtcdMember:
        return EtcdMember(self.zone, self.host, self.settings.etcd_client_port,
                          self.settings.etcd_peer_port)


def controller_nodes(topology: Topology, settings: ControlSettings | None = None
                     ) -> dict[str, ControllerNode]:
    """One controller per zone, in the topology's zone order."""
    settings = settings or control_settings(topology)
    out: dict[str, ControllerNode] = {}
    for zone in topology.zones:
        net = ipaddress.IPv4Network(zone.subnet, strict=False)
        out[zone.name] = ControllerNode(zone.name, str(net.network_address + settings.host),
                                        settings)
    return out
