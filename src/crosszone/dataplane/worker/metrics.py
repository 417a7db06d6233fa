"""Prometheus metrics of one worker, in an app-local registry (several workers share a process
in tests). Everything is recorded once per request, never per token: the token counter is
incremented by the request's total when it ends, and the engine's gauges are read at scrape time.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from crosszone.config.placement import Node
from crosszone.dataplane.engines.base import InferenceEngine

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0)


_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0,
                2.5)


class WorkerMetrics:
    def __init__(self, engine: InferenceEngine, node: Node | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("crosszone_worker_requests", "Inference requests answered",
                                ["model", "endpoint", "status"], registry=r)
        self.tokens = Counter("crosszone_worker_tokens_generated",
                              "Tokens sent to clients", ["model"], registry=r)
        self.in_flight = Gauge("crosszone_worker_in_flight_requests",
                               "Inference requests being answered", registry=r)
        self.ttft = Histogram("crosszone_worker_time_to_first_token_seconds",
                              "From request arrival to its first token", ["endpoint"],
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.duration = Histogram("crosszone_worker_request_duration_seconds",
                                  "From request arrival to its last byte", ["endpoint"],
                                  buckets=_LATENCY_BUCKETS, registry=r)
        self.inter_token = Histogram("crosszone_worker_inter_token_seconds",
                                     "Mean gap between two tokens of one request (one "
                                     "observation per request)", ["endpoint"],
                                     buckets=_GAP_BUCKETS, registry=r)
        if node is not None:  # Prometheus gets the zone from scrape labels too; this is for
            # readers of a bare /metrics page
            info = Gauge("crosszone_worker_info", "The worker's zone and node name",
                         ["zone", "node"], registry=r)
            info.labels(node.zone or "", node.name).set(1)
        running = Gauge("crosszone_worker_running_sequences", "Sequences decoding now",
                        registry=r)
        running.set_function(lambda: engine.stats().get("running", 0.0))
        queued = Gauge("crosszone_worker_queue_length", "Requests waiting for a batch slot",
                       registry=r)
        queued.set_function(lambda: engine.stats().get("queued", 0.0))

    def observe_inter_token(self, endpoint: str, first_token_at: float | None,
                            finished_at: float, tokens: int) -> None:
        """Record a finished request's mean inter-token gap (needs two tokens or more)."""
        if first_token_at is not None and tokens > 1:
            self.inter_token.labels(endpoint).observe(
                max(0.0, finished_at - first_token_at) / (tokens - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)
