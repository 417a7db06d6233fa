"""Prometheus metrics of one worker, in an app-local registry (several workers share a process
in tests).

Most things are recorded once per request: the token counter is incremented by the request's
total when it ends, and the engine's gauges are read at scrape time. The two exceptions are the
inter-token gap (one observation per token) and the queue time (one per request, reported by the
engine's scheduler); both go into :class:`LoopHistogram`, whose observation is a bisect and two
plain additions: no lock, and nothing allocated beyond the observed float. That is safe because
a worker observes and renders from its event loop's thread only.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from crosszone.config.placement import Node
from crosszone.dataplane.engines.base import InferenceEngine

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0)
_GAP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25,
                0.5, 1.0, 2.5, 5.0)
_QUEUE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                  5.0, 10.0, 30.0, 60.0)


class HistogramCells:
    """One label combination of a :class:`LoopHistogram`: counts per bucket (not cumulative;
    the last one is ``+Inf``) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def __repr__(self) -> str:
        return f"<HistogramCells count={sum(self.counts)} sum={self.sum:.6g}>"

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, i.e. Prometheus' ``le`` bucket
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class LoopHistogram(Collector):
    """A Prometheus histogram for the hot path of one event loop (see the module docstring).

    Callers keep the :class:`HistogramCells` of their label values (``labels()``) for the length
    of a request and call its ``observe``; buckets are summed up only when ``/metrics`` is read.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(sorted(float(b) for b in buckets if not math.isinf(b)))
        self._children: dict[tuple[str, ...], HistogramCells] = {}
        registry.register(self)

    def __repr__(self) -> str:
        return f"<LoopHistogram {self.name} {len(self._children)} series>"

    def labels(self, *values: str) -> HistogramCells:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        cells = self._children.get(values)
        if cells is None:
            cells = self._children[values] = HistogramCells(self.bounds)
        return cells

    def count(self, *values: str) -> int:
        """Observations so far for ``values`` (for tests and readers of the object)."""
        cells = self._children.get(values)
        return sum(cells.counts) if cells is not None else 0

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation,
                                       labels=list(self.labelnames))
        edges = [*(repr(b) for b in self.bounds), "+Inf"]
        for values, cells in list(self._children.items()):
            cumulative: list[tuple[str, float]] = []
            running = 0
            for edge, n in zip(edges, cells.counts, strict=True):
                running += n
                cumulative.append((edge, float(running)))
            family.add_metric(list(values), cumulative, cells.sum)
        yield family


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
        self.inter_token = LoopHistogram(
            "crosszone_worker_inter_token_seconds",
            "Gap between two consecutive tokens of one request as the engine hands them to "
            "the worker (one observation per token after the first)", ["endpoint"],
            _GAP_BUCKETS, r)
        self.queue_time = LoopHistogram(
            "crosszone_worker_queue_time_seconds",
            "Time a request waited in the engine's queue before its first scheduled batch "
            "step (engines with a local queue: the simulator)", [], _QUEUE_BUCKETS, r)
        for endpoint in ("chat", "completions"):  # the series exist (at 0) before traffic
            self.inter_token.labels(endpoint)
        self._queue_cells = self.queue_time.labels()
        engine.set_queue_time_observer(self._queue_cells.observe)
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

    def gaps(self, endpoint: str) -> HistogramCells:
        """The inter-token cells of ``endpoint``: fetch once per request, observe per token."""
        return self.inter_token.labels(endpoint)

    def render(self) -> bytes:
        return generate_latest(self.registry)
