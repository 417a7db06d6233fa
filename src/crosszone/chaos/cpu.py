"""CPU full load of one zone: burners and the zone's processes share one CFS-capped cgroup.

``chaos create cpu fullload --zone Z --workers N --cpu-percent P`` creates the cgroup v1 cpu
group ``<cpu mount>/crosszone_chaos/<uid>`` with ``cpu.cfs_quota_us = N × P % × period`` (the
zone's CPU allowance: N CPUs at P %), starts N burner processes that spin flat out inside it, and
moves every process of the zone into the same group. Burners and zone processes then compete
inside the zone's quota, as a zone's processes compete with a load on their own hosts, while the
other zones (outside the group) keep the rest of the machine: the load stays in the zone.

Removal kills the burners (by pid, after checking each is this experiment's burner), moves every
zone process back to the cpu cgroup it came from, and removes the group. A process the
supervisor restarts during the experiment starts outside the group (it is a child of the
supervisor), so it is not loaded; the experiment loads the processes that ran when it began.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

from crosszone.chaos.base import FaultInjector
from crosszone.chaos.nft import require_root
from crosszone.chaos.procs import alive, helper_argv, is_helper, spawn_detached, wait_gone
from crosszone.errors import ChaosError, InvalidExperiment

PERIOD_US = 100_000
GROUP_PARENT = "crosszone_chaos"
NEEDS_ROOT = "cpu faults need root (cgroup cpu controller)"
BURNER_JOIN_SECONDS = 5.0


def cpu_cgroup_root() -> Path:
    """Mount point of the cgroup v1 hierarchy that has the cpu controller."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError as exc:
        raise ChaosError("cannot read /proc/self/mountinfo") from exc
    for line in lines:
        pre, _, post = line.partition(" - ")
        fields, post_fields = pre.split(), post.split()
        if len(post_fields) >= 3 and post_fields[0] == "cgroup" and \
                "cpu" in post_fields[2].split(","):
            return Path(fields[4])
    raise ChaosError("cpu faults need the cgroup v1 cpu controller, which is not mounted here")


def cgroup_of(pid: int, root: Path) -> Path | None:
    """The cpu cgroup directory ``pid`` is in (None if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return root / path.lstrip("/")
    return None


def procs_in(group: Path) -> list[int]:
    try:
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def move(pid: int, group: Path) -> bool:
    try:
        (group / "cgroup.procs").write_text(f"{pid}\n")
    except ProcessLookupError:
        return False
    except OSError as exc:
        if not alive(pid):
            return False
        raise ChaosError(f"cannot move pid {pid} into {group}: {exc.strerror}") from exc
    return True


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuFullload(FaultInjector):
    kind = "cpu-fullload"

    def __init__(self, uid: str, spec: dict[str, Any]) -> None:
        super().__init__(uid, spec)
        self.workers = int(spec.get("workers", 1))
        self.percent = int(spec.get("percent", 100))
        pids = spec.get("pids") or []
        self.pids = [int(p) for p in pids] if isinstance(pids, list) else []
        if not 1 <= self.workers <= 64 or not 1 <= self.percent <= 100:
            raise InvalidExperiment(f"--workers must be 1..64 and --cpu-percent 1..100 "
                             f"(got {self.workers}, {self.percent})")

    @property
    def quota_us(self) -> int:
        return max(1000, self.workers * self.percent * PERIOD_US // 100)

    def group(self) -> Path:
        saved = self.state.get("cgroup")
        if isinstance(saved, str):
            return Path(saved)
        return cpu_cgroup_root() / GROUP_PARENT / self.uid

    def burner_pids(self) -> list[int]:
        saved = self.state.get("burners") or []
        return [int(p) for p in saved] if isinstance(saved, list) else []

    def _apply(self) -> None:
        require_root(NEEDS_ROOT)
        group = self.group()
        self.state["cgroup"] = str(group)
        self.checkpoint()
        try:
            group.mkdir(parents=True, exist_ok=True)
            (group / "cpu.cfs_period_us").write_text(f"{PERIOD_US}\n")
            (group / "cpu.cfs_quota_us").write_text(f"{self.quota_us}\n")
        except OSError as exc:
            raise ChaosError(f"cannot set up cgroup {group}: {exc.strerror}") from exc
        self._move_zone_processes(group)
        args = ["--cgroup", str(group)]
        if self.spec.get("until") is not None:
            args += ["--until", str(float(self.spec["until"]))]
        log = self.spec.get("log")
        burners: list[int] = []
        self.state["burners"] = burners
        for _ in range(self.workers):
            burners.append(spawn_detached(helper_argv("burner", self.uid, *args),
                                          Path(log) if isinstance(log, str) else None))
            self.checkpoint()
        deadline = time.monotonic() + BURNER_JOIN_SECONDS
        while not set(burners) <= set(procs_in(group)):
            if time.monotonic() > deadline or not all(alive(p) for p in burners):
                raise ChaosError(f"the burners did not join cgroup {group}")
            time.sleep(0.01)

    def _move_zone_processes(self, group: Path) -> None:
        root = cpu_cgroup_root()
        moved: dict[str, str] = {}
        self.state["moved"] = moved
        for pid in self.pids:
            origin = cgroup_of(pid, root)
            if origin is None:
                continue
            moved[str(pid)] = str(origin)
            self.checkpoint()
            move(pid, group)

    def _remove(self) -> None:
        group = self.group()
        burners = [p for p in set(self.burner_pids()) | set(procs_in(group))
                   if is_helper(p, "burner", self.uid)]
        for pid in burners:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if wait_gone(burners, 5.0):
            raise ChaosError(f"burners of {self.uid} do not die")
        if not group.exists():
            return
        root = cpu_cgroup_root()
        moved = self.state.get("moved")
        origins = {int(p): Path(o) for p, o in moved.items()} if isinstance(moved, dict) else {}
        origins = {p: (o if o.is_dir() else root) for p, o in origins.items()}
        for pid, origin in origins.items():
            if pid in procs_in(group):
                move(pid, origin)
        fallback = next(iter(origins.values()), root)
        for pid in procs_in(group):  # children the zone's processes forked while inside
            move(pid, fallback)
        try:
            group.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ChaosError(f"cannot remove cgroup {group}: {exc.strerror}") from exc
        with contextlib.suppress(OSError):
            group.parent.rmdir()  # only succeeds once no experiment uses it

    def _active(self) -> bool:
        if any(is_helper(p, "burner", self.uid) for p in self.burner_pids()):
            return True
        with contextlib.suppress(ChaosError):
            return self.group().exists()
        return False

    def _describe(self) -> str:
        zone = self.spec.get("zone") or "the given processes"
        return (f"cpu full load in {zone}: {self.workers} burner(s) and {len(self.pids)} zone "
                f"process(es) share a {self.workers} x {self.percent} % CPU quota")
