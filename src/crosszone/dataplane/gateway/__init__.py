"""The zone API gateway: authenticates, validates and relays requests to the zone's workers."""

from crosszone.dataplane.gateway.app import GATEWAY_HOP, create_gateway_app, gateway_pool

__all__ = ["GATEWAY_HOP", "create_gateway_app", "gateway_pool"]
