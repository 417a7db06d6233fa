"""The FaultInjector contract, run against every injector.

Each must: apply completely, report itself active, describe itself, survive a round trip through
its record (another process can remove it), remove everything it created, be removable twice,
and leave nothing when applying fails half-way. Network and CPU injectors need root (CI is root);
process injectors run against a real local stack on 127.0.117.0/24-127.0.118.0/24.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crosszone.chaos.base import FaultInjector, injector_from_record
from crosszone.chaos.cpu import GROUP_PARENT, CpuFullload, cpu_cgroup_root
from crosszone.chaos.experiments import new_uid
from crosszone.chaos.network import NetworkDelay, NetworkLoss, NetworkPartition
from crosszone.chaos.nft import NftTable
from crosszone.chaos.process import ProcessFault, ZoneDown
from crosszone.errors import ChaosError
from needs import missing

IS_ROOT = os.geteuid() == 0
HAS_NFT = shutil.which("nft") is not None or os.path.exists("/usr/sbin/nft")

Z1, Z2, Z3 = "127.0.115.0/24", "127.0.116.0/24", "127.0.117.0/24"


class Boom(Exception):
    pass


def helper_pids(uid: str) -> list[int]:
    """Processes whose command line names ``uid`` (read-only scan of /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if uid.encode() in raw and state != "Z":
                found.append(int(entry.name))
    return found


def leftovers(uid: str) -> list[str]:
    left = []
    if IS_ROOT and HAS_NFT and uid in NftTable().experiment_uids():
        left.append("nft chains")
    try:
        if (cpu_cgroup_root() / GROUP_PARENT / uid).exists():
            left.append("cgroup")
    except ChaosError:
        pass
    left += [f"process {pid}" for pid in helper_pids(uid)]
    return left


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from stackutil import local_topology, start_stack

    return start_stack(request, tmp_path_factory.mktemp("chaos-contract-run"),
                       local_topology(first_octet=117, http_port=18717, https_port=18718,
                                      workers=2, zones=("ca", "cb")))


@pytest.fixture
def sleeper() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _net(kind: str) -> Callable[[], FaultInjector]:
    def make() -> FaultInjector:
        uid = new_uid()
        if kind == "loss":
            return NetworkLoss(uid, {"zone": "a", "subnets": [Z1], "percent": 100})
        if kind == "loss-peer":
            return NetworkLoss(uid, {"zone": "a", "subnets": [Z1], "percent": 40,
                                     "peer": "b", "peer_subnets": [Z2]})
        if kind == "partition":
            return NetworkPartition(uid, {"zones": ["a"], "subnets": [Z1],
                                          "other_subnets": [Z2, Z3], "include_clients": True})
        return NetworkDelay(uid, {"zone": "a", "subnets": [Z1], "time_ms": 20, "offset_ms": 5})
    return make


KINDS = ["loss", "loss-peer", "partition", "delay", "cpu", "process-kill", "process-stop",
         "zone-down"]


@pytest.fixture(params=KINDS)
def make_injector(request: pytest.FixtureRequest) -> Callable[[], FaultInjector]:
    kind: str = request.param
    if kind in ("loss", "loss-peer", "partition", "delay", "cpu"):
        if not IS_ROOT:
            pytest.skip("needs root (nftables, cgroups); CI runs as root")
        if kind != "cpu" and not HAS_NFT:
            missing("nft is not installed (apt-get install nftables)")
    if kind == "cpu":
        pid = request.getfixturevalue("sleeper")
        return lambda: CpuFullload(new_uid(), {"zone": "a", "workers": 1, "percent": 10,
                                               "pids": [pid], "until": None})
    if kind.startswith("process") or kind == "zone-down":
        stack = request.getfixturevalue("stack")
        run_dir = str(stack.run_dir.path)
        if kind == "zone-down":
            return lambda: ZoneDown(new_uid(), {"run_dir": run_dir, "zone": "cb"})
        signal = "KILL" if kind == "process-kill" else "STOP"
        return lambda: ProcessFault(new_uid(), {"run_dir": run_dir, "zone": "ca",
                                                "component": "worker", "signal": signal,
                                                "count": 1})
    return _net(kind)


def test_apply_remove_round_trip_leaves_nothing(make_injector: Callable[[], FaultInjector],
                                                request: pytest.FixtureRequest) -> None:
    injector = make_injector()
    request.addfinalizer(injector.remove)
    assert not injector.is_active()
    injector.apply()
    assert injector.is_active()
    assert isinstance(injector.describe(), str) and injector.describe()
    assert injector.uid in repr(injector)

    # Another process knows the fault only from its record: it must see and remove all of it.
    twin = injector_from_record(injector.uid, injector.to_record())
    assert type(twin) is type(injector)
    assert twin.is_active()
    twin.remove()
    assert not twin.is_active()
    assert not injector.is_active()
    twin.remove()  # idempotent
    injector.remove()
    assert leftovers(injector.uid) == []


def test_failure_half_way_through_apply_leaves_nothing(
        make_injector: Callable[[], FaultInjector], request: pytest.FixtureRequest) -> None:
    injector = make_injector()
    request.addfinalizer(injector.remove)
    calls: list[dict[str, Any]] = []

    def crash(fault: FaultInjector) -> None:
        calls.append(dict(fault.state))
        raise Boom("crash after the first step")

    injector.on_checkpoint = crash
    if not injector.kind.startswith("network-") or injector.kind == "network-delay":
        with pytest.raises(Boom):
            injector.apply()
        assert calls, "the injector records its state before the steps that create things"
    else:  # loss and partition are one nft transaction: nothing to checkpoint, nothing half-done
        injector.apply()
        injector.remove()
    assert not injector.is_active()
    assert leftovers(injector.uid) == []


def test_unknown_kind_and_bad_uid_are_refused() -> None:
    with pytest.raises(ChaosError):
        injector_from_record("abc", {"kind": "no-such-fault", "spec": {}})
    with pytest.raises(ChaosError):
        NetworkLoss("not a uid!", {"subnets": [Z1]})
