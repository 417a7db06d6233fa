"""Failures of one proxy attempt, translated from aiohttp/OS errors at the boundary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from multidict import CIMultiDictProxy

from crosszone.dataplane.proxy.pool import Endpoint
from crosszone.errors import UpstreamError

Reason = Literal["connect", "timeout", "reset", "status", "stream_error"]


@dataclass(frozen=True, slots=True)
class BufferedResponse:
    """A complete upstream response held back from the client (a 5xx that may be retried)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class AttemptError(UpstreamError):
    """One attempt failed and nothing has reached the client yet, so another endpoint may try.

    ``reason`` is a metric label: ``connect`` (refused or connect timeout), ``timeout`` (no
    headers or data in time), ``reset`` (connection broken), ``status`` (a 5xx answer, kept in
    ``response``), ``stream_error`` (an error event in the middle of a stream). ``endpoint`` is
    set when the failure belongs to another endpoint than the attempt's own (a hedge that won).
    """

    def __init__(self, reason: Reason, message: str, *,
                 response: BufferedResponse | None = None) -> None:
        super().__init__(message, retryable=True, status=504 if reason == "timeout" else 502)
        self.reason: Reason = reason
        self.response = response
        self.endpoint: Endpoint | None = None


class MigrationFailed(UpstreamError):
    """A broken stream could not be continued; ``code`` goes into the client's error event."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, retryable=False)
        self.code = code


def describe(exc: BaseException) -> str:
    """A short human description of a library exception."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def silent(ep: Endpoint, what: str) -> str:
    """Why a wait on ``ep`` ended: its own deadline, or the endpoint turning unhealthy."""
    if ep.healthy is False:
        return f"{ep.name} turned unhealthy while the request waited for it"
    return f"{ep.name} {what}"
