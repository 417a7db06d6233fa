"""Prometheus metrics of one proxy hop, in a registry of its own (one per app).

The hot path only bumps counters and observes histograms; gauges describing the pool (health,
outstanding requests, in-flight) are computed when ``/metrics`` is scraped.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from crosszone.dataplane.proxy.pool import UpstreamPool

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/embeddings",
                    "/health"})
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            10.0, 30.0, 60.0, 300.0)


def path_label(path: str) -> str:
    """Bounded label values: the known API paths, everything else as ``other``."""
    return path if path in _PATHS else "other"


class HopMetrics:
    """Counters and histograms of one hop; ``prefix`` is e.g. ``crosszone_gateway``."""

    def __init__(self, prefix: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter(f"{prefix}_requests", "Requests answered, by path and status",
                                ["path", "status"], registry=reg)
        self.attempts = Counter(f"{prefix}_upstream_attempts", "Attempts sent to each upstream",
                                ["upstream"], registry=reg)
        self.retries = Counter(f"{prefix}_upstream_retries",
                               "Attempts retried on another upstream, by the failure before",
                               ["reason"], registry=reg)
        self.ejections = Counter(f"{prefix}_upstream_ejections",
                                 "Passive ejections of an upstream, by reason",
                                 ["upstream", "reason"], registry=reg)
        self.healthy = Gauge(f"{prefix}_upstream_healthy",
                             "1 if the upstream is available (healthy and not ejected)",
                             ["upstream", "zone"], registry=reg)
        self.outstanding = Gauge(f"{prefix}_upstream_outstanding",
                                 "Requests in flight to the upstream", ["upstream", "zone"],
                                 registry=reg)
        self.in_flight_gauge = Gauge(f"{prefix}_in_flight_requests",
                                     "Requests being handled by this hop", registry=reg)
        self.ttfb = Histogram(f"{prefix}_time_to_first_byte_seconds",
                              "From request received to response headers sent",
                              buckets=_BUCKETS, registry=reg)
        self.duration = Histogram(f"{prefix}_request_duration_seconds",
                                  "From request received to the last byte sent",
                                  buckets=_BUCKETS, registry=reg)
        self.migrations = Counter(f"{prefix}_stream_migrations",
                                  "Broken streams this hop tried to continue elsewhere, by the "
                                  "failure and the outcome (resumed, limit, unsupported, "
                                  "failed)", ["reason", "outcome"], registry=reg)
        self.reprefilled_tokens = Counter(f"{prefix}_reprefilled_tokens",
                                          "Tokens sent again as the prefix of a continuation",
                                          registry=reg)
        self.migration_pause = Histogram(f"{prefix}_migration_pause_seconds",
                                         "From a stream's failure to its continuation's first "
                                         "chunk", buckets=_BUCKETS, registry=reg)
        self.hedges = Counter(f"{prefix}_hedges",
                              "Hedged first tokens, by outcome (won: the hedge answered first; "
                              "lost; denied: over the budget)", ["outcome"], registry=reg)
        self.in_flight = 0  # plain int on the hot path; copied to the gauge at scrape time
        # labelled children cached: ``labels()`` takes a lock and builds a tuple on every call
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._attempt_children: dict[str, Counter] = {}

    def count_request(self, path: str, status: int) -> None:
        key = (path, status)
        child = self._request_children.get(key)
        if child is None:
            child = self.requests.labels(path_label(path), str(status))
            if len(self._request_children) < 1024:
                self._request_children[key] = child
        child.inc()

    def count_attempt(self, upstream: str) -> None:
        child = self._attempt_children.get(upstream)
        if child is None:
            child = self._attempt_children[upstream] = self.attempts.labels(upstream)
        child.inc()

    def count_retry(self, reason: str) -> None:
        self.retries.labels(reason).inc()

    def count_migration(self, reason: str, outcome: str) -> None:
        self.migrations.labels(reason, outcome).inc()

    def count_hedge(self, outcome: str) -> None:
        self.hedges.labels(outcome).inc()

    def count_ejection(self, upstream: str, reason: str) -> None:
        self.ejections.labels(upstream, reason).inc()

    def render(self, pool: UpstreamPool) -> bytes:
        for ep in pool.endpoints:
            self.healthy.labels(ep.name, ep.zone).set(1 if ep.available else 0)
            self.outstanding.labels(ep.name, ep.zone).set(ep.outstanding)
        self.in_flight_gauge.set(self.in_flight)
        return generate_latest(self.registry)
