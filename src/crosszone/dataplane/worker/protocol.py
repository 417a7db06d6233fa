"""The OpenAI/DeepSeek wire format of a worker: request validation and response framing.

Validation mirrors what OpenAI answers (``param`` names the offending field, ``code`` says how it
is wrong) so clients see the same errors from crosszone as from the real service. Framing builds
the per-token SSE chunk from pre-encoded bytes: one ``orjson.dumps`` of the token text per chunk
is all the hot path costs.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from crosszone.dataplane.engines.base import ChatMessage, Delta, GenerationRequest, Usage
from crosszone.errors import CrosszoneError

ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool", "developer")
SYSTEM_FINGERPRINT = "fp_crosszone"
REASONER_MODEL = "deepseek-reasoner"
MAX_STOP_SEQUENCES = 16

T = TypeVar("T")


class BadRequestError(CrosszoneError):
    """A request the worker refuses; becomes an OpenAI error body with this status."""

    def __init__(self, message: str, *, param: str | None = None,
                 code: str | None = "invalid_request", status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.code = code
        self.status = status


@dataclass(frozen=True)
class ParsedRequest:
    generation: GenerationRequest
    stream: bool
    include_usage: bool


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"request body is not valid JSON: {exc}",
                              code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequestError("request body must be a JSON object", code="invalid_json")
    return body


def parse_chat(body: dict[str, Any], request_id: str) -> ParsedRequest:
    """Validate a ``/v1/chat/completions`` body.

    Besides DeepSeek's ``prefix: true`` on the last (assistant) message, vLLM's
    ``continue_final_message: true`` is accepted as the same request: continue that message.
    """
    model = _model(body)
    raw_messages = body.get("messages")
    if raw_messages is None:
        raise BadRequestError("Missing required parameter: 'messages'.", param="messages",
                         code="missing_required_parameter")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise BadRequestError("'messages' must be a non-empty array", param="messages",
                         code="invalid_type")
    messages = [_message(m, i, last=i == len(raw_messages) - 1)
                for i, m in enumerate(raw_messages)]
    if _optional(body, "continue_final_message", bool):
        if messages[-1].role != "assistant":
            raise BadRequestError("continue_final_message needs a final assistant message",
                             param="messages", code="invalid_value")
        last = messages[-1]
        messages[-1] = ChatMessage("assistant", last.content, last.reasoning_content, True)
    max_tokens = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")
    return ParsedRequest(
        GenerationRequest(model=model, messages=messages, max_tokens=max_tokens,
                          seed=_seed(body), temperature=_temperature(body), stop=_stop(body),
                          request_id=request_id),
        *_streaming(body))


def parse_completions(body: dict[str, Any], request_id: str) -> ParsedRequest:
    """Validate a ``/v1/completions`` body; ``crosszone_prefix`` is the text to continue from."""
    model = _model(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if prompt is None:
        raise BadRequestError("Missing required parameter: 'prompt'.", param="prompt",
                         code="missing_required_parameter")
    if not isinstance(prompt, str):
        raise BadRequestError("'prompt' must be a string or a list of one string", param="prompt",
                         code="invalid_type")
    prefix = _optional(body, "crosszone_prefix", str)
    messages = [ChatMessage("assistant", prefix, prefix=True)] if prefix is not None else []
    return ParsedRequest(
        GenerationRequest(model=model, messages=messages, max_tokens=_positive_int(body,
                                                                                 "max_tokens"),
                          seed=_seed(body), temperature=_temperature(body), stop=_stop(body),
                          request_id=request_id, prompt=prompt),
        *_streaming(body))


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise BadRequestError("Missing required parameter: 'model'.", param="model",
                         code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise BadRequestError("'model' must be a non-empty string", param="model",
                              code="invalid_type")
    n = body.get("n")
    if n is not None and (type(n) is not int or n != 1):
        raise BadRequestError("only n=1 is supported", param="n", code="unsupported_value")
    return model


def _message(raw: Any, i: int, *, last: bool) -> ChatMessage:
    where = f"messages[{i}]"
    if not isinstance(raw, dict):
        raise BadRequestError(f"'{where}' must be an object", param=where, code="invalid_type")
    role = raw.get("role")
    if role not in ROLES:
        raise BadRequestError(f"'{where}.role' must be one of {', '.join(ROLES)}",
                         param=f"{where}.role", code="invalid_value")
    content = _content(raw.get("content"), f"{where}.content")
    reasoning = raw.get("reasoning_content")
    if reasoning is not None and not isinstance(reasoning, str):
        raise BadRequestError(f"'{where}.reasoning_content' must be a string",
                         param=f"{where}.reasoning_content", code="invalid_type")
    prefix = raw.get("prefix", False)
    if not isinstance(prefix, bool):
        raise BadRequestError(f"'{where}.prefix' must be a boolean", param=f"{where}.prefix",
                         code="invalid_type")
    if prefix and not (last and role == "assistant"):
        raise BadRequestError("prefix is only allowed on the last message, an assistant message",
                         param=f"{where}.prefix", code="invalid_value")
    return ChatMessage(role, content, reasoning, prefix)


def _content(raw: Any, where: str) -> str:
    if raw is None:  # an assistant message that only made tool calls
        return ""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list):
        texts: list[str] = []
        for j, part in enumerate(raw):
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise BadRequestError(f"'{where}[{j}]' must be a text part "
                                 '({"type": "text", "text": ...})', param=f"{where}[{j}]",
                                 code="invalid_type")
            texts.append(part["text"])
        return "\n".join(texts)
    raise BadRequestError(f"'{where}' must be a string or an array of text parts", param=where,
                     code="invalid_type")


def _optional(body: dict[str, Any], name: str, kind: type[T]) -> T | None:
    value = body.get(name)
    if value is None:
        return None
    # bool is an int subclass; a JSON true is never a valid count.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise BadRequestError(f"'{name}' must be of type {kind.__name__}", param=name,
                         code="invalid_type")
    return value


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = _optional(body, name, int)
    if value is not None and value < 1:
        raise BadRequestError(f"'{name}' must be a positive integer", param=name,
                              code="invalid_value")
    return value


def _seed(body: dict[str, Any]) -> int | None:
    return _optional(body, "seed", int)


def _temperature(body: dict[str, Any]) -> float | None:
    value = body.get("temperature")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 2:
        raise BadRequestError("'temperature' must be a number between 0 and 2", param="temperature",
                         code="invalid_value")
    return float(value)


def _stop(body: dict[str, Any]) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if (isinstance(value, list) and len(value) <= MAX_STOP_SEQUENCES
            and all(isinstance(s, str) for s in value)):
        return list(value)
    raise BadRequestError(f"'stop' must be a string or an array of at most {MAX_STOP_SEQUENCES} "
                     "strings", param="stop", code="invalid_type")


def _streaming(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = bool(_optional(body, "stream", bool))
    options = _optional(body, "stream_options", dict) or {}
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise BadRequestError("'stream_options.include_usage' must be a boolean",
                         param="stream_options.include_usage", code="invalid_type")
    return stream, include_usage


def response_id(prefix: str, request_id: str) -> str:
    """``chatcmpl-<x-request-id>`` so a gateway keeps one id across a migration; else random."""
    return f"{prefix}-{request_id or uuid.uuid4().hex}"


def usage_json(usage: Usage) -> dict[str, Any]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens}}


class Framer:
    """Frames one response, streaming (SSE bytes) or whole (a JSON object)."""

    def __init__(self, *, chat: bool, id_: str, model: str, created: int | None = None) -> None:
        self.chat = chat
        self.id = id_
        self.model = model
        self.created = int(time.time()) if created is None else created
        self.object = "chat.completion.chunk" if chat else "text_completion"
        self._head = (b'data: {"id":' + orjson.dumps(id_) + b',"object":'
                      + orjson.dumps(self.object) + b',"created":' + str(self.created).encode()
                      + b',"model":' + orjson.dumps(model) + b',"system_fingerprint":'
                      + orjson.dumps(SYSTEM_FINGERPRINT) + b',"choices":[{"index":0,')
        self._tail = b',"logprobs":null,"finish_reason":null}]}\n\n'

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "system_fingerprint": SYSTEM_FINGERPRINT, "choices": choices}

    def first(self) -> bytes:
        """The opening chunk: chat announces the assistant role; completions has none."""
        if not self.chat:
            return b""
        return self._head + b'"delta":{"role":"assistant","content":""}' + self._tail

    def token(self, delta: Delta) -> bytes:
        if not self.chat:
            return self._head + b'"text":' + orjson.dumps(delta.content) + self._tail
        if delta.reasoning:
            return (self._head + b'"delta":{"reasoning_content":' + orjson.dumps(delta.reasoning)
                    + b',"content":null}' + self._tail)
        return self._head + b'"delta":{"content":' + orjson.dumps(delta.content) + b"}" + self._tail

    def finish(self, finish_reason: str) -> bytes:
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["delta"] = {}
        else:
            choice["text"] = ""
        choice.update(logprobs=None, finish_reason=finish_reason)
        return b"data: " + orjson.dumps(self._envelope([choice])) + b"\n\n"

    def usage(self, usage: Usage) -> bytes:
        body = self._envelope([])
        body["usage"] = usage_json(usage)
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def complete(self, content: str, reasoning: str, final: Delta) -> dict[str, Any]:
        """The non-streaming response body."""
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if reasoning or self.model == REASONER_MODEL:
                message["reasoning_content"] = reasoning
            choice["message"] = message
        else:
            choice["text"] = content
        choice.update(logprobs=None, finish_reason=final.finish_reason)
        body = self._envelope([choice])
        body["object"] = "chat.completion" if self.chat else "text_completion"
        body["usage"] = usage_json(final.usage or Usage(0, 0))
        return body
