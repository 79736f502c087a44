"""The exceptions applications raise and catch.

``Refuse`` is how any layer (router, middleware, consumer) says "answer this handshake or
request with an HTTP status": the bridge turns it into a real response. Header values are
checked here, at construction, so a CR/LF can never reach the wire.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from http import HTTPStatus

HeaderPairs = list[tuple[bytes, bytes]]


def _as_bytes(value: str | bytes, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode("latin-1")
    if isinstance(value, bytes):
        return value
    raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}")


_TOKEN_CHARS = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def check_headers(
    headers: Iterable[tuple[str | bytes, str | bytes]] | Mapping[str | bytes, str | bytes] | None,
) -> HeaderPairs:
    """Normalise headers to (bytes, bytes) pairs, refusing anything that could split a response.

    Names must be RFC 9110 tokens; values may not hold CR, LF or NUL. Raises ``ValueError``.
    """
    if not headers:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: HeaderPairs = []
    for name, value in items:
        bname = _as_bytes(name, "header name")
        bvalue = _as_bytes(value, "header value")
        if not bname or not _TOKEN_CHARS.issuperset(bname):
            raise ValueError(f"invalid header name {bname!r}")
        if b"\r" in bvalue or b"\n" in bvalue or b"\x00" in bvalue:
            raise ValueError(f"invalid header value for {bname!r}: CR, LF and NUL are not allowed")
        out.append((bname, bvalue))
    return out


class Refuse(Exception):
    """Refuse a WebSocket handshake or an HTTP request with this HTTP status.

    The response carries ``headers`` and a short ``body`` (the status phrase when empty), never
    exception text. 401 gets a ``WWW-Authenticate`` and 429/503 a ``Retry-After`` when the
    caller gives none.
    """

    def __init__(
        self,
        status: int = 403,
        headers: Iterable[tuple[str | bytes, str | bytes]] | Mapping[str | bytes, str | bytes] = (),
        body: bytes = b"",
    ) -> None:
        if not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError(f"refusal status must be an int from 400 to 599, not {status!r}")
        if not isinstance(body, bytes):
            raise TypeError("refusal body must be bytes")
        self.status = status
        self.headers = check_headers(headers)
        names = {name.lower() for name, _ in self.headers}
        if status == 401 and b"www-authenticate" not in names:
            self.headers.append((b"WWW-Authenticate", b'Bearer realm="realtime"'))
        if status in (429, 503) and b"retry-after" not in names:
            self.headers.append((b"Retry-After", b"1"))
        self.body = body
        super().__init__(status)

    @property
    def phrase(self) -> bytes:
        try:
            return HTTPStatus(self.status).phrase.encode("ascii")
        except ValueError:
            return b"Refused"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status})"


class NoRoute(Refuse):
    """No route matched: 404. Nested routers catch it and try their next route."""

    def __init__(self, path: str = "") -> None:
        super().__init__(404)
        self.path = path


class DenyConnection(Refuse):
    """Refuse the handshake with 403, as Channels' ``DenyConnection`` does."""

    def __init__(
        self,
        headers: Iterable[tuple[str | bytes, str | bytes]] = (),
        body: bytes = b"",
    ) -> None:
        super().__init__(403, headers, body)


class AcceptConnection(Exception):
    """Raised inside ``connect()`` to accept the connection (Channels' name)."""


class StopConsumer(Exception):
    """Raised by a handler to end the consumer: an open socket is closed with 1000."""


class ConnectionClosed(OSError):
    """A send on a WebSocket that is closing or closed (ASGI 2.4 semantics; Daphne is silent)."""


class ChannelFull(Exception):
    """``send`` to a channel whose queue is at capacity (Channels' exception; also
    ``realtime.layers.ChannelFull``)."""


class TooManyGroups(ValueError):
    """``group_add`` for a connection already in as many groups as
    ``--max-groups-per-connection`` allows (Centrifugo's ``channel_limit``): a client that
    asks for rooms one by one cannot make the server hold unbounded memberships."""
