"""Auto-scaling groups (issue 3, item 6): the policy's decisions, the supervisor's actuator, and a
real stack that replaces workers, scales on load and on a zone loss, and obeys `crosszone scale`.

The stack lives on 127.0.180-182.0/24 (LB 127.0.0.180, HTTP 18180, HTTPS 18620). Zones a and b
have ELB groups, zone c an EC2 group; every group runs 2 workers of at most 3. Everything is
stopped in finalizers, by pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from crosszone.config import parse_topology
from crosszone.config.placement import Placement
from crosszone.control.scaling import (
    GroupBounds,
    GroupState,
    OperatorSetting,
    ScalingObservation,
    ScalingPolicy,
    ZoneLoad,
    effective_groups,
)
from crosszone.control.settings import ScalingSettings
from crosszone.runtime import LocalStack, RunDir
from crosszone.runtime.control import Selector
from crosszone.runtime.groups import DesiredCapacity, Target
from crosszone.runtime.supervisor import Supervisor
from stackutil import all_gone, local_topology, start_stack, wait_until

A, B, C = "us-west-2a", "us-west-2b", "us-west-2c"
ZONES = (A, B, C)
BOUNDS = {z: GroupBounds(1, 4, 2) for z in ZONES}
T0 = 1000.0


def policy(mode: str = "active-active", **settings: Any) -> ScalingPolicy:
    s = ScalingSettings(**{"target_in_flight_per_worker": 4.0, "scale_out_cooldown_seconds": 10,
                           "scale_in_cooldown_seconds": 30, "zone_loss_seconds": 5,
                           **settings})
    return ScalingPolicy(BOUNDS, order=list(ZONES), mode=mode,  # type: ignore[arg-type]
                         settings=s)


def observe(groups: dict[str, GroupState] | None = None, *, load: int = 0,
            out: frozenset[str] = frozenset(),
            operator: dict[str, OperatorSetting] | None = None) -> ScalingObservation:
    """``load`` in-flight requests spread evenly over the serving zones."""
    serving = [z for z in ZONES if z not in out] or list(ZONES)
    loads = {z: ZoneLoad(2, load // len(serving), 0) if z in serving else ZoneLoad()
             for z in ZONES}
    return ScalingObservation(groups or {}, operator or {}, loads, out)


def sizes(groups: Any) -> dict[str, int]:
    return {z: g.desired for z, g in groups.items()}


# --- the policy's run_cycle on hand-made observations ---------------------------------------------

def test_idle_groups_stay_at_desired_capacity() -> None:
    d = policy().run_cycle(observe(), T0)
    assert not d.changed and sizes(d.groups) == dict.fromkeys(ZONES, 2)
    assert d.sentence == f"scaling: no change ({A} 2, {B} 2, {C} 2)"


def test_load_scales_out_with_n_minus_1_headroom_within_max() -> None:
    p = policy()
    # 24 in flight, 8 per zone: if any other zone were lost a zone would carry 12 -> 3 workers
    d = p.run_cycle(observe(load=24), T0)
    assert d.changed and sizes(d.groups) == dict.fromkeys(ZONES, 3)
    assert d.plans[A].share == pytest.approx(0.5) and d.plans[A].need == 3
    assert "load: 24 in flight in the region, planned share 50% (N-1 plan)" in d.sentence
    # far more load: never beyond max_size
    d = p.run_cycle(observe(d.groups, load=400), T0 + 60)
    assert sizes(d.groups) == dict.fromkeys(ZONES, 4)


def test_a_fixed_headroom_replaces_the_n_minus_1_plan() -> None:
    d = policy(headroom_percent=0).run_cycle(observe(load=24), T0)  # 8 per zone: 2 workers
    assert not d.changed
    d = policy(headroom_percent=100).run_cycle(observe(load=24), T0)  # 16 per zone: 4
    assert sizes(d.groups) == dict.fromkeys(ZONES, 4)


def test_active_backup_keeps_the_first_backup_ready_for_all_traffic() -> None:
    d = policy("active-backup").run_cycle(observe(load=12), T0)
    assert sizes(d.groups) == {A: 3, B: 3, C: 2}  # 12 in flight / 4 per worker, twice
    assert (d.plans[A].share, d.plans[B].share, d.plans[C].share) == (1.0, 1.0, 0.0)


def test_scale_out_waits_for_its_cooldown() -> None:
    recent = {z: GroupState(2, "x", T0 - 4) for z in ZONES}
    d = policy().run_cycle(observe(recent, load=24), T0)
    assert not d.changed and f"{A} needs 3 for load: scale-out cooldown 6.0 s" in d.sentence
    d = policy().run_cycle(observe(recent, load=24), T0 + 6)
    assert sizes(d.groups) == dict.fromkeys(ZONES, 3)


def test_scale_in_after_the_cooldown_to_the_highest_target_seen() -> None:
    p = policy()
    big = {z: GroupState(4, "load", T0) for z in ZONES}
    d = p.run_cycle(observe(big, load=24), T0 + 1)  # needs 3: lower, the clock starts
    assert not d.changed and f"{A} scales in to 3 in 30.0 s" in d.sentence
    d = p.run_cycle(observe(big, load=0), T0 + 20)  # idle now, but 3 was seen meanwhile
    assert not d.changed
    d = p.run_cycle(observe(big, load=0), T0 + 31)
    assert sizes(d.groups) == dict.fromkeys(ZONES, 3) and "scale-in: target 3" in d.sentence
    d = p.run_cycle(observe(d.groups, load=0), T0 + 32)  # a new window starts
    assert not d.changed
    d = p.run_cycle(observe(d.groups, load=0), T0 + 62)
    assert sizes(d.groups) == dict.fromkeys(ZONES, 2)


def test_load_back_up_cancels_a_pending_scale_in() -> None:
    p = policy()
    big = {z: GroupState(3, "load", T0) for z in ZONES}
    assert not p.run_cycle(observe(big, load=0), T0 + 1).changed
    assert not p.run_cycle(observe(big, load=24), T0 + 20).changed  # needs 3 again
    assert not p.run_cycle(observe(big, load=0), T0 + 32).changed  # the clock started over


def test_a_lost_zone_moves_its_baseline_to_the_survivors() -> None:
    p = policy()
    assert not p.run_cycle(observe(), T0).changed  # every zone seen serving
    lost = frozenset({A})
    d = p.run_cycle(observe(out=lost), T0 + 1)
    assert not d.changed  # not lost yet: out for less than zone_loss_seconds
    d = p.run_cycle(observe(out=lost), T0 + 6)
    assert sizes(d.groups) == {A: 2, B: 3, C: 3}
    assert f"zone loss: {A} lost, its baseline spread over the survivors (2 + 1)" in d.sentence
    # no cooldown on the way up; back to 2 only after the scale-in cooldown once A returns
    d = p.run_cycle(observe(d.groups), T0 + 7)
    assert not d.changed
    d = p.run_cycle(observe(d.groups), T0 + 37)
    assert sizes(d.groups) == dict.fromkeys(ZONES, 2)


def test_a_zone_that_never_served_is_not_lost_and_one_zone_moves_at_a_time() -> None:
    p = policy()
    d = p.run_cycle(observe(out=frozenset({A})), T0)  # start-up: A never served
    d = p.run_cycle(observe(out=frozenset({A})), T0 + 60)
    assert not d.changed
    p = policy()  # A not up yet: not out of service either, but not serving
    up = frozenset({B, C})
    p.run_cycle(ScalingObservation({}, {}, {}, frozenset(), up), T0)
    p.run_cycle(ScalingObservation({}, {}, {}, frozenset({A}), up), T0 + 1)
    assert not p.run_cycle(ScalingObservation({}, {}, {}, frozenset({A}), up), T0 + 60).changed
    p = policy()
    p.run_cycle(observe(), T0)
    p.run_cycle(observe(out=frozenset({A})), T0 + 1)
    d = p.run_cycle(observe(out=frozenset({A, B})), T0 + 7)
    assert sizes(d.groups) == {A: 2, B: 2, C: 4}  # A's 2 only: B is out, not counted again
    assert f"zone loss: {A} lost" in d.sentence


def test_operator_setting_applies_at_once_and_becomes_the_baseline() -> None:
    p = policy()
    recent = {z: GroupState(2, "x", T0 - 1) for z in ZONES}
    d = p.run_cycle(observe(recent, operator={B: OperatorSetting(1, T0)}), T0 + 0.5)
    assert sizes(d.groups) == {A: 2, B: 1, C: 2} and "operator set desired 1" in d.sentence
    d = p.run_cycle(observe(d.groups, operator={B: OperatorSetting(1, T0)}), T0 + 100)
    assert not d.changed  # 1 is B's baseline now: no scale-in back to 2, no scale-out either
    d = p.run_cycle(observe(d.groups, operator={B: OperatorSetting(9, T0 + 101)}), T0 + 102)
    assert d.groups[B].desired == 4  # within max_size


def test_disabled_scaling_follows_only_the_baseline() -> None:
    p = policy(enabled=False)
    p.run_cycle(observe(), T0)
    d = p.run_cycle(observe(load=400, out=frozenset({A})), T0 + 60)
    assert not d.changed


def test_effective_groups_prefer_a_newer_operator_setting() -> None:
    groups = {A: GroupState(3, "load", T0)}
    view = effective_groups(BOUNDS, groups, {A: OperatorSetting(1, T0 - 1),
                                             B: OperatorSetting(9, T0)}, term=7)
    assert view[A]["desired"] == 3 and view[A]["version"] == [7, T0]
    assert view[B]["desired"] == 4 and view[B]["reason"] == "operator setting"
    assert view[C]["desired"] == 2 and view[C]["baseline"] == 2


# --- the supervisor side -----------------------------------------------------------------------

def test_desired_capacity_takes_the_newest_answer_and_keeps_the_last_known() -> None:
    topo = parse_topology(local_topology(worker_port=9000))
    desired = DesiredCapacity(topo)
    assert desired.desired(A) == 2
    assert desired.apply([{A: {"desired": 3, "version": [2, 10.0], "reason": "load"}},
                          {A: {"desired": 4, "version": [1, 99.0]}, B: "junk"}]) == [
        f"{A} desired 2 -> 3 (controllers, term 2: load)"]
    assert desired.apply([{A: {"desired": 1, "version": [1, 50.0]}}]) == []  # older term
    assert desired.apply([]) == [] and desired.desired(A) == 3  # nobody answers: keep it
    desired.apply([{A: {"desired": 40, "version": [3, 1.0]}}])
    assert desired.desired(A) == 4  # clamped to max_size


async def test_supervisor_resizes_groups_and_replaces_condemned_workers(tmp_path: Path) -> None:
    topology = parse_topology(local_topology(workers=1))
    run_dir = RunDir.at(tmp_path)
    run_dir.prepare()
    supervisor = Supervisor(topology, run_dir)
    for proc in supervisor.slots:
        proc.argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    assert len(supervisor.slots) == len(supervisor.processes) + 3 * 3  # max_size 4, desired 1
    try:
        now = time.monotonic()
        assert supervisor.run_cycle(now).count("started ") == len(supervisor.processes)
        supervisor.groups.desired.targets[A] = Target(3, (1, 1.0))
        sentence = supervisor.run_cycle(now + 1)
        assert f"{A} scales out to 3: {A}/worker-2 joins" in sentence
        assert f"started {A}/worker-3 (pid " in sentence
        slot = {p.name: p for p in supervisor.slots}
        assert slot[f"{A}/worker-3"].in_service and slot[f"{A}/worker-4"].state == "stopped"
        assert supervisor.snapshot()["groups"][A]["running"] == 3
        # an operator hold selects only slots in service
        assert sorted(p.name for p in supervisor.select(Selector(zone=A, component="worker"))
                      ) == [f"{A}/worker-1", f"{A}/worker-2", f"{A}/worker-3"]

        supervisor.groups.desired.targets[A] = Target(1, (1, 2.0))
        sentence = supervisor.run_cycle(now + 2)
        assert f"{A} scales in to 1: stopping {A}/worker-3" in sentence
        stopped = slot[f"{A}/worker-3"]
        wait_until(lambda: stopped.popen is None or stopped.popen.poll() is not None, 5)
        assert f"{A}/worker-3 was killed by SIGTERM; stopped (scaled in)" in \
            supervisor.run_cycle(now + 3)
        assert f"{A}/worker-3" not in {r["name"] for r in supervisor.snapshot()["processes"]}

        # a worker its ELB health checks condemned is killed and replaced at once
        worker = slot[f"{B}/worker-1"]
        old = worker.pid
        supervisor.groups.health.record(worker, None)  # it answered once: checks count
        for _ in range(3):
            supervisor.groups.health.record(worker, "no answer within 0.15s")
        supervisor.groups.health.checks[worker.name].failing_since -= 60
        assert f"replacing {B}/worker-1 (pid {old}): ELB health check failed 3 times" in \
            supervisor.run_cycle(now + 4)
        assert worker.popen is not None
        worker.popen.wait()
        sentence = supervisor.run_cycle(now + 5)
        assert f"{B}/worker-1 was killed by SIGKILL; starting its replacement" in sentence
        assert f"restarted {B}/worker-1 (pid " in sentence and worker.pid != old
    finally:
        await supervisor.stop_all(grace=2)
    assert all(p.pid is None for p in supervisor.slots)


# --- a real stack ------------------------------------------------------------------------------

SCALING = {"enabled": True, "target_in_flight_per_worker": 4, "scale_out_cooldown_seconds": 1.0,
           "scale_in_cooldown_seconds": 4.0, "zone_loss_seconds": 1.0, "poll_seconds": 0.3,
           "unhealthy_replace_seconds": 1.0, "health_check_grace_seconds": 20.0}
STREAMS = 30  # concurrent streams in the load test: need 4 per zone at 4 per worker, max is 3
TIMEOUT = 40.0  # generous: the test machine is often busy


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[LocalStack]:
    group = {"min_size": 1, "max_size": 3, "desired_capacity": 2, "port": 9000}
    topo = local_topology(180, http_port=18180, https_port=18620, decode_ms=40.0,
                          worker_group=group, control={
                              "scaling": SCALING,
                              "failover": {"recovery_stable_seconds": 0.5, "flap_threshold": 50}},
                          inference={"simulator": {"min_output_tokens": 30,
                                                   "max_output_tokens": 30}})
    topo["zones"][2]["worker_group"] = {**group, "health_check_type": "EC2"}
    yield start_stack(request, tmp_path_factory.mktemp("autoscaling"), topo, timeout=120)


def groups(stack: LocalStack) -> dict[str, Any]:
    found: dict[str, Any] = stack.snapshot()["groups"]
    return found


def decided(stack: LocalStack) -> dict[str, Any]:
    """``GET /control/scaling`` of the first controller that answers."""
    for node in Placement(stack.topology).controllers():
        try:
            r = httpx.get(f"{node.url}/control/scaling", timeout=1.0)
        except httpx.HTTPError:
            continue
        if r.status_code == 200:
            doc: dict[str, Any] = r.json()
            return doc
    return {}


def running(stack: LocalStack, sizes: dict[str, int]) -> bool:
    """Every named zone runs exactly that many workers, all of them healthy."""
    g = groups(stack)
    if any(g[z]["desired"] != n or g[z]["running"] != n for z, n in sizes.items()):
        return False
    names = [f"{z}/worker-{i}" for z, n in sizes.items() for i in range(1, n + 1)]
    probes = stack.status()["processes"]
    healthy = {p["name"] for p in probes if p["healthy"]}
    workers = {p["name"] for p in probes if p["component"] == "worker"}
    return set(names) <= healthy and {w for w in workers if w.split("/")[0] in sizes} == set(names)


def settled(stack: LocalStack) -> None:
    wait_until(lambda: running(stack, dict.fromkeys(ZONES, 2)), TIMEOUT,
               what="every zone back to 2 healthy workers")


def crosszone(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crosszone", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_elb_group_replaces_a_frozen_worker_an_operator_hold_is_left_alone(
        stack: LocalStack) -> None:
    settled(stack)
    name = f"{B}/worker-1"
    old = stack.pids()[name]
    stack.signal(zone=B, component="worker", index=1, signal="STOP")  # a fault, not a hold
    wait_until(lambda: stack.pids().get(name, old) != old, TIMEOUT, what="a replacement")
    assert all_gone([old])
    stack.wait_healthy(TIMEOUT, names=[name])
    log = stack.run_dir.supervisor_log.read_text()
    assert f"replacing {name} (pid {old}): ELB health check failed" in log

    held = f"{B}/worker-2"
    pid = stack.pids()[held]
    stack.hold(zone=B, component="worker", index=2, signal="STOP")  # the operator's: kept
    time.sleep(3.0)  # well past unhealthyThresholdCount x interval + unhealthy_replace_seconds
    assert stack.pids()[held] == pid
    stack.release(zone=B, component="worker", index=2)
    stack.wait_healthy(TIMEOUT, names=[held])


def test_dead_workers_are_replaced_and_ec2_leaves_a_frozen_one(stack: LocalStack) -> None:
    settled(stack)
    frozen = f"{C}/worker-1"
    pid = stack.pids()[frozen]
    stack.signal(zone=C, component="worker", index=1, signal="STOP")
    time.sleep(3.0)  # EC2: the process lives, so it stays
    assert stack.pids()[frozen] == pid
    stack.signal(zone=C, component="worker", index=1, signal="CONT")

    before = stack.pids()
    victims = [f"{z}/worker-{i}" for z in (A, C) for i in (1, 2)]  # ELB and EC2 groups
    for name in victims:
        os.kill(before[name], signal.SIGKILL)
    wait_until(lambda: all(stack.pids().get(n, before[n]) != before[n] for n in victims),
               TIMEOUT, what="replacements")
    stack.wait_healthy(TIMEOUT, names=victims)
    settled(stack)


def test_crosszone_scale_sets_how_many_workers_run(stack: LocalStack) -> None:
    settled(stack)
    run_dir = str(stack.run_dir.path)
    done = crosszone("scale", "--zone", C, "--desired", "3", "--run-dir", run_dir)
    assert done.returncode == 0 and f"{C}: desired capacity 3" in done.stdout, done.stderr
    wait_until(lambda: running(stack, {C: 3}), TIMEOUT, what=f"{C} at 3 workers")
    gateway = Placement(stack.topology).gateway(C)
    wait_until(lambda: httpx.get(f"{gateway.url}/health", timeout=1).json()
               ["local_healthy_workers"] == 3, TIMEOUT, what="the gateway to use worker-3")
    assert decided(stack)[C]["desired"] == 3

    gone = stack.pids()
    assert crosszone("scale", "--zone", C, "--desired", "1", "--run-dir", run_dir).returncode == 0
    wait_until(lambda: running(stack, {C: 1}), TIMEOUT, what=f"{C} at 1 worker")
    assert all_gone([gone[f"{C}/worker-2"], gone[f"{C}/worker-3"]])
    refused = crosszone("scale", "--zone", C, "--desired", "9", "--run-dir", run_dir)
    assert refused.returncode != 0 and "max_size 3" in refused.stdout + refused.stderr
    assert crosszone("scale", "--zone", C, "--desired", "2", "--run-dir", run_dir).returncode == 0
    settled(stack)


def _load(stack: LocalStack, stop: threading.Event, errors: list[str]) -> None:
    client = openai.OpenAI(base_url=stack.lb_url(), api_key=stack.api_key, max_retries=0,
                           timeout=30)
    while not stop.is_set():
        try:
            for _ in client.chat.completions.create(
                    model="deepseek-chat", stream=True,
                    messages=[{"role": "user", "content": "tell me a long story"}]):
                pass
        except openai.OpenAIError as exc:
            errors.append(repr(exc))


def _served(stack: LocalStack, name: str) -> float:
    zone, index = name.split("/worker-")
    worker = Placement(stack.topology).worker(zone, int(index))
    try:
        text = httpx.get(f"{worker.url}/metrics", timeout=2).text
    except httpx.HTTPError:  # still starting
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("crosszone_worker_requests_total{"))


def test_load_scales_out_within_max_and_back_in_after_the_cooldown(stack: LocalStack) -> None:
    settled(stack)
    stop, errors = threading.Event(), []
    clients = [threading.Thread(target=_load, args=(stack, stop, errors), daemon=True)
               for _ in range(STREAMS)]
    for t in clients:
        t.start()
    try:
        wait_until(lambda: any(g["desired"] == 3 and g["running"] == 3
                               for g in groups(stack).values()), TIMEOUT,
                   what="a zone to scale out under load")
        grown = [z for z, g in groups(stack).items() if g["running"] == 3]
        assert all(g["desired"] <= 3 for g in groups(stack).values())  # max_size
        reason = decided(stack)[grown[0]]["reason"]
        assert reason.startswith("load: ") and "N-1 plan" in reason, reason
        new = f"{grown[0]}/worker-3"
        wait_until(lambda: _served(stack, new) > 0, TIMEOUT, what=f"{new} to take requests")
    finally:
        stop.set()
        for t in clients:
            t.join(timeout=60)
    idle = time.monotonic()
    assert not errors, errors[:3]
    wait_until(lambda: all(g["desired"] == 2 for g in groups(stack).values()), TIMEOUT,
               what="the groups to scale back in")
    assert time.monotonic() - idle >= SCALING["scale_in_cooldown_seconds"] - 1.0
    assert "scale-in: target 2" in decided(stack)[grown[0]]["reason"]
    settled(stack)


def test_zone_loss_scales_the_survivors_up(stack: LocalStack) -> None:
    settled(stack)
    stack.hold(zone=A, signal="KILL")
    try:
        wait_until(lambda: running(stack, {B: 3, C: 3}), TIMEOUT,
                   what="the surviving zones to take over the lost zone's capacity")
        view = decided(stack)
        assert view[A]["desired"] == 2  # kept for its return
        assert f"zone loss: {A} lost" in view[B]["reason"]
        status = httpx.get(f"{Placement(stack.topology).controller(B).url}/control/status",
                           timeout=2).json()
        known = status["known_leader"]
        assert known is not None and view[B]["term"] == known["term"]  # the acting leader's
    finally:
        stack.release(zone=A)
    settled(stack)
