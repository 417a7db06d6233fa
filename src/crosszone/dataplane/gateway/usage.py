"""Usage records: one per served request, exactly once, replicated asynchronously.

Every request a gateway answers completely (chat, completions, responses; streamed or not)
appends one record to collection ``usage`` keyed by its request id (the ``x-request-id`` the LB
sets and every retry and migration of the request carries), so a request served twice (an LB
retry after a gateway died before answering, a stream migrated to another zone) still counts
once: the second write replaces the first in every zone. The record is written **before** the
client receives the end of the answer (the last bytes of a non-streamed answer, the usage block
or ``[DONE]`` of a stream, ``response.completed``), so what a client received is recorded even
if the zone dies a moment later; it then reaches the other zones when the zone comes back
(outbox replication). A request is billed if and only if its answer completed.

Writes go to the gateway's own zone store, batched (requests arriving while a write is in
flight share the next one); when that store cannot be reached, to another zone's store; when
none can, to an in-memory backlog retried every second (and lost if the gateway dies before
a store comes back; logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from crosszone.dataplane.proxy.migration import PREFIX_TOKENS_HEADER
from crosszone.dataplane.proxy.tap import Flush
from crosszone.errors import StoreError
from crosszone.storage.client import ZoneStores
from crosszone.storage.records import Write
from crosszone.tasks import cancel_and_wait

USAGE = "usage"
BATCH_MAX = 500
log = logging.getLogger("crosszone.usage")


@dataclass(frozen=True, slots=True)
class UsageRecord:
    request_id: str
    key_id: str
    model: str
    api: str  # chat | completions | responses
    zone: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    created: float = 0.0
    usage_id: str = ""  # the record's key: the LB's id of the client request (default request_id)

    @property
    def key(self) -> str:
        return self.usage_id or self.request_id

    def with_tokens(self, usage: dict[str, Any], resent: int = 0) -> UsageRecord:
        """This record with the token counts of an OpenAI ``usage`` block (either API's names).

        ``resent``: the request continues a stream that broke in a hop above, whose client
        already has that many tokens, sent again here as a prefix: they count as completion
        tokens (as the client's merged usage block says), not as prompt."""
        prompt = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
        completion = _count(usage.get("completion_tokens", usage.get("output_tokens")))
        resent = min(max(resent, 0), prompt)
        return replace(self, prompt_tokens=prompt - resent, completion_tokens=completion + resent,
                       created=time.time())

    def to_json(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "key_id": self.key_id, "model": self.model,
                "api": self.api, "zone": self.zone, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "created": self.created,
                "usage_id": self.key}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UsageRecord:
        return cls(str(data["request_id"]), str(data["key_id"]), str(data["model"]),
                   str(data.get("api", "")), str(data.get("zone", "")),
                   _count(data.get("prompt_tokens")), _count(data.get("completion_tokens")),
                   float(data.get("created", 0.0)), str(data.get("usage_id", "")))


def resent_tokens(headers: Mapping[str, str]) -> int:
    """Tokens the LB re-sent as a prefix when a request continues a stream that broke (its
    ``x-crosszone-prefix-tokens``; only hops set it: the LB drops it from clients)."""
    raw = headers.get(PREFIX_TOKENS_HEADER, "")
    return int(raw) if raw.isdigit() else 0


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class UsageRecorder:
    """Appends usage records to the zone stores (see the module docstring)."""

    def __init__(self, stores: ZoneStores, *, max_wait: float = 3.0, retry_every: float = 1.0,
                 backlog_max: int = 100_000) -> None:
        self.stores = stores
        self.max_wait = max_wait
        self.retry_every = retry_every
        self.backlog: deque[UsageRecord] = deque(maxlen=backlog_max)
        self.written = 0
        self._pending: list[tuple[UsageRecord, asyncio.Future[bool]]] = []
        self._wake = asyncio.Event()
        self._down_until = 0.0
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (f"UsageRecorder(written={self.written}, pending={len(self._pending)}, "
                f"backlog={len(self.backlog)})")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="usage-writer")

    async def stop(self) -> None:
        """Write what is waiting (one attempt), then stop."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self._flush(force=True)
        if self.backlog:
            log.error("stopping with %d usage records not written", len(self.backlog))

    async def record(self, record: UsageRecord) -> bool:
        """Append ``record``; True once a zone store holds it durably. While no store answers,
        it goes to the backlog at once (the request is not held up)."""
        if self._task is None or time.monotonic() < self._down_until:
            self.backlog.append(record)
            self._wake.set()
            return False
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((record, done))
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(done), self.max_wait)
        except TimeoutError:
            return False  # still queued: written with a later batch

    async def _run(self) -> None:
        while True:
            timeout = self.retry_every if self.backlog else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            await self._flush(force=False)

    async def _flush(self, *, force: bool) -> None:
        batch, self._pending = self._pending, []
        retry: list[UsageRecord] = []
        if self.backlog and (force or time.monotonic() >= self._down_until):
            while self.backlog and len(retry) < BATCH_MAX:
                retry.append(self.backlog.popleft())
        records = [r for r, _ in batch] + retry
        ok = True
        for start in range(0, len(records), BATCH_MAX):
            ok = ok and await self._write(records[start:start + BATCH_MAX])
        if ok:
            self.written += len(records)
        else:
            self.backlog.extend(records)
            self._down_until = time.monotonic() + self.retry_every
            log.warning("no zone store took %d usage records; %d waiting to be retried",
                        len(records), len(self.backlog))
        for _, done in batch:
            if not done.done():
                done.set_result(ok)

    async def _write(self, records: list[UsageRecord]) -> bool:
        if not records:
            return True
        writes = [Write.put(USAGE, r.key, r.to_json()) for r in records]
        for store in self.stores.all():
            try:
                await store.write(writes)
                return True
            except StoreError as exc:
                log.debug("usage write to zone %s failed: %s", store.zone, exc)
        return False


class UsageTap:
    """Follows a chat or completions stream for its usage block (see ``proxy/tap.py``).

    The gateway asks workers for ``stream_options.include_usage``; the tap records the block
    before the client gets it and drops it when the client had not asked for it.
    """

    def __init__(self, recorder: UsageRecorder, record: UsageRecord, *, strip: bool,
                 resent: int = 0) -> None:
        self.recorder = recorder
        self.record = record
        self.strip = strip
        self.resent = resent
        self.recorded = False

    async def feed(self, out: bytes, flush: Flush) -> bytes:
        if self.recorded or b'"usage"' not in out:
            return out
        blocks = out.split(b"\n\n")
        kept: list[bytes] = []
        for i, block in enumerate(blocks):
            usage = None if i == len(blocks) - 1 else usage_block(block)
            if usage is not None and not self.recorded:
                self.recorded = True
                # the events in front of the usage block (the last tokens, the finish reason)
                # go now; only the usage block and [DONE] wait for the durable write
                recording = asyncio.ensure_future(
                    self.recorder.record(self.record.with_tokens(usage, self.resent)))
                try:
                    if kept:
                        await flush(b"\n\n".join(kept) + b"\n\n")
                        kept = []
                finally:
                    await recording
                if self.strip:
                    continue
            kept.append(block)
        return b"\n\n".join(kept)


def usage_block(event: bytes) -> dict[str, Any] | None:
    """The ``usage`` object of one SSE event (``data: {...}``), if it carries one."""
    if b'"usage"' not in event:
        return None
    data = b"".join(line[5:].lstrip() for line in event.split(b"\n")
                    if line.startswith(b"data:"))
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    usage = parsed.get("usage") if isinstance(parsed, dict) else None
    return usage if isinstance(usage, dict) else None


def usage_of_body(body: bytes) -> dict[str, Any] | None:
    """The ``usage`` object of a whole (non-streamed) answer."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    usage = parsed.get("usage") if isinstance(parsed, dict) else None
    return usage if isinstance(usage, dict) else None


def aggregate(records: Iterable[UsageRecord]) -> dict[str, Any]:
    """Totals per (key, model) and overall, as ``GET /admin/usage`` answers."""
    groups: dict[tuple[str, str], dict[str, int]] = {}
    totals = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for r in records:
        group = groups.setdefault((r.key_id, r.model), dict.fromkeys(totals, 0))
        for target in (group, totals):
            target["requests"] += 1
            target["prompt_tokens"] += r.prompt_tokens
            target["completion_tokens"] += r.completion_tokens
            target["total_tokens"] += r.prompt_tokens + r.completion_tokens
    data = [{"key_id": k, "model": m, **v} for (k, m), v in sorted(groups.items())]
    return {"object": "usage", "totals": totals, "data": data}
