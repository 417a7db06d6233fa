"""The seed's principles (SUMMARY.md 1.1) and timing relations, checked across fields.

Every rule appends to one list so the user sees all problems at once.
"""

from __future__ import annotations

import ipaddress

from crosszone.config.topology import HealthCheck, Topology
from crosszone.control.settings import check_control
from crosszone.errors import ConfigProblem
from crosszone.monitoring.settings import check_monitoring


def check_topology(t: Topology) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    add = problems.append
    names = t.zone_names()

    # Redundancy: every critical component in at least two zones.
    if len(t.zones) < 2:
        add(ConfigProblem("zones", names, "at least two zones are needed for redundancy"))
    seen: dict[str, int] = {}
    for i, zone in enumerate(t.zones):
        if zone.name in seen:
            first = seen[zone.name]
            add(ConfigProblem(f"zones[{i}].name", zone.name, f"duplicates zones[{first}]"))
        seen.setdefault(zone.name, i)
        problems += _check_subnet(t, i)
        group = t.worker_group_of(zone.name)
        where = f"zones[{i}].worker_group" if zone.worker_group else "worker_group"
        problems += _check_group(where, zone.name, group.min_size, group.max_size,
                                 group.desired_capacity)

    problems += _check_health("load_balancer.healthCheck", t.load_balancer.health_check)
    problems += _check_health("gateway.healthCheck", t.gateway.health_check)

    for i, listener in enumerate(t.load_balancer.listeners):
        if listener.target_port != t.gateway.port:
            add(ConfigProblem(f"load_balancer.listeners[{i}].targetPort", listener.target_port,
                              f"must be the gateway port ({t.gateway.port})"))
    ports = [lst.port for lst in t.load_balancer.listeners]
    if len(set(ports)) != len(ports):
        add(ConfigProblem("load_balancer.listeners", ports, "two listeners share a port"))
    if not t.load_balancer.listeners:
        add(ConfigProblem("load_balancer.listeners", [], "at least one listener is needed"))
    tls = t.load_balancer.tls
    if (tls.cert_file is None) != (tls.key_file is None):
        add(ConfigProblem("load_balancer.tls", tls.model_dump(),
                          "give both cert_file and key_file, or neither"))

    try:
        ipaddress.IPv4Address(t.load_balancer.address)
    except ValueError:
        add(ConfigProblem("load_balancer.address", t.load_balancer.address,
                          "must be an IPv4 address"))
    problems += _check_failover(t, names)
    problems += check_control(t.control)
    problems += check_monitoring(t.monitoring, controller_host=t.control.host)
    if t.storage.backend == "postgres":
        for i, name in enumerate(names):
            if name not in t.storage.dsn:
                add(ConfigProblem(f"storage.dsn.{name}", None,
                                  f"backend postgres needs a DSN for zones[{i}] ({name})"))

    if t.inference.backend == "openai" and t.inference.upstream is None:
        add(ConfigProblem("inference.upstream", None, "backend 'openai' needs an upstream section"))
    sim = t.inference.simulator
    if sim.min_output_tokens > sim.max_output_tokens:
        add(ConfigProblem("inference.simulator.min_output_tokens", sim.min_output_tokens,
                          f"exceeds max_output_tokens ({sim.max_output_tokens})"))
    timeouts = t.gateway.timeouts
    if timeouts.connect_seconds > timeouts.total_seconds:
        add(ConfigProblem("gateway.timeouts.connect_seconds", timeouts.connect_seconds,
                          "exceeds total_seconds"))
    hedge_ms = t.gateway.migration.hedge_first_token_ms
    if hedge_ms is not None and hedge_ms >= timeouts.first_byte_seconds * 1000:
        add(ConfigProblem("gateway.migration.hedge_first_token_ms", hedge_ms,
                          "must be shorter than gateway.timeouts.first_byte_seconds "
                          f"({timeouts.first_byte_seconds:g} s), or no hedge is ever sent"))
    for i, route in enumerate(t.gateway.migration.hedge_routes):
        if not route.startswith("/v1/"):
            add(ConfigProblem(f"gateway.migration.hedge_routes[{i}]", route,
                              "must be an API path such as /v1/chat/completions"))
    return problems


def _check_subnet(t: Topology, i: int) -> list[ConfigProblem]:
    zone = t.zones[i]
    path = f"zones[{i}].subnet"
    try:
        net = ipaddress.IPv4Network(zone.subnet, strict=False)
    except ValueError as exc:
        return [ConfigProblem(path, zone.subnet, f"not an IPv4 subnet ({exc})")]
    out: list[ConfigProblem] = []
    if net.prefixlen > 26:
        out.append(ConfigProblem(path, zone.subnet, "subnet too small (needs at least a /26)"))
    try:
        vpc = ipaddress.IPv4Network(t.vpc.cidr, strict=False)
    except ValueError as exc:
        vpc = None
        if i == 0:
            out.append(ConfigProblem("vpc.cidr", t.vpc.cidr, f"not an IPv4 CIDR ({exc})"))
    if vpc is not None and not net.subnet_of(vpc):
        out.append(ConfigProblem(path, zone.subnet, f"lies outside the VPC CIDR {t.vpc.cidr}"))
    for j in range(i):
        try:
            other = ipaddress.IPv4Network(t.zones[j].subnet, strict=False)
        except ValueError:
            continue
        if net.overlaps(other):
            out.append(ConfigProblem(path, zone.subnet, f"overlaps zones[{j}].subnet"))
    return out


def _check_group(where: str, zone: str, lo: int, hi: int, desired: int) -> list[ConfigProblem]:
    out: list[ConfigProblem] = []
    if desired < 1:
        out.append(ConfigProblem(f"{where}.desired_capacity", desired,
                                 f"leaves zone {zone} with no worker (every zone serves)"))
    if lo < 1:
        out.append(ConfigProblem(f"{where}.min_size", lo,
                                 f"lets zone {zone} scale to zero workers"))
    if lo > hi:
        out.append(ConfigProblem(f"{where}.min_size", lo, f"exceeds max_size ({hi})"))
    if not lo <= desired <= hi:
        out.append(ConfigProblem(f"{where}.desired_capacity", desired,
                                 f"must lie between min_size ({lo}) and max_size ({hi})"))
    if hi > 200:
        out.append(ConfigProblem(f"{where}.max_size", hi, "at most 200 workers fit in a subnet"))
    return out


def _check_health(path: str, hc: HealthCheck) -> list[ConfigProblem]:
    out: list[ConfigProblem] = []
    if hc.timeout_seconds >= hc.interval_seconds:
        out.append(ConfigProblem(f"{path}.timeoutSeconds", hc.timeout_seconds,
                                 f"must be shorter than intervalSeconds ({hc.interval_seconds})"))
    if not hc.path.startswith("/"):
        out.append(ConfigProblem(f"{path}.path", hc.path, "must start with '/'"))
    return out


def _check_failover(t: Topology, names: list[str]) -> list[ConfigProblem]:
    out: list[ConfigProblem] = []
    fo = t.failover
    if fo.zones is not None:
        for k, name in enumerate(fo.zones):
            if name not in names:
                out.append(ConfigProblem(f"failover.zones[{k}]", name, "is not a zone"))
        if sorted(fo.zones) != sorted(set(fo.zones)):
            out.append(ConfigProblem("failover.zones", fo.zones, "names a zone twice"))
        if len(set(fo.zones)) < 2:
            out.append(ConfigProblem("failover.zones", fo.zones,
                                     "needs a primary and at least one backup"))
    if fo.weights is not None:
        if fo.mode != "active-active":
            out.append(ConfigProblem("failover.weights", fo.weights,
                                     "weights apply only to mode active-active"))
        for name, w in fo.weights.items():
            if name not in names:
                out.append(ConfigProblem(f"failover.weights.{name}", w, "is not a zone"))
            elif w < 0:
                out.append(ConfigProblem(f"failover.weights.{name}", w, "must not be negative"))
        if fo.weights and sum(fo.weights.values()) <= 0:
            out.append(ConfigProblem("failover.weights", fo.weights, "sum to zero"))
    return out
