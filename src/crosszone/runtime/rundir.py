"""The run directory: everything a local stack keeps on disk, in one place.

Layout::

    topology.json      the resolved topology every process of the stack reads (mode 0600: it holds
                       the generated API key and admin token)
    state.json         the supervisor's view of its processes, rewritten atomically on every change
    supervisor.sock    the supervisor's control API (HTTP over a Unix socket)
    logs/<node>.log    one log per node, "/" in node names replaced by "_"; logs/supervisor.log
    tls/               the load balancer's certificate and key
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crosszone.config import Topology, load_topology
from crosszone.errors import RuntimeStateError

ENV_RUN_DIR = "CROSSZONE_RUN_DIR"


def default_run_dir() -> Path:
    """``$CROSSZONE_RUN_DIR``, else ``./.crosszone``."""
    env = os.environ.get(ENV_RUN_DIR)
    return Path(env) if env else Path.cwd() / ".crosszone"


def log_name(node_name: str) -> str:
    return node_name.replace("/", "_") + ".log"


def write_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` so readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def tail(path: Path, lines: int = 15) -> list[str]:
    """The last ``lines`` lines of a text file ([] if it does not exist)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read()
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-lines:]


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def at(cls, path: str | Path | None = None) -> RunDir:
        return cls(Path(path if path is not None else default_run_dir()).absolute())

    @property
    def topology_file(self) -> Path:
        return self.path / "topology.json"

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    @property
    def socket_path(self) -> Path:
        return self.path / "supervisor.sock"

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    @property
    def tls_dir(self) -> Path:
        return self.path / "tls"

    @property
    def supervisor_log(self) -> Path:
        return self.logs_dir / "supervisor.log"

    def log_for(self, node_name: str) -> Path:
        return self.logs_dir / log_name(node_name)

    def prepare(self) -> None:
        """Create the directory tree; start from fresh logs and no stale state or socket."""
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.logs_dir.mkdir(exist_ok=True)
            self.tls_dir.mkdir(exist_ok=True, mode=0o700)
            for old in self.logs_dir.glob("*.log"):
                old.unlink()
            self.state_file.unlink(missing_ok=True)
            self.socket_path.unlink(missing_ok=True)
        except OSError as exc:
            raise RuntimeStateError(f"cannot prepare run directory {self.path}: {exc}") from exc

    def write_topology(self, topology: Topology) -> None:
        text = json.dumps(topology.model_dump(mode="json", by_alias=True), indent=2)
        write_atomically(self.topology_file, text + "\n", mode=0o600)

    def load_topology(self) -> Topology:
        if not self.topology_file.exists():
            raise RuntimeStateError(f"no stack was started in {self.path} (no topology.json)")
        return load_topology(self.topology_file)

    def read_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise RuntimeStateError(f"cannot read {self.state_file}: {exc}") from exc
        return data if isinstance(data, dict) else None

    def write_state(self, state: dict[str, Any]) -> None:
        write_atomically(self.state_file, json.dumps(state, indent=2) + "\n")
