"""Gray-failure detection: a zone much worse than the others, while its health checks pass.

Absolute thresholds cannot tell "this zone is sick" from "everything is slow today". Like AWS's
zonal autoshift and Envoy's outlier detection, a zone is judged against the *other* zones: it is
an outlier when its error rate or latency is several times their median and also worse by an
absolute floor. A problem every zone shares is not zonal, so nothing is shifted for it.

Latency is judged twice, like against like: the time requests take (passive reports from the
gateways and the load balancer: time to the first byte of their upstream attempts) and the time
health probes take. The two differ by orders of magnitude (a generation against a ``/health``
answer), so they are never mixed into one figure.
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

    Requests and errors are the upstream attempts the gateways and the LB made (their passive
    reports), so a dead worker costs its zone one error before it is ejected. ``latency_ms`` is
    the median of successful probes; ``request_latency_ms`` the median of the reports' request
    latencies (each report's own median), whose samples are the reports, and no more than the
    successful requests behind them: a few reports of a handful of requests are not judged.
    """

    requests: int
    errors: int
    latency_ms: float | None = None
    latency_samples: int = 0
    request_latency_ms: float | None = None
    request_latency_samples: int = 0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class SampleWindow:
    """Sliding window of (time, requests, errors, latency, passive) samples for one zone.

    A probe adds one sample with its latency; a passive report adds its window's request and
    error counts and the median latency of its requests (``passive``).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._samples: deque[tuple[float, int, int, float | None, bool]] = deque()

    def add(self, now: float, requests: int, errors: int, latency_ms: float | None,
            passive: bool = False) -> None:
        self._samples.append((now, requests, errors, latency_ms, passive))
        self._prune(now)

    def stats(self, now: float) -> ZoneStats:
        self._prune(now)
        requests = sum(s[1] for s in self._samples)
        errors = sum(s[2] for s in self._samples)
        probes = [s[3] for s in self._samples if s[3] is not None and not s[4]]
        reports = [s for s in self._samples if s[3] is not None and s[4]]
        return ZoneStats(requests, errors, statistics.median(probes) if probes else None,
                         len(probes),
                         statistics.median(s[3] for s in reports if s[3] is not None)
                         if reports else None,
                         min(len(reports), sum(s[1] - s[2] for s in reports)))

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
    requests = {z: (st.request_latency_ms, st.request_latency_samples)
                for z, st in stats.items()}
    probes = {z: (st.latency_ms, st.latency_samples) for z, st in stats.items()}
    for what, latencies in (("request latency", requests), ("latency", probes)):
        for zone, reason in _latency_outliers(latencies, s).items():
            out.setdefault(zone, f"{what} {reason}")
    return out


def _latency_outliers(latencies: Mapping[str, tuple[float | None, int]],
                      s: GrayFailureSettings) -> dict[str, str]:
    """Zones whose latency (with enough samples) is an outlier against the others'."""
    judged = {z: v for z, (v, n) in latencies.items() if v is not None and n >= s.min_samples}
    out: dict[str, str] = {}
    for zone, latency in judged.items():
        others = [v for z, v in judged.items() if z != zone]
        if not others:
            continue
        typical = statistics.median(others)
        if latency >= s.latency_factor * typical and latency - typical >= s.latency_floor_ms:
            out[zone] = f"{latency:.0f} ms vs {typical:.0f} ms elsewhere"
    return out
