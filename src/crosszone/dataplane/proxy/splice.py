"""Splicing a continuation stream onto the stream a client is already reading.

After a migration every event of the new backend's stream is parsed and rewritten by the
stream's dialect before the client sees it: the opening role chunk is dropped, ``id``,
``created`` and ``model`` keep the first stream's values, text past the end the client was
promised is dropped, only one ``[DONE]`` is ever sent, and the usage block is merged so that
``prompt_tokens`` is the original request's and ``completion_tokens`` counts every token the
client received (tokens sent again as the prefix are not the client's to pay twice).

Usage arithmetic: a continuation after ``k`` received tokens reports ``prompt_tokens`` = the
original prompt + the ``k`` prefix tokens it prefilled again, and ``completion_tokens`` = what it
generated, so the merged block says ``prompt - k`` and ``k + completion - dropped``. ``k`` counts
token-bearing deltas, which is exact for the simulator and for servers that stream one token per
chunk (vLLM, DeepSeek).
"""

from __future__ import annotations

from typing import Any

import orjson

from crosszone.dataplane.proxy.dialects import StreamDialect
from crosszone.dataplane.proxy.transcript import Transcript
from crosszone.dataplane.sse import DONE, split_events


class Splicer:
    """Rewrites one continuation stream (see the module docstring); one per migration."""

    def __init__(self, dialect: StreamDialect, transcript: Transcript,
                 max_tokens: int | None) -> None:
        self.dialect = dialect
        self.transcript = transcript
        self.max_tokens = max_tokens  # the client's own cap, per choice
        self.before = transcript.tokens  # what the client had when this stream took over
        self.before_reasoning = transcript.reasoning_tokens
        self.dropped = 0
        self.dropped_reasoning = 0
        self.cut_at_cap = False  # text was dropped at the client's max_tokens: finish is length
        self._rest = b""

    def feed(self, chunk: bytes) -> tuple[bytes, dict[str, Any] | None]:
        """The bytes to send the client for ``chunk``, and the error event that ended the
        stream if one came (nothing after it is used)."""
        events, self._rest = split_events(self._rest + chunk if self._rest else chunk)
        out: list[bytes] = []
        for data in events:
            if data == b"[DONE]":
                if not self.transcript.done:
                    self.transcript.done = True
                    out.append(DONE)
                continue
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(event, dict):
                continue
            if "error" in event:
                return b"".join(out), event
            spliced = self.dialect.splice(event, self)
            if spliced is not None:
                out.append(self.dialect.encode(spliced))
        return b"".join(out), None

    @property
    def pending(self) -> bool:
        """True while part of an event is buffered (the stream was cut inside it)."""
        return bool(self._rest.strip())

    def capped(self, tokens: int) -> bool:
        return self.max_tokens is not None and tokens >= self.max_tokens

    def drop(self, content: str, reasoning: str) -> None:
        """Count text left out of the client's stream (so usage does not bill it)."""
        self.dropped += (1 if content else 0) + (1 if reasoning else 0)
        self.dropped_reasoning += 1 if reasoning else 0

    def merged_usage(self, usage: dict[str, Any]) -> dict[str, Any]:
        prompt = max(_int(usage.get("prompt_tokens")) - self.before, 0)
        completion = self.before + _int(usage.get("completion_tokens")) - self.dropped
        merged = {**usage, "prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion}
        details = usage.get("completion_tokens_details")
        reasoning = self.before_reasoning - self.dropped_reasoning
        if isinstance(details, dict):
            reasoning += _int(details.get("reasoning_tokens"))
            merged["completion_tokens_details"] = {**details, "reasoning_tokens": reasoning}
        elif reasoning:
            merged["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        return merged

    def __repr__(self) -> str:
        return (f"<Splicer before={self.before} dropped={self.dropped} "
                f"done={self.transcript.done}>")


def client_max_tokens(request: dict[str, Any]) -> int | None:
    """The per-choice token cap the client asked for, if any."""
    for key in ("max_completion_tokens", "max_tokens"):
        cap = request.get(key)
        if isinstance(cap, int) and not isinstance(cap, bool):
            return cap
    return None


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
