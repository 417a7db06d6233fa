"""Machinery both proxy hops share: endpoint pools, health checks, forwarding with retries."""

from crosszone.dataplane.proxy.errors import AttemptError, BufferedResponse
from crosszone.dataplane.proxy.forward import Forwarder, ServedHeaders
from crosszone.dataplane.proxy.health import ActiveHealthChecker
from crosszone.dataplane.proxy.hop import ProxyHop, new_session
from crosszone.dataplane.proxy.metrics import HopMetrics
from crosszone.dataplane.proxy.pool import (
    Endpoint,
    LeastOutstanding,
    SelectionPolicy,
    UpstreamPool,
    WeightedLeastOutstanding,
)
from crosszone.dataplane.proxy.relay import StreamRelay

__all__ = [
    "ActiveHealthChecker",
    "AttemptError",
    "BufferedResponse",
    "Endpoint",
    "Forwarder",
    "HopMetrics",
    "LeastOutstanding",
    "ProxyHop",
    "SelectionPolicy",
    "ServedHeaders",
    "StreamRelay",
    "UpstreamPool",
    "WeightedLeastOutstanding",
    "new_session",
]
