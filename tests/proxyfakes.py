"""Test helpers for the proxy hops: a scriptable fake worker, app servers, and a topology.

The fake worker speaks raw HTTP/1.1 over asyncio streams so a test can make it fail in exact ways
(close after the headers, cut a stream after its first event, hang) that a well-behaved framework
would not produce. Addresses: zones on 127.0.112-114.0/24, the load balancer on 127.0.102.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from typing import Any

from aiohttp import web

from crosszone.config import Topology, parse_topology
from crosszone.config.load import default_document

ZONES = ("za", "zb", "zc")
SUBNETS = {"za": "127.0.112", "zb": "127.0.113", "zc": "127.0.114"}
LB_HOST = "127.0.102.1"
API_KEY = "sk-test"


def free_port(*hosts: str) -> int:
    """A port that is free on every one of ``hosts`` right now."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for host in hosts[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no common free port on {hosts}")


def worker_hosts(workers: int = 2) -> list[str]:
    return [f"{SUBNETS[z]}.{21 + i}" for z in ZONES for i in range(workers)]


def gateway_hosts() -> list[str]:
    return [f"{SUBNETS[z]}.10" for z in ZONES]


def make_topology(*, worker_port: int, gateway_port: int = 8080, http_port: int = 18000,
                  https_port: int = 18443, workers: int = 2, mode: str = "active-backup",
                  max_attempts: int = 3, weights: dict[str, float] | None = None,
                  idle_seconds: float = 2.0, first_byte_seconds: float = 2.0,
                  check_interval: float = 0.15, lb_check_path: str = "/health",
                  max_migrations: int = 2) -> Topology:
    doc: dict[str, Any] = default_document()
    doc["region"] = "proxytest"
    doc["zones"] = [{"name": z, "subnet": f"{SUBNETS[z]}.0/24"} for z in ZONES]
    doc["worker_group"] = {"min_size": 1, "max_size": 4, "desired_capacity": workers,
                           "port": worker_port}
    fast = {"path": "/health", "intervalSeconds": check_interval,
            "timeoutSeconds": min(0.24, check_interval * 0.8),
            "healthyThresholdCount": 2, "unhealthyThresholdCount": 2}
    doc["gateway"] = {"port": gateway_port, "max_attempts": max_attempts, "healthCheck": fast,
                      "max_body_bytes": 2048, "migration": {"max_migrations": max_migrations},
                      "timeouts": {"connect_seconds": 0.5, "first_byte_seconds": first_byte_seconds,
                                   "idle_seconds": idle_seconds, "total_seconds": 20}}
    listeners = [{"protocol": "HTTPS", "port": https_port, "targetPort": gateway_port},
                 {"protocol": "HTTP", "port": http_port, "targetPort": gateway_port}]
    doc["load_balancer"] = {"address": LB_HOST, "listeners": listeners,
                            "healthCheck": {**fast, "path": lb_check_path}}
    doc["failover"] = {"mode": mode, **({"weights": weights} if weights else {})}
    doc["auth"] = {"api_keys": [API_KEY]}
    return parse_topology(doc)


class AppServer:
    """An aiohttp app on a real socket, stoppable mid-test (to kill a gateway, say)."""

    def __init__(self, app: web.Application, host: str, port: int,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.app, self.host, self.port, self.ssl_context = app, host, port, ssl_context
        self.runner: web.AppRunner | None = None

    async def start(self) -> AppServer:
        self.runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=0.5)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.host, self.port, ssl_context=self.ssl_context).start()
        return self

    async def add_site(self, port: int, ssl_context: ssl.SSLContext | None) -> None:
        assert self.runner is not None
        await web.TCPSite(self.runner, self.host, port, ssl_context=ssl_context).start()

    async def stop(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()


def chat_body(name: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000,
        "model": "deepseek-chat",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": f"hello from {name}"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
    }).encode()


def sse_chunk(text: str | None, finish: str | None = None) -> bytes:
    delta = {"content": text} if text is not None else {}
    event = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000,
             "model": "deepseek-chat",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def _chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class FakeWorker:
    """A worker whose answers a test scripts through ``mode`` and ``health_status``.

    Modes: ok, 500, 400, hang, reset (close without answering), headers_then_close (SSE headers,
    then close), mid_stream_close (first SSE event, then close), mid_stream_error (first SSE
    event, then an error event, then the end of the body), stall_mid_stream.
    """

    def __init__(self, host: str, port: int, name: str) -> None:
        self.host, self.port, self.name = host, port, name
        self.mode = "ok"
        self.health_status = 200
        self.health_delay = 0.0
        self.requests = 0  # API requests received (not health checks)
        self.health_checks = 0
        self.last_headers: dict[str, str] = {}
        self.last_body = b""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> FakeWorker:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip()
                           for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if not await self._answer(method, path, headers, body, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            writer.transport.abort()

    async def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes,
                      writer: asyncio.StreamWriter) -> bool:
        """Write one answer; False to close the connection."""
        if path == "/health":
            self.health_checks += 1
            if self.health_delay:
                await asyncio.sleep(self.health_delay)
            self._respond(writer, self.health_status, b'{"status":"ok"}')
            await writer.drain()
            return True
        self.requests += 1
        self.last_headers = headers
        self.last_body = body
        mode = self.mode
        stream = bool(body) and bool(json.loads(body).get("stream"))
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "reset":
            return False
        if mode in ("500", "400"):
            self._respond(writer, int(mode), b'{"error":{"message":"fake %s","type":"x",'
                          b'"param":null,"code":"fake"}}' % mode.encode())
        elif path == "/v1/models":
            self._respond(writer, 200, b'{"object":"list","data":[{"id":"deepseek-chat",'
                          b'"object":"model","created":0,"owned_by":"fake"}]}')
        elif not stream:
            self._respond(writer, 200, chat_body(self.name))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
            await writer.drain()
            if mode == "headers_then_close":
                return False
            writer.write(_chunked(sse_chunk("hello ")))
            await writer.drain()
            if mode == "mid_stream_close":
                await asyncio.sleep(0.05)
                return False
            if mode == "mid_stream_error":  # what a worker sends when its engine fails
                writer.write(_chunked(b'data: {"error":{"message":"engine failed",'
                                      b'"type":"server_error","param":null,'
                                      b'"code":"engine_error"}}\n\n') + b"0\r\n\r\n")
                await writer.drain()
                return True
            if mode == "stall_mid_stream":
                await asyncio.sleep(3600)
            for piece in ("from ", self.name):
                await asyncio.sleep(0.01)
                writer.write(_chunked(sse_chunk(piece)))
                await writer.drain()
            writer.write(_chunked(sse_chunk(None, "stop")) + _chunked(b"data: [DONE]\n\n")
                         + b"0\r\n\r\n")
        await writer.drain()
        return True

    @staticmethod
    def _respond(writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


class FakeFleet:
    """One fake worker per topology worker address, all on the same port."""

    def __init__(self, port: int, workers: int = 2) -> None:
        self.workers = {f"{z}/worker-{i + 1}": FakeWorker(f"{SUBNETS[z]}.{21 + i}", port,
                                                         f"{z}/worker-{i + 1}")
                        for z in ZONES for i in range(workers)}

    def __getitem__(self, name: str) -> FakeWorker:
        return self.workers[name]

    def zone(self, zone: str) -> list[FakeWorker]:
        return [w for name, w in self.workers.items() if name.startswith(zone + "/")]

    async def start(self) -> FakeFleet:
        await asyncio.gather(*(w.start() for w in self.workers.values()))
        return self

    async def stop(self) -> None:
        for w in self.workers.values():
            with contextlib.suppress(Exception):
                await w.stop()
