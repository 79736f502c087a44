"""Trusted proxies: the real client address and scheme from ``X-Forwarded-*`` headers.

Only a peer inside ``--trusted-proxies`` may speak for a client. ``X-Forwarded-For`` is
walked from the right (the entry the nearest proxy added) past every trusted address; the
first untrusted one is the client. ``X-Forwarded-Proto`` and ``-Port`` count only then.
Daphne's ``--proxy-headers-host/-port`` name other headers for the address and the port
(``X-Real-IP``); the address header is read the same way, so a single address from a
trusted peer is taken as it is, and anything that is not an IP address leaves the peer as
the client. With ``--root-path-header`` (``Daphne-Root-Path``, which Daphne takes from
anybody) a trusted peer's header of that name is the scope's ``root_path``: the prefix a
proxy mounts the application under, which the path it passes on still begins with
(ASGI's ``path`` includes ``root_path``; ``URLRouter`` strips it, and finds no route for
a path outside it). Off by default: a proxy passes a client's headers on unless told
otherwise, so the operator opts in once the proxy sets (or removes) it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

from realtime.scope import BadRequest, check_request_line

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
    return _forwarded(client, headers, networks, host_header, port_header)


def _forwarded(
    client: tuple[str, int],
    headers: list[tuple[bytes, bytes]],
    networks: list[Network],
    host_header: bytes,
    port_header: bytes,
) -> tuple[tuple[str, int] | None, str | None]:
    """``resolve_client`` for a trusted peer."""
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


#: Daphne's header naming the prefix a proxy mounts the application under.
ROOT_PATH_HEADER = b"daphne-root-path"


#: What a decoded root path may not hold: controls (NUL, CR, LF, C1), a backslash (a
#: browser reads ``/\host`` as ``//host``).
_ROOT_PATH_BAD = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


def root_path_of(value: bytes) -> str:
    """A root path header's value (``Daphne-Root-Path``) as a ``root_path``: percent-decoded
    (as Daphne does), a trailing slash dropped (as ``--root-path``); ``BadRequest`` (400)
    for one that is not an absolute path, a malformed escape or anything not UTF-8 once
    decoded, and, decoded, for a control character or a backslash, an empty segment or a
    dot segment. The mount prefix a proxy names has none of them, and an application joins
    ``root_path`` into the URLs it writes (Django's ``reverse()``): ``//host`` there is
    another site."""
    value = value.strip(b" \t")
    if not value:
        return ""
    is_path = value.startswith(b"/") and b"?" not in value
    if not is_path or check_request_line(b"GET " + value + b" HTTP/1.1") is not None:
        raise BadRequest(f"root path {value!r} is not a path")
    try:
        path = unquote_to_bytes(value).decode("utf-8").rstrip("/")
    except UnicodeDecodeError:
        raise BadRequest("the root path is not UTF-8 once decoded") from None
    if _ROOT_PATH_BAD.search(path) or any(
            segment in ("", ".", "..") for segment in path.split("/")[1:]):
        raise BadRequest(f"root path {value!r} is not a plain path")
    return path


def take_root_path(scope: dict[str, Any], header: bytes = ROOT_PATH_HEADER) -> None:
    """A trusted proxy's root path header (the last, if several; ``header`` in lower case)
    becomes the scope's ``root_path``, over ``--root-path``, and leaves its headers, as
    ``Daphne-Root-Path`` under Daphne."""
    headers = scope["headers"]
    values = [value for name, value in headers if name == header]
    if values:
        scope["root_path"] = root_path_of(values[-1])
        scope["headers"] = [pair for pair in headers if pair[0] != header]


def apply(
    scope: dict[str, Any],
    networks: list[Network],
    host_header: bytes = b"x-forwarded-for",
    port_header: bytes = b"x-forwarded-port",
    root_path_header: bytes = b"",
) -> None:
    """Rewrite ``scope["client"]`` and ``scope["scheme"]`` from trusted proxy headers, and
    ``scope["root_path"]`` from ``root_path_header`` (none if empty); ``BadRequest`` for a
    root path that is not one. The header names are lower case."""
    peer = scope.get("client")
    if peer is None or not _trusted(peer[0], networks):
        return  # its headers are ordinary ones
    if root_path_header:
        take_root_path(scope, root_path_header)
    client, proto = _forwarded(peer, scope["headers"], networks, host_header, port_header)
    scope["client"] = client
    if proto is not None:
        secure = proto in ("https", "wss")
        if scope["type"] == "websocket":
            scope["scheme"] = "wss" if secure else "ws"
        else:
            scope["scheme"] = "https" if secure else "http"
