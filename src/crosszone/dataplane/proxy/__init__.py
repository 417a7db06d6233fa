"""Machinery both proxy hops share: endpoint pools, health checks, forwarding with retries,
passive signals for the controllers."""

from crosszone.dataplane.proxy.dialects import DIALECTS, CannotContinue, StreamDialect, dialect_for
from crosszone.dataplane.proxy.errors import AttemptError, BufferedResponse, MigrationFailed
from crosszone.dataplane.proxy.forward import Forwarder, ServedHeaders
from crosszone.dataplane.proxy.health import ActiveHealthChecker
from crosszone.dataplane.proxy.hedge import Hedger, RetryBudget
from crosszone.dataplane.proxy.hop import ProxyHop, new_session
from crosszone.dataplane.proxy.metrics import HopMetrics
from crosszone.dataplane.proxy.migration import MIGRATIONS_HEADER, Migrator
from crosszone.dataplane.proxy.pool import (
    Endpoint,
    LeastOutstanding,
    SelectionPolicy,
    UpstreamPool,
    WeightedLeastOutstanding,
)
from crosszone.dataplane.proxy.relay import StreamRelay
from crosszone.dataplane.proxy.reporter import SignalReporter
from crosszone.dataplane.proxy.signals import PassiveSignals
from crosszone.dataplane.proxy.splice import Splicer
from crosszone.dataplane.proxy.transcript import StreamRecorder, Transcript

__all__ = [
    "DIALECTS",
    "MIGRATIONS_HEADER",
    "ActiveHealthChecker",
    "AttemptError",
    "BufferedResponse",
    "CannotContinue",
    "Endpoint",
    "Forwarder",
    "Hedger",
    "HopMetrics",
    "LeastOutstanding",
    "MigrationFailed",
    "Migrator",
    "PassiveSignals",
    "ProxyHop",
    "RetryBudget",
    "SelectionPolicy",
    "ServedHeaders",
    "SignalReporter",
    "Splicer",
    "StreamDialect",
    "StreamRecorder",
    "StreamRelay",
    "Transcript",
    "UpstreamPool",
    "WeightedLeastOutstanding",
    "dialect_for",
    "new_session",
]
