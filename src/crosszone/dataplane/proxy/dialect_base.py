"""The interface of a stream dialect (see :mod:`.dialects` for what one is and which exist)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from crosszone.dataplane.sse import encode_event
from crosszone.errors import CrosszoneError

if TYPE_CHECKING:
    from crosszone.dataplane.proxy.splice import Splicer
    from crosszone.dataplane.proxy.transcript import Transcript


class CannotContinue(CrosszoneError):
    """This answer cannot be continued from a text prefix (the message says why)."""


class StreamDialect(ABC):
    """The API-specific half of a migration; see :mod:`.dialects`."""

    @abstractmethod
    def fold(self, data: bytes, transcript: Transcript) -> None:
        """Add one relayed event (its data field) to ``transcript``."""

    @abstractmethod
    def completed(self, tail: bytes) -> bool | None:
        """Whether relayed bytes ending in ``tail`` (>= 32 bytes when available) end a stream;
        None when the tail cannot tell (the transcript then says: :attr:`Transcript.done`)."""

    @abstractmethod
    def continuation(self, request: dict[str, Any], transcript: Transcript) -> dict[str, Any]:
        """The body that asks a backend to go on after ``transcript``; CannotContinue if not."""

    @abstractmethod
    def splice(self, event: dict[str, Any], splicer: Splicer) -> dict[str, Any] | None:
        """A continuation event as the client should see it (folded in), or None to drop it."""

    def encode(self, event: dict[str, Any]) -> bytes:
        """One event as the client reads it (``data: {json}`` and a blank line)."""
        return encode_event(event)
