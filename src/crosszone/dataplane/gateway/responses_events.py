"""A streamed Responses API answer, in the event format the official ``openai`` client reads.

Each event is ``event: <type>`` plus ``data: {"type": <type>, "sequence_number": n, ...}``:
``response.created``, ``response.in_progress``; for the answer's reasoning (deepseek-reasoner)
a ``reasoning`` item with ``response.reasoning_text.delta``/``.done``; for its text a
``message`` item with ``response.content_part.added``, ``response.output_text.delta``...,
``response.output_text.done``, ``response.content_part.done``; each item opened by
``response.output_item.added`` and closed by ``response.output_item.done``; then
``response.completed`` (``response.incomplete`` when ``max_output_tokens`` cut it), or
``response.failed`` when the answer could not be finished or stored.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from crosszone.dataplane.gateway.conversation import ResponseBuilder, output_text


class ResponseEvents:
    """Writes one response's events to ``stream`` as chat chunks arrive."""

    def __init__(self, stream: web.StreamResponse, builder: ResponseBuilder) -> None:
        self.stream = stream
        self.builder = builder
        self.sequence = 0
        self.items = 0  # output items opened so far
        self._reasoning_at: int | None = None  # output index of the open reasoning item
        self._message_at: int | None = None

    def __repr__(self) -> str:
        return f"<ResponseEvents {self.builder.id} seq={self.sequence} items={self.items}>"

    async def send(self, kind: str, **fields: Any) -> None:
        data = orjson.dumps({"type": kind, "sequence_number": self.sequence, **fields})
        self.sequence += 1
        await self.stream.write(b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n")

    async def start(self) -> None:
        snapshot = self.builder.response("in_progress")
        await self.send("response.created", response=snapshot)
        await self.send("response.in_progress", response=snapshot)
        # A continuation's builder starts with the text its client has: open what that text
        # opened (the load balancer drops the events its client already has), send no deltas.
        if self.builder.reasoning and not self.builder.content:
            self._reasoning_at = await self._open(self._reasoning_started())
        elif self.builder.reasoning:
            self.items += 1  # the reasoning item, opened and closed before the message
            await self._open_message()
        elif self.builder.content:
            await self._open_message()

    async def chunk(self, chunk: dict[str, Any]) -> None:
        content, reasoning = self.builder.add_chunk(chunk)
        if reasoning:
            if self._reasoning_at is None and self._message_at is None:
                self._reasoning_at = await self._open(self._reasoning_started())
            if self._reasoning_at is not None:
                await self.send("response.reasoning_text.delta",
                                item_id=self.builder.reasoning_id,
                                output_index=self._reasoning_at, content_index=0,
                                delta=reasoning)
        if content:
            await self._open_message()
            await self.send("response.output_text.delta", item_id=self.builder.message_id,
                            output_index=self._message_at, content_index=0, delta=content,
                            logprobs=[])

    async def finish_output(self) -> None:
        """Close the open items (a message is opened, empty, if no text came)."""
        await self._open_message()
        text = self.builder.text
        item_id, index = self.builder.message_id, self._message_at
        await self.send("response.output_text.done", item_id=item_id, output_index=index,
                        content_index=0, text=text, logprobs=[])
        await self.send("response.content_part.done", item_id=item_id, output_index=index,
                        content_index=0, part=output_text(text))
        await self.send("response.output_item.done", output_index=index,
                        item=self.builder.message_item())

    async def completed(self) -> None:
        response = self.builder.response()
        kind = "response.incomplete" if response["status"] == "incomplete" \
            else "response.completed"
        await self.send(kind, response=response)

    async def failed(self, message: str, code: str) -> None:
        await self.send("response.failed", response=self.builder.response(
            "failed", error={"code": code, "message": message}))

    def _reasoning_started(self) -> dict[str, Any]:
        return {"id": self.builder.reasoning_id, "type": "reasoning", "summary": [],
                "content": [], "status": "in_progress"}

    async def _open(self, item: dict[str, Any]) -> int:
        index = self.items
        self.items += 1
        await self.send("response.output_item.added", output_index=index, item=item)
        return index

    async def _open_message(self) -> None:
        if self._message_at is not None:
            return
        await self._close_reasoning()
        self._message_at = await self._open(self.builder.message_item(done=False))
        await self.send("response.content_part.added", item_id=self.builder.message_id,
                        output_index=self._message_at, content_index=0, part=output_text(""))

    async def _close_reasoning(self) -> None:
        if self._reasoning_at is None:
            return
        index, self._reasoning_at = self._reasoning_at, None
        text = "".join(self.builder.reasoning)
        await self.send("response.reasoning_text.done", item_id=self.builder.reasoning_id,
                        output_index=index, content_index=0, text=text)
        await self.send("response.output_item.done", output_index=index,
                        item={**self.builder.reasoning_item(), "status": "completed"})
