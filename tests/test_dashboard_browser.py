"""The monitor's web dashboard in headless Chromium, driven over the DevTools protocol: the page
loads with no network beyond the monitor, shows three zones, and shows a zone going down.

Screenshots are kept in ``test-artifacts/``. Addresses: zones on 127.0.164-166.0/24, the LB on
127.0.0.164 (ports 18164/18604), the monitors on host .7 of each zone.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from crosszone.runtime import LocalStack
from monitorutil import MonitorHarness, fast_settings
from needs import mark_missing
from stackutil import local_topology, start_stack

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
ZONE_A = "us-west-2a"

pytestmark = [
    pytest.mark.integration,
    mark_missing(CHROMIUM is None, "chromium not installed (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def stack_and_monitors(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                       ) -> Iterator[tuple[LocalStack, MonitorHarness]]:
    run_dir = tmp_path_factory.mktemp("dashboard-run")
    stack = start_stack(request, run_dir, local_topology(164, http_port=18164,
                                                          https_port=18604))
    monitors = MonitorHarness(stack.run_dir.load_topology(), stack.run_dir.path,
                              fast_settings())
    request.addfinalizer(monitors.stop)
    monitors.start()
    yield stack, monitors


def _stop_browser(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the browser by pid (it takes its helper processes down), SIGKILL if it stays."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def browser(request: pytest.FixtureRequest) -> Iterator[str]:
    """Headless Chromium; yields its DevTools HTTP endpoint."""
    assert CHROMIUM is not None
    profile = Path(tempfile.mkdtemp(prefix="crosszone-chromium-"))
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0", "--window-size=1400,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    request.addfinalizer(lambda: shutil.rmtree(profile, ignore_errors=True))
    request.addfinalizer(lambda: _stop_browser(proc))
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"chromium did not start (exit {proc.poll()})")
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port_file.read_text().split()[0]}"


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


class Page:
    """A minimal Chrome DevTools protocol client for one page target."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), timeout=30)
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result

    async def eval(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    async def wait(self, expression: str, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = await self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
            await asyncio.sleep(0.25)

    async def screenshot(self, path: Path) -> Path:
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        await asyncio.to_thread(_write, path, base64.b64decode(shot["data"]))
        return path


@contextlib.asynccontextmanager
async def open_page(endpoint: str) -> AsyncIterator[Page]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{endpoint}/json/list") as resp:
            targets = await resp.json()
        ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        async with session.ws_connect(ws_url, max_msg_size=0) as ws:
            page = Page(ws)
            await page.call("Page.enable")
            await page.call("Runtime.enable")
            await page.call("Emulation.setDeviceMetricsOverride", width=1400, height=1000,
                            deviceScaleFactor=1, mobile=False)
            yield page


ZONES = "document.querySelectorAll('section.zone[data-zone]')"


def _status_of(zone: str) -> str:
    return f"document.querySelector('section.zone[data-zone=\"{zone}\"]')?.dataset.status"


async def test_dashboard_shows_three_zones_and_a_zone_going_down(
        stack_and_monitors: tuple[LocalStack, MonitorHarness], browser: str) -> None:
    stack, monitors = stack_and_monitors
    origin = monitors.urls()[ZONE_A]
    async with open_page(browser) as page:
        await page.call("Page.navigate", url=f"{origin}/")
        await page.wait(f"{ZONES}.length === 3", 30, "three zones on the page")
        assert await page.eval("document.title") == "crosszone monitor"
        names = await page.eval(f"[...{ZONES}].map(z => z.dataset.zone)")
        assert names == ["us-west-2a", "us-west-2b", "us-west-2c"]
        await page.wait(f"{_status_of(ZONE_A)} !== 'unhealthy'", 20, "the zone to be up")
        nodes = await page.eval(f"document.querySelectorAll('{_zone_sel(ZONE_A)} [data-node]')"
                                ".length")
        assert nodes >= 4  # gateway, two workers, store (and the controller, when it runs)
        # Offline: every resource the page loaded came from the monitor itself.
        loaded = await page.eval("performance.getEntriesByType('resource').map(e => e.name)")
        assert loaded and all(u.startswith(origin) for u in loaded), loaded
        await page.screenshot(ARTIFACTS / "dashboard.png")

        await asyncio.to_thread(stack.hold, zone=ZONE_A, signal="KILL")
        try:
            await page.wait(f"{_status_of(ZONE_A)} === 'unhealthy'", 30,
                            "the zone to show unhealthy")
            await page.wait("document.getElementById('alerts').textContent"
                            ".includes('ZoneUnhealthy')", 15, "the alert on the page")
            down = await page.eval(f"[...document.querySelectorAll('{_zone_sel(ZONE_A)} "
                                   "[data-node]')].filter(n => n.dataset.up === 'false')"
                                   ".length")
            assert down >= 4
            service = await page.eval("document.getElementById('service').dataset.state")
            assert service in ("degraded", "down")
            shot = await page.screenshot(ARTIFACTS / "dashboard-zone-down.png")
            data = await asyncio.to_thread(shot.read_bytes)
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        finally:
            await asyncio.to_thread(stack.release, zone=ZONE_A)


def _zone_sel(zone: str) -> str:
    return f'section.zone[data-zone="{zone}"]'
