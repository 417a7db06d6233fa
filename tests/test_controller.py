"""Three zone controllers (embedded Raft) against fake gateways, workers and an LB on real sockets.

Zones live on 127.0.109/110/111.0/24: controller ``.5`` (API, Raft, DNS), gateway ``.10``,
workers ``.21``/``.22``; the fake LB is 127.0.111.100. The fakes check fencing tokens exactly as
the real receivers must.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import dns.resolver
import httpx
import pytest
import typer
import yaml
from typer.testing import CliRunner

from controlutil import FakeNode, wait_until
from crosszone.config.load import parse_topology
from crosszone.config.topology import Topology
from crosszone.control.actuator import RoutingPusher
from crosszone.control.client import ControlClient
from crosszone.control.commands import register
from crosszone.control.controller import Controller, create_controller
from crosszone.control.events import EventLog
from crosszone.control.model import Routing
from crosszone.control.settings import (
    ControlSettings,
    DnsSettings,
    FailoverPolicy,
    LeaseSettings,
    check_control,
)
from crosszone.errors import ConfigError, ShiftRejected
from etcdutil import free_common_port

A, B, C = "us-west-2a", "us-west-2b", "us-west-2c"
NETS = {A: "127.0.109", B: "127.0.110", C: "127.0.111"}
LB_HOST = "127.0.111.100"
SERVICE = "api.crosszone.test."
FREEZE_TARGET = 2.0  # ANCHORS.md: a zone that silently drops everything is routed around in 2 s
NEW_LEADER_TARGET = 3.0


def ports() -> dict[str, int]:
    hosts = tuple(f"{n}.5" for n in NETS.values())
    api = free_common_port(hosts, 17080, 17180)
    raft = free_common_port(hosts, 17001, 17080, {api})
    dns_port = free_common_port(hosts, 18053, 18153)
    return {"api": api, "raft": raft, "dns": dns_port,
            "gw": free_common_port(tuple(f"{n}.10" for n in NETS.values()), 18080, 18180),
            "worker": free_common_port(tuple(f"{n}.21" for n in NETS.values()), 19000, 19100),
            "lb": free_common_port((LB_HOST,), 18000, 18080)}


def topology(mode: str, p: dict[str, int]) -> Topology:
    fast = {"path": "/health", "intervalSeconds": 0.25, "timeoutSeconds": 0.15,
            "healthyThresholdCount": 2, "unhealthyThresholdCount": 2}
    return parse_topology({
        "region": "test",
        "zones": [{"name": z, "subnet": f"{net}.0/24"} for z, net in NETS.items()],
        "worker_group": {"min_size": 1, "max_size": 4, "desired_capacity": 2,
                         "port": p["worker"]},
        "gateway": {"port": p["gw"], "healthCheck": fast},
        "load_balancer": {"address": LB_HOST, "healthCheck": fast, "listeners": [
            {"protocol": "HTTP", "port": p["lb"], "targetPort": p["gw"]}]},
        "failover": {"mode": mode},
    }, "test")


def settings(p: dict[str, int]) -> ControlSettings:
    s = ControlSettings(loop_seconds=0.05, api_port=p["api"], raft_port=p["raft"],
                        dns=DnsSettings(name=SERVICE, ttl_seconds=1, port=p["dns"]),
                        failover=FailoverPolicy(recovery_stable_seconds=1.0,
                                                failback_delay_seconds=1.5),
                        push_timeout_seconds=0.3, repush_seconds=2.0)
    assert check_control(s) == []
    return s


@dataclass
class Stack:
    topology: Topology
    settings: ControlSettings
    lb: FakeNode
    zones: dict[str, list[FakeNode]]  # gateway first, then workers
    controllers: dict[str, Controller] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    def leader(self) -> Controller | None:
        leaders = [c for c in self.controllers.values() if c.elector.is_leader()]
        assert len(leaders) <= 1, "two controllers act at once"
        return leaders[0] if leaders else None

    def lb_weights(self) -> dict[str, float]:
        return self.lb.last_weights() or {}

    async def kill_zone(self, zone: str) -> None:
        for node in self.zones[zone]:
            await node.kill()

    def freeze_zone(self, zone: str) -> None:
        for node in self.zones[zone]:
            node.freeze()

    async def revive_zone(self, zone: str) -> None:
        for node in self.zones[zone]:
            await node.revive()

    def client(self) -> ControlClient:
        return ControlClient.from_topology(self.topology, self.settings)

    def history(self) -> list[str]:
        return [s for c in self.controllers.values() for _, s in c.state.history]


async def start_stack(mode: str, run_dir: Path) -> Stack:
    p = ports()
    topo, s = topology(mode, p), settings(p)
    lb = FakeNode(LB_HOST, p["lb"])
    zones = {z: [FakeNode(f"{net}.10", p["gw"])] +
             [FakeNode(f"{net}.{21 + i}", p["worker"]) for i in range(2)]
             for z, net in NETS.items()}
    stack = Stack(topo, s, lb, zones)
    for node in [lb, *(n for ns in zones.values() for n in ns)]:
        await node.start()
    for z in NETS:
        c = create_controller(topo, z, run_dir=run_dir, settings=s)
        stack.controllers[z] = c
        stack.tasks[z] = asyncio.create_task(c.run())
    await wait_until(lambda: bool(stack.lb.weights), 10.0)
    return stack


async def stop_stack(stack: Stack) -> None:
    for c in stack.controllers.values():
        c._stop.set()
    await asyncio.gather(*stack.tasks.values(), return_exceptions=True)
    for node in [stack.lb, *(n for ns in stack.zones.values() for n in ns)]:
        await node.kill()


@pytest.fixture
async def active_active(tmp_path: Path) -> AsyncIterator[Stack]:
    stack = await start_stack("active-active", tmp_path)
    try:
        yield stack
    finally:
        await stop_stack(stack)


@pytest.fixture
async def active_backup(tmp_path: Path) -> AsyncIterator[Stack]:
    stack = await start_stack("active-backup", tmp_path)
    try:
        yield stack
    finally:
        await stop_stack(stack)


def resolve(stack: Stack, zone: str) -> list[str]:
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [f"{NETS[zone]}.5"]
    r.port = stack.settings.dns.port
    r.lifetime = 1.0
    r.cache = None
    return sorted(rr.address for rr in r.resolve(SERVICE, "A"))


async def dns_everywhere(stack: Stack, zones: list[str], expect: list[str]) -> None:
    want = sorted(f"{NETS[z]}.10" for z in expect)
    deadline = time.monotonic() + 3.0
    while True:  # the resolver blocks: run it off the loop the DNS servers answer on
        got = [await asyncio.to_thread(resolve, stack, z) for z in zones]
        if all(g == want for g in got):
            return
        assert time.monotonic() < deadline, f"DNS answers {got}, want {want}"
        await asyncio.sleep(0.1)


def events(stack: Stack, tmp_path: Path) -> list[tuple[str, str, str, bool, float | None]]:
    log = EventLog(tmp_path / "control" / "failover_events.sqlite")
    try:
        return [(e.kind, e.from_zone, e.to_zone, e.success, e.detection_delay_ms)
                for e in reversed(log.recent())]
    finally:
        log.close()


def shifted(stack: Stack, zone: str) -> Callable[[], bool]:
    return lambda: stack.lb_weights().get(zone, 1.0) == 0.0


# -- tests -----------------------------------------------------------------------------------------


async def test_one_leader_pushes_weights_and_every_zone_serves_dns(active_active: Stack) -> None:
    stack = active_active
    await wait_until(lambda: stack.leader() is not None, 5.0)
    weights = stack.lb_weights()
    assert weights == pytest.approx({A: 1 / 3, B: 1 / 3, C: 1 / 3})
    assert len({token for _, token, _ in stack.lb.weights}) == 1
    await wait_until(lambda: all(n.weights for n in (ns[0] for ns in stack.zones.values())), 3.0)
    await dns_everywhere(stack, [A, B, C], [A, B, C])
    leader = stack.leader()
    assert leader is not None
    follower = next(c for c in stack.controllers.values() if c is not leader)
    # a follower learns who leads from the coordination backend, shortly after the leader
    # itself knows
    await wait_until(lambda: follower.elector.known_leader is not None, 3.0)
    async with httpx.AsyncClient() as http:
        doc = (await http.get(f"http://{NETS[follower.zone]}.5:{stack.settings.api_port}"
                              "/control/status")).json()
    assert doc["leader"] is False and doc["known_leader"]["node"] == f"{leader.zone}/controller"
    assert doc["sentence"].startswith("follower")


async def test_killed_zone_leaves_lb_dns_and_gateways_and_is_recorded(
        active_active: Stack, tmp_path: Path) -> None:
    stack = active_active
    await stack.kill_zone(B)
    elapsed = await wait_until(shifted(stack, B), 3.0)
    assert stack.lb_weights() == pytest.approx({A: 0.5, B: 0.0, C: 0.5})
    await dns_everywhere(stack, [A, B, C], [A, C])  # B's controller still runs: it follows
    gateway_a = stack.zones[A][0]
    await wait_until(lambda: (gateway_a.last_weights() or {}).get(B) == 0.0, 2.0)
    kind, frm, to, ok, delay = events(stack, tmp_path)[-1]
    assert (kind, frm, to, ok) == ("failover", B, f"{A},{C}", True)
    assert delay is not None and 0 < delay < 2000
    assert any(f"failed over from {B} to {A}, {C}" in s for s in stack.history())
    shifts = await asyncio.to_thread(stack.client().list_shifts)
    assert [(s["id"], s["kind"]) for s in shifts] == [(f"auto-{B}", "autoshift")]
    print(f"zone kill -> LB shifted in {elapsed:.2f} s")
    await stack.revive_zone(B)
    await wait_until(lambda: stack.lb_weights().get(B, 0) > 0, 4.0)
    await wait_until(lambda: events(stack, tmp_path)[-1][:3] == ("restore", f"{A},{C}", B), 2.0)


async def test_frozen_zone_is_routed_around_within_2s(active_active: Stack) -> None:
    stack = active_active
    frozen_at = time.monotonic()
    stack.freeze_zone(C)
    await wait_until(shifted(stack, C), 4.0)
    elapsed = next(t for t, _, w in stack.lb.weights if w.get(C) == 0.0) - frozen_at
    print(f"zone freeze -> LB shifted in {elapsed:.2f} s")
    assert elapsed < FREEZE_TARGET


async def test_active_backup_fails_over_and_back_per_policy(
        active_backup: Stack, tmp_path: Path) -> None:
    stack = active_backup
    assert stack.lb_weights() == {A: 1.0, B: 0.0, C: 0.0}
    await stack.kill_zone(A)
    await wait_until(lambda: stack.lb_weights().get(B) == 1.0, 3.0)
    await dns_everywhere(stack, [B, C], [B])
    await stack.revive_zone(A)
    back = await wait_until(lambda: stack.lb_weights().get(A) == 1.0, 6.0)
    assert back >= 1.5  # failback waits for failback_delay_seconds of health
    kinds = [(k, f, t) for k, f, t, _, _ in events(stack, tmp_path)]
    assert kinds == [("failover", A, B), ("failback", B, A)]


async def test_operator_shift_and_scale_through_the_client(active_active: Stack) -> None:
    stack = active_active
    client = stack.client()
    shift = await asyncio.to_thread(client.start_shift, C, "5m", "kernel upgrade")
    assert shift["kind"] == "operator" and shift["expires_at"] - shift["started_at"] == 300
    await wait_until(shifted(stack, C), 3.0)
    listed = await asyncio.to_thread(client.list_shifts)
    assert [s["reason"] for s in listed] == ["kernel upgrade"]
    with pytest.raises(ShiftRejected, match="unknown zone"):
        await asyncio.to_thread(client.start_shift, "us-east-1z", "5m", "typo")
    with pytest.raises(ShiftRejected, match="reason is required"):
        await asyncio.to_thread(client.start_shift, A, "5m", "")
    await asyncio.to_thread(client.cancel_shift, C)
    await wait_until(lambda: stack.lb_weights().get(C, 0) > 0, 3.0)
    assert any(f"shifted from {C}" in s and "kernel upgrade" in s for s in stack.history())
    await asyncio.to_thread(client.scale, B, 3)
    async with httpx.AsyncClient() as http:
        doc = (await http.get(client.urls[0] + "/control/scaling")).json()
    assert doc[B]["desired"] == 3


async def test_crashed_leader_is_replaced_and_its_token_is_rejected(active_active: Stack) -> None:
    stack = active_active
    await wait_until(lambda: stack.leader() is not None, 5.0)
    old = stack.leader()
    assert old is not None
    old_token = old.elector.acting_token()
    assert old_token is not None
    crashed_at = time.monotonic()
    old.abort()  # stops without resigning: the lease must expire
    await wait_until(lambda: any(t > old_token for _, t, _ in stack.lb.weights), 5.0)
    took = next(at for at, t, _ in stack.lb.weights if t > old_token) - crashed_at
    new = stack.leader()
    assert new is not None and new is not old
    print(f"leader crash -> new acting leader in {took:.2f} s")
    assert took < NEW_LEADER_TARGET
    # Whatever the old leader still had in flight (replayed here with its old token, as a
    # paused process would send it) takes effect nowhere: every receiver answers 409.
    before = [len(n.weights) for n in [stack.lb, *(ns[0] for ns in stack.zones.values())]]
    replay = RoutingPusher(old.pusher.targets, timeout=1.0, repush_seconds=60)
    try:
        report = await replay.push(Routing({A: 1.0, B: 0.0, C: 0.0}), old_token, lambda: True)
    finally:
        await replay.close()
    assert sorted(report.stale) == sorted(t.name for t in old.pusher.targets)
    assert not report.success(old.pusher.targets)
    after = [len(n.weights) for n in [stack.lb, *(ns[0] for ns in stack.zones.values())]]
    assert after == before


# -- settings and CLI wiring (no stack needed) -------------------------------------------------


def test_control_settings_timing_rules_report_every_problem() -> None:
    bad = ControlSettings(loop_seconds=1.0, host=10,
                          lease=LeaseSettings(ttl_seconds=1.0, renew_seconds=0.5,
                                              request_timeout_seconds=0.4),
                          dns=DnsSettings(name="api.example", port=7080))
    problems = {p.path: p.message for p in check_control(bad)}
    assert set(problems) == {"control.lease", "control.loop_seconds", "control.host",
                             "control.dns.name", "control.dns.port"}
    assert "must fit in ttl_seconds - safety_margin_seconds" in problems["control.lease"]
    with pytest.raises(ConfigError) as info:
        create_controller(topology("active-active", ports()), A, run_dir=Path("/nonexistent"),
                          settings=bad)
    assert len(info.value.problems) == 5


def test_cli_commands_register_and_fail_cleanly_without_controllers(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command("version")(lambda: None)
    register(app)
    runner = CliRunner()
    help_text = runner.invoke(app, ["shift", "--help"]).output
    assert all(word in help_text for word in ("start", "list", "cancel"))
    assert "--desired" in runner.invoke(app, ["scale", "--help"]).output
    config = tmp_path / "topology.yaml"
    p = ports()
    config.write_text(yaml.safe_dump(topology("active-active", p).model_dump(
        mode="json", by_alias=True, exclude_none=True)))
    result = runner.invoke(app, ["shift", "start", "--zone", A, "--expires", "30m",
                                 "--reason", "drill", "--config", str(config)])
    assert result.exit_code == 1, result.output
    assert "no controller answered" in result.output and "Traceback" not in result.output
