"""Run one drill: bring the stack up (or attach), drive the workload, inject and heal the faults
on schedule, let the system settle, judge every SLO and write the reports.

    result = run_drill(load_scenario("drills/zone-killed.yaml", short=True), run_dir,
                       attach=True)
    result.passed, result.out_dir   # report.md, report.json, timeline.png

Time zero is the start of the workload; the baseline is the time before the first fault. After
the last fault heals and the cooldown ends, the drill waits (at most ``slo.settle_seconds``)
for every node to be healthy, for replication to converge and for prepared transactions to be
resolved, then reads every zone's store for the history checker and looks for leftovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crosszone.chaos.api import Chaos
from crosszone.drills.checker import CheckResult, check_history
from crosszone.drills.faults import FaultRecord, FaultRunner
from crosszone.drills.judge import DrillData, Verdict, judge, passed
from crosszone.drills.leftovers import (
    await_no_prepared,
    chaos_leftovers,
    orphan_processes,
)
from crosszone.drills.observe import (
    ControlPlane,
    Observers,
    detect_control_plane,
    readiness_problems,
)
from crosszone.drills.report import (
    report_document,
    write_history,
    write_json,
    write_markdown,
)
from crosszone.drills.rto import Span, baseline, episodes, recovery, thresholds
from crosszone.drills.scenario import ZONE_ALIASES, Scenario
from crosszone.drills.splitbrain import check_split_brain
from crosszone.drills.timeline import write_timeline
from crosszone.errors import ConfigProblem, CrosszoneError, DrillError, ScenarioError
from crosszone.runtime.stack import LocalStack, TopologySource
from crosszone.storage.service import store_url
from crosszone.workload import (
    ChatWorkload,
    History,
    KvConfig,
    KvWorkload,
    ProductOps,
    Timeline,
    WorkloadConfig,
    probe_features,
)
from crosszone.workload.kv import read_final_state
from crosszone.workload.product import sleep_until

Progress = Callable[[str], None]
LEADER_WAIT_SECONDS = 3.0
READY_SECONDS = 60.0


@dataclass
class DrillResult:
    scenario: Scenario
    out_dir: Path
    passed: bool
    verdicts: list[Verdict]
    document: dict[str, Any]


def run_drill(scenario: Scenario, run_dir: str | Path, *, attach: bool = False,
              out: str | Path | None = None, short: bool = False,
              topology: TopologySource = None, progress: Progress | None = None
              ) -> DrillResult:
    """``topology``: overrides the scenario's when the drill brings the stack up."""
    return DrillRunner(scenario, Path(run_dir), attach=attach,
                       out=None if out is None else Path(out), short=short,
                       topology=topology, progress=progress).run()


class DrillRunner:
    def __init__(self, scenario: Scenario, run_dir: Path, *, attach: bool, out: Path | None,
                 short: bool, progress: Progress | None,
                 topology: TopologySource = None) -> None:
        self.scenario = scenario
        self.topology = topology
        self.run_dir = run_dir.absolute()
        self.attach = attach
        self.short = short
        self.say = progress or (lambda _: None)
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        self.out = out or self.run_dir / "drills" / f"{scenario.name}-{stamp}"
        self.run_id = f"{scenario.name}-{stamp}-{secrets.token_hex(3)}"
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.chaos = Chaos(self.run_dir)
        self.notes: list[str] = []
        self._pids_seen: dict[int, str] = {}
        self._mode = "active-active"
        self.workload_end = scenario.duration
        self._history = History()

    # --- the whole drill -------------------------------------------------------------------------

    def run(self) -> DrillResult:
        needs = self.scenario.needs_root()
        if needs and os.geteuid() != 0:
            raise DrillError(f"scenario {self.scenario.name} injects {', '.join(needs)}, which "
                             f"needs root (nftables / cgroups); run it as root")
        stack = LocalStack(self.run_dir)
        started = self._bring_up(stack)
        faults: list[FaultRecord] = []
        try:
            self._check_zones(stack)
            data, faults = asyncio.run(self._drive(stack))
        finally:
            self._destroy_leftover_experiments(faults)
            if started:
                self.say("bringing the stack down")
                with contextlib.suppress(CrosszoneError):
                    stack.down()
        data.chaos_leftovers = chaos_leftovers(self.chaos, [u for f in faults for u in f.uids])
        data.orphans = orphan_processes(self._pids_seen, stack, stopped=started)
        data.notes = self.notes
        return self._finish(data)

    def _bring_up(self, stack: LocalStack) -> bool:
        if self.attach:
            if not stack.is_running():
                raise DrillError(f"--attach: no stack runs in {self.run_dir} (start one with "
                                 f"`crosszone up --run-dir {self.run_dir}`)")
            if self.scenario.topology is not None or self.topology is not None:
                self.notes.append("attached: the running stack's topology was used, not the "
                                  "scenario's")
            return False
        if stack.is_running():
            raise DrillError(f"a stack already runs in {self.run_dir}: use --attach to drill "
                             f"it, or stop it first")
        self.say("bringing the stack up")
        source = self.topology if self.topology is not None else self.scenario.topology_source()
        if self.topology is not None:
            self.notes.append("the topology given on the command line replaced the scenario's")
        stack.up(source, timeout=120.0)
        return True

    def _check_zones(self, stack: LocalStack) -> None:
        zones = stack.topology.zone_names()
        problems = []
        for i, f in enumerate(self.scenario.faults):
            for name, value in (("zone", [f.zone]), ("zones", f.zones or []),
                                ("peer_zone", [f.peer_zone])):
                bad = [z for z in value if z and z not in zones and z not in ZONE_ALIASES]
                if bad:
                    problems.append(ConfigProblem(
                        f"faults[{i}].{name}", getattr(f, name),
                        f"not a zone of the stack's topology ({', '.join(zones)})"))
        if problems:
            raise ScenarioError(self.scenario.source or self.scenario.name, problems)

    def _destroy_leftover_experiments(self, faults: list[FaultRecord]) -> None:
        for uid in (u for f in faults for u in f.uids):
            with contextlib.suppress(CrosszoneError):
                if self.chaos.status(uid)[0].status != "destroyed":
                    self.chaos.destroy(uid)

    # --- during the drill ------------------------------------------------------------------------

    async def _drive(self, stack: LocalStack) -> tuple[DrillData, list[FaultRecord]]:
        s, w = self.scenario, self.scenario.workload
        topology = stack.topology
        self._mode = topology.failover.mode
        snapshot = await asyncio.to_thread(stack.snapshot)
        control = detect_control_plane(stack, snapshot)
        self.say("waiting for the stack to be ready (healthy, every zone in rotation)")
        await self._await_ready(stack, control)
        base_url = stack.lb_url("http")
        features = await asyncio.to_thread(probe_features, base_url, stack.api_key,
                                           stack.admin_token, model=w.model)
        self.notes += [f"{k}: not available ({f.detail})" for k, f in features.items()
                       if not f.available]
        store_urls = {z: store_url(topology, z) for z in topology.zone_names()}
        origin = time.monotonic()

        def now() -> float:
            return time.monotonic() - origin

        product = ProductOps(features, base_url=base_url, admin_token=stack.admin_token,
                             model=w.model, max_tokens=w.max_tokens, now=now)
        usage_before = await product.usage_totals() if product.has("usage") else None
        origin, wall_origin = time.monotonic(), time.time()
        observers = Observers(stack, control, now, wall_origin)
        observers.record_pids(snapshot)
        self._pids_seen = observers.pids_seen
        timeline, history = Timeline(), History()
        chat = ChatWorkload(WorkloadConfig(
            base_url=base_url, api_key=stack.api_key, concurrency=w.concurrency,
            duration_seconds=s.duration, max_requests=10_000_000, stream_ratio=w.stream_ratio,
            max_tokens=w.max_tokens, model=w.model, request_timeout=w.request_timeout_seconds,
            rate=w.rate, conversation_ratio=w.conversation_ratio,
            key_churn_seconds=w.key_churn_seconds), timeline, origin=origin, product=product)
        kv = KvWorkload(KvConfig(
            store_urls, self.run_id, s.duration, w.kv.async_writers, w.kv.strong_writers,
            w.kv.registers, w.kv.readers, w.kv.rate, w.kv.timeout_seconds), history,
            origin=origin)
        stop = asyncio.Event()
        runners = [FaultRunner(i, f, stack, self.chaos, now, stop,
                               lambda name: self._resolve(name, topology.zone_order(),
                                                          observers))
                   for i, f in enumerate(s.faults)]
        self.say(f"running up to {s.duration:g}s of workload with {len(runners)} fault(s)")
        watching = asyncio.create_task(observers.run())
        workloads: list[asyncio.Task[Any]] = [asyncio.create_task(chat.run())]
        if w.kv.enabled:
            workloads.append(asyncio.create_task(kv.run()))
        results: list[Any] = []
        try:
            results += await asyncio.gather(*(r.run() for r in runners), return_exceptions=True)
            healed = max((r.record.end or 0.0 for r in runners), default=0.0)
            await sleep_until(now, max(healed, now()) + w.cooldown_seconds, asyncio.Event())
        finally:
            stop.set()
            chat.stop()
            kv.stop()
            results += await asyncio.gather(*workloads, return_exceptions=True)
        self.workload_end = now()
        self.say("settling: waiting for health, replication and prepared transactions")
        settled = await self._settle(stack, store_urls, history if w.kv.enabled else None)
        observers.stop()
        await watching
        crashed = [r for r in results if isinstance(r, BaseException)]
        faults = [r.record for r in runners]
        if crashed:
            raise DrillError(f"the drill failed: {crashed[0]!r}") from crashed[0]
        data = self._data(timeline, faults, control, observers, settled)
        data.features = features
        if product.has("usage"):
            data.usage = {"before": usage_before, "after": await product.usage_totals()}
        data.kv_counts = history.counts()
        self._history = history
        return data, faults

    async def _await_ready(self, stack: LocalStack, control: ControlPlane) -> None:
        """Every node healthy, every zone in the LB's rotation (with weight, in active-active)
        and, with a control plane, a leader: a drill on a stack still recovering from something
        else would measure that instead."""
        deadline = time.monotonic() + READY_SECONDS
        while True:
            problems = await readiness_problems(stack, control)
            if not problems:
                return
            if time.monotonic() >= deadline:
                raise DrillError(f"the stack was not ready for a drill after {READY_SECONDS:g}s: "
                                 + "; ".join(problems))
            await asyncio.sleep(0.5)

    def _resolve(self, name: str, order: list[str], observers: Observers) -> tuple[str, str | None]:
        """A fault's zone: a name, ``@primary``, or ``@leader`` (with a note if it fell back)."""
        if name == "@primary":
            return order[0], f"@primary is {order[0]}"
        if name != "@leader":
            return name, None
        if not observers.control.present:
            return order[0], (f"no control plane: @leader fell back to the primary zone "
                              f"{order[0]}")
        deadline = time.monotonic() + LEADER_WAIT_SECONDS
        while (zone := observers.leader_zone()) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if zone is None:
            return order[0], f"no leader seen: @leader fell back to the primary zone {order[0]}"
        return zone, f"@leader is {zone} (term {max(c.term for c in observers.claims)})"

    async def _settle(self, stack: LocalStack, store_urls: dict[str, str],
                      history: History | None) -> dict[str, Any]:
        deadline = time.monotonic() + self.scenario.slo.settle_seconds
        try:
            await asyncio.to_thread(stack.wait_healthy, self.scenario.slo.settle_seconds)
        except CrosszoneError as exc:
            self.notes.append(f"not every node was healthy after the drill: "
                              f"{str(exc).splitlines()[0]}")
        check: CheckResult | None = None
        kv_note = ""
        errors: dict[str, str] = {}
        if history is not None:
            while True:
                states, errors = await read_final_state(store_urls, self.run_id)
                check = check_history(history.ops, states)
                behind = sum(c.lost + c.unreplicated for c in check.classes.values())
                if (not errors and behind == 0) or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.5)
            if errors:
                kv_note = "stores not read: " + "; ".join(f"{z}: {e}" for z, e in errors.items())
        prepared = await await_no_prepared(store_urls, max(deadline, time.monotonic() + 1.0))
        return {"check": check, "kv_note": kv_note, "prepared": prepared,
                "kv_unread": sorted(errors)}

    def _data(self, timeline: Timeline, faults: list[FaultRecord], control: Any,
              observers: Observers, settled: dict[str, Any]) -> DrillData:
        slo = self.scenario.slo
        end = self.workload_end
        spans = [Span(f.label, f.start, f.end if f.end is not None else end)
                 for f in faults if f.start is not None]
        first = min((sp.start for sp in spans), default=self.scenario.baseline_seconds)
        p95, rate = baseline(timeline.records, first)
        limit = thresholds(p95, slo.latency_factor, slo.latency_floor_ms)
        recoveries = [recovery(timeline.records, e, limit, slo.bin_seconds, rate,
                               slo.stable_seconds)
                      for e in episodes(spans, end)]
        return DrillData(
            timeline=timeline, faults=faults, recoveries=recoveries, baseline_p95_ms=p95,
            threshold_ms=limit, duration=end, control=control,
            check=settled["check"], kv_note=settled["kv_note"],
            kv_unread=settled["kv_unread"], claims=observers.claims,
            control_samples=observers.control_samples,
            split_brain=check_split_brain(observers.claims, self._mode == "active-backup"),
            lb_events=observers.lb_events, control_events=observers.control_events,
            prepared=settled["prepared"])

    # --- after -----------------------------------------------------------------------------------

    def _finish(self, data: DrillData) -> DrillResult:
        verdicts = judge(self.scenario, data)
        meta = {"started_at": self.started_at, "run_dir": str(self.run_dir),
                "attached": self.attach, "short": self.short, "run_id": self.run_id}
        document = report_document(self.scenario, data, verdicts, meta)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DrillError(f"cannot create {self.out}: {exc.strerror}") from exc
        image: str | None = "timeline.png"
        try:
            write_timeline(self.out / "timeline.png", data,
                           f"{self.scenario.name}: {'PASSED' if passed(verdicts) else 'FAILED'}",
                           self.scenario.slo.bin_seconds)
        except DrillError as exc:
            data.notes.append(str(exc))
            image = None
        write_json(self.out / "report.json", document)
        write_history(self.out / "history.jsonl", self._history)
        write_markdown(self.out / "report.md", document, image)
        return DrillResult(self.scenario, self.out, passed(verdicts), verdicts, document)
