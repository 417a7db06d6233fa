"""What a gateway serves on top of relaying: API keys, conversations and usage, on zone stores.

:class:`GatewayProduct` is created with the gateway's hop and gives ``gateway/app.py`` three
hooks: :meth:`~GatewayProduct.admit` (the API key check, against the static keys and this
zone's store), :meth:`~GatewayProduct.proxy` (relaying chat and completions with their usage
recorded) and :meth:`~GatewayProduct.attach` (the ``/v1/responses``, ``/admin/*`` and
``/internal/*`` routes, registered before the catch-all relay route, and the lifecycle).

Its zone-local caches (API keys, stored responses, and the opt-in response cache of
:mod:`.response_cache`) follow this zone store's change feed through one
:class:`~crosszone.storage.cache_follower.ChangeFollower`.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from crosszone.config.placement import Node, Placement
from crosszone.config.topology import CHAT_ROUTE, COMPLETIONS_ROUTE, Topology
from crosszone.dataplane.gateway.admin import INVALIDATE_PATH, AdminApi, KeyRegistry, json_body
from crosszone.dataplane.gateway.keys import KEYS, Authenticator, KeyCache, token_matches
from crosszone.dataplane.gateway.response_cache import (
    CACHE_HEADER,
    RESPONSE_CACHE,
    ResponseCache,
    cache_key,
)
from crosszone.dataplane.gateway.responses import RESPONSES, ConversationStore, ResponsesApi
from crosszone.dataplane.gateway.usage import (
    UsageRecord,
    UsageRecorder,
    UsageTap,
    resent_tokens,
    usage_of_body,
)
from crosszone.dataplane.gateway.workers import WorkerCalls
from crosszone.dataplane.openai_errors import error_response
from crosszone.dataplane.proxy.headers import REQUEST_ID, usage_id
from crosszone.dataplane.proxy.hop import ProxyHop
from crosszone.dataplane.proxy.tap import STREAM_TAP
from crosszone.errors import ApiRequestError, NotAuthenticated, StoreError, UpstreamError
from crosszone.storage.cache import LocalCache
from crosszone.storage.cache_follower import ChangeFollower
from crosszone.storage.client import ZoneStores
from crosszone.storage.failover import FailoverStore

KEY_ID: web.RequestKey[str] = web.RequestKey("crosszone_key_id")
USAGE_APIS = {CHAT_ROUTE: "chat", COMPLETIONS_ROUTE: "completions"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def api_error(exc: Exception) -> web.Response:
    """The OpenAI-style answer for a product, store or upstream error."""
    if isinstance(exc, ApiRequestError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, str(exc), code=exc.code, param=exc.param,
                              headers=headers)
    if isinstance(exc, StoreError):
        return error_response(exc.status, str(exc), code=exc.code)
    if isinstance(exc, UpstreamError):
        return error_response(exc.status, str(exc), code="upstream_error")
    raise exc


class GatewayProduct:
    def __init__(self, topology: Topology, node: Node, hop: ProxyHop) -> None:
        assert node.zone is not None
        zone = self.zone = node.zone
        self.hop = hop
        self.admin_token = topology.auth.admin_token
        self.stores = ZoneStores(topology, zone, source_host=node.host)
        anywhere = FailoverStore(self.stores)  # strong ops wait out a zone's failure elsewhere
        self.cache = KeyCache(topology.auth.key_cache_seconds)
        self.auth = Authenticator(topology.auth.api_keys, anywhere, self.cache)
        self.usage = UsageRecorder(self.stores)
        peers = [gw.url for gw in Placement(topology).gateways() if gw.zone != zone]
        self.registry = KeyRegistry(anywhere, self.cache, peers=peers,
                                    admin_token=self.admin_token, session=self.stores.session)
        self.admin = AdminApi(zone, self.registry, anywhere)
        consistency = topology.conversations.consistency
        conv = topology.cache.conversations
        conversations: LocalCache[dict[str, Any]] = LocalCache(
            RESPONSES, conv.ttl_seconds if conv.enabled else 0.0, max_entries=conv.max_entries,
            follows_feed=consistency == "async")  # sync: every hit is checked (strong read)
        self.responses = ResponsesApi(
            zone, ConversationStore(self.stores, consistency, conversations),
            WorkerCalls(hop.forwarder), self.usage)
        caches: dict[str, LocalCache[Any]] = {KEYS: self.cache, RESPONSES: conversations}
        self.response_cache: ResponseCache | None = None
        answers = topology.cache.responses
        if answers.enabled:
            memory: LocalCache[dict[str, Any]] = LocalCache(
                RESPONSE_CACHE, answers.ttl_seconds, max_entries=answers.max_entries,
                follows_feed=True)
            self.response_cache = ResponseCache(zone, self.stores.local, memory,
                                                answers.ttl_seconds)
            caches[RESPONSE_CACHE] = memory
        self.follower = ChangeFollower(self.stores.local, caches)

    def __repr__(self) -> str:
        return f"GatewayProduct({self.zone}, {self.stores!r}, {self.usage!r})"

    # ------------------------------------------------------------------ hooks for app.py
    async def admit(self, request: web.Request) -> web.Response | None:
        """None when the request's API key is good (its id stored in ``request[KEY_ID]``),
        else the 401 (or 503: the zone's store cannot tell) to answer."""
        try:
            request[KEY_ID] = await self.auth.authenticate(request.headers.get("Authorization"))
        except NotAuthenticated as exc:
            return api_error(exc)
        except StoreError as exc:
            return error_response(503, f"cannot check the API key in zone {self.zone}: {exc}",
                                  code="key_store_unavailable")
        return None

    async def proxy(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """Relay an admitted request; chat and completions get their usage recorded."""
        api = USAGE_APIS.get(request.path)
        if api is None or request.method != "POST":
            return await self.hop.proxy(request, body)
        doc = orjson.loads(body)
        rid = request.headers.get(REQUEST_ID) or uuid.uuid4().hex  # the LB always sets one
        model = doc.get("model") if isinstance(doc.get("model"), str) else ""
        record = UsageRecord(rid, request.get(KEY_ID, ""), str(model), api, self.zone,
                             usage_id=usage_id(request.headers))
        if doc.get("stream") is True:  # never cached
            options = doc.get("stream_options")
            wanted = isinstance(options, dict) and options.get("include_usage") is True
            if not wanted:
                extra = options if isinstance(options, dict) else {}
                body = orjson.dumps({**doc, "stream_options": {**extra, "include_usage": True}})
            request[STREAM_TAP] = UsageTap(self.usage, record, strip=not wanted,
                                           resent=resent_tokens(request.headers))
            return await self.hop.proxy(request, body, rid)
        key = cache_key(api, doc) if self.response_cache is not None else None
        if key is not None and self.response_cache is not None:
            cached = await self.response_cache.lookup(key)
            if cached is not None:
                return await self._cached_answer(request, cached, record, rid)
        response = await self.hop.proxy(request, body, rid)
        if response.status == 200 and isinstance(response, web.Response) \
                and isinstance(response.body, bytes):
            usage = usage_of_body(response.body)
            if usage is not None:
                await self.usage.record(record.with_tokens(usage, resent_tokens(request.headers)))
            if key is not None and self.response_cache is not None:
                await self.response_cache.remember(key, api, record.model, response.body)
        if key is not None:
            response.headers[CACHE_HEADER] = "miss"
        return response

    async def _cached_answer(self, request: web.Request, body: bytes, record: UsageRecord,
                             rid: str) -> web.Response:
        """A response-cache hit: billed as the answer it repeats, no worker asked."""
        usage = usage_of_body(body)
        if usage is not None:
            await self.usage.record(record.with_tokens(usage))
        self.hop.metrics.count_request(request.path, 200)
        return web.Response(body=body, content_type="application/json",
                            headers={REQUEST_ID: rid, CACHE_HEADER: "hit"})

    def attach(self, app: web.Application) -> None:
        """Routes (call before the catch-all ``/v1/{tail}`` route) and lifecycle."""
        add = app.router.add_route
        add("POST", "/v1/responses", self._api(self._create_response))
        add("GET", "/v1/responses/{response_id}", self._api(self.responses.get))
        add("DELETE", "/v1/responses/{response_id}", self._api(self.responses.delete))
        add("POST", "/admin/keys", self._api(self.admin.create_key, admin=True))
        add("GET", "/admin/keys", self._api(self.admin.list_keys, admin=True))
        add("DELETE", "/admin/keys/{key_id}", self._api(self.admin.revoke_key, admin=True))
        add("GET", "/admin/usage", self._api(self.admin.usage, admin=True))
        add("POST", INVALIDATE_PATH, self._api(self.admin.invalidate, admin=True))
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)

    # ------------------------------------------------------------------ internals
    async def _start(self, _: web.Application) -> None:
        self.usage.start()
        self.follower.start()

    async def _stop(self, _: web.Application) -> None:
        await self.follower.stop()
        await self.usage.stop()
        await self.stores.close()

    def _api(self, handler: Handler, *, admin: bool = False) -> Handler:
        """``handler`` behind the admin token or an API key, errors as OpenAI-style JSON."""
        async def wrapped(request: web.Request) -> web.StreamResponse:
            response: web.StreamResponse | None
            try:
                if admin:
                    response = self._check_admin(request)
                else:
                    response = await self.admit(request)
                if response is None:
                    response = await handler(request)
            except (ApiRequestError, StoreError, UpstreamError) as exc:
                response = api_error(exc)
            resource = request.match_info.route.resource
            self.hop.metrics.count_request(resource.canonical if resource else request.path,
                                           response.status)
            return response

        return wrapped

    def _check_admin(self, request: web.Request) -> web.Response | None:
        if token_matches(request.headers.get("Authorization"), self.admin_token):
            return None
        why = ("invalid or missing admin token" if self.admin_token
               else "no admin token is configured (auth.admin_token)")
        return error_response(401, f"{why}; send 'Authorization: Bearer <admin token>'",
                              code="invalid_admin_token", headers={"WWW-Authenticate": "Bearer"})

    async def _create_response(self, request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        rid = request.headers.get(REQUEST_ID) or uuid.uuid4().hex
        return await self.responses.create(request, body, request.get(KEY_ID, ""), rid,
                                           usage_id(request.headers))

