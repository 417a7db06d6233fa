"""Start real local stacks in tests, and always stop them.

Other test files reuse this; give each file its own loopback addresses so files never clash::

    from stackutil import local_topology, start_stack

    @pytest.fixture(scope="module")
    def stack(tmp_path_factory, request):
        return start_stack(request, tmp_path_factory.mktemp("run"),
                           local_topology(first_octet=110, http_port=18100, https_port=18543))

or, per test, ``stack_factory``: ``stack = stack_factory(local_topology(...))``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crosszone.runtime import LocalStack
from crosszone.runtime.processes import is_crosszone_process, pid_alive

ZONES = ("us-west-2a", "us-west-2b", "us-west-2c")


def local_topology(first_octet: int = 103, *, http_port: int = 18000, https_port: int = 18443,
                   gateway_port: int = 8080, worker_port: int = 9000, workers: int = 2,
                   decode_ms: float = 0.5, restart: str = "always",
                   zones: tuple[str, ...] = ZONES, **overrides: Any) -> dict[str, Any]:
    """A fast three-zone topology on 127.0.<first_octet + i>.0/24, the LB on 127.0.0.<first>
    (outside every zone subnet, so a fault aimed at a zone never hits the LB).

    Health checks tick every 0.2 s and restarts back off from 0.1 s, so failures and recoveries
    show within a second or two; auto-scaling decisions are off (``control.scaling.enabled``).
    ``overrides`` replace top-level sections (deep-merged).
    """
    doc: dict[str, Any] = {
        "region": "test",
        "zones": [{"name": z, "subnet": f"127.0.{first_octet + i}.0/24"}
                  for i, z in enumerate(zones)],
        "worker_group": {"min_size": 1, "max_size": max(4, workers),
                         "desired_capacity": workers, "port": worker_port},
        "gateway": {"port": gateway_port,
                    "timeouts": {"connect_seconds": 0.5, "first_byte_seconds": 10,
                                 "idle_seconds": 5, "total_seconds": 60},
                    "healthCheck": {"intervalSeconds": 0.2, "timeoutSeconds": 0.15,
                                    "healthyThresholdCount": 1, "unhealthyThresholdCount": 2}},
        "load_balancer": {
            "address": f"127.0.0.{first_octet}",
            "listeners": [{"protocol": "HTTPS", "port": https_port, "targetPort": gateway_port},
                          {"protocol": "HTTP", "port": http_port, "targetPort": gateway_port}],
            "healthCheck": {"intervalSeconds": 0.2, "timeoutSeconds": 0.15,
                            "healthyThresholdCount": 1, "unhealthyThresholdCount": 2},
        },
        "failover": {"mode": "active-active"},
        "inference": {"backend": "simulator",
                      "simulator": {"decode_ms_per_token": decode_ms,
                                    "prefill_ms_per_token": 0.0,
                                    "min_output_tokens": 4, "max_output_tokens": 16}},
        "supervision": {"restart": restart, "backoff_initial_seconds": 0.1,
                        "backoff_max_seconds": 1.0},
        # Worker groups keep desired_capacity: a test that kills a zone or sends many streams
        # must not see workers come and go (tests/test_autoscaling.py turns it on).
        "control": {"scaling": {"enabled": False}},
    }
    return _merge(doc, overrides)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def stop_stack(stack: LocalStack) -> None:
    """Down the stack; then SIGKILL, by pid, anything it recorded that still runs."""
    pids: dict[str, int] = {}
    with contextlib.suppress(Exception):  # nothing running, or half started: down anyway
        pids = stack.pids()
    try:
        stack.down()
    finally:
        for pid in pids.values():
            if is_crosszone_process(pid):
                os.kill(pid, signal.SIGKILL)


def start_stack(request: pytest.FixtureRequest, run_dir: Path,
                topology: dict[str, Any] | None = None, timeout: float = 60.0) -> LocalStack:
    """Start a LocalStack (attached: it dies with the test process) and register its teardown."""
    stack = LocalStack(run_dir)
    request.addfinalizer(lambda: stop_stack(stack))
    stack.up(topology if topology is not None else local_topology(), timeout=timeout,
             attached=True)
    return stack


@pytest.fixture
def stack_factory(request: pytest.FixtureRequest, tmp_path: Path,
                  ) -> Iterator[Callable[..., LocalStack]]:
    """``stack_factory(topology_dict=None, timeout=60, run_dir=None) -> LocalStack``."""
    counter = iter(range(1000))

    def make(topology: dict[str, Any] | None = None, timeout: float = 60.0,
             run_dir: Path | None = None) -> LocalStack:
        return start_stack(request, run_dir or tmp_path / f"run{next(counter)}", topology, timeout)

    yield make


def wait_until(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.1,
               what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def all_gone(pids: dict[str, int] | list[int]) -> bool:
    values = pids.values() if isinstance(pids, dict) else pids
    return not any(pid_alive(pid) for pid in values)


def write_topology_file(path: Path, topology: dict[str, Any]) -> Path:
    """Write a topology dict as a file `crosszone -c` accepts (JSON is YAML)."""
    import json

    path.write_text(json.dumps(topology, indent=2), encoding="utf-8")
    return path


