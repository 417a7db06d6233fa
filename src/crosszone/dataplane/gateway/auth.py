"""Static API keys: ``Authorization: Bearer <key>``, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Iterable


class ApiKeyAuth:
    """Accepts a request whose bearer token equals one of the keys. No keys: nothing passes."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [key.encode() for key in keys]

    def allows(self, authorization: str | None) -> bool:
        if not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        given = token.strip().encode()
        ok = False
        for key in self._keys:  # compare against every key: timing says nothing about which
            ok |= hmac.compare_digest(given, key)
        return ok
