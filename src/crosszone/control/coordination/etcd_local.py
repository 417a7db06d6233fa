"""Command lines for a local etcd cluster: one member per zone, on the controller's address.

The runtime (and the tests) start these with ``etcd`` from Debian's ``etcd-server`` package.
Timings are tightened from etcd's defaults (heartbeat 100 ms / election 1000 ms) so a lost member
leader is replaced in about half a second on loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from crosszone.errors import RuntimeStateError


@dataclass(frozen=True)
class EtcdMember:
    name: str
    host: str
    client_port: int = 2379
    peer_port: int = 2380

    @property
    def client_url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"


def etcd_binary() -> str | None:
    """Path of the ``etcd`` server binary, or None when it is not installed."""
    return shutil.which("etcd") or (
        "/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)


def member_command(member: EtcdMember, cluster: list[EtcdMember], data_dir: Path, *,
                   binary: str = "etcd", token: str = "crosszone", heartbeat_ms: int = 100,
                   election_ms: int = 500) -> list[str]:
    """The command line that starts ``member`` as part of a brand-new ``cluster``."""
    initial = ",".join(f"{m.name}={m.peer_url}" for m in cluster)
    return [
        binary,
        "--name", member.name,
        "--data-dir", str(data_dir),
        "--listen-client-urls", member.client_url,
        "--advertise-client-urls", member.client_url,
        "--listen-peer-urls", member.peer_url,
        "--initial-advertise-peer-urls", member.peer_url,
        "--initial-cluster", initial,
        "--initial-cluster-state", "new",
        "--initial-cluster-token", token,
        "--heartbeat-interval", str(heartbeat_ms),
        "--election-timeout", str(election_ms),
        # A restarted member must not force an election (which re-arms every lease).
        "--pre-vote",
        "--logger", "zap",
        "--log-outputs", "stderr",
        "--log-level", "warn",
    ]


class LocalEtcdCluster:
    """Starts a brand-new local cluster (one process per member) and stops it by pid.

    Used by the tests, the leader benchmark and (for the etcd backend) the local runtime.
    """

    def __init__(self, members: list[EtcdMember], data_dir: Path, *,
                 binary: str | None = None) -> None:
        found = binary or etcd_binary()
        if found is None:
            raise RuntimeStateError("etcd is not installed (Debian: apt-get install etcd-server)")
        self.binary = found
        self.members = members
        self.data_dir = data_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def member(self, name: str) -> EtcdMember:
        return next(m for m in self.members if m.name == name)

    def start(self, timeout: float = 20.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for m in self.members:
            self.start_member(m)
        deadline = time.monotonic() + timeout
        for m in self.members:
            while not self.healthy(m):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeStateError(f"etcd member {m.name} not healthy within "
                                            f"{timeout:g} s; see {self.data_dir}/{m.name}.log")
                time.sleep(0.05)

    def start_member(self, m: EtcdMember) -> None:
        log = (self.data_dir / f"{m.name}.log").open("ab")
        with log:
            self.procs[m.name] = subprocess.Popen(
                member_command(m, self.members, self.data_dir / m.name, binary=self.binary),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    @staticmethod
    def healthy(m: EtcdMember) -> bool:
        try:
            with urllib.request.urlopen(m.client_url + "/health", timeout=0.5) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def signal(self, name: str, sig: signal.Signals) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, sig)

    def stop(self, grace: float = 1.0) -> None:
        """SIGTERM every member (resuming frozen ones), SIGKILL what is left after ``grace``.

        The last members of a cluster wait for a quorum that is already gone before exiting,
        so a short grace period keeps shutdown fast.
        """
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.terminate()
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.procs.clear()

    def __enter__(self) -> LocalEtcdCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
