"""Real-socket stand-ins for the control plane's tests: a fenced receiver and agent processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from crosszone.control.fencing import FencingGuard, fenced


async def wait_until(predicate: Callable[[], bool], timeout: float,
                     interval: float = 0.02) -> float:
    """Seconds it took until ``predicate()``; AssertionError after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
    return time.monotonic() - started


@dataclass(frozen=True)
class Command:
    at: float  # monotonic arrival time
    node: str
    token: int
    accepted: bool
    stale_probe: bool


@dataclass
class FencedReceiver:
    """An HTTP endpoint that admits commands only with a fencing token >= the highest seen."""

    host: str
    port: int = 0
    guard: FencingGuard = field(default_factory=FencingGuard)
    log: list[Command] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/command"

    async def start(self) -> None:
        @fenced(self.guard)
        async def accepted(request: web.Request) -> web.Response:
            doc = await request.json()
            self.log.append(Command(time.monotonic(), doc["node"], int(doc["token"]), True,
                                    bool(doc.get("stale_probe"))))
            return web.json_response({"ok": True})

        async def command(request: web.Request) -> web.StreamResponse:
            response = await accepted(request)
            if response.status != 200:
                doc = await request.json()
                self.log.append(Command(time.monotonic(), doc["node"], int(doc["token"]),
                                        False, bool(doc.get("stale_probe"))))
            return response

        app = web.Application()
        app.router.add_post("/command", command)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def accepted(self) -> list[Command]:
        return [c for c in self.log if c.accepted]

    def acting(self) -> Command | None:
        """The most recent accepted command (who acts now)."""
        ok = self.accepted()
        return ok[-1] if ok else None


@dataclass
class Agent:
    """One ``crosszone.control.leader_agent`` process; always stopped by pid."""

    node: str
    args: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "crosszone.control.leader_agent", "--node", self.node,
                 *self.args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def events(self) -> list[dict[str, object]]:
        out = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict) and "event" in doc:
                    out.append(doc)
        return out

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
                os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


@dataclass
class FakeNode:
    """A gateway, worker or LB stand-in on a real socket.

    ``kill()`` closes the listener (connections refused); ``freeze()`` keeps accepting but never
    answers (like SIGSTOP); ``revive()`` brings it back. Weights PUT to ``/lb/weights`` or
    ``/gateway/weights`` go through a FencingGuard and are recorded with their token.
    """

    host: str
    port: int
    guard: FencingGuard = field(default_factory=FencingGuard)
    weights: list[tuple[float, int, dict[str, float]]] = field(default_factory=list)
    frozen: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    async def _hold_if_frozen(self) -> None:
        while self.frozen.is_set():
            await asyncio.sleep(0.05)

    async def start(self) -> None:
        async def health(request: web.Request) -> web.Response:
            await self._hold_if_frozen()
            return web.json_response({"status": "ok"})

        @fenced(self.guard)
        async def put_weights(request: web.Request) -> web.Response:
            await self._hold_if_frozen()
            doc = await request.json()
            token = int(request.headers["X-Crosszone-Fencing-Token"])
            self.weights.append((time.monotonic(), token, dict(doc["weights"])))
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_put("/lb/weights", put_weights)
        app.router.add_put("/gateway/weights", put_weights)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, reuse_address=True).start()

    async def kill(self) -> None:
        self.frozen.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def freeze(self) -> None:
        self.frozen.set()

    async def revive(self) -> None:
        self.frozen.clear()
        if self._runner is None:
            await self.start()

    def last_weights(self) -> dict[str, float] | None:
        return self.weights[-1][2] if self.weights else None
