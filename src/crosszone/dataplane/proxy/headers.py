"""Which headers cross a proxy hop, and the request id every hop passes on."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from multidict import CIMultiDict, CIMultiDictProxy

REQUEST_ID = "X-Request-Id"

# RFC 9110 section 7.6.1 hop-by-hop fields, plus the ones a hop must recompute itself.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                         "proxy-connection", "te", "trailer", "trailers", "transfer-encoding",
                         "upgrade"})
_REQUEST_DROP = _HOP_BY_HOP | {"host", "content-length", "expect"}
_RESPONSE_DROP = _HOP_BY_HOP | {"content-length", "server", "date"}


def request_id(headers: CIMultiDictProxy[str]) -> str:
    """The client's ``x-request-id``, or a new one (uuid4 hex)."""
    return headers.get(REQUEST_ID) or uuid.uuid4().hex


def upstream_headers(headers: CIMultiDictProxy[str], rid: str) -> CIMultiDict[str]:
    """The client's request headers to send upstream: end-to-end ones only, plus the id."""
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        if key.lower() not in _REQUEST_DROP:
            out.add(key, value)
    out[REQUEST_ID] = rid
    return out


def client_headers(headers: Mapping[str, str], extra: Mapping[str, str]) -> CIMultiDict[str]:
    """An upstream response's headers to send to the client, with this hop's own added."""
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        if key.lower() not in _RESPONSE_DROP:
            out.add(key, value)
    out.update(extra)
    return out
