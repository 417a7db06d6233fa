"""The two netfilter netlink conversations the delay fallback needs, in plain Python.

1. **An NFQUEUE rule in our own nftables table.** This kernel has no ``nft queue`` expression
   (CONFIG_NFT_QUEUE unset) but has the xtables NFQUEUE target and nft_compat, which lets an
   nftables rule carry an xtables target. The ``nft`` tool cannot write such a rule, so
   :func:`add_queue_rule` sends the one NFT_MSG_NEWRULE itself: a rule with a single
   expression, ``NFQUEUE --queue-num N --queue-bypass``, appended to a chain of
   ``inet crosszone_chaos``. Everything else (tables, chains, matches, removal) stays with ``nft``.

2. **An NFQUEUE listener** (:class:`PacketQueue`): bind a queue, receive packet ids (metadata
   only, no payload), and issue ACCEPT verdicts when the delayer decides to release them.

Only the attributes used here are defined; the numbers are the kernel's uapi
(linux/netfilter/nfnetlink.h, nf_tables.h, nfnetlink_queue.h, xt_NFQUEUE.h).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator

from crosszone.errors import ChaosError, ChaosPermissionError, NetlinkError

NETLINK_NETFILTER = 12
SO_RCVBUFFORCE = 33
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE, NLM_F_APPEND = 0x1, 0x4, 0x400, 0x800
NLA_F_NESTED = 0x8000
NFPROTO_UNSPEC, NFPROTO_INET = 0, 1

# nf_tables
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWRULE = 6
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA = 1, 2, 4, 7
NFTA_LIST_ELEM, NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 1, 2
NFTA_TARGET_NAME, NFTA_TARGET_REV, NFTA_TARGET_INFO = 1, 2, 3
NFTNL_UDATA_RULE_COMMENT = 0
NFQ_FLAG_BYPASS = 0x01

# nfnetlink_queue
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND, NFQNL_CFG_CMD_UNBIND = 1, 2
NFQNL_COPY_META = 1
NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_GSO = 0x1, 0x4
NF_ACCEPT = 1


def _attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


def _nested(kind: int, data: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, data)


def _cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def _message(msg_type: int, flags: int, seq: int, family: int, res_id: int,
             payload: bytes) -> bytes:
    body = struct.pack("=BBH", family, 0, socket.htons(res_id)) + payload
    return struct.pack("=IHHII", 16 + len(body), msg_type, flags, seq, 0) + body


def _messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, seq, payload after the netlink header) of every message in one datagram."""
    offset = 0
    while offset + 16 <= len(data):
        length, msg_type, _flags, seq, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < 16:
            return
        yield msg_type, seq, data[offset + 16: offset + length]
        offset += (length + 3) & ~3


def _attributes(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            return
        yield kind & 0x3FFF, data[offset + 4: offset + length]
        offset += (length + 3) & ~3


def _open_socket() -> socket.socket:
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        sock.bind((0, 0))
    except PermissionError as exc:
        raise ChaosPermissionError("network faults need root (nftables)") from exc
    except OSError as exc:
        raise ChaosError(f"cannot open a netfilter netlink socket: {exc.strerror}") from exc
    return sock


def _wait_acks(sock: socket.socket, seqs: set[int], what: str) -> None:
    """Read until every sequence number in ``seqs`` is acknowledged; raise on a kernel error."""
    sock.settimeout(2.0)
    try:
        while seqs:
            for msg_type, seq, payload in _messages(sock.recv(1 << 16)):
                if msg_type != NLMSG_ERROR or seq not in seqs:
                    continue
                code = -struct.unpack_from("=i", payload)[0]
                if code:
                    raise NetlinkError(f"{what}: {os.strerror(code)}", code)
                seqs.discard(seq)
    except TimeoutError as exc:
        raise ChaosError(f"{what}: the kernel did not answer") from exc
    finally:
        sock.settimeout(None)


def add_queue_rule(table: str, chain: str, queue_num: int, comment: str) -> None:
    """Append ``NFQUEUE --queue-num queue_num --queue-bypass`` to ``inet table chain``.

    With bypass, packets pass undelayed whenever no process listens on the queue, so a dead
    delayer can never blackhole traffic.
    """
    info = struct.pack("=HHH", queue_num, 1, NFQ_FLAG_BYPASS) + b"\0\0"  # xt_NFQ_info_v3
    target = (_attr(NFTA_TARGET_NAME, _cstr("NFQUEUE"))
              + _attr(NFTA_TARGET_REV, struct.pack(">I", 3)) + _attr(NFTA_TARGET_INFO, info))
    expr = _nested(NFTA_LIST_ELEM, _attr(NFTA_EXPR_NAME, _cstr("target"))
                   + _nested(NFTA_EXPR_DATA, target))
    text = _cstr(comment)
    userdata = struct.pack("BB", NFTNL_UDATA_RULE_COMMENT, len(text)) + text
    rule = (_attr(NFTA_RULE_TABLE, _cstr(table)) + _attr(NFTA_RULE_CHAIN, _cstr(chain))
            + _nested(NFTA_RULE_EXPRESSIONS, expr) + _attr(NFTA_RULE_USERDATA, userdata))
    batch = (
        _message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 1, NFPROTO_UNSPEC, NFNL_SUBSYS_NFTABLES, b"")
        + _message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE,
                   NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND, 2, NFPROTO_INET, 0,
                   rule)
        + _message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 3, NFPROTO_UNSPEC, NFNL_SUBSYS_NFTABLES, b"")
    )
    with _open_socket() as sock:
        sock.send(batch)
        try:
            _wait_acks(sock, {2}, f"cannot add the NFQUEUE rule to {table} {chain}")
        except NetlinkError as exc:
            if exc.code == errno.EPERM:
                raise ChaosPermissionError("network faults need root (nftables)") from exc
            raise


class PacketQueue:
    """One bound NFQUEUE: packet ids in, ACCEPT verdicts out. Not thread-safe.

    Binding a number another socket holds fails with NetlinkError EPERM (or EBUSY).
    """

    MAX_QUEUED = 4096  # beyond this the kernel lets packets through (fail-open)

    def __init__(self, queue_num: int) -> None:
        self.queue_num = queue_num
        self._seq = 10
        self.sock = _open_socket()
        try:
            # Room for every queued packet's metadata, so no notification is ever lost.
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
            self._config(_attr(NFQA_CFG_CMD, struct.pack("=BBH", NFQNL_CFG_CMD_BIND, 0, 0)))
            flags = struct.pack(">I", NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO)
            self._config(_attr(NFQA_CFG_PARAMS, struct.pack(">IB", 0, NFQNL_COPY_META))
                         + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack(">I", self.MAX_QUEUED))
                         + _attr(NFQA_CFG_MASK, flags) + _attr(NFQA_CFG_FLAGS, flags))
        except BaseException:
            self.sock.close()
            raise

    def _config(self, attrs: bytes) -> None:
        self._seq += 1
        self.sock.send(_message((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG,
                                NLM_F_REQUEST | NLM_F_ACK, self._seq, NFPROTO_UNSPEC,
                                self.queue_num, attrs))
        _wait_acks(self.sock, {self._seq}, f"cannot bind NFQUEUE {self.queue_num}")

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self) -> list[int]:
        """Packet ids of one read (blocks until the socket is readable)."""
        ids: list[int] = []
        try:
            data = self.sock.recv(1 << 18)
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:  # notifications were lost; keep serving the rest
                return ids
            raise
        for msg_type, _seq, payload in _messages(data):
            if msg_type != (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                continue
            for kind, value in _attributes(payload[4:]):  # skip the nfgenmsg
                if kind == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from(">I", value)[0])
        return ids

    def accept(self, packet_id: int) -> None:
        verdict = _attr(NFQA_VERDICT_HDR, struct.pack(">II", NF_ACCEPT, packet_id))
        self.sock.send(_message((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT, NLM_F_REQUEST, 0,
                                NFPROTO_UNSPEC, self.queue_num, verdict))

    def close(self) -> None:
        """Unbind; the kernel drops what is still queued, so accept everything first."""
        try:
            self._seq += 1
            self.sock.send(_message(
                (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG, NLM_F_REQUEST, self._seq,
                NFPROTO_UNSPEC, self.queue_num,
                _attr(NFQA_CFG_CMD, struct.pack("=BBH", NFQNL_CFG_CMD_UNBIND, 0, 0))))
        except OSError:
            pass
        finally:
            self.sock.close()
