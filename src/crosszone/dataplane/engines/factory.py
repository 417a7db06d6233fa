"""Builds the engine a topology asks for (``inference.backend``)."""

from __future__ import annotations

from crosszone.config.topology import Topology
from crosszone.dataplane.engines.base import InferenceEngine
from crosszone.dataplane.engines.simulator import SimulatorEngine
from crosszone.dataplane.engines.upstream import UpstreamEngine
from crosszone.errors import EngineError


def create_engine(topology: Topology) -> InferenceEngine:
    """A fresh, not yet started engine (call ``await engine.start()`` inside the event loop)."""
    inference = topology.inference
    if inference.backend == "simulator":
        return SimulatorEngine(inference.simulator)
    if inference.upstream is None:  # the topology rules reject this; keep the check for callers
        raise EngineError("backend 'openai' needs inference.upstream", status=500,
                          code="upstream_misconfigured")
    return UpstreamEngine(inference.upstream)
