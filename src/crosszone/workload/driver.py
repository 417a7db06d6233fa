"""A bounded chat workload through the load balancer, using the official ``openai`` client.

The client's own retries are off (``max_retries=0``): every failure counted here is one that
crosszone let through, not one the SDK papered over.

Closed loop by default (each of ``concurrency`` loops sends its next request when the last one
ended); with ``rate`` the loops share one schedule of ``rate`` request starts per second (open
loop, bounded by ``concurrency``). Drills add product operations through
:class:`~crosszone.workload.product.ProductOps`: a ``conversation_ratio`` share of the requests
are conversation turns, and every ``key_churn_seconds`` an API key is created, used and revoked.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from crosszone.workload.product import ProductOps, sleep_until
from crosszone.workload.record import Outcome, RequestRecord, Timeline

PROMPTS = [
    "Explain cross-zone failover in one paragraph.",
    "What is a two-phase commit?",
    "Summarise the CAP theorem.",
    "Why do health checks need thresholds?",
    "Describe a load balancer's panic mode.",
]


@dataclass(frozen=True)
class WorkloadConfig:
    base_url: str
    api_key: str
    concurrency: int = 8
    duration_seconds: float = 30.0
    max_requests: int = 100_000  # a hard bound, whatever the duration
    stream_ratio: float = 0.25
    max_tokens: int = 32
    model: str = "deepseek-chat"
    ca_cert: str | None = None
    request_timeout: float = 30.0
    rate: float | None = None  # request starts per second (open loop); None: closed loop
    conversation_ratio: float = 0.0  # share of requests that are conversation turns
    key_churn_seconds: float | None = None  # create/use/revoke a key this often


class ChatWorkload:
    """Runs ``concurrency`` client loops until the duration or the request bound is reached."""

    def __init__(self, config: WorkloadConfig, timeline: Timeline | None = None, *,
                 origin: float | None = None, product: ProductOps | None = None) -> None:
        self.config = config
        self.timeline = timeline or Timeline()
        self.origin = origin  # time.monotonic() of t = 0 (default: when run() starts)
        self.product = product
        self._t0 = origin or 0.0
        self._sent = 0
        self._stop = asyncio.Event()
        self._rng = random.Random(7)

    def now(self) -> float:
        return time.monotonic() - self._t0

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> Timeline:
        verify: bool | str = self.config.ca_cert or True
        # The SDK's own client class: its httpx flavour differs between openai releases.
        async with openai.DefaultAsyncHttpxClient(verify=verify,
                                                  timeout=self.config.request_timeout) as http:
            client = openai.AsyncOpenAI(base_url=self.config.base_url, api_key=self.config.api_key,
                                        max_retries=0, http_client=http)
            self._t0 = self.origin if self.origin is not None else time.monotonic()
            loops = [asyncio.create_task(self._loop(client, i))
                     for i in range(self.config.concurrency)]
            if self.product is not None and self.product.has("keys") \
                    and self.config.key_churn_seconds:
                loops.append(asyncio.create_task(self._churn_keys(verify)))
            await asyncio.gather(*loops)
        return self.timeline

    async def _churn_keys(self, verify: bool | str) -> None:
        assert self.product is not None and self.config.key_churn_seconds
        every = self.config.key_churn_seconds
        at = every
        async with httpx.AsyncClient(verify=verify, timeout=self.config.request_timeout) as http:
            while at < self.config.duration_seconds and await sleep_until(self.now, at,
                                                                          self._stop):
                for record in await self.product.key_churn(http):
                    self.timeline.add(record)
                at += every

    async def _loop(self, client: openai.AsyncOpenAI, loop_index: int) -> None:
        deadline = self.config.duration_seconds
        while not self._stop.is_set() and self.now() < deadline:
            if self._sent >= self.config.max_requests:
                return
            self._sent += 1
            n = self._sent
            if self.config.rate and not await sleep_until(self.now, (n - 1) / self.config.rate,
                                                          self._stop):
                return
            if self.now() >= deadline:
                return
            if self.product is not None and self.product.has("responses") \
                    and self._rng.random() < self.config.conversation_ratio:
                self.timeline.add(await self.product.conversation_turn(client, n))
                continue
            stream = self._rng.random() < self.config.stream_ratio
            prompt = f"{PROMPTS[n % len(PROMPTS)]} (#{n})"
            self.timeline.add(await self.one(client, prompt, stream))

    async def one(self, client: openai.AsyncOpenAI, prompt: str, stream: bool) -> RequestRecord:
        start = self.now()
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": prompt}]
        zone: str | None = None
        attempts = 1
        try:
            if stream:
                raw = await client.chat.completions.with_raw_response.create(
                    model=self.config.model, messages=messages,
                    max_tokens=self.config.max_tokens, stream=True,
                    stream_options={"include_usage": True})
                zone, attempts = _served_by(raw.headers)
                finished = False
                async for chunk in raw.parse():
                    if chunk.choices and chunk.choices[0].finish_reason:
                        finished = True
                outcome = Outcome.OK if finished else Outcome.CUT
                return RequestRecord(start, self.now(), True, outcome, zone, attempts,
                                     None if finished else "stream ended without finish_reason")
            plain = await client.chat.completions.with_raw_response.create(
                model=self.config.model, messages=messages,
                max_tokens=self.config.max_tokens)
            zone, attempts = _served_by(plain.headers)
            completion = plain.parse()
            ok = bool(completion.choices and completion.choices[0].message.content)
            return RequestRecord(start, self.now(), False, Outcome.OK if ok else Outcome.FAILED,
                                 zone, attempts, None if ok else "empty completion")
        except openai.APIError as exc:
            # An error event inside a stream arrives as APIError after some chunks.
            outcome = Outcome.CUT if stream and zone is not None else Outcome.FAILED
            return RequestRecord(start, self.now(), stream, outcome, zone, attempts,
                                 f"{type(exc).__name__}: {exc}"[:300])


def _served_by(headers: Mapping[str, str]) -> tuple[str | None, int]:
    """Which zone served, and how many tries it took in all (LB tries x gateway tries)."""
    tries = 1
    for name in ("x-crosszone-lb-attempts", "x-crosszone-attempts"):
        try:
            tries += max(int(headers.get(name, "1")) - 1, 0)
        except ValueError:
            continue
    return headers.get("x-crosszone-zone"), tries
