"""An engine that forwards to any OpenAI-compatible server (DeepSeek, vLLM, OpenAI, a worker).

Every request goes upstream with ``stream: true`` and ``stream_options.include_usage`` over one
shared keep-alive session, and deltas are yielded as the SSE chunks arrive, never buffered. How a
trailing prefix message (a continuation) is sent depends on ``upstream.continuation``:

* ``deepseek-prefix``: the assistant message goes as is, with ``prefix: true`` (DeepSeek's beta
  prefix completion; point ``base_url`` at ``https://api.deepseek.com/beta``);
* ``vllm-continue``: the assistant message without ``prefix`` (``reasoning_content`` kept), plus
  ``continue_final_message: true`` and ``add_generation_prompt: false`` (vLLM's continuation);
* ``completions``: ``POST /completions`` with the conversation flattened by a generic template
  (:func:`flatten_chat`) and the prefix text appended.

A raw completions request with a prefix is always sent as ``prompt + prefix``: appending is how any
completions server continues a text.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from crosszone.config.topology import Upstream
from crosszone.dataplane.engines.base import (
    ChatMessage,
    Delta,
    GenerationRequest,
    InferenceEngine,
    Usage,
)
from crosszone.dataplane.engines.simulator import split_prefix
from crosszone.dataplane.sse import SSEDecoder
from crosszone.errors import EngineError

CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 600.0  # a gap this long between chunks means the upstream is gone
DRAIN_SECONDS = 0.5


def flatten_chat(messages: list[ChatMessage]) -> str:
    """A generic chat template for servers reached through plain completions."""
    lines = [f"{m.role.capitalize()}: {m.content}" for m in messages]
    return "\n\n".join([*lines, "Assistant: "])


class UpstreamEngine(InferenceEngine):
    """Forwards requests to ``config.base_url``; see the module docstring."""

    def __init__(self, config: Upstream) -> None:
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self._models: list[str] = list(config.models or [])
        self._session: aiohttp.ClientSession | None = None
        self.in_flight = 0

    def __repr__(self) -> str:
        return f"<UpstreamEngine {self.base_url} in_flight={self.in_flight}>"

    def models(self) -> list[str]:
        return list(self._models)

    def stats(self) -> dict[str, float]:
        return {"running": self.in_flight, "queued": 0}

    async def start(self) -> None:
        headers = {"Content-Type": "application/json"}
        if self.config.api_key_env:
            key = os.environ.get(self.config.api_key_env)
            if not key:
                raise EngineError(f"environment variable {self.config.api_key_env} "
                                  "(inference.upstream.api_key_env) is not set", status=500,
                                  code="upstream_misconfigured")
            headers["Authorization"] = f"Bearer {key}"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_SECONDS,
                                        sock_read=READ_TIMEOUT_SECONDS)
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=timeout,
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60))
        if not self._models:
            self._models = await self._fetch_models()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _fetch_models(self) -> list[str]:
        async with self._request("GET", "/models", None) as resp:
            body = await resp.read()
        try:
            data = orjson.loads(body)["data"]
            upstream_names = [str(m["id"]) for m in data]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise EngineError(f"upstream {self.base_url}/models returned no model list",
                              status=502, code="upstream_bad_response") from exc
        # Serve an upstream model under its mapped name when model_map renames it.
        reverse = {up: served for served, up in self.config.model_map.items()}
        return [reverse.get(name, name) for name in upstream_names]

    def build_request(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        """The upstream path and JSON body for ``request`` (pure; tests check it)."""
        messages, prefix = split_prefix(request.messages)
        body: dict[str, Any] = {"model": self.config.model_map.get(request.model, request.model)}
        if request.prompt is not None:
            path = "/completions"
            body["prompt"] = request.prompt + (prefix.content if prefix else "")
        elif prefix is not None and self.config.continuation == "completions":
            path = "/completions"
            body["prompt"] = flatten_chat(messages) + prefix.content
        else:
            path = "/chat/completions"
            body["messages"] = [_message_json(m) for m in messages]
            if prefix is not None:
                last = _message_json(prefix)
                if self.config.continuation == "deepseek-prefix":
                    last["prefix"] = True
                else:
                    # reasoning_content stays: chat templates that know it (Qwen3, DeepSeek-R1
                    # ports) render it, so a cut inside the reasoning phase continues there.
                    body["continue_final_message"] = True
                    body["add_generation_prompt"] = False
                body["messages"].append(last)
        for name in ("max_tokens", "seed", "temperature"):
            value = getattr(request, name)
            if value is not None:
                body[name] = value
        if request.stop:
            body["stop"] = request.stop
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        return path, body

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        path, body = self.build_request(request)
        headers = {"x-request-id": request.request_id} if request.request_id else None
        parser = _StreamParser(path == "/completions")
        self.in_flight += 1
        try:
            async with self._request("POST", path, body, headers) as resp:
                try:
                    if resp.content_type == "application/json":
                        # A server that ignored stream: true answered in one piece.
                        for delta in parser.parse_whole(await resp.read()):
                            yield delta
                    else:
                        async for delta in _stream_deltas(resp, parser):
                            yield delta
                except (TimeoutError, aiohttp.ClientError) as exc:
                    raise EngineError(f"upstream stream broke: {exc!r}", status=502,
                                      code="upstream_stream_broken") from exc
                yield parser.final()
        finally:
            self.in_flight -= 1

    def _request(self, method: str, path: str, body: dict[str, Any] | None,
                 headers: dict[str, str] | None = None) -> _UpstreamCall:
        if self._session is None:
            raise EngineError("upstream engine not started", status=503, code="engine_closed")
        return _UpstreamCall(self._session, method, self.base_url + path, body, headers)


class _UpstreamCall:
    """``async with``: one upstream HTTP call, its failures translated into EngineError."""

    def __init__(self, session: aiohttp.ClientSession, method: str, url: str,
                 body: dict[str, Any] | None, headers: dict[str, str] | None) -> None:
        self._session, self._method, self._url = session, method, url
        self._body, self._headers = body, headers
        self._resp: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        data = orjson.dumps(self._body) if self._body is not None else None
        try:
            resp = await self._session.request(self._method, self._url, data=data,
                                               headers=self._headers)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise EngineError(f"upstream {self._url} unreachable: {exc}", status=502,
                              code="upstream_unavailable") from exc
        if resp.status >= 400:
            try:
                raw = await resp.read()
            except (TimeoutError, aiohttp.ClientError):
                raw = b""
            finally:
                resp.release()
            raise _status_error(resp.status, raw)
        self._resp = resp
        return resp

    async def __aexit__(self, *exc: object) -> None:
        if self._resp is not None:
            # aiohttp reuses the connection only if the body was read to the end, and closes it
            # otherwise, so an abandoned stream cannot leak into the next request.
            self._resp.release()


async def _stream_deltas(resp: aiohttp.ClientResponse, parser: _StreamParser
                         ) -> AsyncIterator[Delta]:
    """Deltas as SSE events arrive; after ``[DONE]``, read the body's end so the connection
    can be kept alive (briefly: a server that never ends the body after [DONE] loses it)."""
    decoder = SSEDecoder()
    async for chunk in resp.content.iter_any():
        for data in decoder.feed(chunk):
            for delta in parser.parse(data):
                yield delta
            if parser.done:
                break
        if parser.done:
            with contextlib.suppress(TimeoutError, aiohttp.ClientError):
                await asyncio.wait_for(resp.content.read(), DRAIN_SECONDS)
            return


def _status_error(status: int, raw: bytes) -> EngineError:
    message, code = raw.decode("utf-8", "replace")[:500] or f"HTTP {status}", "upstream_error"
    try:
        err = orjson.loads(raw)["error"]
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            code = str(err.get("code") or code)
        elif isinstance(err, str):
            message = err
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    return EngineError(f"upstream error: {message}", status=status, code=code)


def _message_json(m: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.reasoning_content is not None:
        out["reasoning_content"] = m.reasoning_content
    return out


class _StreamParser:
    """Turns upstream chunk objects (chat or text completion) into Deltas and one final Delta."""

    def __init__(self, completions: bool) -> None:
        self.completions = completions
        self.done = False
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.tokens = 0
        self.reasoning = 0

    def parse(self, data: bytes) -> list[Delta]:
        if data == b"[DONE]":
            self.done = True
            return []
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise EngineError("upstream sent an invalid stream chunk", status=502,
                              code="upstream_bad_response") from exc
        if not isinstance(obj, dict):
            return []
        if "error" in obj:
            raise _status_error(502, data)
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.usage = _usage(usage)
        out: list[Delta] = []
        for choice in obj.get("choices") or ():
            if self.completions:
                text = choice.get("text")
                if text:
                    out.append(Delta(content=text))
            else:
                delta = choice.get("delta") or {}
                # DeepSeek says reasoning_content; some vLLM versions say reasoning.
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                if reasoning:
                    out.append(Delta(reasoning=reasoning))
                content = delta.get("content")
                if content:
                    out.append(Delta(content=content))
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        for d in out:
            self.tokens += 1
            self.reasoning += 1 if d.reasoning else 0
        return out

    def parse_whole(self, raw: bytes) -> list[Delta]:
        """A non-streamed response: one object with ``message`` (or ``text``) in its choice."""
        try:
            obj = orjson.loads(raw)
            choice = obj["choices"][0]
            message = choice.get("message") or {}
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise EngineError("upstream sent an invalid response", status=502,
                              code="upstream_bad_response") from exc
        chunk: dict[str, Any] = {"finish_reason": choice.get("finish_reason")}
        if self.completions:
            chunk["text"] = choice.get("text")
        else:
            chunk["delta"] = {"reasoning_content": message.get("reasoning_content"),
                              "content": message.get("content")}
        deltas = self.parse(orjson.dumps({"choices": [chunk], "usage": obj.get("usage")}))
        self.done = True
        return deltas

    def final(self) -> Delta:
        if self.finish_reason is None:
            # Never pass a cut stream on as a complete one.
            raise EngineError("upstream stream ended before finishing", status=502,
                              code="upstream_stream_broken")
        usage = self.usage or Usage(0, self.tokens, self.reasoning)
        return Delta(finish_reason=self.finish_reason, usage=usage)


def _usage(u: dict[str, Any]) -> Usage:
    details = u.get("completion_tokens_details") or {}
    return Usage(prompt_tokens=int(u.get("prompt_tokens") or 0),
                 completion_tokens=int(u.get("completion_tokens") or 0),
                 reasoning_tokens=int(details.get("reasoning_tokens") or 0))
