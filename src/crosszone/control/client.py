"""A small synchronous client of the controllers' HTTP API (for the CLI and drills).

Any controller can take a shift or a scaling target (they write to the shared coordination
store), so the client tries each zone's controller in turn until one answers.
"""

from __future__ import annotations

from typing import Any

import httpx

from crosszone.config.topology import Topology
from crosszone.control.addresses import controller_nodes
from crosszone.control.settings import ControlSettings
from crosszone.errors import ControllerUnavailable, CrosszoneError, ShiftRejected


class ControlClient:
    def __init__(self, urls: list[str], *, admin_token: str | None = None,
                 timeout: float = 2.0) -> None:
        if not urls:
            raise ControllerUnavailable("no controller address to try")
        self.urls = [u.rstrip("/") for u in urls]
        self.admin_token = admin_token
        self.timeout = timeout

    @classmethod
    def from_topology(cls, topology: Topology, settings: ControlSettings | None = None,
                      timeout: float = 2.0) -> ControlClient:
        nodes = controller_nodes(topology, settings)
        return cls([n.api_url for n in nodes.values()], admin_token=topology.auth.admin_token,
                   timeout=timeout)

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.admin_token}"} if self.admin_token else {}
        tried: list[str] = []
        for url in self.urls:
            try:
                resp = httpx.request(method, url + path, json=body, headers=headers,
                                     timeout=self.timeout)
            except httpx.HTTPError as exc:
                tried.append(f"{url}: {type(exc).__name__}")
                continue
            try:
                doc: dict[str, Any] = resp.json()
            except ValueError:
                doc = {}
            if resp.status_code == 503:  # that controller cannot reach the store: try another
                tried.append(f"{url}: {_message(doc, resp.status_code)}")
                continue
            if resp.status_code >= 400:
                error = ShiftRejected if "shift" in path else CrosszoneError
                raise error(_message(doc, resp.status_code))
            return doc
        raise ControllerUnavailable("no controller answered: " + "; ".join(tried))

    def status(self) -> dict[str, Any]:
        return self._request("GET", "/control/status")

    def start_shift(self, zone: str, expires: str, reason: str) -> dict[str, Any]:
        doc = self._request("POST", "/control/shifts",
                            {"zone": zone, "expires": expires, "reason": reason})
        shift: dict[str, Any] = doc["shift"]
        return shift

    def list_shifts(self) -> list[dict[str, Any]]:
        shifts: list[dict[str, Any]] = self._request("GET", "/control/shifts")["shifts"]
        return shifts

    def cancel_shift(self, ref: str) -> list[dict[str, Any]]:
        gone: list[dict[str, Any]] = self._request("DELETE", f"/control/shifts/{ref}")[
            "cancelled"]
        return gone

    def scale(self, zone: str, desired: int) -> dict[str, Any]:
        return self._request("PUT", "/control/scaling", {"zone": zone, "desired": desired})


def _message(doc: dict[str, Any], status: int) -> str:
    error = doc.get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return f"HTTP {status}"
