"""Settings of the monitors: the ``monitoring:`` section of a topology, and where monitors live.

Only pydantic is imported here so :mod:`crosszone.config.topology` can embed
:class:`MonitoringSettings` without an import cycle (as it does the control settings); where the
monitors live is :mod:`crosszone.monitoring.addresses`.
Defaults are the local timings; the alert bounds are the ones an operator tunes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from crosszone.errors import ConfigProblem

MONITOR_HOST = 7
MONITOR_PORT = 9100


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class AlertBounds(_Model):
    """Thresholds of the alert rules (the same numbers go into the Prometheus rules file)."""

    for_seconds: float = Field(0.0, ge=0, description="a condition must hold this long to fire")
    replication_lag_seconds: float = Field(30.0, gt=0)
    in_doubt_seconds: float = Field(30.0, gt=0, description="oldest prepared 2PC transaction")
    failover_window_seconds: float = Field(
        600.0, gt=0, description="a failover keeps its alert firing this long")
    fast_burn_rate: float = Field(14.4, gt=0, description="error-budget burn over the short window")
    slow_burn_rate: float = Field(6.0, gt=0, description="error-budget burn over the long window")


class MonitoringSettings(_Model):
    """Everything a monitor needs beyond the rest of the topology."""

    backend: Literal["duckdb", "postgres"] = "duckdb"
    dsn: str | None = Field(None, description="postgres: libpq DSN of the metrics database")
    host: int = Field(MONITOR_HOST, ge=1, le=254, description="monitor host number in each zone")
    port: int = Field(MONITOR_PORT, ge=1, le=65535)
    cycle_seconds: float = Field(1.0, gt=0, description="one observe-evaluate-notify pass")
    probe_interval_seconds: float = Field(5.0, gt=0, description="cross-zone latency probes")
    probe_timeout_seconds: float = Field(2.0, gt=0)
    scrape_timeout_seconds: float = Field(1.0, gt=0, description="one component request")
    series_interval_seconds: float = Field(5.0, gt=0, description="time series resolution")
    retention_hours: float = Field(24.0 * 8, gt=0, description="rows older than this are pruned")
    slo_target: float = Field(0.999, gt=0, lt=1, description="availability objective")
    short_window_seconds: float = Field(300.0, gt=0, description="fast-burn window")
    long_window_seconds: float = Field(3600.0, gt=0, description="slow-burn window")
    webhooks: list[str] = Field(default_factory=list, description="alert webhook URLs")
    alerts: AlertBounds = Field(default_factory=AlertBounds)


def monitoring_settings(topology: object) -> MonitoringSettings:
    """The topology's ``monitoring`` section, or the defaults when it has none."""
    found = getattr(topology, "monitoring", None)
    return found if isinstance(found, MonitoringSettings) else MonitoringSettings()


def check_monitoring(s: MonitoringSettings, path: str = "monitoring",
                     controller_host: int = 5) -> list[ConfigProblem]:
    """Relations between settings; every problem, not just the first."""
    out: list[ConfigProblem] = []
    if s.host == controller_host:
        out.append(ConfigProblem(f"{path}.host", s.host,
                                 "is the controller's host number (control.host)"))
    if s.backend == "postgres" and not s.dsn:
        out.append(ConfigProblem(f"{path}.dsn", s.dsn, "the postgres backend needs a DSN"))
    if s.host in (6, 10) or 21 <= s.host <= 220:
        out.append(ConfigProblem(f"{path}.host", s.host,
                                 "host numbers .6 (store), .10 (gateway) and .21-.220 "
                                 "(workers) are taken"))
    if s.probe_timeout_seconds > s.probe_interval_seconds:
        out.append(ConfigProblem(f"{path}.probe_timeout_seconds", s.probe_timeout_seconds,
                                 "must not exceed probe_interval_seconds "
                                 f"({s.probe_interval_seconds:g})"))
    if s.short_window_seconds >= s.long_window_seconds:
        out.append(ConfigProblem(f"{path}.short_window_seconds", s.short_window_seconds,
                                 "must be shorter than long_window_seconds "
                                 f"({s.long_window_seconds:g})"))
    return out


def duckdb_path(run_dir: Path, zone: str) -> Path:
    """Where the monitor of ``zone`` keeps its embedded metrics database."""
    return run_dir / "monitoring" / f"metrics-{zone}.duckdb"


def failover_events_path(run_dir: Path) -> Path:
    """The control plane's durable ``failover_events`` table (see crosszone.control.events)."""
    return run_dir / "control" / "failover_events.sqlite"
