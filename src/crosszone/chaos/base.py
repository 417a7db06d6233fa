"""The one abstract base of every fault injector, and the guarantees each must give.

A fault injector is one fault (a set of nftables rules, burner processes in a cgroup, processes
held down by the supervisor) identified by the UID of its experiment. The base keeps the policy
(template method); each injector implements three primitives:

``_apply()``
    Inject the fault. It may stop half-way by raising: the base then calls ``_remove()``, so a
    failed ``apply()`` leaves nothing behind. Whatever a later process needs to undo the fault
    (pids, queue numbers, saved cgroups) goes into ``self.state`` *before* the step that creates
    it is taken, followed by ``self.checkpoint()``, so a crash at any point stays undoable.

``_remove()``
    Undo exactly what this experiment created, found by its UID and ``self.state``, and nothing
    else. It must be idempotent (a second call, or a call after a partial or failed apply, does
    nothing harmful) and must work in a different process from the one that applied the fault,
    from ``spec`` and ``state`` alone (``chaos destroy`` after the CLI crashed, the watchdog).

``_active()``
    Whether any part of the fault is still in place (rules, processes, cgroup).

``spec`` holds what the user asked for and ``state`` what applying produced; both are JSON, so
an injector round-trips through :meth:`to_record` / :func:`injector_from_record`.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from crosszone.errors import ChaosError

Checkpoint = Callable[["FaultInjector"], None]

_KINDS: dict[str, type[FaultInjector]] = {}


class FaultInjector(ABC):
    kind: ClassVar[str]

    def __init__(self, uid: str, spec: dict[str, Any]) -> None:
        if not uid or not uid.isalnum():
            raise ChaosError(f"an experiment UID is alphanumeric (got {uid!r})")
        self.uid = uid
        self.spec = dict(spec)
        self.state: dict[str, Any] = {}
        self.on_checkpoint: Checkpoint | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if isinstance(kind, str):
            _KINDS[kind] = cls

    # --- the policy -----------------------------------------------------------------------------

    def apply(self) -> None:
        """Inject the fault completely, or raise having removed every part already injected."""
        try:
            self._apply()
        except BaseException:
            with contextlib.suppress(Exception):
                self._remove()
            raise

    def remove(self) -> None:
        """Remove every part of the fault; a no-op when nothing is left."""
        self._remove()

    def is_active(self) -> bool:
        return self._active()

    def describe(self) -> str:
        """One sentence saying what the fault does, for ``chaos status`` and drill reports."""
        return self._describe()

    def checkpoint(self) -> None:
        """Persist ``state`` now (the experiment store hooks this)."""
        if self.on_checkpoint is not None:
            self.on_checkpoint(self)

    def to_record(self) -> dict[str, Any]:
        return {"kind": self.kind, "spec": self.spec, "state": self.state}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.uid}: {self.describe()}>"

    # --- the primitives -------------------------------------------------------------------------

    @abstractmethod
    def _apply(self) -> None: ...

    @abstractmethod
    def _remove(self) -> None: ...

    @abstractmethod
    def _active(self) -> bool: ...

    @abstractmethod
    def _describe(self) -> str: ...


def injector_from_record(uid: str, record: dict[str, Any]) -> FaultInjector:
    """Rebuild an injector (in any process) from what :meth:`FaultInjector.to_record` gave."""
    kind = record.get("kind")
    cls = _KINDS.get(str(kind))
    if cls is None:
        raise ChaosError(f"experiment {uid}: unknown fault kind {kind!r}")
    spec = record.get("spec")
    injector = cls(uid, spec if isinstance(spec, dict) else {})
    state = record.get("state")
    injector.state = dict(state) if isinstance(state, dict) else {}
    return injector


def registered_kinds() -> list[str]:
    return sorted(_KINDS)
