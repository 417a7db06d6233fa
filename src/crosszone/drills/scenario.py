"""Drill scenarios: a YAML file naming the topology, the workload, the faults and the SLOs.

    name: zone-killed
    topology: null                    # the built-in one; or a path (relative to this file) or
                                      # an inline mapping
    workload: {rate: 20, concurrency: 16, stream_ratio: 0.3, kv: {rate: 8}}
    faults:
      - {kind: zone-down, zone: us-west-2a, at: 10, duration: 60}
    slo: {failed_requests: 0, rto_seconds: 5, rpo: {strong: 0, async: 0}}
    short:                            # merged over the rest by --short (lists are replaced)
      faults:
        - {kind: zone-down, zone: us-west-2a, at: 4, duration: 8}

Times are seconds since the workload began; the baseline latency comes from the time before the
first fault. Zone names may be ``@leader`` (the controller leader's zone, when a control plane
runs; else the primary) or ``@primary`` (first in failover order), resolved when the fault
starts. Every problem is reported with its path and value (:class:`ScenarioError`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from crosszone.errors import ConfigProblem, ScenarioError

FaultKind = Literal["network-loss", "network-partition", "network-delay", "cpu-fullload",
                    "process-kill", "process-stop", "zone-down", "flap", "rolling-restart"]
COMPONENTS = ("worker", "gateway", "controller", "store", "lb")
ZONE_ALIASES = ("@leader", "@primary")
NETWORK_KINDS = ("network-loss", "network-partition", "network-delay")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KvSpec(_Model):
    """Store operations recorded for the history checker (RPO, stale reads)."""

    enabled: bool = True
    async_writers: int = Field(2, ge=0, le=32)
    strong_writers: int = Field(1, ge=0, le=32)
    registers: int = Field(2, ge=0, le=32, description="strong registers, one writer each")
    readers: int = Field(2, ge=0, le=32, description="strong readers of the registers")
    rate: float = Field(8.0, gt=0, le=1000, description="operations/s per client loop")
    timeout_seconds: float = Field(2.0, gt=0)


class WorkloadSpec(_Model):
    concurrency: int = Field(16, ge=1, le=512)
    rate: float | None = Field(20.0, gt=0, description="chat starts/s (None: closed loop)")
    stream_ratio: float = Field(0.3, ge=0, le=1)
    max_tokens: int = Field(24, ge=1)
    model: str = "deepseek-chat"
    request_timeout_seconds: float = Field(30.0, gt=0)
    conversation_ratio: float = Field(
        0.1, ge=0, le=1, description="share of requests that continue a conversation "
        "(/v1/responses), when the stack offers it")
    key_churn_seconds: float | None = Field(
        5.0, gt=0, description="create, use and revoke an API key this often (/admin/keys), "
        "when the stack offers it")
    usage: bool = Field(True, description="compare /admin/usage before and after, if offered")
    cooldown_seconds: float = Field(8.0, ge=0, description="workload after the last heal")
    kv: KvSpec = Field(default_factory=KvSpec)


class FaultSpec(_Model):
    kind: FaultKind
    at: float = Field(ge=0, description="start, seconds after the workload began")
    duration: float = Field(gt=0, description="seconds until healed (rolling-restart: limit)")
    zone: str | None = None
    zones: list[str] | None = None
    peer_zone: str | None = None
    percent: int = Field(100, ge=1, le=100)
    include_clients: bool = True
    time_ms: float | None = Field(None, gt=0)
    offset_ms: float = Field(0.0, ge=0)
    workers: int = Field(1, ge=1, le=64)
    cpu_percent: int = Field(100, ge=1, le=100)
    component: str | None = None
    count: int | None = Field(
        None, ge=1, description="processes to kill/stop; rolling-restart: at most this many of "
        "each component (default all)")
    down_seconds: float = Field(2.0, gt=0, description="flap: how long each outage lasts")
    up_seconds: float = Field(2.0, gt=0, description="flap: how long the zone is back between")
    components: list[str] | None = Field(None, description="rolling-restart: default all")
    signal: Literal["TERM", "KILL"] = Field("TERM", description="rolling-restart signal")

    @property
    def end(self) -> float:
        return self.at + self.duration

    def needs_root(self) -> bool:
        return self.kind in NETWORK_KINDS or self.kind == "cpu-fullload"


class RpoSpec(_Model):
    strong: int = Field(0, ge=0, description="acknowledged strong writes that may be lost")
    async_: int = Field(0, ge=0, alias="async",
                        description="acknowledged async writes that may be lost")


class SloSpec(_Model):
    failed_requests: int = Field(0, ge=0, description="failed client requests allowed")
    designed_refusals: dict[str, str] = Field(
        default_factory=dict, description="error text -> why the design refuses such requests "
        "during this fault (e.g. strong writes without a controller majority): they are "
        "reported apart and not counted against failed_requests; RTO and failback still "
        "count them")
    rto_seconds: float | None = Field(
        10.0, gt=0, description="fault start -> no errors and p95 latency back to baseline")
    failback_seconds: float | None = Field(
        None, gt=0, description="heal -> full service again when the system had routed around "
        "the fault (default: rto_seconds)")
    latency_factor: float = Field(3.0, ge=1, description="p95 within baseline p95 x this")
    latency_floor_ms: float = Field(
        100.0, ge=0, description="... and never stricter than baseline p95 + this")
    bin_seconds: float = Field(1.0, gt=0, description="RTO resolution")
    stable_seconds: float = Field(
        10.0, gt=0, description="service counts as recovered once full for this long (or up "
        "to the heal); bad bins after that are reported as blips, not added to the RTO")
    rpo: RpoSpec = Field(default_factory=RpoSpec)
    consistency: bool = Field(True, description="no stale read, no visible failed write")
    split_brain: bool = True
    leftovers: bool = True
    settle_seconds: float = Field(
        20.0, gt=0, description="after the drill: time for replication to converge and "
        "prepared transactions to resolve before they count")


class Scenario(_Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str = ""
    topology: str | dict[str, Any] | None = None
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    faults: list[FaultSpec] = Field(min_length=1)
    slo: SloSpec = Field(default_factory=SloSpec)
    source: str | None = Field(None, exclude=True, description="the file it came from")

    @property
    def duration(self) -> float:
        """Seconds of workload: until the last fault heals, plus the cooldown."""
        return max(f.end for f in self.faults) + self.workload.cooldown_seconds

    @property
    def baseline_seconds(self) -> float:
        return min(f.at for f in self.faults)

    def needs_root(self) -> list[str]:
        return sorted({f.kind for f in self.faults if f.needs_root()})

    def topology_source(self) -> str | Path | dict[str, Any] | None:
        """What LocalStack.up takes: a path (relative to the scenario file), a dict or None."""
        if isinstance(self.topology, str) and self.source is not None:
            return Path(self.source).parent / self.topology
        return self.topology


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _at(doc: Any, loc: tuple[int | str, ...]) -> Any:
    for part in loc:
        try:
            doc = doc[part]
        except (KeyError, IndexError, TypeError):
            return None
    return doc


def parse_scenario(doc: Any, source: str = "<scenario>", short: bool = False) -> Scenario:
    """Validate a parsed document (``short``: with its ``short:`` overlay merged in)."""
    if not isinstance(doc, dict):
        raise ScenarioError(source, [ConfigProblem("<root>", type(doc).__name__,
                                                   "a scenario must be a mapping")])
    doc = dict(doc)
    overlay = doc.pop("short", None)
    if overlay is not None and not isinstance(overlay, dict):
        raise ScenarioError(source, [ConfigProblem("short", overlay,
                                                   "must be a mapping merged over the rest")])
    if short and overlay:
        doc = _merge(doc, overlay)
    try:
        scenario = Scenario.model_validate({**doc, "source": source})
    except ValidationError as exc:
        raise ScenarioError(source, [
            ConfigProblem(_path(tuple(e["loc"])), _at(doc, tuple(e["loc"])), e["msg"])
            for e in exc.errors()]) from None
    problems = check_scenario(scenario)
    if problems:
        raise ScenarioError(source, problems)
    return scenario


def load_scenario(path: str | Path, short: bool = False) -> Scenario:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(str(p), [ConfigProblem("<file>", str(p),
                                                   f"cannot read: {exc.strerror}")]) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<file>"
        raise ScenarioError(str(p), [ConfigProblem(where, None, f"invalid YAML: {exc}")]) \
            from None
    return parse_scenario(doc, str(p), short)


def has_short(path: str | Path) -> bool:
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("short"), dict)


def check_scenario(s: Scenario) -> list[ConfigProblem]:
    """What the field types cannot say: the fields each fault kind needs."""
    problems: list[ConfigProblem] = []
    if s.baseline_seconds < 1.0:
        first = min(range(len(s.faults)), key=lambda i: s.faults[i].at)
        problems.append(ConfigProblem(f"faults[{first}].at", s.faults[first].at,
                                      "the first fault needs at least 1 s of baseline before it"))
    for i, f in enumerate(s.faults):
        def need(field: str, why: str, i: int = i, f: FaultSpec = f) -> None:
            problems.append(ConfigProblem(f"faults[{i}].{field}", getattr(f, field), why))

        zoned = ("network-loss", "network-delay", "cpu-fullload", "zone-down", "flap")
        if f.kind in zoned and not f.zone:
            need("zone", f"{f.kind} needs a zone")
        if f.kind == "network-partition" and not (f.zones or f.zone):
            need("zones", "a partition needs the zones to cut off")
        if f.kind == "network-delay" and f.time_ms is None:
            need("time_ms", "a delay needs time_ms")
        if f.kind in ("process-kill", "process-stop"):
            if f.component is None:
                need("component", f"{f.kind} needs a component ({', '.join(COMPONENTS)})")
            if f.component != "lb" and not f.zone:
                need("zone", f"{f.kind} of a {f.component} needs a zone")
        if f.component is not None and f.component not in COMPONENTS:
            need("component", f"one of {', '.join(COMPONENTS)}")
        for c in f.components or []:
            if c not in COMPONENTS:
                need("components", f"{c!r} is not one of {', '.join(COMPONENTS)}")
        if f.zone is not None and f.zone.startswith("@") and f.zone not in ZONE_ALIASES:
            need("zone", f"a zone name or one of {', '.join(ZONE_ALIASES)}")
    return problems
