"""Data plane: worker nodes (inference), zone API gateways, the multi-zone load balancer."""
