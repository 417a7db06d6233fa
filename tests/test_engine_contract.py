"""One contract, every engine: the simulator, and the upstream engine in front of a real
simulator worker (in each continuation mode a simulator worker understands).

Expected outputs come from a reference simulator with the same settings, so the upstream engine
must reproduce the simulator token for token, usage included.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from crosszone.config import parse_topology
from crosszone.config.load import default_document
from crosszone.config.topology import Upstream
from crosszone.dataplane.engines.base import ChatMessage, Delta, GenerationRequest, InferenceEngine
from crosszone.dataplane.engines.simulator import SimulatorEngine
from crosszone.dataplane.engines.upstream import UpstreamEngine
from crosszone.dataplane.worker.local import serve_worker
from crosszone.errors import EngineError

HOST = "127.0.101.11"


def _document() -> dict[str, Any]:
    doc: dict[str, Any] = default_document()
    doc["inference"]["simulator"].update({"decode_ms_per_token": 0, "prefill_ms_per_token": 0,
                                          "reasoning_tokens": 5, "min_output_tokens": 6,
                                          "max_output_tokens": 24, "seed": 11})
    return doc


TOPOLOGY = parse_topology(_document())


@pytest.fixture(params=["simulator", "upstream-deepseek-prefix", "upstream-vllm-continue"])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[InferenceEngine]:
    kind: str = request.param
    if kind == "simulator":
        sim = SimulatorEngine(TOPOLOGY.inference.simulator)
        await sim.start()
        yield sim
        await sim.close()
        return
    mode = kind.removeprefix("upstream-")
    async with serve_worker(TOPOLOGY, HOST) as url:
        up = UpstreamEngine(Upstream(base_url=url + "/v1", continuation=mode))  # type: ignore[arg-type]
        await up.start()
        yield up
        await up.close()


@pytest.fixture
async def reference() -> AsyncIterator[SimulatorEngine]:
    sim = SimulatorEngine(TOPOLOGY.inference.simulator)
    await sim.start()
    yield sim
    await sim.close()


async def collect(engine: InferenceEngine, request: GenerationRequest) -> list[Delta]:
    return [d async for d in engine.generate(request)]


def check_shape(deltas: list[Delta]) -> None:
    """Text deltas (reasoning before content), then exactly one final delta with usage."""
    *tokens, final = deltas
    assert final.finish_reason in ("stop", "length") and final.usage is not None
    assert all(d.finish_reason is None and d.usage is None for d in tokens)
    assert all(bool(d.content) != bool(d.reasoning) for d in tokens)
    kinds = [bool(d.reasoning) for d in tokens]
    assert kinds == sorted(kinds, reverse=True)
    assert final.usage.completion_tokens == len(tokens)
    assert final.usage.reasoning_tokens == sum(kinds)


def chat(model: str, *extra: ChatMessage, **kw: Any) -> GenerationRequest:
    return GenerationRequest(model, [ChatMessage("system", "you are terse"),
                                     ChatMessage("user", "tell me something"), *extra], **kw)


async def test_serves_both_models(engine: InferenceEngine) -> None:
    assert set(engine.models()) >= {"deepseek-chat", "deepseek-reasoner"}


@pytest.mark.parametrize("model", ["deepseek-chat", "deepseek-reasoner"])
async def test_output_matches_the_reference(engine: InferenceEngine, reference: SimulatorEngine,
                                            model: str) -> None:
    for seed in (None, 1):
        got = await collect(engine, chat(model, seed=seed))
        check_shape(got)
        assert got == await collect(reference, chat(model, seed=seed))


async def test_max_tokens_gives_length(engine: InferenceEngine) -> None:
    got = await collect(engine, chat("deepseek-reasoner", max_tokens=7))
    check_shape(got)
    assert got[-1].finish_reason == "length" and len(got) == 8
    assert got[-1].usage is not None and got[-1].usage.reasoning_tokens == 5


async def test_chat_prefix_continuation(engine: InferenceEngine,
                                        reference: SimulatorEngine) -> None:
    full = (await collect(reference, chat("deepseek-chat")))[:-1]
    for k in (0, 1, 3, len(full) - 1, len(full)):
        prefix = ChatMessage("assistant", "".join(d.content for d in full[:k]), prefix=True)
        got = await collect(engine, chat("deepseek-chat", prefix))
        check_shape(got)
        assert got[:-1] == full[k:]
        assert got[-1].finish_reason == "stop"


async def test_reasoner_continuation_in_both_phases(engine: InferenceEngine,
                                                    reference: SimulatorEngine) -> None:
    full = (await collect(reference, chat("deepseek-reasoner")))[:-1]
    reasoning = [d.reasoning for d in full if d.reasoning]
    content = [d.content for d in full if d.content]
    for k in (1, 4):  # inside the reasoning phase
        prefix = ChatMessage("assistant", "", "".join(reasoning[:k]), prefix=True)
        got = await collect(engine, chat("deepseek-reasoner", prefix))
        assert got[:-1] == full[k:]
    for k in (0, 2):  # reasoning done, inside the content phase
        prefix = ChatMessage("assistant", "".join(content[:k]), "".join(reasoning), prefix=True)
        got = await collect(engine, chat("deepseek-reasoner", prefix))
        assert got[:-1] == full[len(reasoning) + k:]


async def test_completions(engine: InferenceEngine, reference: SimulatorEngine) -> None:
    request = GenerationRequest("deepseek-chat", [], prompt="Once upon a time", max_tokens=5)
    got = await collect(engine, request)
    check_shape(got)
    assert got == await collect(reference, request)


async def test_completions_continuation(engine: InferenceEngine,
                                        reference: SimulatorEngine) -> None:
    # Through the upstream engine's "completions" mode the prefix is appended to the prompt, as
    # any raw-completions client would do; the simulator continues its own sequence either way.
    full = (await collect(reference, GenerationRequest("deepseek-chat", [], prompt="p")))[:-1]
    done = "".join(d.content for d in full[:3])
    got = await collect(engine, GenerationRequest(
        "deepseek-chat", [ChatMessage("assistant", done, prefix=True)], prompt="p"))
    assert got[:-1] == full[3:]


async def test_unknown_model_is_an_engine_error(engine: InferenceEngine) -> None:
    with pytest.raises(EngineError) as info:
        await collect(engine, chat("no-such-model"))
    assert info.value.status == 404
