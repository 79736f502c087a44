"""Checking a request and building a connection's scope from it.

Kept apart from the I/O so that the hostile-input tests can feed it anything. The checks
(``check_request_line``, ``check_header_line``, ``check_h2_head``, ``check_host``,
``check_handshake``) return the status that refuses the input (RFC 9110/9112, RFC 6455),
or ``None``; a path that is not UTF-8 after percent-decoding, or that has a malformed
percent escape, raises ``BadRequest``; nothing else here raises.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NoReturn
from urllib.parse import unquote_to_bytes

from twisted.internet.address import IPv4Address, IPv6Address

from realtime.exceptions import Refuse

#: A request-target longer than this is refused with 414 (RFC 9112 3).
MAX_TARGET = 8192

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])\Z")
# ASCII without controls, space, DEL and "#" (a fragment is not part of a request-target).
_TARGET_BAD = re.compile(rb"[^\x21-\x22\x24-\x7e]")
_PCT_BAD = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_ABSOLUTE = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://")
# Controls other than HTAB (RFC 9110 5.5: NUL, CR and LF are dangerous, the rest invalid),
# and NEL (0x85): obs-text to RFC 9110, but a line break to Python's str.splitlines() once
# the value is decoded as latin-1 (Django does so), and Daphne refuses it too.
_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f\x85]")
_HOST = re.compile(
    rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(:[0-9]*)?\Z"
)
# "identity" is no transfer coding since RFC 7230: twisted.web would frame the body by a
# Content-Length beside it, where a proxy in front that refuses it or reads to the close
# would not (smuggling); 501 as for any other.
_KNOWN_CODINGS = (b"chunked",)


class AsgiKey(dict[str, str]):
    """A ``scope["asgi"]`` value: one per kind of scope, shared by every connection (not a
    dict per idle socket), so read-only: a consumer's ``scope["asgi"]["x"] = 1`` would
    reach every other scope, and raises ``TypeError`` instead. Copies (``dict()``,
    ``copy``, ``deepcopy``, pickling) are plain dicts, free to change."""

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("scope['asgi'] is shared by every connection and read-only; "
                        "change a copy: dict(scope['asgi'])")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __copy__(self) -> dict[str, str]:
        return dict(self)

    def __deepcopy__(self, memo: Any) -> dict[str, str]:
        return dict(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))


#: ``scope["asgi"]``: what each kind of scope speaks (``websocket`` adds send-after-close
#: as OSError, 2.4). ASGI's required key: Daphne and uvicorn set it in every scope, and a
#: Channels consumer may read it.
HTTP_ASGI = AsgiKey(version="3.0", spec_version="2.3")
WEBSOCKET_ASGI = AsgiKey(version="3.0", spec_version="2.4")


def is_token(value: bytes) -> bool:
    return _TOKEN.match(value) is not None


def check_request_line(line: bytes) -> int | None:
    """The status refusing a request line, or ``None`` (RFC 9112 3).

    400: not ``method SP target SP version``, a method that is not a token, a version that
    is not ``HTTP/d.d``, a target with a byte outside visible ASCII, a ``#`` or a malformed
    percent escape, a target in no form the method allows; 505: a version other than 1.0
    and 1.1; 414: a target longer than ``MAX_TARGET``.
    """
    parts = line.split(b" ")
    if len(parts) != 3:
        return 400
    method, target, version = parts
    if not is_token(method) or _VERSION.match(version) is None:
        return 400
    if version not in (b"HTTP/1.0", b"HTTP/1.1"):
        return 505
    if len(target) > MAX_TARGET:
        return 414
    if not target or _TARGET_BAD.search(target) or _PCT_BAD.search(target):
        return 400
    if target.startswith(b"/") or _ABSOLUTE.match(target):
        return None
    if target == b"*" and method == b"OPTIONS":
        return None
    if method == b"CONNECT":
        return None
    return 400


def check_header_line(line: bytes) -> int | None:
    """The status refusing one header field line, or ``None`` (RFC 9110 5, RFC 9112 5-6).

    400: no colon, a name that is not a token (whitespace before the colon included), a
    control character (NUL, CR, LF, ...) or NEL (0x85) in the value, a Content-Length that
    is not digits;
    501: a transfer coding other than ``chunked`` (``identity`` included).
    """
    name, sep, value = line.partition(b":")
    if not sep or not is_token(name):
        return 400
    value = value.strip(b" \t")
    if _VALUE_BAD.search(value):
        return 400
    lname = name.lower()
    if lname == b"content-length" and not value.isdigit():
        return 400
    if lname == b"transfer-encoding" and value.lower() not in _KNOWN_CODINGS:
        return 501
    return None


def check_h2_head(method: bytes, target: bytes,
                  headers: Iterable[tuple[bytes, Sequence[bytes]]]) -> int | None:
    """The status refusing an HTTP/2 request's head, or ``None``: what
    ``check_request_line`` and ``check_header_line`` refuse over HTTP/1.1, since h2 checks
    only NUL, CR, LF and upper case (RFC 9113 8.2.1) and lets the rest (a method that is not
    a token, a raw non-ASCII byte or ``#`` in the path, other controls or NEL in a value)
    through to the application."""
    status = check_request_line(method + b" " + target + b" HTTP/1.1")
    if status is not None:
        return status
    for name, values in headers:
        for value in values:
            status = check_header_line(name + b":" + value)
            if status is not None:
                return status
    return None


def origin_form(target: bytes) -> tuple[bytes, bytes | None]:
    """A request-target in absolute form (``http://host:port/path?query``, which RFC 9112
    3.2.2 has servers accept although clients send it only to proxies) as the path and
    query it names, and its authority (the Host to use, userinfo dropped); any other
    target as it is, with None."""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return target, None
    end = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    authority, path = rest[:end], rest[end:]
    authority = authority.rpartition(b"@")[2]
    if not path.startswith(b"/"):
        path = b"/" + path
    return path, authority


def check_host(hosts: Sequence[bytes], http_version: bytes) -> int | None:
    """400 for an HTTP/1.1 request without Host, any request with more than one, or a Host
    that is not ``host[:port]`` (RFC 9112 3.2)."""
    if len(hosts) > 1:
        return 400
    if not hosts:
        return 400 if http_version == b"HTTP/1.1" else None
    if _HOST.match(hosts[0].strip()) is None:
        return 400
    return None


def _tokens(values: Sequence[bytes]) -> set[bytes]:
    return {t.strip().lower() for v in values for t in v.split(b",")}


def check_handshake(
    method: bytes, http_version: bytes, headers: Mapping[bytes, Sequence[bytes]]
) -> Refuse | None:
    """RFC 6455 4.2.1 for an ``Upgrade: websocket`` request; ``headers`` maps lower-case
    names to their values. 405 (with ``Allow: GET``) for another method; 426 (with
    ``Sec-WebSocket-Version: 13``) for a missing or other version; 400 for everything else
    that is malformed."""
    if method != b"GET":
        return Refuse(405, [(b"Allow", b"GET")])
    if http_version != b"HTTP/1.1":
        return Refuse(400)
    if len(headers.get(b"host", ())) != 1 or len(headers.get(b"upgrade", ())) != 1:
        return Refuse(400)
    if b"upgrade" not in _tokens(headers.get(b"connection", ())):
        return Refuse(400)
    versions = headers.get(b"sec-websocket-version", ())
    if len(versions) > 1:
        return Refuse(400)
    if not versions or versions[0].strip() != b"13":
        return Refuse(426, [(b"Sec-WebSocket-Version", b"13")])
    keys = headers.get(b"sec-websocket-key", ())
    if len(keys) != 1:
        return Refuse(400)
    try:
        raw = binascii.a2b_base64(keys[0].strip(), strict_mode=True)
    except (binascii.Error, ValueError):
        return Refuse(400)
    if len(raw) != 16:
        return Refuse(400)
    return None


class BadRequest(ValueError):
    """The request cannot be turned into a scope: answer 400."""


def address_pair(addr: Any) -> tuple[str, int] | None:
    if isinstance(addr, IPv4Address | IPv6Address):
        return (addr.host, addr.port)
    return None


def decode_path(raw_path: bytes) -> str:
    if _PCT_BAD.search(raw_path):
        raise BadRequest("the path has a malformed percent escape")
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
    """The scope of one request: ``kind`` is ``"websocket"`` or ``"http"``. A header whose
    name holds ``_`` is left out, as Daphne does (CVE-2015-0219): a CGI-style mapping of
    names (Django's ``META``, WSGI adapters) would take ``X_Forwarded_For`` from a client
    for the ``X-Forwarded-For`` that a proxy vouches for."""
    raw_path, _, query_string = uri.partition(b"?")
    headers = [(name.lower(), value) for name, values in raw_headers if b"_" not in name
               for value in values]
    scope: dict[str, Any] = {
        "type": kind,
        "asgi": WEBSOCKET_ASGI if kind == "websocket" else HTTP_ASGI,
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
        # As sent: methods are case-sensitive (RFC 9110 9.1), "get" is not GET (nor to
        # twisted.web, which strips a HEAD response's body only for "HEAD"); as Daphne and
        # uvicorn pass it.
        scope["method"] = method.decode("latin-1")
        scope["http_version"] = http_version.partition(b"/")[2].decode("latin-1") or "1.0"
    return scope
