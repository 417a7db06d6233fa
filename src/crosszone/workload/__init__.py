"""Client-side workloads: drive traffic through the LB with the official openai client and record
what every request saw (used by the demo, and by drills)."""

from crosszone.workload.driver import ChatWorkload, WorkloadConfig
from crosszone.workload.record import Outcome, RequestRecord, Timeline

__all__ = ["ChatWorkload", "Outcome", "RequestRecord", "Timeline", "WorkloadConfig"]
