"""Per-zone status history: how long a zone has been healthy, and whether it is flapping."""

from __future__ import annotations

from collections import deque


class ZoneTracker:
    """Remembers when a zone's healthy/not-healthy state last changed, and recent changes.

    A zone leaves traffic as soon as it is observed unhealthy (the health checker has already
    applied its thresholds), but comes back only after it has stayed healthy for a stable period,
    and for a longer one when it has been flapping (route flap damping).
    """

    def __init__(self, window_seconds: float) -> None:
        self.window = window_seconds
        self.healthy: bool | None = None
        self.since = 0.0
        self.changes: deque[float] = deque()

    def update(self, healthy: bool, now: float) -> None:
        if self.healthy is None:
            self.healthy, self.since = healthy, now
            return
        if healthy != self.healthy:
            self.healthy, self.since = healthy, now
            self.changes.append(now)
        self._prune(now)

    def healthy_for(self, now: float) -> float:
        return now - self.since if self.healthy else 0.0

    def flapping(self, now: float, threshold: int) -> bool:
        self._prune(now)
        return len(self.changes) >= threshold

    def _prune(self, now: float) -> None:
        while self.changes and self.changes[0] < now - self.window:
            self.changes.popleft()

    def __repr__(self) -> str:
        state = {None: "unknown", True: "healthy", False: "not healthy"}[self.healthy]
        return f"<ZoneTracker {state} since {self.since:.1f}, {len(self.changes)} changes>"
