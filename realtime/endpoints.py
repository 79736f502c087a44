"""Listener descriptions: Daphne's helper, our defaults, adopted sockets, address strings."""

from __future__ import annotations

import copy
import os
import re
import socket
from typing import Any

from twisted.internet import fdesc, tcp, unix
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, fail, succeed

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_BACKLOG = 1024
#: Endpoint types that listen on TCP and take ``backlog=`` (``tls:`` is Twisted's SNI one).
_TCP_KINDS = ("tcp", "tcp6", "ssl", "tls")
#: Wrappers whose description continues with the wrapped endpoint's (``haproxy:tcp:9000``).
_WRAPPERS = ("haproxy",)
#: ``backlog=`` as a parameter: after an unescaped ``:`` (``\\:`` is part of a value).
_NAMES_BACKLOG = re.compile(r"(?:^|(?<!\\):)backlog=")


def _escape(value: str) -> str:
    """Escape ``:`` and ``=`` (and the backslash itself) for an endpoint description."""
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def build_endpoint_description_strings(
    host: str | None = None,
    port: int | str | None = None,
    unix_socket: str | None = None,
) -> list[str]:
    """Daphne's helper: endpoint descriptions for a host and port and/or a unix socket.

    ``host`` may be an IPv6 address with or without brackets. A host without a port, or a
    port without a host, is a ``ValueError``.
    """
    descriptions: list[str] = []
    if host is not None and port is not None:
        host = host.strip("[]")
        descriptions.append(f"tcp:port={int(port)}:interface={_escape(host)}")
    elif host is not None or port is not None:
        raise ValueError("TCP binding requires both port and host kwargs.")
    if unix_socket:
        descriptions.append(f"unix:{_escape(unix_socket)}")
    return descriptions


def is_port_number(value: str) -> bool:
    """A bare ``--port`` number: ASCII digits only (``"²".isdigit()`` is true too)."""
    return value.isascii() and value.isdigit()


def port_description(value: str, bind: str | None) -> str:
    """A ``--port`` value as a description: a bare number listens on loopback (or ``bind``)."""
    if is_port_number(value):
        return build_endpoint_description_strings(bind or DEFAULT_HOST, int(value))[0]
    return value


def with_backlog(description: str) -> str:
    """TCP and TLS listeners get a large backlog unless the description names one: Twisted's
    default of 50 drops SYNs under a burst of handshakes (1 s retransmits)."""
    kind, _, rest = description.partition(":")
    while kind in _WRAPPERS:
        kind, _, rest = rest.partition(":")
    if kind in _TCP_KINDS and not _NAMES_BACKLOG.search(description):
        return f"{description}:backlog={DEFAULT_BACKLOG}"
    return description


def adopted_socket_family(fd: int) -> socket.AddressFamily:
    """The family of an inherited listening socket; ``ValueError`` when ``fd`` is not one."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ValueError(f"file descriptor {fd} is not a socket ({exc.strerror})") from None
    try:
        if sock.type != socket.SOCK_STREAM:
            raise ValueError(f"file descriptor {fd} is not a stream socket")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ValueError(f"file descriptor {fd} is not a listening socket")
        family = sock.family
        if family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
            raise ValueError(f"file descriptor {fd} has unsupported family {family!r}")
        return family
    finally:
        sock.detach()


def describe_address(addr: Any) -> str:
    """A listener's real address, as logged at start: ``tcp:127.0.0.1:41234``."""
    if isinstance(addr, IPv6Address):
        return f"tcp6:[{addr.host}]:{addr.port}"
    if isinstance(addr, IPv4Address):
        return f"tcp:{addr.host}:{addr.port}"
    if isinstance(addr, UNIXAddress):
        name = addr.name.decode() if isinstance(addr.name, bytes) else addr.name
        return f"unix:{name}"
    return str(addr)


# -- inherited unix sockets -----------------------------------------------------------------------
class AdoptedUNIXEndpoint:
    """An inherited ``unix`` listening socket (``--fd``, ``systemd:``, a ``--workers``
    child's end of the supervisor's socket). Twisted's port shuts such a socket down and
    removes its path when it stops listening, which takes the socket away from whoever
    else holds it: systemd (socket activation: the next start, or a client connecting
    meanwhile, finds no socket), the supervisor (the next worker or ``--reload`` server
    could not start). This one does neither; the socket's owner removes the path."""

    def __init__(self, reactor: Any, fd: int, family: Any = socket.AF_UNIX) -> None:
        self.reactor = reactor
        self.fd = fd
        self.family = family

    def listen(self, factory: Any) -> Deferred[Any]:
        try:
            fdesc.setNonBlocking(self.fd)
            port = SharedUNIXPort._fromListeningDescriptor(self.reactor, self.fd, factory)
            port.startListening()
            os.close(self.fd)  # the port has its own copy (as AdoptedStreamServerEndpoint)
        except BaseException:
            return fail()
        return succeed(port)


class SharedUNIXPort(unix.Port):
    """A unix port on an inherited socket: stopping neither shuts the socket down (which
    would refuse every later client of the socket's other holders, as ``tcp.Port`` knows
    for an adopted socket and ``unix.Port`` does not) nor removes its path."""

    _shouldShutdown = False

    def connectionLost(self, reason: Any) -> None:
        if self.lockFile is not None:
            self.lockFile.unlock()
        tcp.Port.connectionLost(self, reason)


def adopted_endpoint(reactor: Any, fd: int, family: Any) -> Any:
    """The endpoint of an inherited listening socket (``--fd``): unix ones are left whole
    when the server stops (``AdoptedUNIXEndpoint``)."""
    from twisted.internet.endpoints import AdoptedStreamServerEndpoint

    if family == socket.AF_UNIX:
        return AdoptedUNIXEndpoint(reactor, fd, family)
    return AdoptedStreamServerEndpoint(reactor, fd, family)


def keep_adopted_unix(reactor: Any, endpoint: Any) -> Any:
    """``endpoint`` (from a description), with a ``systemd:`` unix socket adopted through
    ``AdoptedUNIXEndpoint``: systemd keeps listening on it after this process stops. Also
    inside a wrapper (``haproxy:systemd:domain=UNIX:...``, the PROXY protocol in front)."""
    from twisted.internet.endpoints import AdoptedStreamServerEndpoint

    for attribute in ("_wrappedEndpoint", "endpoint"):  # haproxy:, tls: (SNI)
        inner = getattr(endpoint, attribute, None)
        if inner is not None:
            kept = keep_adopted_unix(reactor, inner)
            if kept is inner:
                return endpoint
            outer = copy.copy(endpoint)
            setattr(outer, attribute, kept)
            return outer
    if isinstance(endpoint, AdoptedStreamServerEndpoint) and \
            endpoint.addressFamily == socket.AF_UNIX:
        return AdoptedUNIXEndpoint(reactor, endpoint.fileno, socket.AF_UNIX)
    return endpoint
