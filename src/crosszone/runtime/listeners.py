"""Listening sockets that outlive a process: the supervisor binds them, each process inherits them.

As with systemd socket activation (or nginx's binary upgrade), the supervisor creates a node's
listening sockets once, before its first start, and passes them to every process it starts for
the node (``pass_fds`` and ``CROSSZONE_LISTEN_FDS=HOST:PORT=FD,...``). A process stopping for a
restart closes its copy at once and drains; connections that arrive before its successor accepts
wait in the kernel backlog of the supervisor's copy, so a client sees a delay, never a refusal.
Without the variable (``crosszone run`` alone on its host) a component binds its addresses itself.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping, Sequence

from crosszone.errors import RuntimeStateError

ENV_VAR = "CROSSZONE_LISTEN_FDS"
BACKLOG = 1024  # every holder calls listen() with it: the last call sets the queue length

Address = tuple[str, int]


def format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(exc: OSError) -> str:
    return (os.strerror(exc.errno) if exc.errno else (str(exc) or type(exc).__name__)).lower()


class Listeners:
    """One node's listening sockets as the supervisor holds them (none until :meth:`open`)."""

    def __init__(self, addresses: Sequence[Address]) -> None:
        self.addresses = list(addresses)
        self.sockets: dict[Address, socket.socket] = {}

    @property
    def is_open(self) -> bool:
        return bool(self.sockets)

    def open(self) -> None:
        """Bind and listen on every address (those already open are kept); RuntimeStateError
        naming the address if one cannot be bound, with none left open."""
        for address in self.addresses:
            if address in self.sockets:
                continue
            family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
                sock.listen(BACKLOG)
            except OSError as exc:
                sock.close()
                self.close()
                raise RuntimeStateError(
                    f"cannot bind {format_address(address)}: {_reason(exc)}") from exc
            self.sockets[address] = sock

    def close(self) -> bool:
        """Close every socket (queued connections are reset); False if none was open."""
        was_open = self.is_open
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()
        return was_open

    def fds(self) -> tuple[int, ...]:
        return tuple(sock.fileno() for sock in self.sockets.values())

    def environment(self) -> dict[str, str]:
        """The variable naming the fds for the child ({} when nothing is open)."""
        if not self.sockets:
            return {}
        return {ENV_VAR: ",".join(f"{format_address(a)}={s.fileno()}"
                                  for a, s in self.sockets.items())}

    def __repr__(self) -> str:
        where = ", ".join(format_address(a) for a in self.addresses)
        return f"<Listeners {where} {'open' if self.is_open else 'closed'}>"


def inherited_listeners(environ: MutableMapping[str, str] | None = None,
                        ) -> dict[Address, socket.socket]:
    """The listening sockets the supervisor passed down, by address ({} when run alone).

    The variable is removed, so a process this one starts does not take the fds for its own.
    """
    environ = os.environ if environ is None else environ
    spec = environ.pop(ENV_VAR, "")
    found: dict[Address, socket.socket] = {}
    for item in filter(None, spec.split(",")):
        where, _, fd_text = item.rpartition("=")
        host, _, port_text = where.rpartition(":")
        try:
            address, fd = (host.strip("[]"), int(port_text)), int(fd_text)
        except ValueError:
            raise RuntimeStateError(f"{ENV_VAR}: cannot read {item!r} (HOST:PORT=FD)") from None
        found[address] = _listening_socket(fd, address)
    return found


def _listening_socket(fd: int, address: Address) -> socket.socket:
    name = f"{ENV_VAR}: fd {fd} for {format_address(address)}"
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise RuntimeStateError(f"{name} is not usable: {_reason(exc)}") from exc
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        bound = sock.getsockname()[:2]
    except OSError as exc:
        sock.close()
        raise RuntimeStateError(f"{name} is not usable: {_reason(exc)}") from exc
    if sock.type != socket.SOCK_STREAM or not listening or tuple(bound) != address:
        sock.close()
        raise RuntimeStateError(f"{name} is not a TCP socket listening there "
                                f"(bound to {bound})")
    return sock
