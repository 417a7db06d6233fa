"""The zone-local caches on real stacks (issue 4, item 1): the opt-in response cache (off by
default; a hit asks no worker, is billed, and other zones answer from the replicated entry)
and the conversation cache (async class: a hit, then invalidated by a delete, at once in the
deleting zone and through the change feed in another; sync class, on a default two-zone
stack started first: a hit is checked, so a delete elsewhere shows at once).

Zones on 127.0.244-246.0/24, LB on 127.0.0.244:18244 (HTTP) / 18684 (HTTPS).
"""

from __future__ import annotations

import functools
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from crosszone.config import Placement
from crosszone.dataplane.gateway.response_cache import CACHE_HEADER, RESPONSE_CACHE, cache_key
from crosszone.runtime import LocalStack
from crosszone.storage.service import store_url
from datautil import MODEL, admin, create_key, gateway_base, zones
from stackutil import local_topology, start_stack, wait_until

pytestmark = pytest.mark.integration
FIRST_OCTET, HTTP_PORT, HTTPS_PORT = 244, 18244, 18684


def topology(**overrides: Any) -> dict[str, Any]:
    return local_topology(FIRST_OCTET, http_port=HTTP_PORT, https_port=HTTPS_PORT, **overrides)


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LocalStack:
    topo = topology(conversations={"consistency": "async"},
                    cache={"responses": {"enabled": True, "ttl_seconds": 300}})
    return start_stack(request, tmp_path_factory.mktemp("cache"), topo)


def chat(stack: LocalStack, base: str, doc: dict[str, Any], key: str | None = None,
         ) -> httpx.Response:
    answer = httpx.post(base + "/v1/chat/completions", json=doc, timeout=30.0,
                        headers={"Authorization": f"Bearer {key or stack.api_key}"})
    assert answer.status_code == 200, answer.text
    return answer


def worker_requests(stack: LocalStack) -> float:
    """Requests every worker of the stack has answered (its /metrics)."""
    total = 0.0
    placement = Placement(stack.topology)
    for zone in zones(stack):
        for worker in placement.max_workers(zone):
            try:
                text = httpx.get(f"{worker.url}/metrics", timeout=2).text
            except httpx.HTTPError:  # a slot beyond desired_capacity: not running
                continue
            total += sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                         if line.startswith("crosszone_worker_requests_total{"))
    return total


def stored(stack: LocalStack, zone: str, collection: str, key: str) -> bool:
    answer = httpx.get(f"{store_url(stack.topology, zone)}/kv/{collection}/{key}", timeout=5)
    return answer.status_code == 200 and not answer.json().get("deleted")


def deterministic(text: str) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}],
            "temperature": 0, "max_tokens": 8}


def test_defaults_no_response_cache_and_sync_hits_are_checked(
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Default settings: the response cache is off; conversations are sync, and a cached
    conversation deleted in another zone is never served again, not even for a moment."""
    small = start_stack(request, tmp_path / "default", topology(
        workers=1, zones=("us-west-2a", "us-west-2b")))
    first, second = zones(small)
    here, there = gateway_base(small, first), gateway_base(small, second)
    doc = deterministic("same question")
    before = worker_requests(small)
    answers = [chat(small, here, doc) for _ in range(2)]
    assert all(CACHE_HEADER not in a.headers for a in answers)
    assert worker_requests(small) == before + 2  # both asked a worker

    headers = {"Authorization": f"Bearer {small.api_key}"}
    created = httpx.post(here + "/v1/responses", headers=headers, timeout=30,
                         json={"model": MODEL, "input": "hello", "max_output_tokens": 4})
    assert created.status_code == 200, created.text
    path = f"/v1/responses/{created.json()['id']}"
    assert httpx.get(there + path, headers=headers).headers[CACHE_HEADER] == "miss"
    assert httpx.get(there + path, headers=headers).headers[CACHE_HEADER] == "hit"
    assert httpx.delete(here + path, headers=headers, timeout=30).status_code == 200
    assert httpx.get(there + path, headers=headers).status_code == 404  # no wait: 2PC + check


def test_deterministic_request_is_answered_from_the_cache_in_every_zone(
        stack: LocalStack) -> None:
    first, second, third = zones(stack)
    created = create_key(stack, "cache-user")
    doc = deterministic(f"what is {uuid.uuid4().hex}?")
    base = gateway_base(stack, first)

    before = worker_requests(stack)
    miss = chat(stack, base, doc, created["key"])
    assert miss.headers[CACHE_HEADER] == "miss"
    assert worker_requests(stack) == before + 1
    hit = chat(stack, base, {**doc, "user": "someone"}, created["key"])  # ignored field
    assert hit.headers[CACHE_HEADER] == "hit"
    assert worker_requests(stack) == before + 1  # no worker asked
    assert hit.json()["choices"] == miss.json()["choices"]
    assert hit.json()["usage"] == miss.json()["usage"]
    assert hit.json()["id"] != miss.json()["id"]

    key = cache_key("chat", doc)
    assert key is not None
    for zone in (second, third):  # the entry replicates (async class) ...
        wait_until(functools.partial(stored, stack, zone, RESPONSE_CACHE, key), timeout=15,
                   what=f"the cache entry in zone {zone}")
    elsewhere = chat(stack, gateway_base(stack, second), doc, created["key"])
    assert elsewhere.headers[CACHE_HEADER] == "hit"  # ... and another zone answers from it
    assert elsewhere.json()["choices"] == miss.json()["choices"]
    through_lb = chat(stack, stack.lb_url().removesuffix("/v1"), doc, created["key"])
    assert through_lb.headers[CACHE_HEADER] == "hit"
    assert worker_requests(stack) == before + 1

    sampled = chat(stack, base, {**doc, "temperature": 0.8}, created["key"])
    assert CACHE_HEADER not in sampled.headers  # not deterministic: not cached
    streamed = httpx.post(base + "/v1/chat/completions", json={**doc, "stream": True},
                          headers={"Authorization": f"Bearer {created['key']}"}, timeout=30)
    assert streamed.status_code == 200 and CACHE_HEADER not in streamed.headers
    assert worker_requests(stack) == before + 3

    tokens = miss.json()["usage"]["total_tokens"]

    def billed() -> dict[str, Any] | None:  # hits are billed as the answer they repeat
        usage = admin(stack, "GET", f"/admin/usage?key_id={created['id']}", zone=first).json()
        totals: dict[str, Any] = usage["totals"]
        return totals if totals["requests"] == 6 else None

    totals = wait_until(billed, timeout=15, what="six usage records")
    assert totals["total_tokens"] >= 4 * tokens


def test_conversation_reads_are_cached_and_a_delete_invalidates_them(
        stack: LocalStack) -> None:
    first, second, _ = zones(stack)
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    here, there = gateway_base(stack, first), gateway_base(stack, second)
    created = httpx.post(here + "/v1/responses", headers=headers, timeout=30,
                         json={"model": MODEL, "input": "remember me", "max_output_tokens": 6})
    assert created.status_code == 200, created.text
    rid = created.json()["id"]

    def get(base: str) -> httpx.Response:
        return httpx.get(f"{base}/v1/responses/{rid}", headers=headers, timeout=10)

    assert get(here).headers[CACHE_HEADER] == "hit"  # kept when stored: the next turn wants it
    follow = httpx.post(here + "/v1/responses", headers=headers, timeout=30, json={
        "model": MODEL, "input": "and again", "previous_response_id": rid,
        "max_output_tokens": 4})
    assert follow.status_code == 200 and follow.json()["previous_response_id"] == rid

    wait_until(lambda: stored(stack, second, "responses", rid), timeout=15,
               what="the response in the second zone's store")
    assert get(there).headers[CACHE_HEADER] == "miss"
    cached = get(there)
    assert cached.headers[CACHE_HEADER] == "hit"
    assert cached.json()["output"] == created.json()["output"]

    deleted = httpx.delete(f"{here}/v1/responses/{rid}", headers=headers, timeout=30)
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert get(here).status_code == 404  # the deleting gateway dropped it at once
    # the other zone's gateway held it in memory: its store's change feed drops it once
    # replication brings the tombstone (its TTL, 60 s, would be far too late)
    wait_until(lambda: get(there).status_code == 404, timeout=10,
               what="the delete to reach the second zone's cache")
