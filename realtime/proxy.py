"""Trusted proxies: the real client address and scheme from ``X-Forwarded-*`` headers.

Only a peer inside ``--trusted-proxies`` may speak for a client. ``X-Forwarded-For`` is
walked from the right (the entry the nearest proxy added) past every trusted address; the
first untrusted one is the client. ``X-Forwarded-Proto`` and ``-Port`` count only then.
Daphne's ``--proxy-headers-host/-port`` name other headers for the address and the port
(``X-Real-IP``); the address header is read the same way, so a single address from a
trusted peer is taken as it is, and anything that is not an IP address leaves the peer as
the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> list[Network]:
    """``127.0.0.0/8,::1`` -> networks; ``ValueError`` names a bad entry."""
    networks: list[Network] = []
    for value in values:
        value = value.strip()
        if not value:
            continue
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or CIDR network") from None
    return networks


def _trusted(host: str, networks: list[Network]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)


def _last(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    value = None
    for key, val in headers:
        if key == name:
            value = val.decode("latin-1")
    return value


def resolve_client(
    client: tuple[str, int] | None,
    headers: list[tuple[bytes, bytes]],
    networks: list[Network],
    host_header: bytes = b"x-forwarded-for",
    port_header: bytes = b"x-forwarded-port",
) -> tuple[tuple[str, int] | None, str | None]:
    """(client, forwarded scheme or None) for a request from ``client``; the header names
    are lower case."""
    if client is None or not _trusted(client[0], networks):
        return client, None
    forwarded: list[str] = []
    for key, value in headers:
        if key == host_header:
            forwarded.extend(p.strip() for p in value.decode("latin-1").split(","))
    if not forwarded:
        return client, None
    host = None
    for candidate in reversed(forwarded):
        host = candidate
        if not _trusted(candidate, networks):
            break
    if not host:
        return client, None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return client, None
    port = 0
    forwarded_port = _last(headers, port_header)
    digits = forwarded_port.strip() if forwarded_port else ""
    if digits.isascii() and digits.isdigit() and int(digits) <= 65535:  # not "²", a latin-1 digit
        port = int(digits)
    proto = _last(headers, b"x-forwarded-proto")
    scheme = proto.split(",")[-1].strip().lower() if proto else None
    if scheme not in (None, "http", "https", "ws", "wss"):
        scheme = None
    return (host, port), scheme


def apply(
    scope: dict[str, Any],
    networks: list[Network],
    host_header: bytes = b"x-forwarded-for",
    port_header: bytes = b"x-forwarded-port",
) -> None:
    """Rewrite ``scope["client"]`` and ``scope["scheme"]`` from trusted proxy headers."""
    client, proto = resolve_client(scope.get("client"), scope.get("headers", []), networks,
                                   host_header, port_header)
    scope["client"] = client
    if proto is not None:
        secure = proto in ("https", "wss")
        if scope["type"] == "websocket":
            scope["scheme"] = "wss" if secure else "ws"
        else:
            scope["scheme"] = "https" if secure else "http"
