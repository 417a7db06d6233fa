"""Injected failures, for tests and drills: a wrapper that makes any engine misbehave on demand.

The wrapper owns the two faults an engine can show on its own: refusing a request before any
token (``error_rate``) and going silent mid-stream (``stall_after_tokens``/``stall_seconds``).
The third, ``crash_after_tokens``, kills the whole process once that many tokens have reached the
client's socket, so only the HTTP layer can place it; it reads the setting from here.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

from crosszone.config.topology import FailureInjection
from crosszone.dataplane.engines.base import (
    Delta,
    GenerationRequest,
    InferenceEngine,
    QueueTimeObserver,
)
from crosszone.errors import EngineError


class FaultInjector(InferenceEngine):
    """Delegates to ``inner``, injecting the faults in :attr:`faults` (replaceable at runtime)."""

    def __init__(self, inner: InferenceEngine, faults: FailureInjection | None = None,
                 rng: random.Random | None = None) -> None:
        self.inner = inner
        self.faults = faults or FailureInjection()
        # Random rather than per-prompt: a retried identical request must be able to succeed.
        self._rng = rng or random.Random()

    def __repr__(self) -> str:
        return f"<FaultInjector {self.faults!r} over {self.inner!r}>"

    def models(self) -> list[str]:
        return self.inner.models()

    def stats(self) -> dict[str, float]:
        return self.inner.stats()

    def set_queue_time_observer(self, observer: QueueTimeObserver | None) -> None:
        self.inner.set_queue_time_observer(observer)

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        faults = self.faults  # one request sees one setting, even if it is replaced meanwhile
        if faults.error_rate and self._rng.random() < faults.error_rate:
            raise EngineError("injected failure (error_rate)", status=500, code="injected_error")
        stall_at = faults.stall_after_tokens
        tokens = 0
        stream = self.inner.generate(request)
        try:
            async for delta in stream:
                if stall_at is not None and tokens == stall_at and delta.finish_reason is None:
                    await asyncio.sleep(faults.stall_seconds)
                    stall_at = None
                if delta.finish_reason is None:
                    tokens += 1
                yield delta
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
