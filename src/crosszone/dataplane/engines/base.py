"""The contract every inference engine (simulator, OpenAI-compatible upstream) fulfils.

An engine turns one :class:`GenerationRequest` into a stream of :class:`Delta` objects. The worker's
HTTP layer frames them as OpenAI chat/completions responses, streaming or not; engines know nothing
of HTTP. Guarantees an engine gives:

* ``generate`` yields zero or more text deltas (``reasoning`` before ``content``), then exactly one
  final delta with ``finish_reason`` set and ``usage`` filled in;
* a request whose last message is an assistant message with ``prefix=True`` continues that message:
  the engine generates only what follows it (DeepSeek "prefix completion");
* failures raise :class:`crosszone.errors.EngineError` (with an HTTP status), never a library error.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal

# Called once per request with the seconds it waited before its first scheduled step.
QueueTimeObserver = Callable[[float], None]


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str
    reasoning_content: str | None = None
    prefix: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    model: str
    messages: list[ChatMessage]
    max_tokens: int | None = None
    seed: int | None = None
    temperature: float | None = None
    stop: list[str] = field(default_factory=list)
    request_id: str = ""
    # Raw completions (POST /v1/completions): the prompt, with ``messages`` empty, or holding
    # just one assistant ``prefix=True`` message: the completion text to continue from.
    prompt: str | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Delta:
    """A piece of output. Text deltas carry one of ``content``/``reasoning``; the last carries
    ``finish_reason`` ("stop" or "length") and ``usage``."""

    content: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


class InferenceEngine(ABC):
    """One model server behind a worker node."""

    @abstractmethod
    def models(self) -> list[str]:
        """Model names this engine serves."""

    @abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Stream the output of one request (see the module docstring for guarantees)."""

    def stats(self) -> dict[str, float]:
        """Gauges for /metrics: running sequences, queued requests, and the like."""
        return {}

    def set_queue_time_observer(self, observer: QueueTimeObserver | None) -> None:  # noqa: B027
        """Report each request's queue time to ``observer`` (from the event loop's thread).

        Only an engine with a queue of its own can: the default does nothing (an upstream
        server's queue is measured by that server's own metrics).
        """

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections and start background tasks; called once before serving."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and background tasks."""
