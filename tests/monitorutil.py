"""Run one monitor per zone (and a webhook receiver) in a thread of the test process, pointed at
a running stack, until ``stop()``. The monitor is not part of the runtime yet, so the tests
start it themselves, on host ``.7`` of each zone as the runtime will."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from crosszone.config import Topology
from crosszone.monitoring.addresses import monitor_node
from crosszone.monitoring.duckdb import DuckDBMetricsStore
from crosszone.monitoring.monitor import create_monitor_app
from crosszone.monitoring.settings import MonitoringSettings


def fast_settings(**changes: Any) -> MonitoringSettings:
    """Local timings: a cycle a second, probes every second, series every second."""
    # Host .8: the stack's own monitors (started by the runtime) keep host .7.
    base: dict[str, Any] = {"host": 8, "cycle_seconds": 1.0, "probe_interval_seconds": 1.0,
                            "probe_timeout_seconds": 1.0, "scrape_timeout_seconds": 1.5,
                            "series_interval_seconds": 1.0}
    return MonitoringSettings.model_validate({**base, **changes})


class MonitorHarness:
    def __init__(self, topology: Topology, run_dir: Path, settings: MonitoringSettings,
                 webhook_host: str | None = None) -> None:
        self.topology = topology
        self.run_dir = run_dir
        self.settings = settings
        self.webhook_host = webhook_host
        self.webhook_url: str | None = None
        self.received: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="monitors",
                                       daemon=True)
        self.runners: list[web.AppRunner] = []

    def urls(self) -> dict[str, str]:
        return {z: monitor_node(self.topology, z, self.settings).url
                for z in self.topology.zone_names()}

    def _call(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> MonitorHarness:
        self.thread.start()
        if self.webhook_host:
            self.webhook_url = self._call(self._start_webhook())
            self.settings = self.settings.model_copy(update={"webhooks": [self.webhook_url]})
        for zone in self.topology.zone_names():
            self._call(self._start_monitor(zone))
        return self

    async def _start_webhook(self) -> str:
        async def receive(request: web.Request) -> web.Response:
            self.received.append(await request.json())
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_post("/hook", receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.webhook_host, 0)
        await site.start()
        self.runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://{self.webhook_host}:{port}/hook"

    async def _start_monitor(self, zone: str) -> None:
        node = monitor_node(self.topology, zone, self.settings)
        # Its own database: the stack's monitor of this zone holds the default file's lock.
        store = DuckDBMetricsStore(str(self.run_dir / "harness" / f"metrics-{zone}.duckdb"))
        app = create_monitor_app(self.topology, node, self.run_dir, settings=self.settings,
                                 store=store)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self.runners.append(runner)
        await web.TCPSite(runner, node.host, node.port, reuse_address=True).start()

    def stop(self) -> None:
        async def cleanup() -> None:
            for runner in reversed(self.runners):
                await runner.cleanup()

        if not self.thread.is_alive():
            return
        try:
            self._call(cleanup(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)

    def notifications(self, status: str, alertname: str,
                      match: Callable[[dict[str, str]], bool] = lambda _: True
                      ) -> list[dict[str, Any]]:
        """Alerts in webhook posts with ``status`` and ``alertname`` whose labels match."""
        return [a for post in list(self.received) if post.get("status") == status
                for a in post.get("alerts", [])
                if a["labels"].get("alertname") == alertname and match(a["labels"])]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
