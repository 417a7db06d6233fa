"""Gray-failure detection: a zone much worse than the others, while its health checks pass.

Absolute thresholds cannot tell "this zone is sick" from "everything is slow today". Like AWS's
zonal autoshift and Envoy's outlier detection, a zone is judged against the *other* zones: it is
an outlier when its error rate or latency is several times their median and also worse by an
absolute floor. A problem every zone shares is not zonal, so nothing is shifted for it.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from crosszone.control.settings import GrayFailureSettings


@dataclass(frozen=True)
class ZoneStats:
    """One zone over the recent window: request outcomes and a typical latency.

    Requests and errors are what clients saw (passive reports from gateways and the LB), so a
    single dead worker that the gateway retries around does not count; latencies come from
    successful probes and reports.
    """

    requests: int
    errors: int
    latency_ms: float | None = None
    latency_samples: int = 0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class SampleWindow:
    """Sliding window of (time, requests, errors, latency) samples for one zone."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._samples: deque[tuple[float, int, int, float | None]] = deque()

    def add(self, now: float, requests: int, errors: int, latency_ms: float | None) -> None:
        self._samples.append((now, requests, errors, latency_ms))
        self._prune(now)

    def stats(self, now: float) -> ZoneStats:
        self._prune(now)
        requests = sum(s[1] for s in self._samples)
        errors = sum(s[2] for s in self._samples)
        latencies = [s[3] for s in self._samples if s[3] is not None]
        return ZoneStats(requests, errors, statistics.median(latencies) if latencies else None,
                         len(latencies))

    def _prune(self, now: float) -> None:
        while self._samples and self._samples[0][0] < now - self.seconds:
            self._samples.popleft()


def find_outliers(stats: Mapping[str, ZoneStats], s: GrayFailureSettings) -> dict[str, str]:
    """Zones whose error rate or latency is an outlier against the others, with the reason."""
    out: dict[str, str] = {}
    by_errors = {z: st for z, st in stats.items() if st.requests >= s.min_samples}
    for zone, st in by_errors.items():
        others = [o.error_rate for z, o in by_errors.items() if z != zone]
        if not others:
            continue
        typical = statistics.median(others)
        if st.error_rate >= s.error_rate_floor and st.error_rate >= s.error_rate_factor * typical:
            out[zone] = f"error rate {st.error_rate:.0%} vs {typical:.0%} elsewhere"
    by_latency = {z: st.latency_ms for z, st in stats.items()
                  if st.latency_ms is not None and st.latency_samples >= s.min_samples}
    for zone, latency in by_latency.items():
        others = [v for z, v in by_latency.items() if z != zone]
        if zone in out or not others:
            continue
        typical = statistics.median(others)
        if latency >= s.latency_factor * typical and latency - typical >= s.latency_floor_ms:
            out[zone] = f"latency {latency:.0f} ms vs {typical:.0f} ms elsewhere"
    return out
