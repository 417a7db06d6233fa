"""The Responses API subset, as data: request parsing, the chat request it becomes, the response.

Supported: ``model``, ``input`` (a string, or a list of messages whose content is a string or
text parts; output items passed back are accepted, reasoning items skipped), ``instructions``,
``previous_response_id``, ``store``, ``stream``, ``max_output_tokens``, ``temperature``,
``top_p``, ``metadata``, ``user``. Tools, files and images are refused with a 400.

A stored response keeps the whole conversation that led to it (input messages and answers, in
chat-completions form, without ``instructions``: as in OpenAI's API, instructions apply to the
one request they come with), so continuing it needs that one record, in any zone.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from crosszone.errors import InvalidApiRequest

ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
TEXT_PARTS = ("input_text", "output_text", "text")
_UNSUPPORTED = ("tools", "tool_choice", "text", "reasoning", "include", "background",
                "conversation", "prompt")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    model: str
    input: list[dict[str, Any]]  # chat messages
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool = True
    stream: bool = False
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    user: str | None = None


def parse_request(body: dict[str, Any]) -> ResponsesRequest:
    """Validate a ``POST /v1/responses`` body (InvalidApiRequest naming the parameter)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidApiRequest("Missing required parameter: 'model'.", param="model",
                                code="missing_required_parameter")
    for name in _UNSUPPORTED:
        if body.get(name) not in (None, [], {}, "auto", False) and not _plain_text(name, body):
            raise InvalidApiRequest(f"'{name}' is not supported by this gateway", param=name,
                                    code="unsupported_parameter")
    max_tokens = body.get("max_output_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(
            max_tokens, bool) or max_tokens < 1):
        raise InvalidApiRequest("'max_output_tokens' must be a positive integer",
                                param="max_output_tokens", code="invalid_value")
    return ResponsesRequest(
        model=model, input=input_messages(body.get("input")),
        instructions=_opt(body, "instructions", str),
        previous_response_id=_opt(body, "previous_response_id", str),
        store=_flag(body, "store", True), stream=_flag(body, "stream", False),
        max_output_tokens=max_tokens, temperature=_number(body, "temperature"),
        top_p=_number(body, "top_p"), metadata=_metadata(body.get("metadata")),
        user=_opt(body, "user", str))


def _plain_text(name: str, body: dict[str, Any]) -> bool:
    """``text: {"format": {"type": "text"}}`` is the default and harmless."""
    value = body.get(name)
    return name == "text" and isinstance(value, dict) and value.get("format") in (
        None, {"type": "text"})


def input_messages(raw: Any) -> list[dict[str, Any]]:
    """``input`` as chat messages."""
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise InvalidApiRequest("'input' must be a string or a non-empty array of messages",
                                param="input", code="invalid_value")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidApiRequest(f"'{where}' must be an object", param=where,
                                    code="invalid_type")
        kind = item.get("type", "message")
        if kind == "reasoning":
            continue
        role = ROLES.get(str(item.get("role")))
        if kind != "message" or role is None:
            raise InvalidApiRequest(f"'{where}': only messages (roles user, assistant, system, "
                                    "developer) are supported", param=where,
                                    code="unsupported_value")
        messages.append({"role": role, "content": _text(item.get("content"), where)})
    if not messages:
        raise InvalidApiRequest("'input' has no message", param="input", code="invalid_value")
    return messages


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") in TEXT_PARTS
                    and isinstance(part.get("text"), str)):
                raise InvalidApiRequest(f"'{where}.content[{j}]' must be a text part",
                                        param=f"{where}.content[{j}]",
                                        code="unsupported_value")
            texts.append(part["text"])
        return "".join(texts)
    raise InvalidApiRequest(f"'{where}.content' must be a string or an array of text parts",
                            param=f"{where}.content", code="invalid_type")


def _opt(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise InvalidApiRequest(f"'{name}' must be of type {kind.__name__}", param=name,
                                code="invalid_type")
    return value


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidApiRequest(f"'{name}' must be a boolean", param=name, code="invalid_type")
    return value


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise InvalidApiRequest(f"'{name}' must be a number", param=name, code="invalid_type")
    return None if value is None else float(value)


def _metadata(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise InvalidApiRequest("'metadata' must be an object of strings", param="metadata",
                                code="invalid_type")
    return {str(k): v for k, v in raw.items()}


@dataclass(frozen=True, slots=True)
class Continuation:
    """A streamed response that a gateway elsewhere started and the load balancer continues
    here: what its client already has (see ``proxy/responses_dialect.py``)."""

    response_id: str | None = None
    created_at: int | None = None
    message_id: str | None = None
    reasoning_id: str | None = None
    content: str = ""
    reasoning: str = ""
    tokens: int = 0  # the text's tokens (x-crosszone-prefix-tokens)
    reasoning_tokens: int = 0  # of which reasoning


def parse_continuation(raw: Any, tokens: int) -> Continuation:
    """The ``crosszone_continuation`` object of a hop's request (InvalidApiRequest if bad)."""
    if not isinstance(raw, dict):
        raise InvalidApiRequest("'crosszone_continuation' must be an object",
                                param="crosszone_continuation", code="invalid_type")
    ids = {k: raw.get(k) for k in ("response_id", "message_id", "reasoning_id")}
    created, reasoning_tokens = raw.get("created_at"), raw.get("reasoning_tokens")
    return Continuation(
        **{k: v if isinstance(v, str) and v else None for k, v in ids.items()},
        created_at=created if isinstance(created, int) else None,
        content=_str(raw.get("content")), reasoning=_str(raw.get("reasoning")),
        tokens=max(tokens, 0),
        reasoning_tokens=reasoning_tokens if isinstance(reasoning_tokens, int) else 0)


def chat_body(req: ResponsesRequest, history: list[dict[str, Any]],
              continuation: Continuation | None = None) -> dict[str, Any]:
    """The chat completion request that answers ``req`` after the conversation ``history``;
    with a ``continuation``, one that goes on after the text its client already has (an
    assistant prefix, as DeepSeek's prefix completion takes it)."""
    messages = ([{"role": "system", "content": req.instructions}] if req.instructions else [])
    body: dict[str, Any] = {"model": req.model, "messages": messages + history + req.input}
    if continuation is not None and (continuation.content or continuation.reasoning):
        prefix = {"role": "assistant", "content": continuation.content, "prefix": True}
        if continuation.reasoning:
            prefix["reasoning_content"] = continuation.reasoning
        body["messages"].append(prefix)
    if req.max_output_tokens is not None:
        done = continuation.tokens if continuation is not None else 0
        body["max_tokens"] = max(req.max_output_tokens - done, 1)
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.user is not None:
        body["user"] = req.user
    return body


class ResponseBuilder:
    """Builds one response object from the answer's text as it arrives."""

    def __init__(self, req: ResponsesRequest, *, response_id: str | None = None,
                 continuation: Continuation | None = None) -> None:
        cont = continuation or Continuation()
        self.req = req
        self.id = cont.response_id or response_id or new_id("resp")
        self.message_id = cont.message_id or new_id("msg")
        self.reasoning_id = cont.reasoning_id or new_id("rs")
        self.created_at = cont.created_at or int(time.time())
        self.content: list[str] = [cont.content] if cont.content else []
        self.reasoning: list[str] = [cont.reasoning] if cont.reasoning else []
        # Tokens of that text, which the worker counts as prompt (it prefilled them again):
        # the client was sent them as output, and pays for them once, as output.
        self.resent = cont.tokens
        self.resent_reasoning = cont.reasoning_tokens
        self.tokens = cont.tokens  # text deltas of the answer so far
        # A continuation asks its worker for at least one token; text past max_output_tokens
        # is left out (and not billed), and the answer ends as cut by the cap.
        self.dropped = self.dropped_reasoning = 0
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.model = req.model

    def add_chunk(self, chunk: dict[str, Any]) -> tuple[str, str]:
        """Fold one chat chunk in; the (content, reasoning) text it added."""
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        content = reasoning = ""
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = _str(delta.get("content"))
                reasoning = _str(delta.get("reasoning_content") or delta.get("reasoning"))
            if choice.get("finish_reason") and not self.dropped:
                self.finish_reason = str(choice["finish_reason"])
        reasoning, content = self._within_cap(reasoning, True), self._within_cap(content, False)
        if content:
            self.content.append(content)
        if reasoning:
            self.reasoning.append(reasoning)
        return content, reasoning

    def _within_cap(self, text: str, reasoning: bool) -> str:
        if not text:
            return text
        cap = self.req.max_output_tokens
        if cap is not None and self.tokens >= cap:
            self.dropped += 1
            self.dropped_reasoning += 1 if reasoning else 0
            self.finish_reason = "length"
            return ""
        self.tokens += 1
        return text

    def add_completion(self, completion: dict[str, Any]) -> None:
        """Take a whole (non-streamed) chat completion."""
        choice = (completion.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        self.content = [str(message.get("content") or "")]
        reasoning = message.get("reasoning_content")
        self.reasoning = [reasoning] if isinstance(reasoning, str) and reasoning else []
        self.finish_reason = choice.get("finish_reason") or "stop"
        usage = completion.get("usage")
        self.usage = usage if isinstance(usage, dict) else None

    @property
    def text(self) -> str:
        return "".join(self.content)

    def message_item(self, *, done: bool = True) -> dict[str, Any]:
        text = self.text if done else ""
        content = [output_text(text)] if done else []
        return {"id": self.message_id, "type": "message", "role": "assistant",
                "status": "completed" if done else "in_progress", "content": content}

    def reasoning_item(self) -> dict[str, Any]:
        return {"id": self.reasoning_id, "type": "reasoning", "summary": [],
                "content": [{"type": "reasoning_text", "text": "".join(self.reasoning)}]}

    def output(self) -> list[dict[str, Any]]:
        items = [self.reasoning_item()] if self.reasoning else []
        return [*items, self.message_item()]

    def response_usage(self) -> dict[str, Any] | None:
        if self.usage is None:
            return None
        prompt = int(self.usage.get("prompt_tokens") or 0)
        resent = min(self.resent, prompt)
        prompt -= resent
        completion = int(self.usage.get("completion_tokens") or 0) + resent - self.dropped
        details = self.usage.get("completion_tokens_details") or {}
        reasoning = (int(details.get("reasoning_tokens") or 0) + self.resent_reasoning
                     - self.dropped_reasoning)
        return {"input_tokens": prompt, "output_tokens": completion,
                "total_tokens": prompt + completion,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": reasoning}}

    def response(self, status: str = "completed", *,
                 error: dict[str, Any] | None = None) -> dict[str, Any]:
        """The response object (``status`` in_progress: no output yet)."""
        req = self.req
        incomplete = None
        if status == "completed" and self.finish_reason == "length":
            status, incomplete = "incomplete", {"reason": "max_output_tokens"}
        done = status in ("completed", "incomplete")
        return {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": status, "completed_at": int(time.time()) if done else None,
            "error": error, "incomplete_details": incomplete,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "model": self.model, "output": self.output() if done else [],
            "parallel_tool_calls": True, "previous_response_id": req.previous_response_id,
            "reasoning": {"effort": None, "summary": None}, "store": req.store,
            "temperature": req.temperature, "text": {"format": {"type": "text"}},
            "tool_choice": "auto", "tools": [], "top_p": req.top_p, "truncation": "disabled",
            "usage": self.response_usage() if done else None, "user": req.user,
            "metadata": req.metadata,
        }

    def conversation(self, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The conversation after this response, to store for ``previous_response_id``."""
        answer: dict[str, Any] = {"role": "assistant", "content": self.text}
        return [*history, *self.req.input, answer]


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""
