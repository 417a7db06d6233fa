"""Network faults: loss (100 % is a blackhole), partition, and delay.

All three are rules in ``table inet crosszone_chaos`` (see :mod:`crosszone.chaos.nft`) matching
a zone's subnet in both directions: packets *from* the zone's addresses (answers of its
listeners, connections its processes open from their own address) and packets *to* them.

Loss and partition drop in the kernel at prerouting: the sender sees nothing (no reset, no ICMP),
so a connection attempt times out instead of being refused. A percentage below 100 drops each
packet independently with ``numgen random mod 100 < P``; a packet that matches both directions
(inside the zone) still gets one draw, because the matches ``goto`` one verdict chain.

Delay: the kernel here has neither tc netem nor nft's ``queue`` expression, so the fallback is
NFQUEUE through the xtables target (nft_compat) inside our own table, feeding a userspace
delayer (:mod:`crosszone.chaos.delayer`) that holds each packet ``time ± offset`` ms and then
accepts it. Every packet to or from the zone is held once, so a request/response exchange with
the zone takes ``2 × time`` longer, exactly as netem on the zone's link in each direction would
make it; established connections are delayed too (it works per packet, not per connection). The
queue rule carries the bypass flag: if the delayer dies, traffic passes undelayed rather than
being cut.
"""

from __future__ import annotations

import os
import select
import time
import zlib
from pathlib import Path
from typing import Any

from crosszone.chaos.base import FaultInjector
from crosszone.chaos.nfnetlink import add_queue_rule
from crosszone.chaos.nft import (
    TABLE,
    NftTable,
    addresses,
    loopback_net,
    nft_binary,
    require_root,
    tag,
)
from crosszone.chaos.procs import alive, helper_argv, is_helper, spawn_detached, stop_helpers
from crosszone.errors import ChaosError, InvalidExperiment

FIRST_QUEUE = 31000
DELAYER_READY_SECONDS = 5.0


def _subnets(spec: dict[str, Any], key: str) -> list[str]:
    value = spec.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ChaosError(f"{key} must be a list of subnets (got {value!r})")
    for subnet in value:
        loopback_net(subnet)
    return list(value)


def _where(name: object, subnets: list[str]) -> str:
    return f"{name} ({', '.join(subnets)})" if name else ", ".join(subnets)


def _direction_matches(subnets: list[str], peer_subnets: list[str]) -> list[str]:
    """nft match prefixes for 'to or from the zone' (or 'between the zone and the peer')."""
    zone = addresses(subnets)
    if not peer_subnets:
        return [f"ip saddr {zone}", f"ip daddr {zone}"]
    peer = addresses(peer_subnets)
    overlap = {loopback_net(a) for a in subnets} & {loopback_net(b) for b in peer_subnets}
    if overlap:
        raise InvalidExperiment("a zone cannot be its own peer")
    return [f"ip saddr {zone} ip daddr {peer}", f"ip saddr {peer} ip daddr {zone}"]


class _NftFault(FaultInjector):
    """Shared by faults that are only nft rules."""

    def __init__(self, uid: str, spec: dict[str, Any]) -> None:
        super().__init__(uid, spec)
        self.table = NftTable()

    def _active(self) -> bool:
        return self.table.has_experiment(self.uid)

    def _remove(self) -> None:
        self.table.remove_experiment(self.uid)


class NetworkLoss(_NftFault):
    """Drop ``percent`` % of packets to and from a zone (or between it and one peer zone)."""

    kind = "network-loss"

    def __init__(self, uid: str, spec: dict[str, Any]) -> None:
        super().__init__(uid, spec)
        self.subnets = _subnets(spec, "subnets")
        self.peer_subnets = _subnets(spec, "peer_subnets")
        self.percent = int(spec.get("percent", 100))
        if not 1 <= self.percent <= 100:
            raise InvalidExperiment(f"--percent must be 1..100 (got {self.percent})")
        _direction_matches(self.subnets, self.peer_subnets)

    def _apply(self) -> None:
        require_root()
        nft_binary()
        matches = _direction_matches(self.subnets, self.peer_subnets)
        if self.percent >= 100:
            self.table.add_experiment(self.uid, "drop", [f"{m} drop" for m in matches])
            return
        # One random draw per packet even when it matches both directions.
        self.table.add_chains(self.uid, {
            "l": [f"numgen random mod 100 < {self.percent} drop"],
            "x": [f"{m} goto l_{self.uid}" for m in matches],
        })
        self.table.attach(self.uid, "drop", "x")

    def _describe(self) -> str:
        what = "blackhole (drop 100 %)" if self.percent >= 100 else f"drop {self.percent} %"
        zone = _where(self.spec.get("zone"), self.subnets)
        if self.peer_subnets:
            return f"{what} of packets between {zone} and " \
                   f"{_where(self.spec.get('peer'), self.peer_subnets)}"
        return f"{what} of packets to and from {zone}"


class NetworkPartition(_NftFault):
    """Cut a set of zones off from other zones and, unless told otherwise, from clients and LB.

    ``subnets``: the isolated side. ``other_subnets``: the zones it is cut from.
    ``include_clients``: also cut it from every loopback address outside ``zone_subnets`` (all
    the topology's zones), which is where clients and the load balancer live.
    """

    kind = "network-partition"

    def __init__(self, uid: str, spec: dict[str, Any]) -> None:
        super().__init__(uid, spec)
        self.subnets = _subnets(spec, "subnets")
        self.other_subnets = _subnets(spec, "other_subnets")
        self.zone_subnets = _subnets(spec, "zone_subnets") or self.subnets + self.other_subnets
        self.include_clients = bool(spec.get("include_clients", True))
        if not self.other_subnets and not self.include_clients:
            raise InvalidExperiment("a partition needs other zones or clients on the far side")
        self._rules()

    def _rules(self) -> list[str]:
        side = addresses(self.subnets)
        rules = []
        if self.other_subnets:
            rules += [f"{m} drop" for m in _direction_matches(self.subnets, self.other_subnets)]
        if self.include_clients:
            zones = addresses(self.zone_subnets)
            rules += [f"ip saddr {side} ip daddr != {zones} ip daddr 127.0.0.0/8 drop",
                      f"ip daddr {side} ip saddr != {zones} ip saddr 127.0.0.0/8 drop"]
        return rules

    def _apply(self) -> None:
        require_root()
        nft_binary()
        self.table.add_experiment(self.uid, "drop", self._rules())

    def _describe(self) -> str:
        side = _where(",".join(self.spec.get("zones") or []), self.subnets)
        far = []
        if self.other_subnets:
            far.append(_where(",".join(self.spec.get("other_zones") or []), self.other_subnets))
        if self.include_clients:
            far.append("clients and the load balancer")
        return f"partition {side} from {' and '.join(far)}"


class NetworkDelay(_NftFault):
    """Hold every packet to and from a zone ``time_ms ± offset_ms`` (NFQUEUE delayer)."""

    kind = "network-delay"

    def __init__(self, uid: str, spec: dict[str, Any]) -> None:
        super().__init__(uid, spec)
        self.subnets = _subnets(spec, "subnets")
        self.peer_subnets = _subnets(spec, "peer_subnets")
        self.time_ms = float(spec.get("time_ms", 0))
        self.offset_ms = float(spec.get("offset_ms", 0))
        if not 0 < self.time_ms <= 60_000 or not 0 <= self.offset_ms <= self.time_ms:
            raise InvalidExperiment(f"--time must be 1..60000 ms and --offset 0..time "
                             f"(got {self.time_ms:g}, {self.offset_ms:g})")
        _direction_matches(self.subnets, self.peer_subnets)

    def _apply(self) -> None:
        require_root()
        nft_binary()
        queue = self._start_delayer()
        matches = _direction_matches(self.subnets, self.peer_subnets)
        self.table.add_chains(self.uid, {"q": [], "x": [f"{m} goto q_{self.uid}"
                                                        for m in matches]})
        add_queue_rule(TABLE, f"q_{self.uid}", queue, tag(self.uid))
        self.table.attach(self.uid, "delay", "x")

    def _start_delayer(self) -> int:
        first = FIRST_QUEUE + zlib.crc32(self.uid.encode()) % 900
        read_fd, write_fd = os.pipe()
        args = ["--time", f"{self.time_ms:g}", "--offset", f"{self.offset_ms:g}",
                "--first-queue", str(first), "--ready-fd", str(write_fd)]
        if self.spec.get("until") is not None:
            args += ["--until", str(float(self.spec["until"]))]
        log = self.spec.get("log")
        try:
            pid = spawn_detached(helper_argv("delayer", self.uid, *args),
                                 Path(log) if isinstance(log, str) else None,
                                 pass_fds=(write_fd,))
            os.close(write_fd)
            write_fd = -1
            self.state["delayer_pid"] = pid
            self.checkpoint()
            line = _read_line(read_fd, DELAYER_READY_SECONDS)
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)
        if not line.startswith("queue "):
            raise ChaosError(f"the delayer did not start: {line or 'no answer'}")
        queue = int(line.split()[1])
        self.state["queue"] = queue
        self.checkpoint()
        return queue

    def _remove(self) -> None:
        super()._remove()  # rules first: nothing new is queued once they are gone
        pid = self.state.get("delayer_pid")
        if isinstance(pid, int):
            left = stop_helpers([pid], "delayer", self.uid)
            if left:
                raise ChaosError(f"delayer pid {pid} of {self.uid} does not stop")

    def _active(self) -> bool:
        pid = self.state.get("delayer_pid")
        helper = isinstance(pid, int) and alive(pid) and is_helper(pid, "delayer", self.uid)
        return helper or super()._active()

    def _describe(self) -> str:
        jitter = f" ± {self.offset_ms:g}" if self.offset_ms else ""
        zone = _where(self.spec.get("zone"), self.subnets)
        scope = (f"between {zone} and {_where(self.spec.get('peer'), self.peer_subnets)}"
                 if self.peer_subnets else f"to and from {zone}")
        return f"delay packets {scope} by {self.time_ms:g}{jitter} ms (NFQUEUE delayer)"


def _read_line(fd: int, timeout: float) -> str:
    """One line from a pipe, or what arrived before ``timeout`` / end of file."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 256)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()
