"""A 3-member etcd cluster on 127.0.110.1-3 for tests, stopped by pid in the finalizer."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from crosszone.control.coordination.etcd_local import EtcdMember, LocalEtcdCluster, etcd_binary

ETCD_HOSTS = ("127.0.110.1", "127.0.110.2", "127.0.110.3")
SKIP_REASON = "etcd is not installed (Debian: apt-get install -y etcd-server)"


def have_etcd() -> bool:
    return etcd_binary() is not None


def port_free_on_all(hosts: tuple[str, ...], port: int) -> bool:
    for host in hosts:
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_common_port(hosts: tuple[str, ...], start: int, stop: int,
                     avoid: set[int] | None = None) -> int:
    """A TCP port free on every host (members share a port number on different addresses)."""
    for port in range(start, stop):
        if port not in (avoid or set()) and port_free_on_all(hosts, port):
            return port
    raise RuntimeError(f"no free port in {start}..{stop} on {hosts}")


@contextmanager
def etcd_cluster(data_dir: Path, hosts: tuple[str, ...] = ETCD_HOSTS) -> Iterator[LocalEtcdCluster]:
    client = free_common_port(hosts, 23790, 23890)
    peer = free_common_port(hosts, 23890, 23990, {client})
    members = [EtcdMember(f"m{i + 1}", host, client, peer) for i, host in enumerate(hosts)]
    cluster = LocalEtcdCluster(members, data_dir)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
