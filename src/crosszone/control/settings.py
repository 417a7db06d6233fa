"""Settings of the control plane: the ``control:`` section of a topology.

Only pydantic is imported here so that :mod:`crosszone.config.topology` can embed
:class:`ControlSettings` without an import cycle. Defaults are the local (fast) timings; the seed's
production-like values are shown in ``docs``/the report. :func:`check_control` encodes the timing
relations a lease needs (as Patroni does: ``loop_wait + 2 * retry_timeout <= ttl``) and returns
every problem at once.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from crosszone.errors import ConfigProblem


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class LeaseSettings(_Model):
    """The leader lease every controller campaigns for.

    With the etcd backend the store's lease lasts whole seconds (the TTL rounded up), and a new
    etcd leader re-arms every lease for its full TTL: to replace a leader whose whole zone
    (controller and etcd member) died within 3 s, use ``ttl_seconds: 1``,
    ``renew_seconds: 0.2``, ``request_timeout_seconds: 0.25`` there (bench/RESULTS.md).
    """

    ttl_seconds: float = Field(1.5, gt=0, description="lease lifetime in the store")
    renew_seconds: float = Field(0.3, gt=0, description="how often the leader renews")
    request_timeout_seconds: float = Field(0.4, gt=0, description="one store request")
    safety_margin_seconds: float = Field(
        0.2, ge=0, description="the leader stops acting this long before its lease expires")


class DnsSettings(_Model):
    """The authoritative DNS server each controller runs (Route 53 failover/multivalue records).

    It listens (UDP and TCP) on the controller's own address, so every zone has a name server and
    a zone's failure takes only its own server with it.
    """

    name: str = Field("api.crosszone.local.", description="service name answered with A records")
    ttl_seconds: int = Field(1, ge=0, le=86400)
    port: int = Field(8053, ge=1, le=65535)


class FailoverPolicy(_Model):
    """Hysteresis, failback and guardrail settings of the FailoverManager."""

    failback: Literal["auto", "manual"] = "auto"
    failback_delay_seconds: float = Field(
        5.0, ge=0, description="a recovered primary must be healthy this long before failback")
    recovery_stable_seconds: float = Field(
        3.0, ge=0, description="a zone must be healthy this long before its autoshift ends")
    flap_window_seconds: float = Field(60.0, gt=0)
    flap_threshold: int = Field(4, ge=2, description="status changes within the window = flapping")
    flap_hold_seconds: float = Field(
        20.0, ge=0, description="stable time a flapping zone needs before it takes traffic again")
    max_shift_seconds: float = Field(3 * 86400.0, gt=0, description="longest operator shift")
    autoshift_gray_failures: bool = True


class GrayFailureSettings(_Model):
    """Outlier detection: a zone much worse than the others is degraded while still answering."""

    window_seconds: float = Field(10.0, gt=0)
    min_samples: int = Field(10, ge=1, description="samples a zone needs before it is judged")
    error_rate_floor: float = Field(0.05, ge=0, le=1, description="never an outlier below this")
    error_rate_factor: float = Field(3.0, ge=1, description="times the other zones' median")
    latency_factor: float = Field(4.0, ge=1, description="times the other zones' median")
    latency_floor_ms: float = Field(50.0, ge=0, description="and at least this much slower")


class ScalingSettings(_Model):
    """The auto-scaling groups (one per zone): load target, cooldowns, static-stability headroom.

    The acting leader sizes each zone's group between ``min_size`` and ``max_size`` from the
    in-flight requests (running plus queued) its workers report on ``/health``. ``headroom_percent``
    omitted plans for the loss of any one zone (each zone can take the share it would carry if any
    other zone failed: 50 % more with three equal zones); a number adds that much capacity over
    each zone's current share instead. The local supervisor reads the decisions from the
    controllers every ``poll_seconds`` and keeps the last value it got while none answers.
    """

    enabled: bool = Field(True, description="scale on load and on zone loss; off: only operator "
                          "`crosszone scale` and the topology's desired_capacity")
    target_in_flight_per_worker: float = Field(
        16.0, gt=0, description="running + queued requests one worker should carry")
    headroom_percent: float | None = Field(
        None, ge=0, le=1000, description="spare capacity over each zone's share; omitted: "
        "enough for the loss of any one zone (N-1 planning)")
    scale_out_cooldown_seconds: float = Field(
        10.0, ge=0, description="after a group changed, wait this long before adding for load")
    scale_in_cooldown_seconds: float = Field(
        60.0, ge=0, description="load must stay low this long (and this long since the last "
        "change) before workers are removed")
    zone_loss_seconds: float = Field(
        10.0, ge=0, description="a zone that served and then stayed out of service this long is "
        "lost: the survivors take over its baseline capacity")
    load_max_age_seconds: float = Field(
        5.0, gt=0, description="a worker's load report older than this is not counted")
    poll_seconds: float = Field(
        0.5, gt=0, description="how often the local supervisor reads the desired capacities")
    unhealthy_replace_seconds: float = Field(
        5.0, ge=0, description="ELB groups: a worker is replaced once it failed "
        "unhealthyThresholdCount checks in a row and kept failing this long (a busy worker "
        "that answers late now and then is not killed)")
    health_check_grace_seconds: float = Field(
        30.0, ge=0, description="ELB health checks of a new worker count only after it "
        "answered once or after this long (the ASG's health_check_grace_period)")


class StoreLeaseSettings(_Model):
    """Leases and two-phase-commit membership of the zone stores, kept by the acting leader.

    A store serves strong reads and coordinates strong writes only while it holds a lease,
    which lapses ``ttl_seconds`` after the last renewal the leader sent; the leader renews
    every ``renew_seconds``. A store whose renewals have failed for ``ttl_seconds +
    margin_seconds`` (counted from the leader's last acknowledgement, so its lease has surely
    lapsed) is taken out of the membership: strong writes then run over the other zones. A zone
    returns once nothing is left to ship to it, and is granted its lease once it is caught up
    again after ``settle_seconds`` (longer than a prepare, so no transaction begun without it
    is still on its way).
    """

    enabled: bool = Field(True, description="the leader grants store leases and keeps the "
                          "membership; off: stores keep whatever they were told last")
    ttl_seconds: float = Field(1.5, gt=0, description="a store's lease lapses this long after "
                               "its last renewal")
    renew_seconds: float = Field(0.25, gt=0, description="how often the leader renews")
    request_timeout_seconds: float = Field(0.5, gt=0, description="one call to a store")
    margin_seconds: float = Field(0.25, ge=0, description="added to ttl_seconds before a "
                                  "store that stopped answering is taken out")
    settle_seconds: float = Field(2.5, ge=0, description="a re-admitted zone takes part in "
                                  "strong writes this long before it may serve strong reads "
                                  "(must exceed storage.prepare_timeout_seconds)")


class ControlSettings(_Model):
    """Everything the controllers need beyond the rest of the topology."""

    backend: Literal["raft", "etcd"] = "raft"
    loop_seconds: float = Field(0.1, gt=0, description="one observe-decide-act cycle per tick")
    host: int = Field(5, ge=1, le=254, description="controller host number in each zone")
    api_port: int = Field(7080, ge=1, le=65535)
    raft_port: int = Field(7001, ge=1, le=65535)
    etcd_client_port: int = Field(2379, ge=1, le=65535)
    etcd_peer_port: int = Field(2380, ge=1, le=65535)
    push_timeout_seconds: float = Field(0.5, gt=0, description="one weights push to LB/gateway")
    repush_seconds: float = Field(5.0, gt=0, description="re-send unchanged routing this often")
    min_healthy_fraction: float = Field(0.5, ge=0, le=1)
    lease: LeaseSettings = Field(default_factory=LeaseSettings)
    dns: DnsSettings = Field(default_factory=DnsSettings)
    failover: FailoverPolicy = Field(default_factory=FailoverPolicy)
    gray_failure: GrayFailureSettings = Field(default_factory=GrayFailureSettings)
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)
    stores: StoreLeaseSettings = Field(default_factory=StoreLeaseSettings)


def control_settings(topology: object) -> ControlSettings:
    """The topology's ``control`` section, or the defaults when the topology has none."""
    found = getattr(topology, "control", None)
    return found if isinstance(found, ControlSettings) else ControlSettings()


def check_control(c: ControlSettings, path: str = "control") -> list[ConfigProblem]:
    """Timing relations a lease needs; every problem, not just the first."""
    out: list[ConfigProblem] = []
    lease = c.lease
    # The leader must get at least two renewal attempts (each bounded by the request timeout)
    # inside the part of the lease it may act in, or one slow request costs the leadership.
    usable = lease.ttl_seconds - lease.safety_margin_seconds
    needed = lease.renew_seconds + 2 * lease.request_timeout_seconds
    if needed > usable:
        out.append(ConfigProblem(
            f"{path}.lease", lease.model_dump(),
            f"renew_seconds + 2 x request_timeout_seconds ({needed:g} s) must fit in "
            f"ttl_seconds - safety_margin_seconds ({usable:g} s)"))
    st = c.stores
    renewal = st.renew_seconds + st.request_timeout_seconds
    if renewal >= st.ttl_seconds:
        out.append(ConfigProblem(
            f"{path}.stores", st.model_dump(),
            f"renew_seconds + request_timeout_seconds ({renewal:g} s) must be less than "
            f"ttl_seconds ({st.ttl_seconds:g} s), or a store loses its lease between renewals"))
    if c.loop_seconds > lease.renew_seconds:
        out.append(ConfigProblem(f"{path}.loop_seconds", c.loop_seconds,
                                 f"must not exceed lease.renew_seconds ({lease.renew_seconds})"))
    if c.host == 10 or 21 <= c.host <= 220:
        out.append(ConfigProblem(f"{path}.host", c.host,
                                 "host numbers .10 (gateway) and .21-.220 (workers) are taken"))
    if not c.dns.name.endswith("."):
        out.append(ConfigProblem(f"{path}.dns.name", c.dns.name,
                                 "must be fully qualified (end with '.')"))
    ports = [c.api_port, c.raft_port, c.etcd_client_port, c.etcd_peer_port]
    if len(set(ports)) != len(ports):
        out.append(ConfigProblem(path, ports, "api, raft and etcd ports must all differ"))
    if c.dns.port in (c.api_port, c.raft_port):
        out.append(ConfigProblem(f"{path}.dns.port", c.dns.port,
                                 "must differ from api_port and raft_port (TCP)"))
    return out
