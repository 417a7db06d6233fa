"""The controller's HTTP API on ``<controller host>:<control.api_port>``.

Any controller answers (leader or not); writes go to the coordination store, so the leader
sees them on its next cycle. Mutating routes need ``Authorization: Bearer <auth.admin_token>``
when the topology sets one. Errors are OpenAI-style JSON, never a traceback.

* ``GET  /control/health``  -- liveness
* ``GET  /control/status``  -- leader/term, zone health (and each zone's gray-failure window),
  routing, shifts, last sentence
* ``GET  /control/shifts`` / ``POST /control/shifts`` ``{"zone", "expires", "reason"}``
* ``DELETE /control/shifts/{id or zone}``
* ``GET  /control/scaling`` -- every zone's desired capacity (what the supervisors run), with
  its bounds, reason, operator setting and ``version`` ([fencing term, updated_at])
* ``PUT /control/scaling`` ``{"zone", "desired"}`` -- the operator's setting (``crosszone scale``)
* ``POST /control/signals`` ``{"zones": {z: {"requests", "errors", "latency_ms"}},
  "ejected": [{"node", "reason"}]}`` -- passive health from gateways and the LB
* ``GET  /control/events?limit=N``
"""

from __future__ import annotations

import hmac
import json
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from aiohttp import web

from crosszone.control.scaling import (
    GROUPS_KEY,
    SCALING_PREFIX,
    effective_groups,
    parse_groups,
    parse_operator,
)
from crosszone.control.shifts import SHIFT_PREFIX, operator_shift, parse_duration, parse_shifts
from crosszone.errors import CoordinationError, ShiftRejected

if TYPE_CHECKING:
    from crosszone.control.controller import Controller


def _error(status: int, message: str, code: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error",
                                        "param": None, "code": code}}, status=status)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        doc = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text="body must be JSON") from None
    if not isinstance(doc, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return doc


def create_control_app(c: Controller) -> web.Application:
    token = c.topology.auth.admin_token

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        if token and request.method not in ("GET", "HEAD"):
            scheme, _, given = (request.headers.get("Authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token):
                return _error(401, "admin token required", "invalid_admin_token")
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except web.HTTPBadRequest as exc:
            return _error(400, exc.text or "bad request", "invalid_request")
        except ShiftRejected as exc:
            return _error(400, str(exc), "shift_rejected")
        except CoordinationError as exc:
            return _error(503, f"coordination store unavailable: {exc}", "store_unavailable")

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "zone": c.zone})

    async def status(request: web.Request) -> web.Response:
        s = c.state
        leader = c.elector.known_leader
        return web.json_response({
            "zone": c.zone, "node": c.node_id, "leader": c.elector.is_leader(),
            "term": c.elector.acting_token(),
            "known_leader": None if leader is None else {"node": leader.node_id,
                                                         "term": leader.term},
            "routing": None if s.published is None else json.loads(s.published.to_json()),
            "zones": {z: asdict(ob) for z, ob in s.zones.items()},
            "gray_failure": {z: asdict(st) for z, st in c.checker.window_stats().items()},
            "shifts": [asdict(x) for x in s.shifts],
            "alert": s.decision.alert if s.decision else None,
            "scaling": _scaling_status(c),
            "stores": None if c.stores is None else c.stores.to_json(),
            "sentence": s.sentence, "cycles": s.cycles,
            "recent": [{"time": t, "sentence": x} for t, x in list(s.history)[-20:]]})

    async def list_shifts(request: web.Request) -> web.Response:
        shifts = parse_shifts(await c.coordinator.items(SHIFT_PREFIX))
        return web.json_response({"shifts": [asdict(x) for x in shifts]})

    async def start_shift(request: web.Request) -> web.Response:
        doc = await _body(request)
        expires = doc.get("expires")
        seconds = parse_duration(str(expires)) if expires is not None else 0.0
        shift = operator_shift(str(doc.get("zone", "")), c.topology.zone_names(), seconds,
                               str(doc.get("reason", "")), time.time(),
                               c.settings.failover.max_shift_seconds)
        await c.coordinator.put(shift.key, shift.to_json())
        return web.json_response({"shift": asdict(shift)}, status=201)

    async def cancel_shift(request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        shifts = parse_shifts(await c.coordinator.items(SHIFT_PREFIX))
        gone = [x for x in shifts if ref in (x.id, x.zone)]
        if not gone:
            return _error(404, f"no shift with id or zone {ref!r}", "shift_not_found")
        for x in gone:
            await c.coordinator.delete(x.key)
        return web.json_response({"cancelled": [asdict(x) for x in gone]})

    async def get_scaling(request: web.Request) -> web.Response:
        operator = parse_operator(await c.coordinator.items(SCALING_PREFIX))
        term, groups = parse_groups(await c.coordinator.get(GROUPS_KEY))
        return web.json_response(effective_groups(c.scaler.bounds, groups, operator, term))

    async def put_scaling(request: web.Request) -> web.Response:
        doc = await _body(request)
        zone, desired = str(doc.get("zone", "")), doc.get("desired")
        if zone not in c.topology.zone_names():
            return _error(400, f"unknown zone {zone!r}", "invalid_zone")
        group = c.topology.worker_group_of(zone)
        if not isinstance(desired, int) or not group.min_size <= desired <= group.max_size:
            return _error(400, f"desired must be an integer between min_size {group.min_size} "
                               f"and max_size {group.max_size}, got {desired!r}",
                          "invalid_desired_capacity")
        record = {"desired": desired, "set_at": time.time()}
        await c.coordinator.put(SCALING_PREFIX + zone, json.dumps(record))
        return web.json_response({zone: record})

    async def signals(request: web.Request) -> web.Response:
        doc = await _body(request)
        zones = doc.get("zones") or {}
        ejected = doc.get("ejected") or []
        if not isinstance(zones, dict) or not isinstance(ejected, list):
            raise web.HTTPBadRequest(text='expected {"zones": {...}, "ejected": [...]}')
        try:
            for zone, st in zones.items():
                if isinstance(st, dict):
                    latency = st.get("latency_ms")
                    c.checker.record_passive(str(zone), int(st.get("requests", 0)),
                                             int(st.get("errors", 0)),
                                             None if latency is None else float(latency))
        except (TypeError, ValueError):
            raise web.HTTPBadRequest(text="requests and errors must be integers, "
                                          "latency_ms a number") from None
        known = [e for e in ejected if isinstance(e, dict)
                 and c.checker.eject(str(e.get("node")), str(e.get("reason", "passive")))]
        return web.json_response({"accepted": True, "ejected": len(known)})

    async def events(request: web.Request) -> web.Response:
        try:
            limit = max(1, min(int(request.query.get("limit", "50")), 1000))
        except ValueError:
            raise web.HTTPBadRequest(text="limit must be an integer") from None
        return web.json_response({"events": [asdict(e) for e in c.events.recent(limit)]})

    app = web.Application(middlewares=[guard])
    app.router.add_get("/control/health", health)
    app.router.add_get("/control/status", status)
    app.router.add_get("/control/shifts", list_shifts)
    app.router.add_post("/control/shifts", start_shift)
    app.router.add_delete("/control/shifts/{ref}", cancel_shift)
    app.router.add_get("/control/scaling", get_scaling)
    app.router.add_put("/control/scaling", put_scaling)
    app.router.add_post("/control/signals", signals)
    app.router.add_get("/control/events", events)
    return app


def _scaling_status(c: Controller) -> dict[str, Any]:
    """The groups as this controller last saw them, and its policy's last decision."""
    decision = c.state.scaling
    groups = c.scaling_view()
    if decision is not None:
        for zone, plan in decision.plans.items():
            groups[zone]["plan"] = plan.to_dict()
    return {"groups": groups, "sentence": None if decision is None else decision.sentence}


async def start_api(c: Controller, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(create_control_app(c), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def stop_api(runner: object | None) -> None:
    if isinstance(runner, web.AppRunner):
        await runner.cleanup()
