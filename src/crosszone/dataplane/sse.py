"""Server-sent events framing, as OpenAI and DeepSeek send it (``data: {json}\\n\\n``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


def encode_event(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class SSEDecoder:
    """Incremental decoder: feed bytes as they arrive, get whole events' data fields out.

    Handles events split across reads, several events in one read, CRLF line endings, comment
    lines (``: keep-alive``) and multi-line data fields.
    """

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        self._buf += chunk
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                return
            line = self._buf[:nl].rstrip(b"\r")
            self._buf = self._buf[nl + 1 :]
            if not line:
                if self._data:
                    yield b"\n".join(self._data)
                    self._data = []
                continue
            if line.startswith(b":"):
                continue
            field, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if field == b"data":
                self._data.append(value)

    @property
    def pending(self) -> bool:
        """True while a partial event is buffered (the stream was cut mid-event)."""
        return bool(self._buf.strip() or self._data)


def split_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The data fields of the whole events in ``buffer``, and the incomplete rest.

    The batch counterpart of :class:`SSEDecoder`: one ``split`` in C for a whole buffer, with a
    fast path for the ``data: {json}`` events every OpenAI-compatible server sends.
    """
    if b"\r" in buffer:
        buffer = buffer.replace(b"\r\n", b"\n")
    blocks = buffer.split(b"\n\n")
    rest = blocks.pop()
    if buffer.count(b"\n", 0, len(buffer) - len(rest)) == 2 * len(blocks):
        # every event is one line: the common case, done in one comprehension
        out = [block[6:] for block in blocks if block.startswith(b"data: ")]
        if len(out) == len(blocks):
            return out, rest
    out = []
    for block in blocks:
        if block.startswith(b"data: ") and b"\n" not in block:
            out.append(block[6:])
            continue
        data: list[bytes] = []
        for line in block.split(b"\n"):
            field, _, value = line.partition(b":")
            if field == b"data":
                data.append(value[1:] if value.startswith(b" ") else value)
        if data:
            out.append(b"\n".join(data))
    return out, rest
