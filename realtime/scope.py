"""Building a connection's scope from a parsed twisted.web request.

Kept apart from the I/O so that the hostile-input tests can feed it anything: a path that
is not UTF-8 after percent-decoding raises ``BadRequest``; nothing else here raises.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.address import IPv4Address, IPv6Address


class BadRequest(ValueError):
    """The request cannot be turned into a scope: answer 400."""


def address_pair(addr: Any) -> tuple[str, int] | None:
    if isinstance(addr, IPv4Address | IPv6Address):
        return (addr.host, addr.port)
    return None


def decode_path(raw_path: bytes) -> str:
    try:
        return unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the path is not UTF-8 after percent-decoding") from None


def split_subprotocols(headers: list[tuple[bytes, bytes]]) -> list[str]:
    offered: list[str] = []
    for name, value in headers:
        if name == b"sec-websocket-protocol":
            for item in value.split(b","):
                item = item.strip()
                if item:
                    offered.append(item.decode("latin-1"))
    return offered


def build_scope(
    kind: str,
    method: bytes,
    uri: bytes,
    raw_headers: list[tuple[bytes, list[bytes]]],
    client: Any,
    server: Any,
    secure: bool,
    root_path: str,
    http_version: bytes = b"HTTP/1.1",
) -> dict[str, Any]:
    """The scope of one request: ``kind`` is ``"websocket"`` or ``"http"``."""
    raw_path, _, query_string = uri.partition(b"?")
    headers = [(name.lower(), value) for name, values in raw_headers for value in values]
    scope: dict[str, Any] = {
        "type": kind,
        "path": decode_path(raw_path),
        "raw_path": raw_path,
        "root_path": root_path,
        "query_string": query_string,
        "headers": headers,
        "client": address_pair(client),
        "server": address_pair(server),
    }
    if kind == "websocket":
        scope["scheme"] = "wss" if secure else "ws"
        scope["subprotocols"] = split_subprotocols(headers)
    else:
        scope["scheme"] = "https" if secure else "http"
        scope["method"] = method.decode("latin-1").upper()
        scope["http_version"] = http_version.partition(b"/")[2].decode("latin-1") or "1.0"
    return scope
