"""Which headers cross a proxy hop, and the request id every hop passes on."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from multidict import CIMultiDict, CIMultiDictProxy

REQUEST_ID = "X-Request-Id"
# The identity of one client request for billing, minted by the LB (so a client that reuses an
# x-request-id is still billed for every request) and kept across the LB's retries and
# migrations (so a moved stream is billed once).
USAGE_ID = "X-Crosszone-Usage-Id"

# RFC 9110 section 7.6.1 hop-by-hop fields, plus the ones a hop must recompute itself.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                         "proxy-connection", "te", "trailer", "trailers", "transfer-encoding",
                         "upgrade"})
_REQUEST_DROP = _HOP_BY_HOP | {"host", "content-length", "expect"}
_RESPONSE_DROP = _HOP_BY_HOP | {"content-length", "server", "date"}


# Headers only the hops set (prefix tokens and migrations of a continued stream, the serving
# zone and node...): the edge (the load balancer) drops them from what a client sends.
INTERNAL_PREFIX = "x-crosszone-"


def without_internal(headers: Mapping[str, str]) -> CIMultiDict[str] | None:
    """``headers`` less the ``x-crosszone-*`` ones a client sent; None if it sent none."""
    if not any(key.lower().startswith(INTERNAL_PREFIX) for key in headers):
        return None
    return CIMultiDict((key, value) for key, value in headers.items()
                       if not key.lower().startswith(INTERNAL_PREFIX))


def request_id(headers: CIMultiDictProxy[str]) -> str:
    """The client's ``x-request-id``, or a new one (uuid4 hex)."""
    return headers.get(REQUEST_ID) or uuid.uuid4().hex


def usage_id(headers: Mapping[str, str]) -> str:
    """The LB's usage id of this request, or a new one (a gateway called directly)."""
    return headers.get(USAGE_ID) or uuid.uuid4().hex


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
