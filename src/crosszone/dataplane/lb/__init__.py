"""The multi-zone load balancer: the service's one address, in front of the zone gateways."""

from crosszone.dataplane.lb.app import LB_HOP, create_lb_app, lb_pool, lb_timeouts
from crosszone.dataplane.lb.tls import certificate_path, ensure_certificate

__all__ = ["LB_HOP", "certificate_path", "create_lb_app", "ensure_certificate", "lb_pool",
           "lb_timeouts"]
