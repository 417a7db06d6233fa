"""The authoritative DNS server, queried with dnspython's resolver and query functions."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from crosszone.control.dns import DnsServer

HOST = "127.0.109.53"
NAME = "api.crosszone.test."


def free_port(host: str) -> int:
    """A port free for both UDP and TCP on ``host``."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


@pytest.fixture
async def server() -> AsyncIterator[DnsServer]:
    srv = DnsServer(NAME, HOST, free_port(HOST), ttl=7, addresses=["127.0.1.10", "127.0.2.10"])
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


def resolver_for(srv: DnsServer) -> dns.resolver.Resolver:
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [srv.host]
    r.port = srv.port
    r.lifetime = 2.0
    r.cache = None
    return r


async def resolve(srv: DnsServer, qtype: str = "A", *, tcp: bool = False,
                  name: str = NAME) -> dns.resolver.Answer:
    return await asyncio.to_thread(resolver_for(srv).resolve, name, qtype, tcp=tcp)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_resolver_gets_serving_zones_with_ttl(server: DnsServer, tcp: bool) -> None:
    answer = await resolve(server, tcp=tcp)
    assert sorted(r.address for r in answer) == ["127.0.1.10", "127.0.2.10"]
    assert answer.rrset is not None and answer.rrset.ttl == 7
    assert answer.response.flags & dns.flags.AA


async def test_answer_follows_the_routing_at_once(server: DnsServer) -> None:
    server.set_addresses(["127.0.3.10"])
    answer = await resolve(server)
    assert [r.address for r in answer] == ["127.0.3.10"]
    answer = await resolve(server, tcp=True)
    assert [r.address for r in answer] == ["127.0.3.10"]


async def test_names_outside_below_and_other_types(server: DnsServer) -> None:
    q = dns.message.make_query("example.com.", "A")
    r = await asyncio.to_thread(dns.query.udp, q, server.host, 2.0, server.port)
    assert r.rcode() == dns.rcode.REFUSED
    q = dns.message.make_query("www." + NAME, "A")
    r = await asyncio.to_thread(dns.query.tcp, q, server.host, 2.0, server.port)
    assert r.rcode() == dns.rcode.NXDOMAIN and r.flags & dns.flags.AA
    assert r.authority and r.authority[0].rdtype == dns.rdatatype.SOA
    q = dns.message.make_query(NAME, "AAAA")
    r = await asyncio.to_thread(dns.query.udp, q, server.host, 2.0, server.port)
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    soa = await resolve(server, "SOA")
    assert soa.rrset is not None and soa.rrset[0].serial == server.serial


async def test_large_answer_is_truncated_over_udp_and_complete_over_tcp(
        server: DnsServer) -> None:
    server.set_addresses([f"127.0.{i}.10" for i in range(1, 41)])
    q = dns.message.make_query(NAME, "A", use_edns=False)
    r = await asyncio.to_thread(dns.query.udp, q, server.host, 2.0, server.port)
    assert r.flags & dns.flags.TC and not r.answer
    answer = await resolve(server)  # the resolver retries over TCP by itself
    assert len(answer) == 40


async def test_garbage_gets_formerr_or_silence(server: DnsServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        s.sendto(b"\x12\x34\x01\x00" + b"\x00\x01" + b"\xff" * 20, (server.host, server.port))
        data, _ = await asyncio.to_thread(s.recvfrom, 512)
    assert data[:2] == b"\x12\x34" and data[3] & 0x0F == dns.rcode.FORMERR
    answer = await resolve(server)  # still serving
    assert len(answer) == 2
