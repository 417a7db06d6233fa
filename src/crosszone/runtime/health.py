"""Probe the nodes of a stack on ``GET /health``, all at once, each within a short timeout."""

from __future__ import annotations

import http.client
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from crosszone.config import Node, Topology


@dataclass(frozen=True)
class Probe:
    name: str
    url: str
    status: int | None  # HTTP status, None if no response
    error: str | None = None

    @property
    def healthy(self) -> bool:
        return self.status == 200

    def describe(self) -> str:
        if self.healthy:
            return "healthy"
        if self.status is not None:
            return f"unhealthy (HTTP {self.status})"
        return f"down ({self.error})"


def health_url(topology: Topology, node: Node) -> str:
    """The LB is probed on its HTTP listener when it has one, else on HTTPS."""
    scheme = "http"
    if node.component == "lb":
        protocols = {lst.port: lst.protocol for lst in topology.load_balancer.listeners}
        scheme = protocols.get(node.port, "HTTP").lower()
    return f"{scheme}://{node.host}:{node.port}{_path(topology, node)}"


def _path(topology: Topology, node: Node) -> str:
    # Targets answer on the path their checker uses: the LB checks gateways, a gateway its workers.
    if node.component == "gateway":
        return topology.load_balancer.health_check.path
    if node.component == "worker":
        return topology.gateway.health_check.path
    if node.component == "controller":
        return "/control/health"
    return "/health"


def _unverified() -> ssl.SSLContext:
    # A liveness probe of our own self-signed listener: who answers matters, not the certificate.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def probe(name: str, url: str, timeout: float = 1.0) -> Probe:
    scheme, rest = url.split("://", 1)
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    conn: http.client.HTTPConnection
    if scheme == "https":
        conn = http.client.HTTPSConnection(host, int(port), timeout=timeout, context=_unverified())
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", "/" + path, headers={"Connection": "close"})
        response = conn.getresponse()
        response.read()
        return Probe(name, url, response.status)
    except ConnectionRefusedError:
        return Probe(name, url, None, "connection refused")
    except TimeoutError:
        return Probe(name, url, None, f"no answer within {timeout:g}s")
    except (OSError, http.client.HTTPException) as exc:
        return Probe(name, url, None, str(exc) or type(exc).__name__)
    finally:
        conn.close()


def probe_nodes(topology: Topology, nodes: list[Node], timeout: float = 1.0) -> dict[str, Probe]:
    """Probe every node concurrently; the whole call takes about ``timeout`` at most."""
    if not nodes:
        return {}
    with ThreadPoolExecutor(max_workers=min(32, len(nodes))) as pool:
        futures = {n.name: pool.submit(probe, n.name, health_url(topology, n), timeout)
                   for n in nodes}
        return {name: f.result() for name, f in futures.items()}
