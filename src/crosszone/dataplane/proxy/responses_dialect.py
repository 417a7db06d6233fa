"""The Responses API stream (``POST /v1/responses``) as a :class:`StreamDialect`.

Its events are typed: ``event: <type>`` and ``data: {"type": <type>, "sequence_number": n, ...}``.
The answer's text arrives in ``response.output_text.delta`` and ``response.reasoning_text.delta``
events; every other event opens or closes something (the response, an output item, a content
part), and ``response.completed``, ``response.incomplete`` or ``response.failed`` ends the stream
(no ``[DONE]``, so the end is read from the transcript, not from the stream's last bytes).

A continuation is the client's request plus a :data:`CONTINUATION_FIELD` object: the response's
id and ``created_at``, the ids of its output items, and the text and reasoning the client already
has. A gateway honours it only on a request from a hop (one that carries
``x-crosszone-migrations``; the load balancer drops every ``x-crosszone-*`` header a client
sends). The gateway answers with the stream of that same response as if from the start, except
that it does not repeat the deltas the client has: it opens what that text opened, and its
``*.done`` events, ``response.completed``, usage and stored response cover the whole answer (see
``gateway/responses.py``). Splicing drops every event the client already has (same type, same
item), keeps the response's id and ``created_at``, and renumbers ``sequence_number`` to follow on
from the last one the client received.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from crosszone.dataplane.proxy.dialect_base import StreamDialect

if TYPE_CHECKING:
    from crosszone.dataplane.proxy.splice import Splicer
    from crosszone.dataplane.proxy.transcript import Transcript

CONTINUATION_FIELD = "crosszone_continuation"
CONTENT_DELTA = "response.output_text.delta"
REASONING_DELTAS = frozenset({"response.reasoning_text.delta",
                              "response.reasoning_summary_text.delta"})
ENDS = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
_KEPT = ("id", "created_at")  # of the response object, as the client first saw them


class ResponsesDialect(StreamDialect):
    """Follows and continues a Responses API stream (see the module docstring)."""

    def fold(self, data: bytes, transcript: Transcript) -> None:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if isinstance(event, dict):
            self.fold_event(event, transcript)

    def fold_event(self, event: dict[str, Any], transcript: Transcript) -> None:
        kind = event.get("type")
        if not isinstance(kind, str):
            return
        sequence = event.get("sequence_number")
        if isinstance(sequence, int) and not isinstance(sequence, bool):
            transcript.sequence = sequence
        if kind == CONTENT_DELTA:
            transcript.choice(0).add(_str(event.get("delta")), "")
            return
        if kind in REASONING_DELTAS:
            transcript.choice(0).add("", _str(event.get("delta")))
            return
        transcript.seen.add(mark(kind, event))
        response = event.get("response")
        if transcript.envelope is None and isinstance(response, dict):
            transcript.envelope = {k: response[k] for k in (*_KEPT, "model") if k in response}
        item = event.get("item")
        if kind == "response.output_item.added" and isinstance(item, dict):
            transcript.items[str(item.get("type"))] = str(item.get("id"))
        if kind in ENDS:
            transcript.done = transcript.usage_sent = True

    def completed(self, tail: bytes) -> bool | None:
        return None  # the last event is a whole response object: only the transcript can tell

    def continuation(self, request: dict[str, Any], transcript: Transcript) -> dict[str, Any]:
        text = transcript.choice(0)
        envelope = transcript.envelope or {}
        state = {"response_id": envelope.get("id"), "created_at": envelope.get("created_at"),
                 "message_id": transcript.items.get("message"),
                 "reasoning_id": transcript.items.get("reasoning"),
                 "content": "".join(text.content), "reasoning": "".join(text.reasoning),
                 "reasoning_tokens": text.reasoning_tokens}
        return {**request, CONTINUATION_FIELD: state}

    def splice(self, event: dict[str, Any], splicer: Splicer) -> dict[str, Any] | None:
        transcript = splicer.transcript
        kind = event.get("type")
        if transcript.done or not isinstance(kind, str):
            return None
        if kind != CONTENT_DELTA and kind not in REASONING_DELTAS:
            if mark(kind, event) in transcript.seen:
                return None  # the client has it from an earlier stream
            response = event.get("response")
            if isinstance(response, dict) and transcript.envelope:
                for key in _KEPT:
                    if key in transcript.envelope:
                        response[key] = transcript.envelope[key]
        if "sequence_number" in event:
            event["sequence_number"] = transcript.sequence + 1
        self.fold_event(event, transcript)
        return event

    def encode(self, event: dict[str, Any]) -> bytes:
        kind = event.get("type")
        head = b"event: " + kind.encode() + b"\n" if isinstance(kind, str) else b""
        return head + b"data: " + orjson.dumps(event) + b"\n\n"


def mark(kind: str, event: dict[str, Any]) -> str:
    """What identifies a non-text event within its response: its type and its item."""
    item = event.get("item")
    item_id = event.get("item_id") or (item.get("id") if isinstance(item, dict) else None)
    return f"{kind} {item_id}" if item_id else kind


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""
