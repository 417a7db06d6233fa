"""Product operations beyond chats: conversation turns, API-key churn, usage totals.

They exist only once the stack offers them (issue 4: ``/v1/responses``, ``/admin/keys``,
``/admin/usage``). :func:`probe_features` asks the load balancer once; a drill then uses what is
there and reports the rest as "not available" — it never fakes an endpoint.

Every operation becomes a :class:`~crosszone.workload.record.RequestRecord` whose ``kind`` names
it, so the drill's failed-request budget and timeline count them with the chats.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import openai

from crosszone.workload.record import Outcome, RequestRecord

FEATURES = ("responses", "keys", "usage")


@dataclass(frozen=True)
class Feature:
    name: str
    available: bool
    detail: str  # what the probe saw

    def to_json(self) -> dict[str, object]:
        return {"available": self.available, "detail": self.detail}


def lb_root(base_url: str) -> str:
    """``http://host:port/v1`` -> ``http://host:port``."""
    return base_url.rstrip("/").removesuffix("/v1")


def probe_features(base_url: str, api_key: str, admin_token: str | None, *,
                   model: str = "deepseek-chat", verify: bool | str = True,
                   timeout: float = 5.0) -> dict[str, Feature]:
    """Ask the LB once whether each product endpoint exists (HTTP 200 means it does)."""
    root = lb_root(base_url)
    admin = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
    probes: dict[str, tuple[str, str, dict[str, str], Any]] = {
        "responses": ("POST", "/v1/responses", {"Authorization": f"Bearer {api_key}"},
                      {"model": model, "input": "ping", "store": False,
                       "max_output_tokens": 4}),
        "keys": ("GET", "/admin/keys", admin, None),
        "usage": ("GET", "/admin/usage", admin, None),
    }
    out: dict[str, Feature] = {}
    with httpx.Client(verify=verify, timeout=timeout) as http:
        for name, (method, path, headers, body) in probes.items():
            if name != "responses" and not admin_token:
                out[name] = Feature(name, False, "the topology has no admin token")
                continue
            try:
                resp = http.request(method, root + path, headers=headers, json=body)
            except httpx.HTTPError as exc:
                out[name] = Feature(name, False, f"{method} {path}: {type(exc).__name__}")
                continue
            ok = resp.status_code == 200
            out[name] = Feature(name, ok, f"{method} {path}: HTTP {resp.status_code}")
    return out


def _find(doc: Any, *names: str) -> str | None:
    """The first string field named one of ``names``, at the top or one level down."""
    if not isinstance(doc, Mapping):
        return None
    for name in names:
        value = doc.get(name)
        if isinstance(value, str) and value:
            return value
    for value in doc.values():
        found = _find(value, *names) if isinstance(value, Mapping) else None
        if found:
            return found
    return None


class ProductOps:
    """Conversation turns and key churn against the endpoints that :func:`probe_features` found."""

    def __init__(self, features: Mapping[str, Feature], *, base_url: str,
                 admin_token: str | None, model: str, max_tokens: int,
                 now: Callable[[], float], seed: int = 11) -> None:
        self.features = dict(features)
        self.root = lb_root(base_url)
        self.admin_token = admin_token
        self.model = model
        self.max_tokens = max_tokens
        self.now = now
        self.conversations: list[str] = []
        self._rng = random.Random(seed)

    def has(self, name: str) -> bool:
        feature = self.features.get(name)
        return feature is not None and feature.available

    # --- conversations ---------------------------------------------------------------------------

    async def conversation_turn(self, client: openai.AsyncOpenAI, n: int) -> RequestRecord:
        """Continue a conversation (or start one): ``previous_response_id`` across zones."""
        previous = (self._rng.choice(self.conversations)
                    if self.conversations and self._rng.random() < 0.7 else None)
        start = self.now()
        zone: str | None = None
        try:
            raw = await client.responses.with_raw_response.create(
                model=self.model, input=f"Turn {n}: tell me more.",
                previous_response_id=previous if previous is not None else openai.omit,
                max_output_tokens=self.max_tokens)
            zone = raw.headers.get("x-crosszone-zone")
            response = raw.parse()
            ok = bool(response.output_text)
            if ok:
                if previous in self.conversations:
                    self.conversations.remove(previous)
                self.conversations = [*self.conversations[-31:], response.id]
            return RequestRecord(start, self.now(), False, Outcome.OK if ok else Outcome.FAILED,
                                 zone, 1, None if ok else "empty response", kind="response")
        except openai.APIError as exc:
            return RequestRecord(start, self.now(), False, Outcome.FAILED, zone, 1,
                                 f"{type(exc).__name__}: {exc}"[:300], kind="response")

    # --- API keys --------------------------------------------------------------------------------

    def _admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"} if self.admin_token else {}

    async def key_churn(self, http: httpx.AsyncClient) -> list[RequestRecord]:
        """Create a key, use it, revoke it, and check the revoked key is refused."""
        records: list[RequestRecord] = []
        start = self.now()
        created = await self._call(http, "POST", "/admin/keys", "key-create",
                                   {"name": f"drill-{secrets.token_hex(4)}"})
        records.append(created[0])
        doc = created[1]
        key, key_id = _find(doc, "key", "api_key", "secret"), _find(doc, "id", "key_id")
        if created[0].outcome is not Outcome.OK or key is None or key_id is None:
            if created[0].outcome is Outcome.OK:
                records[-1] = RequestRecord(start, self.now(), False, Outcome.FAILED, None, 1,
                                            f"no key/id in {str(doc)[:200]}", kind="key-create")
            return records
        records.append((await self._chat_with(http, key, "key-use"))[0])
        revoked = await self._call(http, "DELETE", f"/admin/keys/{key_id}", "key-revoke", None)
        records.append(revoked[0])
        if revoked[0].outcome is Outcome.OK:
            records.append(await self._revoked_refused(http, key))
        return records

    async def _call(self, http: httpx.AsyncClient, method: str, path: str, kind: str,
                    body: Any) -> tuple[RequestRecord, Any]:
        start = self.now()
        try:
            resp = await http.request(method, self.root + path, headers=self._admin(), json=body)
        except httpx.HTTPError as exc:
            return RequestRecord(start, self.now(), False, Outcome.FAILED, None, 1,
                                 f"{type(exc).__name__}: {exc}"[:300], kind=kind), None
        ok = 200 <= resp.status_code < 300
        try:
            doc = resp.json()
        except ValueError:
            doc = None
        return RequestRecord(start, self.now(), False, Outcome.OK if ok else Outcome.FAILED,
                             resp.headers.get("x-crosszone-zone"), 1,
                             None if ok else f"HTTP {resp.status_code}: {str(doc)[:200]}",
                             kind=kind), doc

    async def _chat_with(self, http: httpx.AsyncClient, key: str, kind: str
                         ) -> tuple[RequestRecord, int | None]:
        start = self.now()
        body = {"model": self.model, "max_tokens": 4,
                "messages": [{"role": "user", "content": "key check"}]}
        try:
            resp = await http.post(self.root + "/v1/chat/completions", json=body,
                                   headers={"Authorization": f"Bearer {key}"})
        except httpx.HTTPError as exc:
            return RequestRecord(start, self.now(), False, Outcome.FAILED, None, 1,
                                 f"{type(exc).__name__}: {exc}"[:300], kind=kind), None
        ok = resp.status_code == 200
        return RequestRecord(start, self.now(), False, Outcome.OK if ok else Outcome.FAILED,
                             resp.headers.get("x-crosszone-zone"), 1,
                             None if ok else f"HTTP {resp.status_code}", kind=kind), \
            resp.status_code

    async def _revoked_refused(self, http: httpx.AsyncClient, key: str) -> RequestRecord:
        """A revocation is in effect everywhere once its call returned: expect 401 at once."""
        record, status = await self._chat_with(http, key, "revoked-key")
        if status == 401:
            return RequestRecord(record.start, record.end, False, Outcome.OK, record.zone,
                                 kind="revoked-key")
        why = "revoked key still accepted" if status == 200 else (record.error or "no answer")
        return RequestRecord(record.start, record.end, False, Outcome.FAILED, record.zone, 1,
                             why, kind="revoked-key")

    # --- usage -----------------------------------------------------------------------------------

    async def usage_totals(self) -> Any:
        """``GET /admin/usage`` as the stack answers it (None when unreachable)."""
        try:
            async with httpx.AsyncClient(timeout=5.0) as http:
                resp = await http.get(self.root + "/admin/usage", headers=self._admin())
            return resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None


async def sleep_until(now: Callable[[], float], at: float, stop: asyncio.Event) -> bool:
    """Sleep until ``now() >= at``; False if ``stop`` was set first."""
    delay = at - now()
    if delay <= 0:
        return not stop.is_set()
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay)
    except TimeoutError:
        return True
    return False

