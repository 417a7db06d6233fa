"""Pydantic models of the topology file.

Field names follow the seed article so its readers recognise them: Terraform's snake_case for
the auto-scaling group (``min_size``, ``desired_capacity``), the k8s-style camelCase for the load
balancer (``targetPort``, ``healthCheck``, ``intervalSeconds``). Structural checks live here;
the seed's principles (cross-field rules) live in :mod:`crosszone.config.rules`.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from crosszone.control.settings import ControlSettings
from crosszone.monitoring.settings import MonitoringSettings


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Vpc(_Model):
    cidr: str = Field("127.0.0.0/8", description="VPC CIDR block; every zone subnet lies inside it")
    enable_multi_az: bool = True

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr, strict=False)


class HealthCheck(_Model):
    """Active health check, exactly the seed's (and ELB's) four parameters plus the path."""

    path: str = "/health"
    interval_seconds: float = Field(30.0, alias="intervalSeconds", gt=0)
    timeout_seconds: float = Field(5.0, alias="timeoutSeconds", gt=0)
    healthy_threshold_count: int = Field(2, alias="healthyThresholdCount", ge=1, le=10)
    unhealthy_threshold_count: int = Field(2, alias="unhealthyThresholdCount", ge=1, le=10)

    def detection_seconds(self) -> float:
        """Worst-case time for active checks alone to declare a silent target unhealthy."""
        return self.unhealthy_threshold_count * self.interval_seconds + self.timeout_seconds


class WorkerGroup(_Model):
    """The seed's auto-scaling group (section 2.2), one per zone."""

    min_size: int = Field(2, ge=0)
    max_size: int = Field(10, ge=1)
    desired_capacity: int = Field(2, ge=0)
    health_check_type: Literal["ELB", "EC2"] = "ELB"
    port: int = Field(9000, ge=1, le=65535, description="port every worker listens on")
    tags: dict[str, str] = Field(default_factory=dict)


class Zone(_Model):
    name: str = Field(min_length=1)
    subnet: str
    worker_group: WorkerGroup | None = Field(
        None, description="overrides the top-level worker_group for this zone"
    )

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet, strict=False)


class Listener(_Model):
    protocol: Literal["HTTP", "HTTPS"]
    port: int = Field(ge=1, le=65535)
    target_port: int = Field(alias="targetPort", ge=1, le=65535)


class Tls(_Model):
    cert_file: str | None = Field(None, description="PEM certificate; self-signed if omitted")
    key_file: str | None = None


class LoadBalancer(_Model):
    """The seed's multi-zone load balancer (section 2.3): the service's one address."""

    type: Literal["multi-zone"] = "multi-zone"
    address: str = Field("127.0.0.1", description="address the listeners bind to")
    listeners: list[Listener] = Field(
        default_factory=lambda: [
            Listener.model_validate({"protocol": "HTTPS", "port": 443, "targetPort": 8080})]
    )
    health_check: HealthCheck = Field(default_factory=HealthCheck, alias="healthCheck")
    tls: Tls = Field(default_factory=Tls)


class Timeouts(_Model):
    """Timeouts of one proxy hop (gateway to worker, LB to gateway)."""

    connect_seconds: float = Field(1.0, gt=0)
    first_byte_seconds: float = Field(30.0, gt=0, description="until response headers arrive")
    idle_seconds: float = Field(15.0, gt=0, description="longest gap between two stream chunks")
    total_seconds: float = Field(600.0, gt=0)


CHAT_ROUTE = "/v1/chat/completions"
COMPLETIONS_ROUTE = "/v1/completions"
RESPONSES_ROUTE = "/v1/responses"


class Migration(_Model):
    """Mid-stream failover of streamed answers, and hedged first tokens (both proxy hops)."""

    max_migrations: int = Field(
        2, ge=0, le=10, description="times one stream may move to another backend; 0 disables")
    hedge_first_token_ms: float | None = Field(
        None, gt=0, description="the LB sends a second copy to another zone when the first "
        "token is slower than this; off when omitted")
    hedge_budget_percent: float = Field(
        10.0, ge=0, le=100, description="hedges allowed, as a percentage of hedgeable requests")
    hedge_routes: list[str] = Field(
        default_factory=lambda: [CHAT_ROUTE, COMPLETIONS_ROUTE],
        description="API paths whose streamed requests may be hedged")


class Gateway(_Model):
    """The seed's API gateway layer: one per zone, on ``targetPort`` of the listeners."""

    port: int = Field(8080, ge=1, le=65535)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    max_attempts: int = Field(3, ge=1, le=10, description="tries before the first byte is sent")
    health_check: HealthCheck = Field(
        default_factory=lambda: HealthCheck.model_validate(
            {"intervalSeconds": 5, "timeoutSeconds": 2}),
        alias="healthCheck",
        description="active checks of this zone's workers",
    )
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    migration: Migration = Field(default_factory=Migration)


class Failover(_Model):
    """Which zones take traffic: active/backup in order (the seed's FailoverManager) or all."""

    mode: Literal["active-backup", "active-active"] = "active-backup"
    zones: list[str] | None = Field(
        None, description="active/backup order, primary first; defaults to the zones' order"
    )
    weights: dict[str, float] | None = Field(
        None, description="active-active traffic weights per zone; equal if omitted"
    )


class FailureInjection(_Model):
    """Faults a simulator worker injects, for tests and drills."""

    error_rate: float = Field(0.0, ge=0, le=1)
    stall_after_tokens: int | None = Field(None, ge=0)
    stall_seconds: float = Field(3600.0, gt=0)
    crash_after_tokens: int | None = Field(None, ge=0)


class Simulator(_Model):
    seed: int = 0
    prefill_ms_per_token: float = Field(0.05, ge=0)
    decode_ms_per_token: float = Field(20.0, ge=0)
    max_num_seqs: int = Field(64, ge=1)
    max_queue: int = Field(1024, ge=0)
    min_output_tokens: int = Field(16, ge=1)
    max_output_tokens: int = Field(96, ge=1)
    reasoning_tokens: int = Field(24, ge=0, description="reasoning tokens deepseek-reasoner emits")
    failures: FailureInjection = Field(default_factory=FailureInjection)


class Upstream(_Model):
    base_url: str = Field(description="OpenAI-compatible base URL, e.g. http://host:8000/v1")
    api_key_env: str | None = Field(None, description="environment variable holding the API key")
    models: list[str] | None = Field(None, description="served models; default: ask upstream")
    model_map: dict[str, str] = Field(default_factory=dict, description="served name -> upstream")
    continuation: Literal["deepseek-prefix", "vllm-continue", "completions"] = "deepseek-prefix"


class Inference(_Model):
    backend: Literal["simulator", "openai"] = "simulator"
    simulator: Simulator = Field(default_factory=Simulator)
    upstream: Upstream | None = None


class Auth(_Model):
    api_keys: list[str] = Field(
        default_factory=list, description="static API keys; one is generated if empty"
    )
    admin_token: str | None = None
    key_cache_seconds: float = Field(
        2.0, ge=0, description="how long a gateway trusts an API key it looked up in its zone "
        "store; a revocation waits this long for a gateway it could not tell directly")


class Storage(_Model):
    """Each zone's store (the seed's data layer, 1.2) and its replication (3.1, 3.2)."""

    backend: Literal["sqlite", "postgres"] = "sqlite"
    dsn: dict[str, str] = Field(default_factory=dict,
                                description="postgres: a libpq DSN per zone name")
    port: int = Field(7000, ge=1, le=65535, description="port of every zone's store service")
    prepare_timeout_seconds: float = Field(2.0, gt=0)
    conflict_timeout_seconds: float = Field(2.0, gt=0)
    keep_max: int = Field(200_000, ge=100,
                          description="outbox entries kept before a lagging zone needs a snapshot")
    trim_every_seconds: float = Field(5.0, gt=0)


class Conversations(_Model):
    """Stored Responses API conversations (``/v1/responses``, ``previous_response_id``)."""

    consistency: Literal["sync", "async"] = Field(
        "sync", description="sync: written to every zone in service by two-phase commit "
        "before the answer completes (RPO 0); async: written to the serving zone and "
        "replicated (loses at most the replication lag when that zone dies)")


class ConversationCache(_Model):
    """Stored responses a gateway keeps in memory (``previous_response_id``, ``GET``)."""

    enabled: bool = Field(True, description="cache conversation reads in each gateway")
    ttl_seconds: float = Field(
        60.0, gt=0, description="longest an entry is kept; async class: invalidated earlier "
        "by the zone store's change feed, sync class: every hit is checked by a strong "
        "version read")
    max_entries: int = Field(2000, ge=1, description="entries per gateway (least recently "
                             "used out first); each holds a whole conversation")


class ResponseCache(_Model):
    """The opt-in exact-match cache of deterministic chat and completions answers."""

    enabled: bool = Field(
        False, description="answer a repeated deterministic request (temperature 0 or a "
        "seed; n 1; not streamed) with the answer stored for it, without a worker")
    ttl_seconds: float = Field(300.0, gt=0, description="an entry's life from when it was "
                               "stored (an expired entry is a miss)")
    max_entries: int = Field(10_000, ge=1, description="entries each gateway keeps in memory "
                             "(its zone store keeps every entry until overwritten)")


class Cache(_Model):
    """The zone-local cache of every gateway (API keys: ``auth.key_cache_seconds``)."""

    conversations: ConversationCache = Field(default_factory=ConversationCache)
    responses: ResponseCache = Field(default_factory=ResponseCache)


class Supervision(_Model):
    restart: Literal["always", "on-failure", "never"] = "always"
    backoff_initial_seconds: float = Field(0.2, ge=0)
    backoff_max_seconds: float = Field(5.0, ge=0)


class Topology(_Model):
    region: str = "local"
    vpc: Vpc = Field(default_factory=Vpc)
    zones: list[Zone]
    worker_group: WorkerGroup = Field(default_factory=WorkerGroup)
    gateway: Gateway = Field(default_factory=Gateway)
    load_balancer: LoadBalancer = Field(default_factory=LoadBalancer)
    failover: Failover = Field(default_factory=Failover)
    inference: Inference = Field(default_factory=Inference)
    auth: Auth = Field(default_factory=Auth)
    storage: Storage = Field(default_factory=Storage)
    control: ControlSettings = Field(default_factory=ControlSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    conversations: Conversations = Field(default_factory=Conversations)
    cache: Cache = Field(default_factory=Cache)
    supervision: Supervision = Field(default_factory=Supervision)

    def zone(self, name: str) -> Zone:
        for z in self.zones:
            if z.name == name:
                return z
        raise KeyError(name)

    def zone_names(self) -> list[str]:
        return [z.name for z in self.zones]

    def worker_group_of(self, zone: str) -> WorkerGroup:
        return self.zone(zone).worker_group or self.worker_group

    def zone_order(self) -> list[str]:
        """Zones in failover priority order (primary first)."""
        return list(self.failover.zones or self.zone_names())
