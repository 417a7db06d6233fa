"""What the data-product tests share: per-zone clients, the admin API, a control-plane stand-in."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai

from crosszone.runtime import LocalStack
from crosszone.tools.membership import wait_in_service, wait_out_of_service

MODEL = "deepseek-chat"


def zones(stack: LocalStack) -> list[str]:
    return stack.topology.zone_names()


def gateway_base(stack: LocalStack, zone: str) -> str:
    """A zone's gateway, called directly (what forces a request into that zone)."""
    return stack.node(f"{zone}/gateway").url


def client(stack: LocalStack, key: str, zone: str | None = None) -> openai.OpenAI:
    """The official client on the LB, or on one zone's gateway."""
    base = stack.lb_url() if zone is None else gateway_base(stack, zone) + "/v1"
    return openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=30.0)


def admin(stack: LocalStack, method: str, path: str, *, zone: str | None = None,
          token: str | None = None, **kwargs: Any) -> httpx.Response:
    """An admin API call through the LB (or one zone's gateway)."""
    base = stack.lb_url().removesuffix("/v1") if zone is None else gateway_base(stack, zone)
    headers = {"Authorization": f"Bearer {stack.admin_token if token is None else token}"}
    return httpx.request(method, base + path, headers=headers, timeout=30.0, **kwargs)


def create_key(stack: LocalStack, name: str = "test") -> dict[str, Any]:
    answer = admin(stack, "POST", "/admin/keys", json={"name": name})
    assert answer.status_code == 200, answer.text
    created: dict[str, Any] = answer.json()
    return created


def kill_zone(stack: LocalStack, zone: str, *, wait_out: bool = False) -> None:
    """Kill every process of ``zone`` (kept down); with ``wait_out``, also wait until the
    controllers have taken it out of the stores' 2PC membership."""
    stack.hold(zone=zone, signal="KILL")
    if wait_out:
        asyncio.run(wait_out_of_service(stack.topology, zone, timeout=15))


def heal_zone(stack: LocalStack, zone: str) -> None:
    """Restart ``zone``, wait until it is healthy, caught up, and back in service."""
    stack.release(zone=zone)
    stack.wait_healthy(timeout=30)
    asyncio.run(wait_in_service(stack.topology, timeout=30))
