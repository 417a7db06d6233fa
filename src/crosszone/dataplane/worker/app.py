"""A worker node's HTTP server: the OpenAI/DeepSeek API in front of one inference engine.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /health``, ``GET /metrics``, and ``GET|POST|DELETE /admin/faults`` (runtime failure
injection; guarded by ``auth.admin_token`` when one is set).

Two choices matter to the layers above. Response headers are sent only once the engine has
produced its first token, so an engine error or a stall before the first token is still something
a gateway can retry elsewhere (nothing was sent yet). After that, a failure ends the stream with
one ``data: {"error": ...}`` event and no ``[DONE]``, so a cut stream is never mistaken for a
complete one. ``x-request-id`` fixes the response id (``chatcmpl-<x-request-id>``), so one id can
survive a migration to another worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator

import orjson
from aiohttp import web
from pydantic import ValidationError

from crosszone.config.placement import Node
from crosszone.config.topology import FailureInjection, Topology
from crosszone.dataplane.engines.base import Delta, GenerationRequest
from crosszone.dataplane.engines.factory import create_engine
from crosszone.dataplane.engines.faults import FaultInjector
from crosszone.dataplane.openai_errors import error_body, error_middleware, error_response
from crosszone.dataplane.sse import DONE, encode_event
from crosszone.dataplane.worker.metrics import CONTENT_TYPE, WorkerMetrics
from crosszone.dataplane.worker.protocol import (
    BadRequestError,
    Framer,
    ParsedRequest,
    parse_chat,
    parse_completions,
    parse_json,
    response_id,
)
from crosszone.errors import EngineError

NODE_HEADER = "x-crosszone-node"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
               "X-Accel-Buffering": "no"}


class Worker:
    """State and handlers of one worker node."""

    def __init__(self, topology: Topology, node: Node) -> None:
        self.topology = topology
        self.node = node
        initial = (topology.inference.simulator.failures
                   if topology.inference.backend == "simulator" else None)
        self.engine = FaultInjector(create_engine(topology), initial)
        self.metrics = WorkerMetrics(self.engine, node)
        self.created = int(time.time())

    def __repr__(self) -> str:
        return f"<Worker {self.node.name} {self.engine!r}>"

    # -- lifecycle ---------------------------------------------------------------------------

    async def startup(self, app: web.Application) -> None:
        await self.engine.start()

    async def cleanup(self, app: web.Application) -> None:
        await self.engine.close()

    async def add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers[NODE_HEADER] = self.node.name
        rid = request.headers.get("x-request-id")
        if rid:
            response.headers["x-request-id"] = rid

    # -- inference ---------------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def _serve(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        endpoint = "chat" if chat else "completions"
        started = time.monotonic()
        request_id = request.headers.get("x-request-id", "")
        raw = await request.read()  # a body over client_max_size raises 413 here
        try:
            body = parse_json(raw)
            parse = parse_chat if chat else parse_completions
            parsed = parse(body, request_id)
            model = parsed.generation.model
            if model not in self.engine.models():
                raise BadRequestError(f"The model '{model}' does not exist", param="model",
                                 code="model_not_found", status=404)
        except BadRequestError as exc:
            self.metrics.requests.labels("", endpoint, str(exc.status)).inc()
            return error_response(exc.status, str(exc), code=exc.code, param=exc.param)
        framer = Framer(chat=chat, id_=response_id("chatcmpl" if chat else "cmpl", request_id),
                        model=model)
        self.metrics.in_flight.inc()
        outcome = _Outcome(endpoint)
        try:
            if parsed.stream:
                return await self._stream(request, parsed, framer, outcome)
            return await self._whole(parsed, framer, outcome)
        finally:
            self.metrics.in_flight.dec()
            m = self.metrics
            m.requests.labels(model, endpoint, str(outcome.status)).inc()
            if outcome.tokens:
                m.tokens.labels(model).inc(outcome.tokens)
            if outcome.first_token_at is not None:
                m.ttft.labels(endpoint).observe(outcome.first_token_at - started)
            m.duration.labels(endpoint).observe(time.monotonic() - started)

    async def _whole(self, parsed: ParsedRequest, framer: Framer, outcome: _Outcome
                     ) -> web.StreamResponse:
        crash_at = self.engine.faults.crash_after_tokens
        gaps = self.metrics.gaps(outcome.endpoint)
        clock = time.monotonic
        last = 0.0
        content: list[str] = []
        reasoning: list[str] = []
        final: Delta | None = None
        try:
            async with _deltas(self.engine, parsed.generation) as deltas:
                async for delta in deltas:
                    if crash_at is not None and outcome.tokens >= crash_at:
                        await _crash(None)
                    if delta.finish_reason is not None:
                        final = delta
                        break
                    now = clock()
                    if outcome.first_token_at is None:
                        outcome.first_token_at = now
                    else:
                        gaps.observe(now - last)
                    last = now
                    content.append(delta.content)
                    reasoning.append(delta.reasoning)
                    outcome.tokens += 1
        except EngineError as exc:
            outcome.status = exc.status
            return error_response(exc.status, str(exc), code=exc.code)
        if final is None:
            outcome.status = 502
            return error_response(502, "engine ended without finishing", code="engine_error")
        body = framer.complete("".join(content), "".join(reasoning), final)
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _stream(self, request: web.Request, parsed: ParsedRequest, framer: Framer,
                      outcome: _Outcome) -> web.StreamResponse:
        crash_at = self.engine.faults.crash_after_tokens
        gaps = self.metrics.gaps(outcome.endpoint)  # observed per token: kept tiny on purpose
        clock = time.monotonic
        last = 0.0
        async with _deltas(self.engine, parsed.generation) as deltas:
            try:
                delta: Delta | None = await anext(deltas, None)
            except EngineError as exc:  # nothing sent yet: a plain error a gateway can retry
                outcome.status = exc.status
                return error_response(exc.status, str(exc), code=exc.code)
            response = web.StreamResponse(headers=SSE_HEADERS)
            try:
                await response.prepare(request)
                opening = framer.first()
                if opening:
                    await response.write(opening)
                while delta is not None:
                    if crash_at is not None and outcome.tokens >= crash_at:
                        await _crash(request)
                    if delta.finish_reason is not None:
                        await self._finish(response, framer, delta, parsed.include_usage)
                        break
                    now = clock()
                    if outcome.first_token_at is None:
                        outcome.first_token_at = now
                    else:
                        gaps.observe(now - last)
                    last = now
                    await response.write(framer.token(delta))
                    outcome.tokens += 1
                    delta = await anext(deltas, None)
                else:
                    raise EngineError("engine ended without finishing", status=502)
            except ConnectionError:
                outcome.status = 499  # the client went away; nothing more to send
                return response
            except Exception as exc:  # headers are out: end with an error event, never silently
                error = exc if isinstance(exc, EngineError) else None
                if error is None:
                    request.app.logger.exception("engine failed mid-stream")
                outcome.status = error.status if error else 500
                event = error_body(outcome.status, str(error or "internal error"),
                                   code=error.code if error else "internal_error")
                with contextlib.suppress(ConnectionError):
                    await response.write(encode_event(event))
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
            return response

    async def _finish(self, response: web.StreamResponse, framer: Framer, final: Delta,
                      include_usage: bool) -> None:
        tail = framer.finish(final.finish_reason or "stop")
        if include_usage and final.usage is not None:
            tail += framer.usage(final.usage)
        await response.write(tail + DONE)

    # -- operations --------------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": self.created, "owned_by": "crosszone"}
                for m in self.engine.models()]
        return _json({"object": "list", "data": data})

    async def health(self, request: web.Request) -> web.Response:
        stats = self.engine.stats()
        return _json({"status": "ok", "node": self.node.name, "zone": self.node.zone,
                      "running": int(stats.get("running", 0)),
                      "queued": int(stats.get("queued", 0))})

    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def get_faults(self, request: web.Request) -> web.Response:
        self._check_admin(request)
        return _json(self.engine.faults.model_dump())

    async def set_faults(self, request: web.Request) -> web.Response:
        self._check_admin(request)
        try:
            faults = FailureInjection.model_validate(parse_json(await request.read()))
        except BadRequestError as exc:
            return error_response(exc.status, str(exc), code=exc.code)
        except ValidationError as exc:
            err = exc.errors()[0]
            param = ".".join(str(p) for p in err["loc"]) or None
            return error_response(400, f"invalid faults: {err['msg']}", code="invalid_value",
                                  param=param)
        self.engine.faults = faults
        request.app.logger.warning("%s: injected faults now %s", self.node.name, faults)
        return _json(faults.model_dump())

    async def clear_faults(self, request: web.Request) -> web.Response:
        self._check_admin(request)
        self.engine.faults = FailureInjection()
        return _json(self.engine.faults.model_dump())

    def _check_admin(self, request: web.Request) -> None:
        token = self.topology.auth.admin_token
        if token and request.headers.get("Authorization") != f"Bearer {token}":
            raise _Unauthorized()


class _Outcome:
    """What happened to one request, for the metrics recorded when it ends."""

    __slots__ = ("endpoint", "first_token_at", "status", "tokens")

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.status = 200
        self.tokens = 0
        self.first_token_at: float | None = None


class _Unauthorized(web.HTTPUnauthorized):
    def __init__(self) -> None:
        super().__init__(reason="admin token required")


@contextlib.asynccontextmanager
async def _deltas(engine: FaultInjector, request: GenerationRequest
                  ) -> AsyncIterator[AsyncIterator[Delta]]:
    """The engine's stream, closed on exit so an abandoned request frees its batch slot."""
    stream = engine.generate(request)
    try:
        yield stream
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


async def _crash(request: web.Request | None) -> None:
    """Die like a SIGKILLed process, once what was written has left for the client's socket."""
    transport = request.transport if request is not None else None
    while transport is not None and not transport.is_closing() \
            and transport.get_write_buffer_size() > 0:
        await asyncio.sleep(0.001)
    os.kill(os.getpid(), signal.SIGKILL)


def _json(payload: object) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


WORKER_KEY = web.AppKey("worker", Worker)


def create_worker_app(topology: Topology, node: Node) -> web.Application:
    """The worker's aiohttp application; the caller binds it on ``node.host:node.port``."""
    worker = Worker(topology, node)
    app = web.Application(middlewares=[error_middleware],
                          client_max_size=topology.gateway.max_body_bytes)
    app[WORKER_KEY] = worker
    app.on_startup.append(worker.startup)
    app.on_cleanup.append(worker.cleanup)
    app.on_response_prepare.append(worker.add_headers)
    app.router.add_post("/v1/chat/completions", worker.chat)
    app.router.add_post("/v1/completions", worker.completions)
    app.router.add_get("/v1/models", worker.models)
    app.router.add_get("/health", worker.health)
    app.router.add_get("/metrics", worker.metrics_page)
    app.router.add_get("/admin/faults", worker.get_faults)
    app.router.add_post("/admin/faults", worker.set_faults)
    app.router.add_delete("/admin/faults", worker.clear_faults)
    return app
