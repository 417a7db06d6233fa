"""Continuous batching: one timer advances every running sequence by one token per decode step.

This is how vLLM-style servers spend their time, and it is what makes the simulator's latency grow
with load: at most ``max_num_seqs`` sequences decode together, the rest wait in a FIFO queue, and a
newly admitted sequence first pays its prefill time. The scheduler only counts tokens; which text a
token carries is the engine's business (see :mod:`crosszone.dataplane.engines.simulator`). One
timer for all sequences, rather than one sleep per token per request, keeps a thousand concurrent
streams cheap: a step is a loop of integer increments and future wake-ups.

A sequence's queue time runs from ``submit`` to the step that admits it into the batch; with
``on_admit`` set, the scheduler reports it there, once per sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

from crosszone.errors import EngineError


class Sequence:
    """One request's place in the batch: how many tokens it wants and how many are done."""

    __slots__ = ("finished", "length", "prefill_seconds", "produced", "queued_at", "ready_at",
                 "waiter")

    def __init__(self, length: int, prefill_seconds: float) -> None:
        self.length = length
        self.prefill_seconds = prefill_seconds
        self.produced = 0
        self.queued_at = 0.0
        self.ready_at = 0.0
        self.finished = False
        self.waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<Sequence {self.produced}/{self.length}>"

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)


class BatchScheduler:
    """Admits, advances and retires sequences; see the module docstring."""

    def __init__(self, *, decode_seconds: float, max_num_seqs: int, max_queue: int) -> None:
        self.decode_seconds = decode_seconds
        self.max_num_seqs = max_num_seqs
        self.max_queue = max_queue
        # A dict keeps admission order for iteration and removes a cancelled sequence in O(1).
        self._running: dict[Sequence, None] = {}
        self._queue: deque[Sequence] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.tokens_generated = 0
        # Called with a sequence's queue time (seconds) when a step admits it.
        self.on_admit: Callable[[float], None] | None = None

    def __repr__(self) -> str:
        return (f"<BatchScheduler running={len(self._running)} queued={len(self._queue)} "
                f"tokens={self.tokens_generated}>")

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="simulator-scheduler")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for seq in [*self._running, *self._queue]:
            seq.finished = True
            seq.wake()
        self._running.clear()
        self._queue.clear()

    def submit(self, seq: Sequence) -> None:
        """Queue a sequence; refuse it (429) when the waiting room is full."""
        if len(self._running) >= self.max_num_seqs and len(self._queue) >= self.max_queue:
            raise EngineError(f"server busy: {len(self._queue)} requests already queued",
                              status=429, code="queue_full")
        self.start()
        seq.queued_at = asyncio.get_running_loop().time()
        self._queue.append(seq)
        self._wakeup.set()

    def release(self, seq: Sequence) -> None:
        """Forget a sequence whose consumer has gone (finished, cancelled, or disconnected)."""
        if self._running.pop(seq, 0) == 0:
            with contextlib.suppress(ValueError):
                self._queue.remove(seq)
        seq.finished = True

    async def wait(self, seq: Sequence, seen: int) -> int:
        """Wait until ``seq`` has more than ``seen`` tokens (or ended); return how many it has."""
        while seq.produced <= seen and not seq.finished:
            if self._task is None:
                raise EngineError("engine is shut down", status=503, code="engine_closed")
            waiter = asyncio.get_running_loop().create_future()
            seq.waiter = waiter
            await waiter
        return seq.produced

    def step(self, now: float) -> int:
        """One decode step: admit waiting sequences into free slots, then advance every running
        sequence whose prefill is done by one token. Returns the tokens produced."""
        on_admit = self.on_admit
        while self._queue and len(self._running) < self.max_num_seqs:
            seq = self._queue.popleft()
            seq.ready_at = now + seq.prefill_seconds
            self._running[seq] = None
            if on_admit is not None:
                on_admit(max(0.0, now - seq.queued_at))
        produced = 0
        done: list[Sequence] = []
        for seq in self._running:
            if seq.ready_at > now:
                continue
            seq.produced += 1
            produced += 1
            if seq.produced >= seq.length:
                seq.finished = True
                done.append(seq)
            seq.wake()
        for seq in done:
            del self._running[seq]
        self.tokens_generated += produced
        return produced

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            if not self._running and not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                next_tick = loop.time()
            self.step(loop.time())
            next_tick += self.decode_seconds
            delay = next_tick - loop.time()
            if delay < 0:
                # Overloaded: fall behind rather than burst several steps to catch up.
                next_tick = loop.time()
                delay = 0.0
            await asyncio.sleep(delay)
