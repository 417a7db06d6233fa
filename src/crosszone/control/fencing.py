"""Fencing tokens: every command a leader sends carries its term; receivers reject older ones.

A lease alone cannot stop a leader that was paused (SIGSTOP, a long GC, a frozen VM) between
checking its lease and sending a command: when it resumes, its command arrives after a newer
leader's. The receiver closes that gap. It remembers the highest token it has seen and refuses
anything older, so nothing a deposed leader sends takes effect.

Sender: ``headers=fencing_headers(token)``. Receiver (the LB's ``PUT /lb/weights``, gateways, the
controller's own routing endpoint)::

    guard = FencingGuard()

    @fenced(guard)
    async def put_weights(request: web.Request) -> web.Response: ...
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from aiohttp import web

from crosszone.errors import StaleFencingToken

FENCING_HEADER = "X-Crosszone-Fencing-Token"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def fencing_headers(token: int) -> dict[str, str]:
    return {FENCING_HEADER: str(token)}


class FencingGuard:
    """The receiver's memory of the newest leader: admits tokens >= the highest seen.

    Equal tokens are admitted (one leader sends many commands). With ``path`` the highest token
    survives a restart of the receiver (written atomically before the command is admitted), so a
    restarted receiver cannot be fooled by a deposed leader either.
    """

    def __init__(self, path: Path | None = None, *, require: bool = True) -> None:
        self.path = path
        self.require = require
        self.highest = 0
        self.rejected = 0
        if path is not None and path.exists():
            with contextlib.suppress(ValueError, OSError):
                self.highest = int(json.loads(path.read_text())["highest"])

    def admit(self, token: int) -> None:
        """Accept ``token`` or raise :class:`StaleFencingToken`."""
        if token < self.highest:
            self.rejected += 1
            raise StaleFencingToken(token, self.highest)
        if token > self.highest:
            self.highest = token
            self._persist()

    def admit_header(self, headers: Mapping[str, str]) -> int | None:
        """Check the token a request carries; None when it has none and none is required."""
        raw = headers.get(FENCING_HEADER)
        if raw is None:
            if self.require:
                raise ValueError(f"missing {FENCING_HEADER} header")
            return None
        try:
            token = int(raw)
        except ValueError:
            raise ValueError(f"{FENCING_HEADER} must be an integer, got {raw!r}") from None
        self.admit(token)
        return token

    def _persist(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".fencing-")
        with os.fdopen(fd, "w") as out:
            json.dump({"highest": self.highest}, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)

    def __repr__(self) -> str:
        return f"<FencingGuard highest={self.highest} rejected={self.rejected}>"


def _error(status: int, message: str, code: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None,
                      "code": code}}
    return web.json_response(body, status=status)


def fenced(guard: FencingGuard) -> Callable[[Handler], Handler]:
    """Wrap an aiohttp handler: 409 for a stale token, 400 for a missing or malformed one."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def checked(request: web.Request) -> web.StreamResponse:
            try:
                guard.admit_header(request.headers)
            except StaleFencingToken as exc:
                return _error(409, str(exc), "stale_fencing_token")
            except ValueError as exc:
                return _error(400, str(exc), "invalid_fencing_token")
            return await handler(request)

        return checked

    return wrap
