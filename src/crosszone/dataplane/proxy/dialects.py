"""How a proxy follows one streaming API and continues it on another backend.

A :class:`StreamDialect` knows three things about the events of one API: what text an event adds
to the answer (:meth:`~StreamDialect.fold`), how to ask a backend to continue an answer from a
prefix (:meth:`~StreamDialect.continuation`), and how to rewrite an event of the continuation so
that it reads as part of the stream the client already has (:meth:`~StreamDialect.splice`). The
relay and the migrator know nothing of JSON field names; everything API-specific lives here.

Chat completions and completions share :class:`ChoicesDialect` (``choices[]`` with an index, a
usage chunk, ``data: [DONE]``) and differ only in where text sits and how a prefix is sent:

* chat: the last message becomes ``{"role": "assistant", "content": TEXT, "prefix": true}``
  (DeepSeek prefix completion), with ``reasoning_content`` when the answer has reasoning; workers
  running the ``openai`` upstream engine translate it per ``inference.upstream.continuation``;
* completions: the body field ``crosszone_prefix`` carries the text (workers append it).

The Responses API (``/v1/responses``) is one more subclass of :class:`StreamDialect` registered
in :data:`DIALECTS` (:mod:`.responses_dialect`): its typed text events fold into the same
:class:`Transcript`, a continuation carries the response's ids and text for the gateway that goes
on with it, and ``response.completed`` ends the stream. The interface is in :mod:`.dialect_base`.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any

import orjson

from crosszone.config.topology import CHAT_ROUTE, COMPLETIONS_ROUTE, RESPONSES_ROUTE
from crosszone.dataplane.proxy.dialect_base import CannotContinue, StreamDialect
from crosszone.dataplane.proxy.responses_dialect import ResponsesDialect
from crosszone.dataplane.proxy.transcript import ChoiceText, Transcript

if TYPE_CHECKING:
    from crosszone.dataplane.proxy.splice import Splicer

__all__ = ["DIALECTS", "CannotContinue", "ChatDialect", "ChoicesDialect", "CompletionsDialect",
           "ResponsesDialect", "StreamDialect", "dialect_for"]


class ChoicesDialect(StreamDialect):
    """OpenAI ``choices[]`` streams: the template; subclasses say where the text sits."""

    @abstractmethod
    def read(self, choice: dict[str, Any]) -> tuple[str, str, bool]:
        """(content, reasoning, opaque) of one choice of an event: the text it adds, and
        whether it carries something a text prefix cannot continue (a tool call)."""

    @abstractmethod
    def clear(self, choice: dict[str, Any]) -> None:
        """Remove the text (and an opening role) from one choice of an event."""

    @abstractmethod
    def with_prefix(self, request: dict[str, Any], text: ChoiceText) -> dict[str, Any]:
        """``request`` (a copy) asking to continue after ``text``."""

    def opens(self, choice: dict[str, Any], *, strip: bool) -> bool:
        """Whether the choice says what only a stream's first chunk says (chat: the role);
        with ``strip``, remove that and answer False."""
        return False

    # -- following -------------------------------------------------------------------------

    def fold(self, data: bytes, transcript: Transcript) -> None:
        if data == b"[DONE]":
            transcript.done = True
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if isinstance(event, dict) and "error" not in event:
            self.fold_event(event, transcript)

    def fold_event(self, event: dict[str, Any], transcript: Transcript) -> None:
        if transcript.envelope is None or "usage" in event:
            transcript.note_envelope(event)
        choices = event.get("choices")
        if type(choices) is list:
            for choice in choices:
                if type(choice) is dict:
                    self._fold_choice(choice, transcript.choice(_index(choice)))

    def _fold_choice(self, choice: dict[str, Any], text: ChoiceText) -> None:
        content, reasoning, opaque = self.read(choice)
        if content or reasoning:
            text.add(content, reasoning)
        if opaque:
            text.opaque = True
        finish = choice.get("finish_reason")
        if finish:
            text.finish_reason = str(finish)

    def completed(self, tail: bytes) -> bool:
        return tail.rstrip().endswith(b"data: [DONE]")

    # -- continuing ------------------------------------------------------------------------

    def continuation(self, request: dict[str, Any], transcript: Transcript) -> dict[str, Any]:
        n = request.get("n", 1)
        if (n is not None and n != 1) or len(transcript.choices) > 1:
            raise CannotContinue("a stream with several choices (n > 1) cannot be continued "
                                 "from one prefix")
        text = transcript.choice(0)
        if text.opaque:
            raise CannotContinue("a stream that made tool calls cannot be continued from a "
                                 "text prefix")
        body = self.with_prefix(request, text)
        # max_tokens caps what one backend request generates: ask only for what is left (at
        # least 1; the splicer drops anything past the client's own cap).
        for key in ("max_completion_tokens", "max_tokens"):
            cap = body.get(key)
            if isinstance(cap, int) and not isinstance(cap, bool):
                body[key] = max(cap - text.tokens, 1)
        return body

    def splice(self, event: dict[str, Any], splicer: Splicer) -> dict[str, Any] | None:
        transcript = splicer.transcript
        fresh = transcript.envelope is None  # the client has no event yet: this one opens
        usage = event.get("usage")
        repeated = isinstance(usage, dict) and transcript.usage_sent
        if repeated:
            del event["usage"]  # the client has its usage block already
            usage = None
        elif isinstance(usage, dict):
            event["usage"] = splicer.merged_usage(usage)
        transcript.note_envelope(event)
        for key, value in (transcript.envelope or {}).items():
            if key in event:
                event[key] = value
        choices = event.get("choices")
        if isinstance(choices, list) and choices:
            kept = [c for c in choices
                    if isinstance(c, dict) and self._splice_choice(c, splicer, fresh)]
            if not kept and not isinstance(usage, dict):
                return None
            event["choices"] = kept
        elif repeated:
            return None  # nothing but a usage block the client has
        return event

    def _splice_choice(self, choice: dict[str, Any], splicer: Splicer, fresh: bool) -> bool:
        """Rewrite one choice of a continuation event; False to leave it out."""
        text = splicer.transcript.choice(_index(choice))
        opens = self.opens(choice, strip=not fresh)
        content, reasoning, opaque = self.read(choice)
        if (content or reasoning) and (text.finish_reason is not None
                                       or splicer.capped(text.tokens)):
            splicer.drop(content, reasoning)  # past the end the client was promised
            splicer.cut_at_cap = splicer.cut_at_cap or text.finish_reason is None
            self.clear(choice)
            content = reasoning = ""
        if choice.get("finish_reason"):
            if text.finish_reason is not None:
                choice["finish_reason"] = None  # the client has its finish already
            elif splicer.cut_at_cap:
                choice["finish_reason"] = "length"  # the answer went on past the client's cap
        if not (content or reasoning or choice.get("finish_reason") or opaque or opens):
            return False
        self._fold_choice(choice, text)
        return True


class ChatDialect(ChoicesDialect):
    """``POST /v1/chat/completions``: text in ``delta.content`` / ``delta.reasoning_content``."""

    def read(self, choice: dict[str, Any]) -> tuple[str, str, bool]:
        delta = choice.get("delta")
        if type(delta) is not dict:
            return "", "", False
        content = delta.get("content")
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        opaque = ("tool_calls" in delta or "function_call" in delta) and bool(
            delta.get("tool_calls") or delta.get("function_call"))
        return (content if type(content) is str else "",
                reasoning if type(reasoning) is str else "", opaque)

    def clear(self, choice: dict[str, Any]) -> None:
        choice["delta"] = {}

    def opens(self, choice: dict[str, Any], *, strip: bool) -> bool:
        delta = choice.get("delta")
        if not isinstance(delta, dict) or "role" not in delta:
            return False
        if strip:
            del delta["role"]
        return not strip

    def with_prefix(self, request: dict[str, Any], text: ChoiceText) -> dict[str, Any]:
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            raise CannotContinue("the request has no messages to continue")
        messages = list(messages)
        content, reasoning = "".join(text.content), "".join(text.reasoning)
        last = messages[-1]
        if isinstance(last, dict) and last.get("role") == "assistant" and (
                last.get("prefix") or request.get("continue_final_message")):
            # The client continued a message of its own: the answer extends that message.
            if not isinstance(last.get("content") or "", str):
                raise CannotContinue("a prefix message with content parts cannot be extended")
            content = (last.get("content") or "") + content
            reasoning = _str(last.get("reasoning_content")) + reasoning
            messages.pop()
        prefix: dict[str, Any] = {"role": "assistant", "content": content, "prefix": True}
        if reasoning:
            prefix["reasoning_content"] = reasoning
        messages.append(prefix)
        return {**request, "messages": messages}


class CompletionsDialect(ChoicesDialect):
    """``POST /v1/completions``: text in ``choices[].text``; prefix in ``crosszone_prefix``."""

    def read(self, choice: dict[str, Any]) -> tuple[str, str, bool]:
        return _str(choice.get("text")), "", False

    def clear(self, choice: dict[str, Any]) -> None:
        choice["text"] = ""

    def with_prefix(self, request: dict[str, Any], text: ChoiceText) -> dict[str, Any]:
        if request.get("echo"):
            raise CannotContinue("a completions stream with echo cannot be continued")
        if request.get("best_of") not in (None, 1):
            raise CannotContinue("a completions stream with best_of > 1 cannot be continued")
        prefix = _str(request.get("crosszone_prefix")) + "".join(text.content)
        return {**request, "crosszone_prefix": prefix}


DIALECTS: dict[str, StreamDialect] = {
    CHAT_ROUTE: ChatDialect(),
    COMPLETIONS_ROUTE: CompletionsDialect(),
    RESPONSES_ROUTE: ResponsesDialect(),
}


def dialect_for(path: str) -> StreamDialect | None:
    """The dialect of the API at ``path``, or None if its streams cannot be migrated."""
    return DIALECTS.get(path)


def _index(choice: dict[str, Any]) -> int:
    index = choice.get("index")
    return index if isinstance(index, int) else 0


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""
