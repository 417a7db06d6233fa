"""Topology: the one YAML file that describes a crosszone deployment."""

from crosszone.config.load import load_topology, localize, parse_topology, topology_schema
from crosszone.config.placement import Node, Placement
from crosszone.config.topology import Topology

__all__ = [
    "Node",
    "Placement",
    "Topology",
    "load_topology",
    "localize",
    "parse_topology",
    "topology_schema",
]
