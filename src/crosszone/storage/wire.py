"""One JSON request to a zone's store service, with its errors translated: what the product
clients (:mod:`crosszone.storage.client`) and the other zones' shippers and 2PC coordinators
(:mod:`crosszone.replication.http`) share."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from crosszone.errors import StoreUnavailable, store_error_from_code


async def store_request(session: aiohttp.ClientSession, zone: str, base_url: str, method: str,
                        path: str, body: Any = None, *,
                        timeout: aiohttp.ClientTimeout | None = None,
                        missing_ok: bool = False) -> Any:
    """The decoded JSON answer; None for a 404 ``not_found`` when ``missing_ok``.

    Unreachable, timed out, a non-JSON answer or a 5xx without an error code:
    :class:`StoreUnavailable`; any other error answer: the StoreError its ``code`` names.
    """
    data = None if body is None else orjson.dumps(body)
    extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    try:
        async with session.request(method, base_url + path, data=data,
                                   headers={"content-type": "application/json"},
                                   **extra) as resp:
            raw = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise StoreUnavailable(f"zone {zone} store at {base_url} unreachable: "
                               f"{type(exc).__name__} {exc}".rstrip()) from exc
    try:
        payload = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as exc:
        raise StoreUnavailable(f"zone {zone} store: non-JSON answer ({status})") from exc
    if status < 400:
        return payload
    error = payload.get("error", {}) if isinstance(payload, dict) else {}
    error = error if isinstance(error, dict) else {}
    if status == 404 and missing_ok and error.get("code") == "not_found":
        return None
    if status >= 500 and error.get("code") is None:
        raise StoreUnavailable(f"zone {zone} store: HTTP {status}")
    raise store_error_from_code(error.get("code"),
                                f"zone {zone} store: {error.get('message', status)}")
