"""Routing weights pushed by the acting controller: ``PUT /lb/weights``, ``PUT /gateway/weights``.

Both receivers take the same body, ``{"weights": {"<zone>": <number>, ...}}`` (zones left out keep
their weight), under the same two checks: the admin token (when the topology sets one) says who
may move traffic, and the fencing token (``X-Crosszone-Fencing-Token``, the leader's term) says
the sender is still the acting leader, so a deposed controller's push is refused with 409. A push
without a fencing token (an operator's manual PUT) is admitted. Receivers keep the last weights
they accepted for as long as no controller answers (static stability).
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from crosszone.control.fencing import FencingGuard
from crosszone.dataplane.openai_errors import error_response
from crosszone.errors import StaleFencingToken

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def parse_weights(document: Any, zones: list[str]) -> dict[str, float]:
    """Validate ``{"weights": {zone: number}}``; raise ValueError with a clear message."""
    if not isinstance(document, dict) or not isinstance(document.get("weights"), dict):
        raise ValueError('expected {"weights": {"<zone>": <number>, ...}}')
    weights: dict[str, float] = {}
    for zone, value in document["weights"].items():
        if zone not in zones:
            raise ValueError(f"unknown zone {zone!r}; zones are {zones}")
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value) or value < 0:
            raise ValueError(f"weight of {zone} must be a finite number >= 0, got {value!r}")
        weights[zone] = float(value)
    return weights


def weights_handler(zones: list[str], admin_token: str | None,
                    current: Callable[[], Mapping[str, float]],
                    apply: Callable[[dict[str, float]], web.Response]) -> Handler:
    """The PUT handler: checks the admin and fencing tokens and the body, then ``apply``s the
    weights (by zone) and answers what ``apply`` returns. Weights that would leave every zone at
    zero are refused: draining everything is what failing open is for."""
    fence = FencingGuard(require=False)  # an operator's manual PUT carries no token

    async def put_weights(request: web.Request) -> web.Response:
        if admin_token and not _bearer_is(request, admin_token):
            return error_response(401, "admin token required", code="invalid_admin_token")
        try:
            fence.admit_header(request.headers)
        except StaleFencingToken as exc:
            return error_response(409, str(exc), code="stale_fencing_token")
        except ValueError as exc:
            return error_response(400, str(exc), code="invalid_fencing_token")
        try:
            weights = parse_weights(orjson.loads(await request.read()), zones)
        except (orjson.JSONDecodeError, ValueError) as exc:
            return error_response(400, str(exc), code="invalid_weights")
        if sum((dict(current()) | weights).values()) <= 0:
            return error_response(400, "weights must not all be zero", code="invalid_weights")
        return apply(weights)

    return put_weights


def _bearer_is(request: web.Request, token: str) -> bool:
    scheme, _, given = (request.headers.get("Authorization") or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              token.encode())
