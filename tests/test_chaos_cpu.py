"""CPU full load: burners and the zone's processes share one CFS-capped cgroup, then vanish."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crosszone.chaos import Chaos
from crosszone.chaos.cpu import GROUP_PARENT, cgroup_of, cpu_cgroup_root, process_cpu_seconds
from crosszone.chaos.procs import alive
from crosszone.config import parse_topology
from crosszone.errors import ChaosError
from needs import missing

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="cpu faults need root (cgroup cpu controller); CI is root")


def _cgroup_root() -> Path:
    try:
        return cpu_cgroup_root()
    except ChaosError as exc:
        missing(str(exc))


@pytest.fixture
def chaos(tmp_path: Path) -> Iterator[Chaos]:
    topology = parse_topology({"zones": [{"name": "z115", "subnet": "127.0.115.0/24"},
                                         {"name": "z116", "subnet": "127.0.116.0/24"}]})
    chaos = Chaos(tmp_path / "run", topology=topology)
    yield chaos
    chaos.destroy_all()
    assert chaos.leftovers() == []


@pytest.fixture
def spawn() -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    """Start bounded stand-ins for a zone's processes; killed by pid afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(code: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", code])
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def _rate(pids: list[int], seconds: float) -> float:
    """CPUs used by ``pids`` together over the next ``seconds``."""
    before = sum(process_cpu_seconds(p) for p in pids)
    time.sleep(seconds)
    return (sum(process_cpu_seconds(p) for p in pids) - before) / seconds


SPIN = "import time\nend = time.time() + 15\nwhile time.time() < end: pass"


def test_fullload_burns_its_share_in_the_zone_and_is_removed(
        chaos: Chaos, spawn: Callable[[str], subprocess.Popen[bytes]]) -> None:
    root = _cgroup_root()
    zone_proc = spawn("import time; time.sleep(30)")
    origin = cgroup_of(zone_proc.pid, root)

    exp = chaos.cpu_fullload("z115", workers=2, cpu_percent=25, pids=[zone_proc.pid],
                             timeout=60)
    group = root / GROUP_PARENT / exp.uid
    burners = chaos.status(exp.uid)[0].state["burners"]
    assert len(burners) == 2 and all(alive(p) for p in burners)
    assert (group / "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert cgroup_of(zone_proc.pid, root) == group  # the zone's process is loaded too
    time.sleep(0.3)
    rate = _rate(burners, 1.5)
    # The cap is exact; the floor is loose because other load on a 2-core machine can starve
    # the burners below their quota (on an idle machine they use 0.48-0.5).
    assert 0.1 <= rate <= 0.65, f"burners used {rate:.2f} CPUs, want about 2 x 25 % = 0.5"

    chaos.destroy(exp.uid)
    assert not any(alive(p) for p in burners)
    assert not group.exists()
    assert cgroup_of(zone_proc.pid, root) == origin and zone_proc.poll() is None


def test_zone_processes_compete_inside_the_quota(
        chaos: Chaos, spawn: Callable[[str], subprocess.Popen[bytes]]) -> None:
    root = _cgroup_root()
    busy = spawn(SPIN)
    origin = cgroup_of(busy.pid, root)
    time.sleep(0.2)
    alone = _rate([busy.pid], 1.0)
    exp = chaos.cpu_fullload("z115", workers=1, cpu_percent=50, pids=[busy.pid], timeout=60)
    time.sleep(0.3)
    burners = chaos.status(exp.uid)[0].state["burners"]
    loaded = _rate([busy.pid], 1.5)
    together = _rate([busy.pid, *burners], 1.0)
    # The spinner now shares a 0.5-CPU quota with a burner: about 0.25 CPUs instead of ~1.
    assert loaded < min(0.4, 0.8 * alone), f"the zone's process got {loaded:.2f} CPUs " \
                                           f"under load, {alone:.2f} alone"
    assert together < 0.65, f"zone process + burner used {together:.2f} CPUs, quota 0.5"
    chaos.destroy(exp.uid)
    assert cgroup_of(busy.pid, root) == origin and busy.poll() is None


def test_timeout_stops_the_burners_without_anyone_calling_destroy(
        chaos: Chaos, spawn: Callable[[str], subprocess.Popen[bytes]]) -> None:
    root = _cgroup_root()
    zone_proc = spawn("import time; time.sleep(30)")
    exp = chaos.cpu_fullload("z115", workers=1, cpu_percent=10, pids=[zone_proc.pid],
                             timeout=1.0)
    burners = chaos.status(exp.uid)[0].state["burners"]
    deadline = time.monotonic() + 6
    while chaos.status(exp.uid)[0].status != "destroyed" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert chaos.status(exp.uid)[0].status == "destroyed"
    assert not any(alive(p) for p in burners)
    assert not (root / GROUP_PARENT / exp.uid).exists()
    assert cgroup_of(zone_proc.pid, root) != root / GROUP_PARENT / exp.uid
