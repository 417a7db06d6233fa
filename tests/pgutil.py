"""Throw-away PostgreSQL servers for tests and benchmarks: initdb in a temp dir, pg_ctl start,
always stopped (by pid if pg_ctl fails). As root they run as the ``postgres`` OS user."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SKIP_REASON = "PostgreSQL server binaries not installed (apt-get install postgresql)"
PORT = 5432


def pg_bin() -> Path | None:
    """The newest PostgreSQL server bin directory, or None."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "pg_ctl").exists() and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and shutil.which("initdb") else None


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    datadir: Path

    @property
    def dsn(self) -> str:
        return f"host={self.host} port={self.port} user=postgres dbname=postgres"


def _as_postgres(args: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


def _run(args: list[str], timeout: float = 60) -> None:
    proc = subprocess.run(_as_postgres(args), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def _stop_all(servers: list[PgServer], bindir: Path) -> None:
    """Immediate shutdown of every server at once (SIGQUIT to each postmaster, by pid), then
    SIGKILL for any still running after 5 s."""
    pids: list[int] = []
    for server in servers:
        try:
            pids.append(int((server.datadir / "postmaster.pid").read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            with contextlib.suppress(Exception):
                _run([str(bindir / "pg_ctl"), "-D", str(server.datadir), "-m", "immediate",
                      "-w", "-t", "10", "stop"], timeout=20)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        for pid in list(pids):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                pids.remove(pid)
        time.sleep(0.02)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def postgres_servers(hosts: list[str], port: int = PORT) -> Iterator[list[PgServer]]:
    """Start one PostgreSQL server per host (max_prepared_transactions=64); stop them all after."""
    bindir = pg_bin()
    if bindir is None:
        raise RuntimeError(SKIP_REASON)
    base = Path(tempfile.mkdtemp(prefix="crosszone-pg-"))
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(base, pw.pw_uid, pw.pw_gid)
    started: list[PgServer] = []
    try:
        template = base / "template"
        _run([str(bindir / "initdb"), "-D", str(template), "-U", "postgres", "--auth=trust",
              "-E", "UTF8", "--no-instructions", "--no-sync"], timeout=120)
        starting = []
        for host in hosts:
            server = PgServer(host, port, base / host)
            _run(["cp", "-a", str(template), str(server.datadir)])
            with (server.datadir / "postgresql.conf").open("a") as conf:
                conf.write(f"listen_addresses = '{host}'\nport = {port}\n"
                           f"unix_socket_directories = '{server.datadir}'\n"
                           "max_prepared_transactions = 64\nmax_connections = 100\n"
                           "shared_buffers = 32MB\nlog_min_messages = warning\n")
            started.append(server)  # from here on the finalizer stops it
            starting.append(subprocess.Popen(_as_postgres(
                [str(bindir / "pg_ctl"), "-D", str(server.datadir), "-l",
                 str(server.datadir / "server.log"), "-w", "-t", "30", "start"]),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        for proc, server in zip(starting, started, strict=True):
            out, _ = proc.communicate(timeout=40)
            if proc.returncode != 0:
                raise RuntimeError(f"PostgreSQL on {server.host} did not start: {out[-2000:]!r}")
        yield started
    finally:
        _stop_all(started, bindir)
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- shared servers for pytest
# Several test modules import ``pg_servers``; one set of servers serves them all (refcounted),
# started on first use and stopped by the last finalizer.
PG_HOSTS = ["127.0.106.1", "127.0.106.2", "127.0.106.3"]
_shared: dict[str, object] = {"count": 0}


def acquire_servers() -> list[PgServer]:
    if not _shared["count"]:
        manager = postgres_servers(PG_HOSTS)
        _shared["servers"] = manager.__enter__()
        _shared["manager"] = manager
    _shared["count"] = int(_shared["count"]) + 1  # type: ignore[call-overload]
    return _shared["servers"]  # type: ignore[return-value]


def release_servers() -> None:
    _shared["count"] = int(_shared["count"]) - 1  # type: ignore[call-overload]
    if not _shared["count"]:
        manager = _shared.pop("manager")
        _shared.pop("servers", None)
        manager.__exit__(None, None, None)  # type: ignore[attr-defined]


def new_schema(server: PgServer, name: str) -> str:
    """A fresh schema on ``server``; returns a DSN whose search_path is that schema."""
    import psycopg

    schema = f"s_{name}_{os.urandom(4).hex()}"
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{server.dsn} options='-c search_path={schema}'"


# ---------------------------------------------------------------- pytest fixtures
import pytest  # noqa: E402  (the helpers above work without pytest: the bench uses them)

from needs import missing  # noqa: E402

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def pg_servers() -> Iterator[list[PgServer]]:
    if pg_bin() is None:
        missing(SKIP_REASON)
    servers = acquire_servers()
    try:
        yield servers
    finally:
        release_servers()


class StoreFactory:
    """Makes zone stores of one backend; ``make(zone, name)`` again reopens the same data."""

    def __init__(self, backend: str, tmp: Path, servers: list[PgServer] | None) -> None:
        self.backend = backend
        self.tmp = tmp
        self.servers = servers
        self.dsns: dict[str, str] = {}
        self.opened: list[object] = []

    def location(self, zone: str, name: str | None = None) -> str:
        """SQLite file path or PostgreSQL DSN of the store called ``name`` (default: zone)."""
        name = name or zone
        if self.backend == "sqlite":
            return str(self.tmp / f"{name}.db")
        if name not in self.dsns:
            assert self.servers
            server = self.servers[len(self.dsns) % len(self.servers)]
            self.dsns[name] = new_schema(server, name.replace("-", "_"))
        return self.dsns[name]

    async def make(self, zone: str, name: str | None = None,
                   conflict_timeout: float = 2.0) -> object:
        from crosszone.storage import open_store

        store = await open_store(zone, self.location(zone, name),
                                 conflict_timeout=conflict_timeout)
        self.opened.append(store)
        return store

    async def close_all(self) -> None:
        for store in self.opened:
            with contextlib.suppress(Exception):
                await store.close()  # type: ignore[attr-defined]


@pytest.fixture(params=BACKENDS)
def store_backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres" and pg_bin() is None:
        missing(SKIP_REASON)
    return str(request.param)


@pytest.fixture
async def stores(store_backend: str, tmp_path: Path,
                 request: pytest.FixtureRequest) -> Any:
    servers = request.getfixturevalue("pg_servers") if store_backend == "postgres" else None
    factory = StoreFactory(store_backend, tmp_path, servers)
    yield factory
    await factory.close_all()


# ---------------------------------------------------------------- store service processes
ZONE_NETS = {"a": "127.0.106", "b": "127.0.107", "c": "127.0.108"}


def store_service_url(zone: str) -> str:
    return f"http://{ZONE_NETS[zone]}.6:7000"


class StoreServices:
    """One ``python -m crosszone.storage`` process per zone; every one is killed (by pid) in
    ``stop_all``. ``locations`` maps zone -> SQLite path or PostgreSQL DSN."""

    def __init__(self, locations: dict[str, str], logdir: Path, *extra: str) -> None:
        self.locations = locations
        self.logdir = logdir
        self.extra = list(extra)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, zone: str, env: dict[str, str] | None = None, wait: bool = True) -> None:
        import sys

        peers = [f"--peer={z}={store_service_url(z)}" for z in self.locations if z != zone]
        args = [sys.executable, "-m", "crosszone.storage", "--zone", zone,
                "--store", self.locations[zone],
                "--listen", store_service_url(zone).removeprefix("http://"), *peers, *self.extra]
        with (self.logdir / f"store-{zone}.log").open("ab") as log:
            self.procs[zone] = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "CROSSZONE_LOG": "INFO", **(env or {})})
        if wait:
            self.wait_healthy(zone)

    def wait_healthy(self, zone: str, timeout: float = 15.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(store_service_url(zone) + "/health", timeout=1):
                return
            if self.procs[zone].poll() is not None:
                raise RuntimeError(f"store {zone} exited: see {self.logdir}/store-{zone}.log")
            time.sleep(0.05)
        raise TimeoutError(f"store {zone} not healthy within {timeout} s")

    def kill(self, zone: str) -> None:
        """SIGKILL, as a crash would."""
        proc = self.procs.pop(zone, None)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def wait_exit(self, zone: str, timeout: float = 20.0) -> int:
        code = self.procs[zone].wait(timeout=timeout)
        self.procs.pop(zone)
        return code

    def stop_all(self) -> None:
        for zone in list(self.procs):
            self.kill(zone)
