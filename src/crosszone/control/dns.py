"""An authoritative DNS server for the service name (Route 53 failover / multivalue records).

It answers ``A`` queries for one name with the addresses of the zones that should take traffic
(their gateways), over UDP and TCP, with a configurable TTL. dnspython parses and renders the
messages; the sockets are asyncio's. Every controller runs one on its own address, and each
serves the routing the leader published in the coordination store, so DNS stays answerable when
any one zone (and its server) is gone.

Answers: the name's ``A`` (and ``ANY``) -> the serving addresses; ``SOA``/``NS`` at the name;
another type at the name -> NOERROR with no data; a name below it -> NXDOMAIN; a name outside it
-> REFUSED. Every answer is authoritative (AA). A UDP answer that does not fit (512 bytes, or the
client's EDNS size) is sent truncated (TC) so the client retries over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

log = logging.getLogger(__name__)

_TCP_IDLE_SECONDS = 10.0


class DnsServer:
    """Serves ``name``; :meth:`set_addresses` changes the answer at once (no caching here)."""

    def __init__(self, name: str, host: str, port: int, *, ttl: int = 1,
                 addresses: list[str] | None = None) -> None:
        self.name = dns.name.from_text(name)
        self.host = host
        self.port = port
        self.ttl = ttl
        self.addresses: list[str] = list(addresses or [])
        self.serial = 1
        self.queries = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    def set_addresses(self, addresses: list[str]) -> None:
        if addresses != self.addresses:
            self.addresses = list(addresses)
            self.serial += 1

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=(self.host, self.port))
        self._udp = transport
        self._tcp = await asyncio.start_server(self._serve_tcp, self.host, self.port)

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await self._tcp.wait_closed()
            self._tcp = None

    # -- answering ---------------------------------------------------------------------------------

    def answer(self, wire: bytes, *, udp: bool) -> bytes | None:
        """The response to one query in wire format, or None when it cannot be parsed at all."""
        self.queries += 1
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return _formerr(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.flags &= ~dns.flags.RA
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            response.set_rcode(dns.rcode.NOTIMP if query.opcode() != dns.opcode.QUERY
                               else dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        self._fill(response, question.name, question.rdtype, question.rdclass)
        limit = 65535 if not udp else max(512, query.payload if query.edns >= 0 else 512)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.AA | dns.flags.TC
            return truncated.to_wire()

    def _fill(self, response: dns.message.Message, qname: dns.name.Name, rdtype: int,
              rdclass: int) -> None:
        if rdclass != dns.rdataclass.IN or not qname.is_subdomain(self.name):
            response.set_rcode(dns.rcode.REFUSED)
            response.flags &= ~dns.flags.AA
            return
        if qname != self.name:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._soa())
            return
        if rdtype in (dns.rdatatype.A, dns.rdatatype.ANY) and self.addresses:
            response.answer.append(dns.rrset.from_text_list(
                self.name, self.ttl, dns.rdataclass.IN, dns.rdatatype.A, self.addresses))
        elif rdtype == dns.rdatatype.SOA:
            response.answer.append(self._soa())
        elif rdtype == dns.rdatatype.NS:
            response.answer.append(dns.rrset.from_text(
                self.name, self.ttl, dns.rdataclass.IN, dns.rdatatype.NS,
                f"ns.{self.name.to_text()}"))
        else:
            response.authority.append(self._soa())

    def _soa(self) -> dns.rrset.RRset:
        n = self.name.to_text()
        return dns.rrset.from_text(
            self.name, self.ttl, dns.rdataclass.IN, dns.rdatatype.SOA,
            f"ns.{n} hostmaster.{n} {self.serial} 60 30 3600 {self.ttl}")

    # -- TCP: two-byte length prefix, several queries per connection -----------------------------

    async def _serve_tcp(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await asyncio.wait_for(reader.readexactly(2), _TCP_IDLE_SECONDS)
                (length,) = struct.unpack("!H", header)
                wire = await asyncio.wait_for(reader.readexactly(length), _TCP_IDLE_SECONDS)
                reply = self.answer(wire, udp=False)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def __repr__(self) -> str:
        return (f"<DnsServer {self.name} @{self.host}:{self.port} ttl={self.ttl} "
                f"-> {self.addresses}>")


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        try:
            reply = self.server.answer(data, udp=True)
        except Exception:  # never let one bad packet stop the server
            log.exception("DNS query from %s failed", addr)
            return
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


def _formerr(wire: bytes) -> bytes | None:
    """FORMERR echoing the query id, when at least the 12-byte header is there."""
    if len(wire) < 12:
        return None
    (qid, flags) = struct.unpack("!HH", wire[:4])
    if flags & 0x8000:  # a response, not a query: never answer it
        return None
    return struct.pack("!HHHHHH", qid, 0x8000 | (flags & 0x7800) | dns.rcode.FORMERR,
                       0, 0, 0, 0)
