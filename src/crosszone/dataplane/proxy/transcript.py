"""What the client of one stream has received so far: enough to continue the stream elsewhere.

The relay records the bytes it forwards with a :class:`StreamRecorder`, which costs one list
append per chunk: the bytes are parsed (by the stream's dialect, into a :class:`Transcript`) only
when they pile up past ``CATCH_UP_BYTES`` or when a migration needs them. A stream that never
breaks and stays short is never parsed at all; a long one is parsed in batches, and the memory it
holds stays bounded by the threshold plus the text itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crosszone.dataplane.sse import split_events

if TYPE_CHECKING:
    from crosszone.dataplane.proxy.dialect_base import StreamDialect

CATCH_UP_BYTES = 16 * 1024

# Fields of every chunk that must stay the same across a migration.
ENVELOPE_FIELDS = ("id", "object", "created", "model", "system_fingerprint")


@dataclass(slots=True)
class ChoiceText:
    """One choice of the answer as the client has seen it."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tokens: int = 0  # token-bearing deltas received (reasoning included)
    reasoning_tokens: int = 0
    finish_reason: str | None = None
    opaque: bool = False  # carried something a text prefix cannot continue (tool calls)

    def add(self, content: str, reasoning: str) -> None:
        if content:
            self.content.append(content)
            self.tokens += 1
        if reasoning:
            self.reasoning.append(reasoning)
            self.tokens += 1
            self.reasoning_tokens += 1


@dataclass(slots=True)
class Transcript:
    """The answer so far, per choice index, and the envelope of its first chunk."""

    envelope: dict[str, Any] | None = None
    choices: dict[int, ChoiceText] = field(default_factory=dict)
    done: bool = False  # the end-of-stream marker was relayed
    usage_sent: bool = False  # the usage block was relayed
    # Typed-event streams (the Responses API) only:
    sequence: int = -1  # the last sequence_number relayed
    seen: set[str] = field(default_factory=set)  # marks of the relayed non-text events
    items: dict[str, str] = field(default_factory=dict)  # output item type -> its id

    def choice(self, index: int) -> ChoiceText:
        text = self.choices.get(index)
        if text is None:
            text = self.choices[index] = ChoiceText()
        return text

    @property
    def tokens(self) -> int:
        return sum(c.tokens for c in self.choices.values())

    @property
    def reasoning_tokens(self) -> int:
        return sum(c.reasoning_tokens for c in self.choices.values())

    def note_envelope(self, event: dict[str, Any]) -> None:
        if self.envelope is None:
            self.envelope = {k: event[k] for k in ENVELOPE_FIELDS if k in event}
        if event.get("usage"):
            self.usage_sent = True


class StreamRecorder:
    """Keeps relayed bytes and folds them into :attr:`transcript` lazily (see module doc)."""

    __slots__ = ("_chunks", "_rest", "_size", "dialect", "transcript")

    def __init__(self, dialect: StreamDialect) -> None:
        self.dialect = dialect
        self.transcript = Transcript()
        self._chunks: list[bytes] = []
        self._size = 0
        self._rest = b""

    def record(self, chunk: bytes) -> None:
        """Keep ``chunk`` (whole events only, as relayed to the client)."""
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size >= CATCH_UP_BYTES:
            self.catch_up()

    def catch_up(self) -> Transcript:
        """Fold everything recorded so far into the transcript, and return it."""
        if self._chunks:
            buffer = self._rest + b"".join(self._chunks)
            self._chunks.clear()
            self._size = 0
            events, self._rest = split_events(buffer)
            fold = self.dialect.fold
            for data in events:
                fold(data, self.transcript)
        return self.transcript

    def ended(self, tail: bytes) -> bool:
        """Whether the client has the end of the stream: its last bytes ``tail`` tell for most
        dialects; for the others the transcript does (everything recorded is parsed then)."""
        ended = self.dialect.completed(tail)
        return self.catch_up().done if ended is None else ended

    @property
    def held_bytes(self) -> int:
        return self._size + len(self._rest)

    def __repr__(self) -> str:
        return f"<StreamRecorder held={self.held_bytes}B {self.transcript!r}>"
