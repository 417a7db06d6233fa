"""Fencing tokens: receivers admit the newest leader's term and reject every older one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from crosszone.control.fencing import FENCING_HEADER, FencingGuard, fenced, fencing_headers
from crosszone.errors import StaleFencingToken

HOST = "127.0.111.7"


def test_admits_same_or_newer_and_rejects_older() -> None:
    guard = FencingGuard()
    guard.admit(3)
    guard.admit(3)  # one leader sends many commands
    guard.admit(5)
    with pytest.raises(StaleFencingToken) as info:
        guard.admit(4)
    assert info.value.token == 4 and info.value.highest == 5
    assert "older than 5" in str(info.value)
    assert guard.highest == 5 and guard.rejected == 1


def test_highest_token_survives_a_receiver_restart(tmp_path: Path) -> None:
    path = tmp_path / "lb" / "fencing.json"
    FencingGuard(path).admit(9)
    restarted = FencingGuard(path)
    assert restarted.highest == 9
    with pytest.raises(StaleFencingToken):
        restarted.admit(8)


def test_header_parsing() -> None:
    guard = FencingGuard()
    assert guard.admit_header(fencing_headers(2)) == 2
    with pytest.raises(ValueError, match="missing"):
        guard.admit_header({})
    with pytest.raises(ValueError, match="integer"):
        guard.admit_header({FENCING_HEADER: "two"})
    assert FencingGuard(require=False).admit_header({}) is None


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[int], FencingGuard]]:
    guard = FencingGuard()
    applied: list[int] = []

    @fenced(guard)
    async def put_weights(request: web.Request) -> web.Response:
        applied.append(int(request.headers[FENCING_HEADER]))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_put("/lb/weights", put_weights)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    assert site._server is not None and site._server.sockets
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://{HOST}:{port}/lb/weights", applied, guard
    finally:
        await runner.cleanup()


async def test_http_receiver_rejects_a_deposed_leader(
        receiver: tuple[str, list[int], FencingGuard]) -> None:
    url, applied, guard = receiver
    body = {"weights": {"a": 1.0}}
    async with aiohttp.ClientSession() as http:
        async with http.put(url, json=body, headers=fencing_headers(7)) as r:
            assert r.status == 200
        async with http.put(url, json=body, headers=fencing_headers(8)) as r:
            assert r.status == 200
        async with http.put(url, json=body, headers=fencing_headers(7)) as r:
            assert r.status == 409
            error = (await r.json())["error"]
            assert error["code"] == "stale_fencing_token" and "older than 8" in error["message"]
        async with http.put(url, json=body) as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "invalid_fencing_token"
    assert applied == [7, 8] and guard.highest == 8
