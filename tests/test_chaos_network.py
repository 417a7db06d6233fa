"""Network faults measured on real sockets in 127.0.115.0/24-127.0.118.0/24.

Loss 100 % is a blackhole (connections time out, even to a closed port: no reset), a percentage
drops about that share, a partition cuts exactly the pairs it names, and delay adds the
configured latency in each direction. Every test ends with no rule left in the table.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crosszone.chaos import Chaos
from crosszone.chaos.nft import NftTable
from crosszone.chaos.procs import wait_gone
from crosszone.config import parse_topology

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network faults need root (nftables); CI is root"),
    pytest.mark.skipif(shutil.which("nft") is None and not os.path.exists("/usr/sbin/nft"),
                       reason="nft is not installed (apt-get install nftables)"),
]

ZONES = {"z115": "127.0.115.0/24", "z116": "127.0.116.0/24", "z117": "127.0.117.0/24",
         "z118": "127.0.118.0/24"}
CLIENT = "127.0.0.1"
PORT = 17115
SHORT = 0.3  # a connection attempt that has not succeeded by then is blocked


@pytest.fixture
def chaos(tmp_path: Path) -> Iterator[Chaos]:
    topology = parse_topology({"zones": [{"name": n, "subnet": s} for n, s in ZONES.items()]})
    chaos = Chaos(tmp_path / "run", topology=topology)
    yield chaos
    uids = {e.uid for e in chaos.status()}
    chaos.destroy_all()
    assert not uids & NftTable().experiment_uids(), "rules left in table inet crosszone_chaos"
    assert chaos.leftovers() == []


class Servers:
    """TCP listeners that answer every message with the time it arrived (monotonic, ns)."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.stop = threading.Event()

    def listen(self, host: str, port: int = PORT) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((host, port))
        srv.listen(16)
        srv.settimeout(0.2)
        self.sockets.append(srv)
        thread = threading.Thread(target=self._accept, args=(srv,), daemon=True)
        thread.start()
        self.threads.append(thread)

    def _accept(self, srv: socket.socket) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = srv.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._echo_time, args=(conn,), daemon=True).start()

    def _echo_time(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(5.0)
        with conn:
            while not self.stop.is_set():
                try:
                    data = conn.recv(8)
                except OSError:
                    return
                if not data:
                    return
                arrived = time.monotonic_ns()
                with contextlib.suppress(OSError):
                    conn.sendall(struct.pack("!qq", arrived, time.monotonic_ns()))

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=2.0)
        for srv in self.sockets:
            srv.close()


@pytest.fixture
def servers() -> Iterator[Servers]:
    s = Servers()
    yield s
    s.close()


def connects(dst: str, src: str | None = None, port: int = PORT,
             timeout: float = SHORT) -> str:
    """"ok", "refused" or "timeout" for one connection attempt."""
    sock = socket.socket()
    sock.settimeout(timeout)
    try:
        if src is not None:
            sock.bind((src, 0))
        sock.connect((dst, port))
        return "ok"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    finally:
        sock.close()


def test_blackhole_drops_silently_and_is_removed(chaos: Chaos, servers: Servers) -> None:
    servers.listen("127.0.115.10")
    assert connects("127.0.115.10") == "ok"
    assert connects("127.0.115.10", port=PORT + 1) == "refused"  # nothing listens there

    exp = chaos.network_loss("z115", percent=100)
    assert exp.status == "active" and chaos.is_active(exp.uid)
    assert connects("127.0.115.10") == "timeout"
    assert connects("127.0.115.10", port=PORT + 1) == "timeout"  # no reset: the SYN vanished
    assert connects("127.0.116.10", src="127.0.115.20") in ("timeout",)  # from the zone too
    chaos.destroy(exp.uid)

    assert connects("127.0.115.10") == "ok"
    assert connects("127.0.115.10", port=PORT + 1) == "refused"
    listing = subprocess.run(["nft", "list", "table", "inet", "crosszone_chaos"],
                             capture_output=True, text=True, check=False)
    assert exp.uid not in listing.stdout
    assert exp.uid not in NftTable().experiment_uids()
    assert chaos.status(exp.uid)[0].status == "destroyed"


def _udp_delivery(src: str, dst: str, count: int) -> float:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: keep every datagram
        rx.bind((dst, 0))
        rx.setblocking(False)
        tx.bind((src, 0))
        for i in range(count):
            tx.sendto(struct.pack("!I", i), rx.getsockname())
        time.sleep(0.05)
        got = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                rx.recv(16)
                got += 1
        return got / count
    finally:
        rx.close()
        tx.close()


def test_percent_loss_drops_about_that_share_only_towards_the_peer(chaos: Chaos) -> None:
    assert _udp_delivery("127.0.115.20", "127.0.116.10", 200) == 1.0
    chaos.network_loss("z115", percent=30, peer_zone="z116")
    share = _udp_delivery("127.0.115.20", "127.0.116.10", 800)
    assert 0.58 <= share <= 0.82, f"delivered {share:.0%} with 30 % loss"
    back = _udp_delivery("127.0.116.20", "127.0.115.10", 800)
    assert 0.58 <= back <= 0.82, f"delivered {back:.0%} the other way"
    assert _udp_delivery("127.0.117.20", "127.0.116.10", 300) == 1.0  # not the peer: untouched
    inside = _udp_delivery("127.0.115.20", "127.0.115.10", 300)
    assert inside == 1.0  # within the zone: not between zone and peer


def test_partition_cuts_the_zone_from_others_and_clients(chaos: Chaos, servers: Servers) -> None:
    for host in ("127.0.115.10", "127.0.116.10", "127.0.117.10"):
        servers.listen(host)
    exp = chaos.network_partition(["z115"])
    assert connects("127.0.115.10", src="127.0.116.20") == "timeout"
    assert connects("127.0.116.10", src="127.0.115.20") == "timeout"
    assert connects("127.0.115.10", src=CLIENT) == "timeout"  # clients and the LB too
    assert connects("127.0.115.10", src="127.0.115.20") == "ok"  # inside the zone
    assert connects("127.0.117.10", src="127.0.116.20") == "ok"  # the rest still talk
    assert connects("127.0.117.10", src=CLIENT) == "ok"
    chaos.destroy(exp.uid)
    assert connects("127.0.115.10", src="127.0.116.20") == "ok"


def test_partition_between_zone_sets_can_spare_clients(chaos: Chaos, servers: Servers) -> None:
    for host in ("127.0.115.10", "127.0.116.10", "127.0.117.10"):
        servers.listen(host)
    chaos.network_partition(["z115", "z116"], other_zones=["z117"], include_clients=False)
    assert connects("127.0.117.10", src="127.0.115.20") == "timeout"
    assert connects("127.0.116.10", src="127.0.117.20") == "timeout"
    assert connects("127.0.116.10", src="127.0.115.20") == "ok"  # same side
    assert connects("127.0.115.10", src=CLIENT) == "ok"
    assert connects("127.0.117.10", src="127.0.118.20") == "ok"  # z118 is on neither side


def _one_way_ms(sock: socket.socket) -> tuple[float, float]:
    """(client -> server, server -> client) latency of one exchange, in ms."""
    sent = time.monotonic_ns()
    sock.sendall(b"12345678")
    data = b""
    while len(data) < 16:
        chunk = sock.recv(16 - len(data))
        assert chunk, "connection closed"
        data += chunk
    received = time.monotonic_ns()
    arrived, replied = struct.unpack("!qq", data)
    return (arrived - sent) / 1e6, (received - replied) / 1e6


def test_delay_adds_latency_in_both_directions(chaos: Chaos, servers: Servers) -> None:
    servers.listen("127.0.116.10")
    sock = socket.create_connection(("127.0.116.10", PORT), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        up, down = _one_way_ms(sock)
        assert up < 20 and down < 20

        exp = chaos.network_delay("z116", time_ms=80, offset_ms=10)
        samples = [_one_way_ms(sock) for _ in range(7)]  # a connection open before the fault
        for direction, values in (("client -> zone", [u for u, _ in samples]),
                                  ("zone -> client", [d for _, d in samples])):
            # Never earlier than time - offset; late only by scheduling on a busy machine.
            assert min(values) >= 69, f"{direction}: {values}, want 80 ± 10 ms"
            assert 70 <= statistics.median(values) <= 105, f"{direction}: {values}"
            assert max(values) <= 200, f"{direction}: {values}"

        started = time.monotonic()  # a new connection: SYN and SYN-ACK are delayed once each
        assert connects("127.0.116.10", timeout=2.0) == "ok"
        assert 0.14 <= time.monotonic() - started <= 0.6

        chaos.destroy(exp.uid)
        up, down = _one_way_ms(sock)
        assert up < 20 and down < 20
    finally:
        sock.close()


def test_dead_delayer_fails_open(chaos: Chaos, servers: Servers) -> None:
    servers.listen("127.0.116.10")
    exp = chaos.network_delay("z116", time_ms=200)
    pid = chaos.status(exp.uid)[0].state["delayer_pid"]
    os.kill(pid, signal.SIGKILL)
    assert wait_gone([pid], 3.0) == []
    started = time.monotonic()
    assert connects("127.0.116.10", timeout=2.0) == "ok"  # bypass: no listener, no delay
    assert time.monotonic() - started < 0.15  # a delayed handshake would take 0.4 s
    assert chaos.is_active(exp.uid)  # the rules are still there until destroyed
