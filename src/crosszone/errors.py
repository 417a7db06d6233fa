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


class StoreError(CrosszoneError):
    """A zone store (SQLite, PostgreSQL, or a remote store service) could not do what was asked.

    ``code`` is the machine-readable reason carried in HTTP error bodies, so a remote caller can
    rebuild the same exception class (see :func:`store_error_from_code`).
    """

    code = "store_error"
    status = 500
    retryable = False


class StoreUnavailable(StoreError):
    """The store cannot be reached or opened right now; retrying later may succeed."""

    code = "store_unavailable"
    status = 503
    retryable = True


class StoreConflict(StoreError):
    """The key is held by an in-doubt cross-zone transaction (or a lock wait timed out)."""

    code = "store_conflict"
    status = 409
    retryable = True


class TransactionAborted(StoreError):
    """A cross-zone transaction rolled back: a participant voted no, timed out or was fenced."""

    code = "transaction_aborted"
    status = 409
    retryable = True


class Fenced(StoreError):
    """A stale fencing token was presented, or this store lost its lease: no strong operations."""

    code = "fenced"
    status = 409
    retryable = False


def store_error_from_code(code: str | None, message: str) -> StoreError:
    """Rebuild the StoreError subclass named by an HTTP error body's ``code``."""
    for cls in (StoreUnavailable, StoreConflict, TransactionAborted, Fenced):
        if cls.code == code:
            return cls(message)
    return StoreError(message)


# --- product data (API keys, conversations, usage; crosszone.dataplane.gateway) ------------


class ApiRequestError(CrosszoneError):
    """A product API request the gateway refuses; answered as OpenAI-style JSON with ``status``,
    ``code`` and ``param``."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        if code is not None:
            self.code = code


class InvalidApiRequest(ApiRequestError):
    """The request body or parameters are wrong (400)."""


class ApiNotFound(ApiRequestError):
    """The named API key, response or conversation does not exist (404)."""

    status = 404
    code = "not_found"


class NotAuthenticated(ApiRequestError):
    """Missing, unknown or revoked API key, or a wrong admin token (401)."""

    status = 401
    code = "invalid_api_key"


# --- control plane (crosszone.control) -------------------------------------------------------


class CoordinationError(CrosszoneError):
    """The coordination store (embedded Raft, etcd) did not answer in time or refused a request."""


class LeaseLost(CoordinationError):
    """The leader lease is no longer ours: it expired, was taken over, or could not be renewed."""


class StaleFencingToken(CrosszoneError):
    """A command carried a fencing token older than one the receiver has already seen."""

    def __init__(self, token: int, highest: int) -> None:
        super().__init__(f"fencing token {token} is older than {highest}, already seen: "
                         "the sender is no longer the leader")
        self.token = token
        self.highest = highest


class ShiftRejected(CrosszoneError):
    """A zonal shift request is invalid (unknown zone, no expiry, no reason) or unsafe."""


class ControllerUnavailable(CrosszoneError):
    """No controller of the topology answered (every zone's control API was unreachable)."""


class ChaosError(CrosszoneError):
    """A chaos experiment could not be created, removed or found."""


class ChaosPermissionError(ChaosError):
    """The fault needs a privilege this process lacks (root, for nftables and cgroups)."""


class ExperimentNotFound(ChaosError):
    """No chaos experiment has the given UID in this run directory."""


class NetlinkError(ChaosError):
    """The kernel refused a netfilter netlink request; ``code`` is the errno."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class InvalidExperiment(ChaosError):
    """An experiment's parameters are wrong (the user must change the command)."""


# --- monitoring (crosszone.monitoring) -------------------------------------------------------


class MonitoringError(CrosszoneError):
    """A monitor could not observe, store, report or notify."""


class MetricsStoreError(MonitoringError):
    """The metrics database (DuckDB, PostgreSQL) could not be opened or refused a statement."""


class MonitorUnavailable(MonitoringError):
    """No monitor of the topology answered (and no metrics database could be opened locally)."""


# --- drills (crosszone.drills) -----------------------------------------------------------------


class DrillError(CrosszoneError):
    """A drill could not run to its verdict: the stack, a fault or a report failed."""


class ScenarioError(ConfigError):
    """A drill scenario file is invalid; carries every problem with its path and value."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        super().__init__(source, problems)
        lines = [f"{source}: {len(problems)} problem(s) in the scenario"]
        lines += [f"  - {p}" for p in problems]
        self.args = ("\n".join(lines),)
