"""OpenAI-style error bodies: ``{"error": {"message", "type", "param", "code"}}``.

Every HTTP component answers errors this way, never with a traceback.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


def error_body(status: int, message: str, *, code: str | None = None,
               param: str | None = None, type_: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_ or _TYPES.get(status, "server_error"),
                      "param": param, "code": code}}


def error_response(status: int, message: str, *, code: str | None = None,
                   param: str | None = None, headers: dict[str, str] | None = None
                   ) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(error_body(status, message, code=code,
                                                                    param=param)),
                        content_type="application/json", headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn aiohttp's HTTP exceptions and unexpected errors into OpenAI-style JSON."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413:
            return error_response(413, "request body too large", code="body_too_large")
        if exc.status == 404:
            return error_response(404, f"unknown path {request.path}", code="unknown_url")
        if exc.status == 405:
            return error_response(405, f"method {request.method} not allowed on {request.path}",
                                  code="method_not_allowed")
        return error_response(exc.status, exc.reason or "error")
    except Exception:  # the boundary: log it, never show it
        request.app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal error", code="internal_error")
