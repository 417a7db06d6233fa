"""The supervisor's control API: HTTP+JSON on the Unix socket ``run_dir/supervisor.sock``.

``GET /status``; ``POST /hold``, ``/release``, ``/signal`` with a selector
``{"zone": Z, "component": C, "index": I}`` (each optional, at least a zone or a component) and a
``"signal"``; ``POST /stop``. Errors answer ``{"error": message}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from crosszone.config import Node
from crosszone.errors import RuntimeStateError
from crosszone.runtime.processes import signal_from_name

HOLD_SIGNALS = ("KILL", "TERM", "STOP")
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes; longer paths go through /proc/self/fd


class SupervisorUnreachableError(RuntimeStateError):
    """Nothing answers on the control socket."""


@dataclass(frozen=True)
class Selector:
    """Which processes a control request is about."""

    zone: str | None = None
    component: str | None = None
    index: int | None = None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Selector:
        zone, component, index = body.get("zone"), body.get("component"), body.get("index")
        if zone is not None and not isinstance(zone, str):
            raise ValueError(f"zone must be a string (got {zone!r})")
        if component is not None and not isinstance(component, str):
            raise ValueError(f"component must be a string (got {component!r})")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
            raise ValueError(f"index must be an integer (got {index!r})")
        if zone is None and component is None:
            raise ValueError("select processes by zone and/or component")
        return cls(zone, component, index)

    def matches(self, node: Node) -> bool:
        return ((self.zone is None or node.zone == self.zone)
                and (self.component is None or node.component == self.component)
                and (self.index is None or node.index == self.index))

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.to_json().items())


class Supervised(Protocol):
    """What the control API needs from the supervisor."""

    def snapshot(self) -> dict[str, Any]: ...
    def hold(self, selector: Selector, signal_name: str) -> list[str]: ...
    def release(self, selector: Selector) -> list[str]: ...
    def signal(self, selector: Selector, signal_name: str) -> list[str]: ...


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def create_control_app(supervisor: Supervised, stop: asyncio.Event) -> web.Application:
    async def status(_: web.Request) -> web.Response:
        return web.json_response(supervisor.snapshot())

    async def parse(request: web.Request, signals: tuple[str, ...] | None,
                    ) -> tuple[Selector, str] | web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            selector = Selector.from_json(body)
            name = str(body.get("signal", "KILL")).upper().removeprefix("SIG")
            signal_from_name(name)
            if signals is not None and name not in signals:
                raise ValueError(f"signal must be one of {', '.join(signals)} (got {name!r})")
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            return _error(400, str(exc))
        return selector, name

    def answer(selector: Selector, matched: list[str]) -> web.Response:
        if not matched:
            return _error(404, f"no process matches {selector}")
        return web.json_response({"matched": matched})

    async def hold(request: web.Request) -> web.Response:
        parsed = await parse(request, HOLD_SIGNALS)
        if isinstance(parsed, web.Response):
            return parsed
        return answer(parsed[0], supervisor.hold(*parsed))

    async def release(request: web.Request) -> web.Response:
        parsed = await parse(request, None)
        if isinstance(parsed, web.Response):
            return parsed
        return answer(parsed[0], supervisor.release(parsed[0]))

    async def send(request: web.Request) -> web.Response:
        parsed = await parse(request, None)
        if isinstance(parsed, web.Response):
            return parsed
        return answer(parsed[0], supervisor.signal(*parsed))

    async def stop_all(_: web.Request) -> web.Response:
        stop.set()
        return web.json_response({"stopping": True})

    app = web.Application()
    app.add_routes([web.get("/status", status), web.post("/hold", hold),
                    web.post("/release", release), web.post("/signal", send),
                    web.post("/stop", stop_all)])
    return app


@contextlib.contextmanager
def _reachable(path: Path) -> Iterator[str]:
    """A path to ``path`` short enough for sun_path (via the directory's fd when it is long)."""
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def bind_unix_socket(path: Path) -> socket.socket:
    """A listening-ready Unix socket at ``path`` (a stale file there is replaced), mode 0600."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _reachable(path) as address:
            sock.bind(address)
        os.chmod(path, 0o600)
    except OSError as exc:
        sock.close()
        raise RuntimeStateError(f"cannot bind control socket {path}: {exc.strerror}") from exc
    return sock


async def start_control_server(path: Path, app: web.Application) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.SockSite(runner, bind_unix_socket(path)).start()
    return runner


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("supervisor", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            with _reachable(self._path) as address:
                sock.connect(address)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ControlClient:
    """Blocking client of the control API; errors are RuntimeStateError."""

    def __init__(self, socket_path: Path, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=payload,
                         headers={"Content-Type": "application/json", "Connection": "close"})
            response = conn.getresponse()
            data = json.loads(response.read() or b"null")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise SupervisorUnreachableError(
                f"the supervisor does not answer on {self.socket_path}: {exc}") from exc
        finally:
            conn.close()
        if response.status >= 400:
            message = data.get("error") if isinstance(data, dict) else None
            raise RuntimeStateError(message or f"supervisor answered HTTP {response.status}")
        return data

    def status(self) -> dict[str, Any]:
        data = self.request("GET", "/status")
        if not isinstance(data, dict):
            raise RuntimeStateError("the supervisor answered an unexpected status document")
        return data

    def _names(self, path: str, selector: Selector, signal_name: str | None) -> list[str]:
        body = selector.to_json()
        if signal_name is not None:
            body["signal"] = signal_name
        data = self.request("POST", path, body)
        return [str(name) for name in data.get("matched", [])] if isinstance(data, dict) else []

    def hold(self, selector: Selector, signal_name: str = "KILL") -> list[str]:
        return self._names("/hold", selector, signal_name)

    def release(self, selector: Selector) -> list[str]:
        return self._names("/release", selector, None)

    def signal(self, selector: Selector, signal_name: str) -> list[str]:
        return self._names("/signal", selector, signal_name)

    def stop(self) -> None:
        self.request("POST", "/stop", {})
