"""One exception tree for the whole project.

Library errors (aiohttp, pydantic, OS errors) are translated into these at the boundary
(``raise X(...) from exc``) so callers never handle a third-party exception type.
"""

from __future__ import annotations

from dataclasses import dataclass


class CrosszoneError(Exception):
    """Base of every error crosszone raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a topology file: where it is, what value was there, what is wrong."""

    path: str
    value: object
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message} (got {self.value!r})"


class ConfigError(CrosszoneError):
    """The topology is invalid; carries every problem found, not just the first."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem(s) in the topology"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


class RuntimeStateError(CrosszoneError):
    """The local runtime (run directory, supervisor) is not in the state a command needs."""


class UpstreamError(CrosszoneError):
    """A backend (worker, gateway, upstream model server) failed to answer properly."""

    def __init__(self, message: str, *, retryable: bool = True, status: int = 502) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class NoHealthyUpstream(UpstreamError):
    """No backend is available to serve a request."""

    def __init__(self, message: str = "no healthy upstream available") -> None:
        super().__init__(message, retryable=False, status=503)


class EngineError(CrosszoneError):
    """An inference engine could not produce tokens (injected failure or upstream error)."""

    def __init__(self, message: str, *, status: int = 500, code: str = "engine_error") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
