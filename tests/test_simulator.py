"""The simulator engine: determinism, prefix continuation, batching and injected faults."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crosszone.config.topology import FailureInjection, Simulator
from crosszone.dataplane.engines.base import ChatMessage, Delta, GenerationRequest
from crosszone.dataplane.engines.faults import FaultInjector
from crosszone.dataplane.engines.simulator import SimulatorEngine
from crosszone.dataplane.engines.vocab import count_tokens
from crosszone.errors import EngineError

FAST = Simulator(decode_ms_per_token=0, prefill_ms_per_token=0, reasoning_tokens=6,
                 min_output_tokens=4, max_output_tokens=30)


def chat(text: str, model: str = "deepseek-chat", **kw: object) -> GenerationRequest:
    return GenerationRequest(model, [ChatMessage("user", text)], **kw)  # type: ignore[arg-type]


async def run(engine: SimulatorEngine | FaultInjector, request: GenerationRequest) -> list[Delta]:
    return [d async for d in engine.generate(request)]


def text_of(deltas: list[Delta]) -> tuple[str, str]:
    return "".join(d.reasoning for d in deltas), "".join(d.content for d in deltas)


@pytest.fixture
async def engine() -> AsyncIterator[SimulatorEngine]:
    e = SimulatorEngine(FAST)
    await e.start()
    yield e
    await e.close()


async def test_same_prompt_and_seed_give_same_tokens(engine: SimulatorEngine) -> None:
    a = await run(engine, chat("hello world", seed=7))
    b = await run(engine, chat("hello world", seed=7))
    assert a == b
    assert a[-1].finish_reason == "stop"
    assert all(d.finish_reason is None for d in a[:-1])


async def test_seed_and_prompt_change_the_tokens(engine: SimulatorEngine) -> None:
    base = text_of(await run(engine, chat("hello world", seed=7)))
    assert text_of(await run(engine, chat("hello world", seed=8))) != base
    assert text_of(await run(engine, chat("hello world!", seed=7))) != base
    assert text_of(await run(engine, chat("hello world"))) != base
    other = SimulatorEngine(FAST.model_copy(update={"seed": 1}))
    await other.start()
    try:
        assert text_of(await run(other, chat("hello world", seed=7))) != base
    finally:
        await other.close()


async def test_tokens_are_words_with_one_space(engine: SimulatorEngine) -> None:
    deltas = await run(engine, chat("tokens"))
    tokens = [d.content for d in deltas[:-1]]
    assert all(t.endswith(" ") and " " not in t[:-1] and t.strip() for t in tokens)
    assert count_tokens("".join(tokens)) == len(tokens)
    assert FAST.min_output_tokens <= len(tokens) <= FAST.max_output_tokens
    usage = deltas[-1].usage
    assert usage is not None and usage.completion_tokens == len(tokens)
    assert usage.prompt_tokens == 4 + 1


async def test_max_tokens_cuts_with_finish_reason_length(engine: SimulatorEngine) -> None:
    full = await run(engine, chat("long one"))
    cut = await run(engine, chat("long one", max_tokens=3))
    assert cut[:3] == full[:3]
    assert cut[-1].finish_reason == "length"
    assert cut[-1].usage is not None and cut[-1].usage.completion_tokens == 3
    exact = await run(engine, chat("long one", max_tokens=len(full) - 1))
    assert exact[-1].finish_reason == "stop"


async def test_reasoner_thinks_first_and_counts_reasoning(engine: SimulatorEngine) -> None:
    deltas = await run(engine, chat("why?", model="deepseek-reasoner"))
    kinds = ["r" if d.reasoning else "c" for d in deltas[:-1]]
    assert kinds == ["r"] * FAST.reasoning_tokens + ["c"] * (len(kinds) - FAST.reasoning_tokens)
    usage = deltas[-1].usage
    assert usage is not None
    assert usage.reasoning_tokens == FAST.reasoning_tokens
    assert usage.completion_tokens == len(kinds)


async def test_stop_string_ends_the_run(engine: SimulatorEngine) -> None:
    full = await run(engine, chat("stop me", seed=3))
    word = full[2].content.strip()
    first = next(i for i, d in enumerate(full) if d.content.strip() == word)
    out = await run(engine, chat("stop me", seed=3, stop=[word]))
    assert [d.content for d in out[:-1]] == [d.content for d in full[:first]]
    assert out[-1].finish_reason == "stop"


async def test_unknown_model_is_404(engine: SimulatorEngine) -> None:
    with pytest.raises(EngineError) as info:
        await run(engine, chat("x", model="gpt-4"))
    assert info.value.status == 404 and info.value.code == "model_not_found"


async def test_prefix_counts_as_prompt(engine: SimulatorEngine) -> None:
    prefix = ChatMessage("assistant", "alpha beta gamma ", prefix=True)
    out = await run(engine, GenerationRequest("deepseek-chat", [ChatMessage("user", "q"), prefix]))
    assert out[-1].usage is not None and out[-1].usage.prompt_tokens == 4 + 1 + 3


# -- prefix continuation: output after k tokens equals the uninterrupted output[k:] -------------

_prompts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


def _continue_sync(messages: list[ChatMessage], model: str, seed: int | None, k: int,
                   phase: str) -> tuple[list[Delta], list[Delta]]:
    async def go() -> tuple[list[Delta], list[Delta]]:
        e = SimulatorEngine(FAST)
        await e.start()
        try:
            full = await run(e, GenerationRequest(model, messages, seed=seed))
            tokens = full[:-1]
            reasoning = [d.reasoning for d in tokens if d.reasoning]
            content = [d.content for d in tokens if d.content]
            if phase == "reasoning":
                done = min(k, len(reasoning))
                prefix = ChatMessage("assistant", "", "".join(reasoning[:done]), prefix=True)
                skip = done
            else:
                done = min(k, len(content))
                prefix = ChatMessage("assistant", "".join(content[:done]), "".join(reasoning),
                                     prefix=True)
                skip = len(reasoning) + done
            rest = await run(e, GenerationRequest(model, [*messages, prefix], seed=seed))
            return tokens[skip:], rest
        finally:
            await e.close()

    return asyncio.run(go())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=_prompts, seed=st.none() | st.integers(-5, 5), k=st.integers(0, 40))
def test_chat_continuation_matches_uninterrupted(prompt: str, seed: int | None, k: int) -> None:
    expected, rest = _continue_sync([ChatMessage("user", prompt)], "deepseek-chat", seed, k,
                                    "content")
    assert rest[:-1] == expected
    assert rest[-1].finish_reason == "stop"
    assert rest[-1].usage is not None and rest[-1].usage.completion_tokens == len(expected)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=_prompts, k=st.integers(0, 40), phase=st.sampled_from(["reasoning", "content"]))
def test_reasoner_continuation_in_both_phases(prompt: str, k: int, phase: str) -> None:
    messages = [ChatMessage("system", "be brief"), ChatMessage("user", prompt)]
    expected, rest = _continue_sync(messages, "deepseek-reasoner", None, k, phase)
    assert rest[:-1] == expected
    usage = rest[-1].usage
    assert usage is not None
    assert usage.reasoning_tokens == sum(1 for d in expected if d.reasoning)


@settings(max_examples=40, deadline=None)
@given(prompt=_prompts, k=st.integers(0, 40), model=st.sampled_from(["deepseek-chat",
                                                                      "deepseek-reasoner"]))
def test_completions_continuation_with_prefix(prompt: str, k: int, model: str) -> None:
    async def go() -> None:
        e = SimulatorEngine(FAST)
        await e.start()
        try:
            full = await run(e, GenerationRequest(model, [], prompt=prompt))
            assert not any(d.reasoning for d in full)  # completions have no reasoning phase
            done = "".join(d.content for d in full[: min(k, len(full) - 1)])
            prefix = [ChatMessage("assistant", done, prefix=True)]
            rest = await run(e, GenerationRequest(model, prefix, prompt=prompt))
            assert rest[:-1] == full[min(k, len(full) - 1) : -1]
        finally:
            await e.close()

    asyncio.run(go())


@settings(max_examples=60, deadline=None)
@given(prompt=_prompts, k=st.integers(1, 40))
def test_completions_continue_when_the_output_is_appended_to_the_prompt(prompt: str,
                                                                        k: int) -> None:
    """What a raw-completions client does: prompt + text so far, no prefix field."""
    async def go() -> None:
        e = SimulatorEngine(FAST)
        await e.start()
        try:
            full = (await run(e, GenerationRequest("deepseek-chat", [], prompt=prompt)))[:-1]
            done = min(k, len(full))
            text = "".join(d.content for d in full[:done])
            rest = await run(e, GenerationRequest("deepseek-chat", [], prompt=prompt + text))
            assert rest[:-1] == full[done:]
        finally:
            await e.close()

    asyncio.run(go())


# -- continuous batching -----------------------------------------------------------------------


async def test_queueing_makes_latency_grow_with_load() -> None:
    cfg = Simulator(decode_ms_per_token=3, prefill_ms_per_token=0, max_num_seqs=2,
                    min_output_tokens=15, max_output_tokens=15)
    e = SimulatorEngine(cfg)
    await e.start()
    try:
        start = time.monotonic()

        async def timed(i: int) -> float:
            await run(e, chat(f"request {i}"))
            return time.monotonic() - start

        tasks = [asyncio.create_task(timed(i)) for i in range(6)]
        await asyncio.sleep(0.01)
        assert e.stats()["running"] == 2 and e.stats()["queued"] == 4
        done = sorted(await asyncio.gather(*tasks))
        # Three waves of two: the last wave waits for the two before it.
        assert done[5] > 2 * done[1]
        assert done[3] > 1.5 * done[1]
        assert e.stats()["tokens_generated"] == 6 * 15
        assert e.stats()["running"] == 0 and e.stats()["queued"] == 0
    finally:
        await e.close()


async def test_queue_full_is_429() -> None:
    e = SimulatorEngine(Simulator(decode_ms_per_token=5, max_num_seqs=1, max_queue=1))
    await e.start()
    try:
        first = asyncio.create_task(run(e, chat("a")))
        second = asyncio.create_task(run(e, chat("b")))
        await asyncio.sleep(0.02)
        with pytest.raises(EngineError) as info:
            await run(e, chat("c"))
        assert info.value.status == 429 and info.value.code == "queue_full"
        first.cancel()
        second.cancel()
        await asyncio.gather(first, second, return_exceptions=True)
        assert e.stats()["running"] == 0 and e.stats()["queued"] == 0
    finally:
        await e.close()


async def test_prefill_delays_the_first_token() -> None:
    e = SimulatorEngine(Simulator(decode_ms_per_token=1, prefill_ms_per_token=0.2))
    await e.start()
    try:
        async def ttft(text: str) -> float:
            t = time.monotonic()
            stream = e.generate(chat(text))
            await anext(stream)
            await stream.aclose()  # type: ignore[attr-defined]
            return time.monotonic() - t

        short = await ttft("short")
        long = await ttft("word " * 500)  # 500 tokens x 0.2 ms = 100 ms of prefill
        assert long > short + 0.08
    finally:
        await e.close()


async def test_abandoned_stream_frees_its_slot() -> None:
    e = SimulatorEngine(Simulator(decode_ms_per_token=2, max_num_seqs=1))
    await e.start()
    try:
        stream = e.generate(chat("abandon me"))
        await anext(stream)
        assert e.stats()["running"] == 1
        await stream.aclose()  # type: ignore[attr-defined]
        assert e.stats()["running"] == 0
        assert (await run(e, chat("next")))[-1].finish_reason == "stop"
    finally:
        await e.close()


# -- injected faults ---------------------------------------------------------------------------


async def test_error_rate_one_fails_before_any_token(engine: SimulatorEngine) -> None:
    faulty = FaultInjector(engine, FailureInjection(error_rate=1.0))
    with pytest.raises(EngineError) as info:
        await run(faulty, chat("x"))
    assert info.value.status == 500
    faulty.faults = FailureInjection()
    assert (await run(faulty, chat("x")))[-1].finish_reason == "stop"


async def test_stall_pauses_after_n_tokens() -> None:
    e = SimulatorEngine(Simulator(decode_ms_per_token=1, min_output_tokens=6,
                                  max_output_tokens=6))
    faulty = FaultInjector(e, FailureInjection(stall_after_tokens=2, stall_seconds=0.3))
    await faulty.start()
    try:
        stamps: list[float] = []
        async for _ in faulty.generate(chat("stall")):
            stamps.append(time.monotonic())
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert gaps[1] >= 0.29  # between token 2 and token 3
        assert max(gaps[:1] + gaps[2:]) < 0.2
    finally:
        await faulty.close()
