"""Operator tools that drive a running deployment: the RPO drill and its helpers."""
