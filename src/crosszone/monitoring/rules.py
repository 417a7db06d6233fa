"""The alert rules of a deployment, with the thresholds of its ``monitoring.alerts`` settings.

Burn-rate thresholds follow the SRE workbook's multiwindow alerts: 14.4x over the short window
spends 2 % of a 30-day budget in an hour; 6x over the long window spends 5 % in six hours.
"""

from __future__ import annotations

from crosszone.monitoring.alerts import Rule
from crosszone.monitoring.settings import MonitoringSettings


def default_rules(settings: MonitoringSettings) -> list[Rule]:
    b = settings.alerts
    wait = b.for_seconds
    return [
        Rule("ZoneUnhealthy", "crosszone_zone_up", "==", 0, "critical",
             "Zone {zone} is unhealthy",
             "Its gateway or every one of its workers stopped answering the monitors; "
             "traffic should have moved to the other zones.",
             for_seconds=wait),
        Rule("ZoneDegraded", "crosszone_zone_degraded", "==", 1, "warning",
             "Zone {zone} is degraded",
             "The zone still serves, but some of its nodes are down, the load balancer took "
             "it out, or it is a latency/error outlier (gray failure).",
             for_seconds=wait),
        Rule("NoHealthyZone", "crosszone_healthy_zones", "==", 0, "critical",
             "No healthy zone: the service is down",
             "Every zone is unhealthy; the load balancer fails open and tries them all.",
             for_seconds=wait),
        Rule("FailoverHappened", "crosszone_failovers_recent", ">", 0, "warning",
             "{value} failover(s) in the last "
             f"{b.failover_window_seconds:g} s",
             "The control plane moved traffic between zones; see `crosszone report failovers`."),
        Rule("FailoverFailed", "crosszone_failovers_failed_recent", ">", 0, "critical",
             "{value} failover(s) did not complete",
             "The leader could not get the load balancer to take the new routing."),
        Rule("ReplicationLagHigh", "crosszone_replication_lag_seconds", ">",
             b.replication_lag_seconds, "warning",
             "Replication {zone} -> {peer_zone} is {value} s behind",
             f"Writes of {{zone}} older than {b.replication_lag_seconds:g} s are not yet "
             "acknowledged by the peer zone's store.",
             for_seconds=wait),
        Rule("InDoubtTransactionStuck", "crosszone_prepared_transaction_oldest_age_seconds", ">",
             b.in_doubt_seconds, "critical",
             "A prepared 2PC transaction in {zone} is {value} s old",
             "A cross-zone transaction stays prepared (in doubt): its coordinator has not "
             "finished phase two; keys it holds refuse writes.",
             for_seconds=wait),
        Rule("ErrorBudgetBurnFast", "crosszone_error_budget_burn_rate", ">", b.fast_burn_rate,
             "critical", "Error budget burning {value}x over the short window",
             f"5xx ratio at the load balancer over {settings.short_window_seconds:g} s is "
             f"{b.fast_burn_rate:g}x what a {settings.slo_target:.3%} SLO allows.",
             match=(("window", "short"),)),
        Rule("ErrorBudgetBurnSlow", "crosszone_error_budget_burn_rate", ">", b.slow_burn_rate,
             "warning", "Error budget burning {value}x over the long window",
             f"5xx ratio at the load balancer over {settings.long_window_seconds:g} s is "
             f"{b.slow_burn_rate:g}x what a {settings.slo_target:.3%} SLO allows.",
             match=(("window", "long"),)),
    ]
