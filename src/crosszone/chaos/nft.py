"""Every network rule crosszone injects lives in one nftables table of its own.

Layout of ``table inet crosszone_chaos``::

    chain drop_prerouting  { type filter hook prerouting priority -300; }  # loss, partition
    chain delay_prerouting { type filter hook prerouting priority -290; }  # delay (after drops)
    chain x_<uid> { ...the experiment's matches and verdicts... }
    chain q_<uid> { NFQUEUE ... }                                          # delay only

Each experiment owns the chains whose names end in ``_<uid>`` and exactly one jump rule in a base
chain, commented ``crosszone-chaos:<uid>``; removal deletes those and nothing else, in one
transaction, and the table itself goes once no experiment is left in it. Locally every packet
crosses ``lo`` and so passes prerouting exactly once, which is why one hook suffices (and why a
percentage of loss is not applied twice).

Safety: rules only ever name addresses inside 127.0.0.0/8 (:func:`loopback_net` refuses anything
else, and anything containing 127.0.0.1, the host's own loopback address and the LB's), and the
host's other tables are never read or written.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from crosszone.errors import ChaosError, ChaosPermissionError

TABLE = "crosszone_chaos"
FAMILY = "inet"
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
HOST_LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
BASE_CHAINS = {"drop": ("drop_prerouting", -300), "delay": ("delay_prerouting", -290)}
NEEDS_ROOT = "network faults need root (nftables)"


def tag(uid: str) -> str:
    return f"crosszone-chaos:{uid}"


def require_root(message: str = NEEDS_ROOT) -> None:
    if os.geteuid() != 0:
        raise ChaosPermissionError(message)


def nft_binary() -> str:
    path = shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None)
    if path is None:
        raise ChaosError("network faults need the nft command (apt-get install nftables)")
    return path


def loopback_net(subnet: str) -> ipaddress.IPv4Network:
    """``subnet`` as a network, refused unless it is a zone's piece of 127.0.0.0/8."""
    try:
        net = ipaddress.IPv4Network(subnet, strict=False)
    except ValueError as exc:
        raise ChaosError(f"not an IPv4 subnet: {subnet!r}") from exc
    if not net.subnet_of(LOOPBACK) or HOST_LOOPBACK in net:
        raise ChaosError(f"chaos rules only match zone subnets inside 127.0.0.0/8 that leave "
                         f"127.0.0.1 alone (got {net})")
    return net


def addresses(subnets: Iterable[str]) -> str:
    """An nft address expression for one or more checked subnets."""
    nets = sorted({loopback_net(s) for s in subnets})
    if not nets:
        raise ChaosError("a network fault needs at least one subnet")
    return str(nets[0]) if len(nets) == 1 else "{ " + ", ".join(map(str, nets)) + " }"


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Serialize table changes of every crosszone process on this host (add vs. prune races)."""
    lock_dir = Path("/run/lock") if os.access("/run/lock", os.W_OK) else Path(tempfile.gettempdir())
    fd = os.open(lock_dir / "crosszone-chaos-nft.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class NftTable:
    """The project's own nftables table, driven through ``nft -f`` and ``nft -j``."""

    def __init__(self, name: str = TABLE) -> None:
        self.name = name
        self.ref = f"{FAMILY} {name}"

    # --- nft ------------------------------------------------------------------------------------

    def run(self, script: str) -> None:
        require_root()
        proc = subprocess.run([nft_binary(), "-f", "-"], input=script, capture_output=True,
                              text=True, timeout=30, check=False)
        if proc.returncode != 0:
            message = proc.stderr.strip() or f"nft exited with {proc.returncode}"
            if "Operation not permitted" in message:
                raise ChaosPermissionError(NEEDS_ROOT)
            raise ChaosError(f"nft refused the chaos rules: {message}")

    def listing(self) -> list[dict[str, Any]]:
        """The table's objects as nft's JSON (chains and rules); [] when the table is absent."""
        require_root()
        proc = subprocess.run([nft_binary(), "-j", "list", "table", FAMILY, self.name],
                              capture_output=True, text=True, timeout=30, check=False)
        if proc.returncode != 0:
            if "No such file or directory" in proc.stderr:
                return []
            raise ChaosError(f"cannot list nft table {self.ref}: {proc.stderr.strip()}")
        try:
            items = json.loads(proc.stdout)["nftables"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ChaosError(f"nft printed unreadable JSON for {self.ref}") from exc
        return [item for item in items if isinstance(item, dict)]

    # --- experiments ----------------------------------------------------------------------------

    def _prelude(self) -> list[str]:
        lines = [f"add table {self.ref}"]
        for chain, priority in BASE_CHAINS.values():
            lines.append(f"add chain {self.ref} {chain} {{ type filter hook prerouting "
                         f"priority {priority}; policy accept; }}")
        return lines

    def _chain_lines(self, uid: str, chains: dict[str, list[str]]) -> list[str]:
        lines = []
        for prefix in chains:
            lines.append(f"add chain {self.ref} {prefix}_{uid}")
        for prefix, rules in chains.items():
            lines += [f'add rule {self.ref} {prefix}_{uid} {rule} comment "{tag(uid)}"'
                      for rule in rules]
        return lines

    def _jump_line(self, uid: str, stage: str, prefix: str) -> str:
        base = BASE_CHAINS[stage][0]
        return f'add rule {self.ref} {base} jump {prefix}_{uid} comment "{tag(uid)}"'

    def add_experiment(self, uid: str, stage: str, rules: list[str]) -> None:
        """Chain ``x_<uid>`` with ``rules`` and its jump from the stage's base chain, atomically."""
        with _locked():
            self.run("\n".join([*self._prelude(), *self._chain_lines(uid, {"x": rules}),
                                self._jump_line(uid, stage, "x")]) + "\n")

    def add_chains(self, uid: str, chains: dict[str, list[str]]) -> None:
        """Create the experiment's chains, not yet reachable from any hook."""
        with _locked():
            self.run("\n".join([*self._prelude(), *self._chain_lines(uid, chains)]) + "\n")

    def attach(self, uid: str, stage: str, prefix: str = "x") -> None:
        with _locked():
            self.run(self._jump_line(uid, stage, prefix) + "\n")

    def objects(self, uid: str) -> tuple[list[str], list[tuple[str, int]]]:
        """The experiment's chains, and its rules in other chains as (chain, handle)."""
        chains: list[str] = []
        foreign_rules: list[tuple[str, int]] = []
        for item in self.listing():
            if "chain" in item and str(item["chain"].get("name", "")).endswith(f"_{uid}"):
                chains.append(str(item["chain"]["name"]))
            rule = item.get("rule")
            if isinstance(rule, dict) and rule.get("comment") == tag(uid):
                chain = str(rule.get("chain"))
                if not chain.endswith(f"_{uid}"):
                    foreign_rules.append((chain, int(rule["handle"])))
        return chains, foreign_rules

    def has_experiment(self, uid: str) -> bool:
        chains, rules = self.objects(uid)
        return bool(chains or rules)

    def remove_experiment(self, uid: str) -> None:
        """Delete the experiment's jump rules and chains in one transaction; prune the table."""
        with _locked():
            chains, rules = self.objects(uid)
            lines = [f"delete rule {self.ref} {chain} handle {handle}" for chain, handle in rules]
            lines += [f"flush chain {self.ref} {chain}" for chain in chains]
            lines += [f"delete chain {self.ref} {chain}" for chain in chains]
            if lines:
                self.run("\n".join(lines) + "\n")
            self._prune()

    def _prune(self) -> None:
        """Delete the table once it holds nothing but empty base chains."""
        items = self.listing()
        if not items:
            return
        bases = {chain for chain, _ in BASE_CHAINS.values()}
        for item in items:
            if "rule" in item or ("chain" in item and item["chain"].get("name") not in bases):
                return
            if "set" in item or "map" in item:
                return
        self.run(f"delete table {self.ref}\n")

    def experiment_uids(self) -> set[str]:
        """UIDs that own a chain in the table (for leftover checks)."""
        bases = {chain for chain, _ in BASE_CHAINS.values()}
        names = [str(item["chain"].get("name", "")) for item in self.listing() if "chain" in item]
        return {name.split("_", 1)[1] for name in names if name not in bases and "_" in name}
