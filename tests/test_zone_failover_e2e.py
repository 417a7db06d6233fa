"""End to end: the official openai client through LB -> gateway -> worker, real processes on
loopback, while workers and whole zones are killed under traffic (issue 2, "Done when")."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import openai
import pytest

from crosszone.runtime import LocalStack
from crosszone.workload import ChatWorkload, Outcome, Timeline, WorkloadConfig
from stackutil import all_gone, local_topology, start_stack, wait_until

pytestmark = pytest.mark.integration

FIRST = 120  # zones on 127.0.120-122.0/24


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LocalStack:
    topo = local_topology(FIRST, http_port=18120, https_port=18563, decode_ms=1.0)
    return start_stack(request, tmp_path_factory.mktemp("e2e"), topo)


def _client(stack: LocalStack, protocol: str = "http") -> openai.OpenAI:
    tls = ssl.create_default_context(cafile=str(stack.ca_cert))
    http = openai.DefaultHttpxClient(verify=tls) if protocol == "https" else None
    return openai.OpenAI(base_url=stack.lb_url(protocol), api_key=stack.api_key, max_retries=0,
                         http_client=http)


@pytest.mark.parametrize("protocol", ["http", "https"])
def test_openai_client_completions_and_streams(stack: LocalStack, protocol: str) -> None:
    client = _client(stack, protocol)
    done = client.chat.completions.create(
        model="deepseek-chat", messages=[{"role": "user", "content": "hello there"}])
    assert done.choices[0].message.content
    assert done.choices[0].finish_reason in {"stop", "length"}
    assert done.usage is not None and done.usage.completion_tokens > 0

    text, usage, finishes = "", None, []
    for chunk in client.chat.completions.create(
            model="deepseek-chat", messages=[{"role": "user", "content": "hello there"}],
            stream=True, stream_options={"include_usage": True}):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            if chunk.choices[0].finish_reason:
                finishes.append(chunk.choices[0].finish_reason)
        if chunk.usage:
            usage = chunk.usage
    # Deterministic simulator: the stream says exactly what the non-streaming call said.
    assert text == done.choices[0].message.content
    assert finishes == [done.choices[0].finish_reason]
    assert usage is not None and usage.completion_tokens == done.usage.completion_tokens

    models = {m.id for m in client.models.list()}
    assert {"deepseek-chat", "deepseek-reasoner"} <= models

    legacy = client.completions.create(model="deepseek-chat", prompt="once upon a time",
                                       max_tokens=5)
    assert legacy.choices[0].text and legacy.usage and legacy.usage.completion_tokens <= 5


def test_wrong_key_is_an_openai_error(stack: LocalStack) -> None:
    client = openai.OpenAI(base_url=stack.lb_url(), api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="deepseek-chat",
                                       messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 401


def test_status_shows_three_healthy_zones(stack: LocalStack) -> None:
    status = stack.status()
    zones = status["zones"]
    assert len(zones) == 3
    assert all(z["healthy"] for z in (zones.values() if isinstance(zones, dict) else zones))
    assert status["api_key"] == stack.api_key


def _traffic_with_fault(stack: LocalStack, fault: object, seconds: float = 5.0,
                        stream_ratio: float = 0.0) -> Timeline:
    """Run client traffic for ``seconds``; call ``fault()`` half-way (in a thread)."""
    timeline = Timeline()
    workload = ChatWorkload(WorkloadConfig(
        base_url=stack.lb_url(), api_key=stack.api_key, concurrency=8,
        duration_seconds=seconds, max_requests=20_000, stream_ratio=stream_ratio,
        max_tokens=16), timeline)

    async def main() -> None:
        runner = asyncio.create_task(workload.run())
        await asyncio.sleep(seconds / 2)
        timeline.fault_at = workload.now()
        await asyncio.to_thread(fault)  # type: ignore[arg-type]
        await runner

    asyncio.run(main())
    return timeline


def _failures(timeline: Timeline) -> list[str]:
    return [f"{r.zone} {r.error}" for r in timeline.records if r.outcome is not Outcome.OK]


def test_killing_a_worker_fails_no_request(stack: LocalStack) -> None:
    victim = stack.node("us-west-2b/worker-1")
    before = stack.pids()[victim.name]
    timeline = _traffic_with_fault(
        stack, lambda: stack.signal(zone="us-west-2b", component="worker", index=1,
                                    signal="KILL"))
    assert len(timeline.records) > 50
    assert _failures(timeline) == []
    # The supervisor restarts it and it rejoins.
    wait_until(lambda: stack.pids().get(victim.name) not in (None, before), what="restart")
    stack.wait_healthy(timeout=20)


def test_killing_a_whole_zone_fails_no_request(stack: LocalStack) -> None:
    timeline = _traffic_with_fault(stack, lambda: stack.hold(zone="us-west-2a", signal="KILL"))
    try:
        timeline.fault_zone = "us-west-2a"
        records = timeline.records
        assert len(records) > 50
        assert _failures(timeline) == []
        before = {r.zone for r in timeline.window(False)}
        assert before == {"us-west-2a", "us-west-2b", "us-west-2c"}
        assert timeline.fault_at is not None
        late = [r for r in records if r.start > timeline.fault_at + 1.0]
        assert late and {r.zone for r in late} <= {"us-west-2b", "us-west-2c"}
        status = stack.status()
        zones = status["zones"]
        zone_a = zones["us-west-2a"] if isinstance(zones, dict) else zones[0]
        assert not zone_a["healthy"]
    finally:
        stack.release(zone="us-west-2a")
        stack.wait_healthy(timeout=30)


def test_streams_started_after_a_zone_kill_all_complete(stack: LocalStack) -> None:
    stack.hold(zone="us-west-2c", signal="KILL")
    try:
        timeline = _traffic_with_fault(stack, lambda: None, seconds=3.0, stream_ratio=1.0)
        assert len(timeline.records) > 20
        assert _failures(timeline) == []
        assert {r.zone for r in timeline.records} <= {"us-west-2a", "us-west-2b"}
    finally:
        stack.release(zone="us-west-2c")
        stack.wait_healthy(timeout=30)


def test_down_leaves_no_process(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    topo = local_topology(FIRST + 4, http_port=18124, https_port=18567, workers=1)
    other = start_stack(request, tmp_path / "run", topo)
    pids = list(other.pids().values())
    assert len(pids) == 3 * 5 + 1 + 1  # 5 per zone, LB, supervisor
    other.down()
    wait_until(lambda: all_gone(pids), timeout=10, what="every process gone")
    assert not other.is_running()
