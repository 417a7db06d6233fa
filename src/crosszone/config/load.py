"""Load, validate and localize topology files."""

from __future__ import annotations

import copy
import ipaddress
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from crosszone.config.rules import check_topology
from crosszone.config.topology import Topology
from crosszone.errors import ConfigError, ConfigProblem

DEFAULT_SOURCE = "<built-in local default>"
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def parse_topology(data: Any, source: str = "<topology>") -> Topology:
    """Validate a parsed document; raise ConfigError listing every problem.

    Structural problems (types, unknown keys) do not hide the seed's rules: the offending values
    are pruned from a copy and the rules run on what remains, so one pass reports both kinds.
    """
    if not isinstance(data, dict):
        raise ConfigError(source, [ConfigProblem("<root>", type(data).__name__,
                                                 "the topology must be a mapping")])
    problems: list[ConfigProblem] = []
    pruned: list[str] = []
    doc: Any = data
    for _ in range(4):
        try:
            topology = Topology.model_validate(doc)
            break
        except ValidationError as exc:
            errors = exc.errors()
            problems += [ConfigProblem(_loc_to_path(tuple(e["loc"])), e.get("input"), e["msg"])
                         for e in errors]
            doc = copy.deepcopy(doc)
            if not all(_prune(doc, tuple(e["loc"])) for e in errors):
                raise ConfigError(source, _unique(problems)) from None
            pruned += [_loc_to_path(tuple(e["loc"])) for e in errors]
    else:
        raise ConfigError(source, _unique(problems))
    problems += [p for p in check_topology(topology)
                 if not any(p.path.startswith(q) for q in pruned)]
    if problems:
        raise ConfigError(source, _unique(problems))
    return topology


def _prune(doc: Any, loc: tuple[int | str, ...]) -> bool:
    """Remove the value at ``loc`` so its default applies; False if that is not possible."""
    node = doc
    for part in loc[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return True  # already gone with an enclosing value
    last = loc[-1] if loc else None
    if isinstance(node, dict) and last in node:
        del node[last]
        return True
    return False


def _unique(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in problems:
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            out.append(p)
    return out


def read_document(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [ConfigProblem("<file>", str(path),
                                                    f"cannot read: {exc.strerror}")]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<file>"
        raise ConfigError(str(path), [ConfigProblem(where, None, f"invalid YAML: {exc}")]) from None


def default_document() -> Any:
    text = resources.files("crosszone.config").joinpath("default.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def default_document_at(first: int) -> dict[str, Any]:
    """The built-in topology moved to zones 127.0.<first..>.0/24 and an LB on 127.0.0.<first>
    (HTTPS port 18440 + first, HTTP 18000 + first): a second stack beside the default one
    (drills, benchmarks)."""
    doc: dict[str, Any] = default_document()
    doc["zones"] = [{"name": z["name"], "subnet": f"127.0.{first + i}.0/24"}
                    for i, z in enumerate(doc["zones"])]
    doc["load_balancer"]["address"] = f"127.0.0.{first}"
    doc["load_balancer"]["listeners"] = [
        {"protocol": "HTTPS", "port": 18440 + first, "targetPort": 8080},
        {"protocol": "HTTP", "port": 18000 + first, "targetPort": 8080}]
    return doc


def load_topology(path: str | Path | None = None) -> Topology:
    """Load a topology file, or the built-in local default when ``path`` is None."""
    if path is None:
        return parse_topology(default_document(), DEFAULT_SOURCE)
    p = Path(path)
    return parse_topology(read_document(p), str(p))


def is_local(t: Topology) -> bool:
    return all(ipaddress.IPv4Network(z.subnet, strict=False).subnet_of(LOOPBACK) for z in t.zones)


def localize(t: Topology) -> tuple[Topology, list[str]]:
    """Map a topology whose subnets are not on loopback onto 127.0.N.0/24 for a one-machine run.

    crosszone never sends traffic to the addresses of a production topology (10.0.N.0/24 in the
    seed) from the local runtime: each zone keeps its place in the list and moves to the loopback
    /24 with the same third octet position, and the load balancer binds 127.0.0.1.
    """
    if is_local(t) and ipaddress.IPv4Address(t.load_balancer.address) in LOOPBACK:
        return t, []
    notes: list[str] = []
    zones = []
    for i, zone in enumerate(t.zones):
        if ipaddress.IPv4Network(zone.subnet, strict=False).subnet_of(LOOPBACK):
            zones.append(zone)
            continue
        local = f"127.0.{i + 1}.0/24"
        notes.append(f"zone {zone.name}: subnet {zone.subnet} runs locally on {local}")
        zones.append(zone.model_copy(update={"subnet": local}))
    lb = t.load_balancer
    if ipaddress.IPv4Address(lb.address) not in LOOPBACK:
        notes.append(f"load balancer {lb.address} runs locally on 127.0.0.1")
        lb = lb.model_copy(update={"address": "127.0.0.1"})
    vpc = t.vpc.model_copy(update={"cidr": "127.0.0.0/8"})
    return t.model_copy(update={"zones": zones, "load_balancer": lb, "vpc": vpc}), notes


def topology_schema() -> dict[str, Any]:
    """JSON Schema of the topology file, for editors."""
    schema = Topology.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "crosszone topology"
    return schema
