"""The store service of one zone: its ZoneStore over HTTP, plus the zone's background shippers
(DataReplicator) and 2PC coordinator/resolver (CrossZoneTransaction).

Shipping and 2PC cross zones only through these services (``http://127.0.N.6:7000`` locally),
so a fault on a zone's subnet cuts that zone off exactly as it would a real one.

Endpoints (JSON in and out; errors as OpenAI-style error bodies whose ``code`` names the
StoreError subclass):

=================================  ==========================================================
``GET /health``                    store reachable, lease, backend (503 while a store run
                                   under a control plane holds no lease: not in service)
``GET /kv/{collection}/{key}``     one record (``consistency=async|strong``)
``PUT /kv/{collection}/{key}``     ``{"value": ...}``; ``consistency=strong`` runs 2PC
``DELETE /kv/{collection}/{key}``  tombstone; same consistency choice
``GET /kv/{collection}``           scan: ``prefix``, ``after``, ``limit``, ``consistency``
``POST /kv``                       ``{"writes": [...], "consistency": ...}`` atomic multi-write
``POST /replication/apply``        a Batch from another zone's shipper -> Ack
``POST /replication/snapshot``     a Snapshot -> Ack
``GET /replication/lag``           lag per (this zone, destination); ``?samples=1`` adds recent
                                   commit-to-ack delays
``POST /tx/prepare|commit|rollback|decision``, ``GET /tx/prepared``: 2PC participant
``POST /lease``                    ``{"epoch": N, "held": true|false, "ttl": s}``: grant
                                   (lapsing after ``ttl`` unless renewed) / revoke; answers
                                   the membership status below
``GET /membership``                lease, seconds left of it, zones in service, lag per
                                   destination (what the controller's leader observes)
``POST /membership``               ``{"zones": [...], "epoch": N}``: zones in service (2PC)
``GET /metrics``                   Prometheus: replication lag per zone pair, prepared (in-doubt)
                                   transactions, outbox bounds
``GET /changes``                   the change feed (:mod:`~crosszone.storage.changes`):
                                   ``epoch``, ``after``, ``wait`` (long-poll, seconds),
                                   ``limit`` -> ``{"epoch", "seq", "reset", "changes": [{"seq",
                                   "collection", "key", "hlc", "origin"}]}``
``GET /versions/{coll}/{key}``     a record's version only, ``consistency`` as for ``/kv``:
                                   ``{"hlc", "origin", "deleted"}`` (404: never written)
=================================  ==========================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from crosszone.config import Node, Topology
from crosszone.dataplane.openai_errors import error_middleware, error_response
from crosszone.errors import Fenced, StoreError, StoreUnavailable
from crosszone.replication.http import HttpPeer
from crosszone.replication.peers import LocalPeer, TxParticipant
from crosszone.replication.shipper import DataReplicator
from crosszone.replication.transaction import CrossZoneTransaction, Failpoint
from crosszone.storage.base import ZoneStore
from crosszone.storage.changes import ChangeFeed
from crosszone.storage.records import Batch, Record, Snapshot, Write

STORE_HOST = 6
STORE_PORT = 7000
MAX_BODY = 512 * 1024 * 1024  # snapshots travel in one body

log = logging.getLogger("crosszone.store")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STORE: web.AppKey[ZoneStore] = web.AppKey("store", ZoneStore)
REPLICATOR: web.AppKey[DataReplicator] = web.AppKey("replicator", DataReplicator)
COORDINATOR: web.AppKey[CrossZoneTransaction] = web.AppKey("coordinator",
                                                           CrossZoneTransaction)
CHANGES: web.AppKey[ChangeFeed] = web.AppKey("changes", ChangeFeed)
MAX_FEED_WAIT = 30.0


def store_url(topology: Topology, zone: str) -> str:
    """Where ``zone``'s store service listens: host .6 of its subnet, port 7000 (or the
    topology's ``storage.port`` once the topology has a storage section)."""
    net = ipaddress.IPv4Network(topology.zone(zone).subnet, strict=False)
    port = getattr(getattr(topology, "storage", None), "port", STORE_PORT)
    return f"http://{net.network_address + STORE_HOST}:{port}"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _body(request: web.Request) -> Any:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(reason=f"body is not JSON: {exc}") from exc


@web.middleware
async def store_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except StoreError as exc:
        return error_response(exc.status, str(exc), code=exc.code)
    except (KeyError, TypeError, ValueError) as exc:
        return error_response(400, f"bad request: {type(exc).__name__} {exc}",
                              code="invalid_request")


def _strong(request: web.Request, body: Any = None) -> bool:
    value = request.query.get("consistency") or (body or {}).get("consistency") or "async"
    if value not in ("async", "strong"):
        raise ValueError(f"consistency must be async or strong, not {value!r}")
    return bool(value == "strong")


def create_store_app(topology: Topology, node: Node, store: ZoneStore, *,
                     peers: Mapping[str, str] | None = None,
                     membership: Callable[[], Iterable[str]] | None = None,
                     resolve_every: float = 1.0, failpoint: Failpoint | None = None,
                     prepare_timeout: float = 2.0, keep_max: int = 200_000,
                     trim_every: float = 5.0, await_lease: bool = False) -> web.Application:
    """The store service of ``node.zone``. ``peers`` overrides other zones' URLs (default
    :func:`store_url`). The store is opened on startup and closed on cleanup.

    ``await_lease``: the store runs under a control plane (the stack's controllers): it holds
    no lease after a start, whatever it held before, until the leader grants one -- after the
    zone has caught up -- and renews it (:mod:`crosszone.control.stores`)."""
    zone = node.zone or store.zone
    urls = dict(peers or {z: store_url(topology, z) for z in topology.zone_names()})
    urls.pop(zone, None)
    source = node.host if peers is None else None  # test peers may live elsewhere
    remote = {z: HttpPeer(z, url, source_host=source) for z, url in urls.items()}
    participants: dict[str, TxParticipant] = {zone: LocalPeer(store), **remote}
    in_service: list[str] = list(topology.zone_names())
    coordinator = CrossZoneTransaction(store, participants,
                                       membership=membership or (lambda: in_service),
                                       prepare_timeout=prepare_timeout, failpoint=failpoint)
    replicator = DataReplicator(store, remote, keep_max=keep_max, trim_every=trim_every)
    app = web.Application(middlewares=[error_middleware, store_errors], client_max_size=MAX_BODY)
    app[STORE], app[REPLICATOR], app[COORDINATOR] = store, replicator, coordinator
    feed = app[CHANGES] = ChangeFeed(store)
    tasks: list[asyncio.Task[None]] = []

    async def resolver() -> None:
        log.info("%s", await coordinator.recover_until_clean())
        while True:
            await asyncio.sleep(resolve_every)
            try:
                said = await coordinator.run_cycle()
            except StoreError as exc:
                said = f"recovery failed: {exc}"
            if "0 in-doubt transaction(s) committed, 0 rolled back" not in said:
                log.info("%s", said)

    async def startup(app: web.Application) -> None:
        if not store.is_open:
            await store.open()
        if await_lease:
            store.await_grant()
        replicator.start()
        tasks.append(asyncio.create_task(resolver(), name="2pc-resolver"))
        tasks.append(asyncio.create_task(feed.run(), name="change-feed"))

    async def shutdown(app: web.Application) -> None:
        feed.close()  # long-polls answer now instead of holding the shutdown

    async def cleanup(app: web.Application) -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, StoreError):
                await task
        await replicator.stop()
        for peer in remote.values():
            await peer.close()
        await store.close()

    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    app.on_cleanup.append(cleanup)

    # ------------------------------------------------------------ key-value
    async def get_one(request: web.Request) -> web.Response:
        c, k = request.match_info["collection"], request.match_info["key"]
        record = await store.get(c, k, strong=_strong(request))
        if record is None:
            return error_response(404, f"no record {c}/{k}", code="not_found")
        return _json(record.to_json())

    async def write(request: web.Request, writes: list[Write], strong: bool) -> web.Response:
        if strong:
            outcome = await coordinator.execute(writes)
            return _json({"records": [r.to_json() for r in outcome.records],
                          "txid": outcome.txid, "zones": outcome.participants,
                          "pending": outcome.pending})
        records = await store.write(writes)
        return _json({"records": [r.to_json() for r in records]})

    async def put_one(request: web.Request) -> web.Response:
        body = await _body(request)
        w = Write.put(request.match_info["collection"], request.match_info["key"], body["value"])
        return await write(request, [w], _strong(request, body))

    async def delete_one(request: web.Request) -> web.Response:
        w = Write.remove(request.match_info["collection"], request.match_info["key"])
        return await write(request, [w], _strong(request))

    async def write_many(request: web.Request) -> web.Response:
        body = await _body(request)
        return await write(request, [Write.from_json(w) for w in body["writes"]],
                           _strong(request, body))

    async def scan(request: web.Request) -> web.Response:
        q = request.query
        limit = min(int(q.get("limit", "1000")), 10_000)
        records = await store.scan(request.match_info["collection"], prefix=q.get("prefix", ""),
                                   after=q.get("after", ""), limit=limit,
                                   include_deleted=q.get("include_deleted") == "1",
                                   strong=_strong(request))
        nxt = records[-1].key if len(records) == limit else None
        return _json({"records": [r.to_json() for r in records], "next": nxt})

    async def version(request: web.Request) -> web.Response:
        c, k = request.match_info["collection"], request.match_info["key"]
        record = await store.get(c, k, strong=_strong(request), include_deleted=True)
        if record is None:
            return error_response(404, f"no record {c}/{k}", code="not_found")
        return _json({"hlc": record.hlc, "origin": record.origin, "deleted": record.deleted})

    async def changes(request: web.Request) -> web.Response:
        q = request.query
        after = q.get("after")
        answer = await feed.since(q.get("epoch"), None if after is None else int(after),
                                  wait=min(max(float(q.get("wait", "0")), 0.0), MAX_FEED_WAIT),
                                  limit=min(max(int(q.get("limit", "5000")), 1), 20_000))
        return _json(answer.to_json())

    # ------------------------------------------------------------ replication
    async def apply(request: web.Request) -> web.Response:
        return _json((await store.apply(Batch.from_json(await _body(request)))).to_json())

    async def snapshot(request: web.Request) -> web.Response:
        ack = await store.import_snapshot(Snapshot.from_json(await _body(request)))
        feed.reset("snapshot imported")  # it changes records without outbox entries
        return _json(ack.to_json())

    async def lag(request: web.Request) -> web.Response:
        data: dict[str, Any] = {"zone": zone, "lag": [x.to_json() for x in
                                                     await replicator.lag()]}
        if request.query.get("samples") == "1":
            data["samples"] = replicator.lag_samples()
        return _json(data)

    # ------------------------------------------------------------ 2PC participant
    async def prepare(request: web.Request) -> web.Response:
        body = await _body(request)
        await store.prepare(str(body["txid"]), [Record.from_json(r) for r in body["records"]],
                            int(body["token"]))
        return _json({"vote": "yes"})

    async def commit(request: web.Request) -> web.Response:
        body = await _body(request)
        return _json({"done": await store.commit_prepared(str(body["txid"]),
                                                          int(body["token"]))})

    async def rollback(request: web.Request) -> web.Response:
        body = await _body(request)
        return _json({"done": await store.rollback_prepared(str(body["txid"]))})

    async def prepared(request: web.Request) -> web.Response:
        return _json({"prepared": [p.to_json() for p in await store.list_prepared()]})

    async def decision(request: web.Request) -> web.Response:
        body = await _body(request)
        wanted = body.get("decision")
        if wanted not in ("commit", "abort"):
            recorded = await store.decision(str(body["txid"]))
        else:
            recorded = await store.decide(str(body["txid"]), wanted)
        return _json({"txid": body["txid"], "decision": recorded})

    # ------------------------------------------------------------ control
    async def health(request: web.Request) -> web.Response:
        try:
            floor, head = await store.outbox_bounds()
        except StoreError as exc:
            raise StoreUnavailable(f"zone {zone} store not answering: {exc}") from exc
        if store.lease is None and await_lease:  # code "fenced": clients raise Fenced
            return error_response(503, f"zone {zone} store holds no lease: not in service "
                                  "for strong operations", code=Fenced.code)
        return _json({"status": "ok", "zone": zone, "backend": store.backend,
                      "lease": store.lease, "outbox": {"floor": floor, "head": head}})

    async def status() -> web.Response:
        lags = await replicator.lag()
        return _json({"zone": zone, "lease": store.lease, "max_token": store.max_token,
                      "lease_remaining": store.lease_remaining, "zones": in_service,
                      "lag": [x.to_json() for x in lags]})

    async def lease(request: web.Request) -> web.Response:
        body = await _body(request)
        ttl = body.get("ttl")
        await store.set_lease(int(body["epoch"]), held=bool(body.get("held", True)),
                              ttl=None if ttl is None else float(ttl))
        return await status()

    async def get_membership(request: web.Request) -> web.Response:
        return await status()

    async def set_membership(request: web.Request) -> web.Response:
        body = await _body(request)
        if int(body.get("epoch", store.max_token)) < store.max_token:
            raise Fenced(f"membership from a stale controller (epoch {body['epoch']} < "
                         f"{store.max_token})")
        zones = [str(z) for z in body["zones"]]
        if zones != in_service:
            log.info("zone %s: zones in service for strong writes: %s -> %s", zone,
                     ",".join(in_service), ",".join(zones))
        in_service[:] = zones
        return await status()

    # ------------------------------------------------------------ metrics
    registry = CollectorRegistry(auto_describe=True)
    pair = ["zone", "peer_zone"]
    lag_seconds = Gauge("crosszone_store_replication_lag_seconds",
                        "Age of the oldest write the peer zone has not acknowledged", pair,
                        registry=registry)
    lag_records = Gauge("crosszone_store_replication_lag_records",
                        "Writes the peer zone has not acknowledged", pair, registry=registry)
    prepared_count = Gauge("crosszone_store_prepared_transactions",
                           "Prepared (in-doubt) 2PC transactions", ["zone"], registry=registry)
    prepared_age = Gauge("crosszone_store_prepared_oldest_age_seconds",
                         "Age of the oldest prepared 2PC transaction", ["zone"],
                         registry=registry)
    outbox = Gauge("crosszone_store_outbox_sequence", "Outbox bounds (floor: oldest kept)",
                   ["zone", "bound"], registry=registry)

    async def metrics(request: web.Request) -> web.Response:
        for x in await replicator.lag():
            lag_seconds.labels(x.origin, x.destination).set(x.seconds)
            lag_records.labels(x.origin, x.destination).set(x.records)
        prepared_now = await store.list_prepared()
        prepared_count.labels(zone).set(len(prepared_now))
        oldest = min((p.prepared_at for p in prepared_now), default=None)
        prepared_age.labels(zone).set(0.0 if oldest is None else max(0.0, time.time() - oldest))
        floor, head = await store.outbox_bounds()
        outbox.labels(zone, "floor").set(floor)
        outbox.labels(zone, "head").set(head)
        return web.Response(body=generate_latest(registry),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/kv/{collection}/{key:.+}", get_one)
    app.router.add_put("/kv/{collection}/{key:.+}", put_one)
    app.router.add_delete("/kv/{collection}/{key:.+}", delete_one)
    app.router.add_get("/kv/{collection}", scan)
    app.router.add_get("/versions/{collection}/{key:.+}", version)
    app.router.add_get("/changes", changes)
    app.router.add_post("/kv", write_many)
    app.router.add_post("/replication/apply", apply)
    app.router.add_post("/replication/snapshot", snapshot)
    app.router.add_get("/replication/lag", lag)
    app.router.add_post("/tx/prepare", prepare)
    app.router.add_post("/tx/commit", commit)
    app.router.add_post("/tx/rollback", rollback)
    app.router.add_get("/tx/prepared", prepared)
    app.router.add_post("/tx/decision", decision)
    app.router.add_post("/lease", lease)
    app.router.add_get("/membership", get_membership)
    app.router.add_post("/membership", set_membership)
    return app
