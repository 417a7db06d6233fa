"""Client-side workloads: drive traffic through the LB with the official openai client and record
what every request saw (used by the demo, and by drills); drills add store operations recorded as
a Jepsen-style history (:mod:`crosszone.workload.kv`)."""

from crosszone.workload.driver import ChatWorkload, WorkloadConfig
from crosszone.workload.history import History, Op, OpStatus
from crosszone.workload.kv import KvConfig, KvWorkload
from crosszone.workload.product import Feature, ProductOps, probe_features
from crosszone.workload.record import Outcome, RequestRecord, Timeline

__all__ = [
    "ChatWorkload",
    "Feature",
    "History",
    "KvConfig",
    "KvWorkload",
    "Op",
    "OpStatus",
    "Outcome",
    "ProductOps",
    "RequestRecord",
    "Timeline",
    "WorkloadConfig",
    "probe_features",
]
