"""Centrifugo's event proxies over HTTP for ``realtime.pubsub``: ``connect``, ``refresh``,
``subscribe``, ``publish``, ``sub_refresh`` and ``rpc`` as JSON POSTs to the backend's
endpoints, requests and responses as Centrifugo's proxy documentation has them.

Why: a team moving from Centrifugo already has these endpoints in its backend (the connect
proxy that authenticates by the session cookie, the subscribe proxy that checks
permissions); it points realtime at them and changes nothing there. HTTP/JSON only (no
gRPC proxies).

The in-process hooks stay the way to decide in Python: ``_Protocol.can_subscribe``,
``can_publish`` and ``rpc`` call the proxy here when it is configured (and, for channels,
enabled in the namespace); a subclass that overrides a hook decides instead (``super()``
still asks the proxy). The connect and refresh proxies have no hook: they are asked for a
connection without a token (nor a user from the handshake), and when such a connection's
``expire_at`` comes.

One ``HTTPConnectionPool`` per process keeps connections to the backend open; a backend
that is down, slow past ``--proxy-timeout``, answers other than 200 or not JSON (or more
than ``MAX_RESPONSE`` bytes) fails that one command with Centrifugo's internal error (100,
temporary: the SDKs retry), logged in one line.

At most ``--proxy-max-inflight`` requests are in flight per process, across endpoints
(``GATE``; Centrifugo has no bound): after a deploy every client reconnects at once and
each connect is a backend request, so the rest wait first come first served, their
``--proxy-timeout`` counted from when they queued (a queue drains, it never grows without
bound in time): one still waiting at three quarters of it fails there (``QUEUE_SHARE``:
the backend gets no request it has no time left to answer), and a call whose client left
is dropped from the queue.

Headers emulation (Centrifugo v6.9's ``emulated_headers``): a browser's WebSocket cannot
set headers, so centrifuge-js sends a ``headers`` map in the connect command; the names
listed in ``--proxy-emulated-headers`` go from it to every proxy request of that
connection, under the handshake's (``--proxy-http-headers``) and over the static ones.
They are the client's: never a name the backend trusts as the edge's.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from realtime.config import MiB, is_token, unread_header

if TYPE_CHECKING:
    from realtime.pubsub import Namespace, _Protocol, _Sub

log = Logger(namespace="realtime.pubsub_proxy")

#: The proxied events, by Centrifugo's names.
EVENTS = ("connect", "refresh", "subscribe", "publish", "sub_refresh", "rpc")
#: The channel-wide ones, which a namespace enables (``subscribe_proxy_enabled``, ...).
CHANNEL_EVENTS = ("subscribe", "publish", "sub_refresh")
#: The largest response body read from the backend.
MAX_RESPONSE = MiB
#: The latest ``expire_at`` taken (the last second of year 9999; Centrifugo's is an int64).
MAX_EXPIRE_AT = 253_402_300_799
#: Seconds before a refresh (sub_refresh) the backend could not answer is asked again
#: (Centrifugo's minute: a backend restart does not end the connections).
RETRY_AFTER = 60.0
#: Headers a proxy request's own connection and framing decide (Twisted's ``Agent`` would
#: send a forwarded ``Content-Length`` beside its own, and a forwarded ``Host`` instead
#: of the endpoint's): neither forwarded nor static ones (Go's client, Centrifugo's,
#: ignores them too). ``Content-Type`` is always ``application/json``.
NOT_SENT_ON = frozenset({"host", "content-length", "transfer-encoding", "connection",
                         "keep-alive", "proxy-connection", "te", "trailer", "upgrade",
                         "expect"})
#: The share of ``--proxy-timeout`` a call may spend waiting for a place: one let in has
#: the rest (a quarter) for the backend. Let in with milliseconds left, it would take a
#: place and the backend's work only to time out: under a sustained overload the oldest
#: waiter is always near its deadline, and every request would.
QUEUE_SHARE = 0.75
#: The longest emulated header value taken from a connect command (bytes of its UTF-8).
MAX_EMULATED_VALUE = 8192
#: ``SubscribeResult.override`` fields: per-connection namespace options.
_OVERRIDES = ("presence", "join_leave", "force_push_join_leave", "force_recovery",
              "force_positioning")


@dataclass(frozen=True)
class ProxyConfig:
    """The endpoints (event -> http(s) URL) and how requests go to them."""

    endpoints: Mapping[str, str] = field(default_factory=dict)
    #: Seconds a request may take (Centrifugo's default: 1 s).
    timeout: float = 1.0
    #: Headers of the client's handshake (WebSocket upgrade, stream request) sent on.
    http_headers: tuple[str, ...] = ()
    #: Headers every request carries (a forwarded header of the same name wins).
    static_headers: tuple[tuple[str, str], ...] = ()
    #: Send the connection's ``meta`` (the connect proxy's) with the other requests.
    include_connection_meta: bool = False
    #: Payloads as ``b64data`` always (Centrifugo's ``binary_encoding``); otherwise only
    #: binary data that is not JSON text goes as ``b64data``.
    binary_encoding: bool = False
    #: Requests in flight at once in this process, every endpoint together (0: no bound);
    #: the others wait in a FIFO queue (``GATE``).
    max_inflight: int = 64
    #: Headers of the connect command's ``headers`` map (Centrifugo's headers emulation)
    #: sent on with every proxy request of that connection.
    emulated_headers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for event, url in self.endpoints.items():
            if event not in EVENTS:
                raise ValueError(f"no {event!r} proxy (known: {', '.join(EVENTS)})")
            check_endpoint(url)
        if not self.timeout > 0 or self.timeout == float("inf"):
            raise ValueError("timeout must be more than 0 seconds")
        if isinstance(self.max_inflight, bool) or not isinstance(self.max_inflight, int) \
                or self.max_inflight < 0:
            raise ValueError("max_inflight must be a whole number, 0 or more")
        for option, names in (("http_headers", self.http_headers),
                              ("emulated_headers", self.emulated_headers)):
            for name in names:
                try:
                    if option == "http_headers":
                        check_forwarded_name(name)
                    check_header_name(name)
                except ValueError as exc:
                    raise ValueError(f"{option}: {exc}") from None
        for name, value in self.static_headers:
            try:
                check_header_name(name)
            except ValueError as exc:
                raise ValueError(f"static_headers: {exc}") from None
            if any(c in value for c in "\r\n\0") or not value.isascii():
                raise ValueError(f"static_headers: {name}'s value must be ASCII without "
                                 "CR, LF or NUL")

    def url(self, event: str) -> str | None:
        return self.endpoints.get(event) or None


def check_header_name(name: str) -> str:
    """``name`` when a proxy request may carry it, else ``ValueError`` saying why."""
    if not is_token(name):
        raise ValueError(f"{name!r} is not a header name")
    if name.lower() in NOT_SENT_ON:
        raise ValueError(f"{name!r} is the proxy request's own header (its connection's "
                         "or framing's), not one to send")
    return name


def check_forwarded_name(name: str) -> str:
    """``name`` when the handshake's scope can carry it (``--proxy-http-headers``), else
    ``ValueError``: a name with ``_`` is left out of scopes (``config.unread_header``). The
    connect command's ``headers`` map is no request header: its names are not checked so."""
    problem = unread_header(name)
    if problem is not None:
        raise ValueError(problem)
    return name


def check_endpoint(url: str) -> str:
    """``url`` when it is an http:// or https:// URL with a host, else ``ValueError``."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a bad port is a ValueError)
    except ValueError:
        raise ValueError(f"expected an http:// or https:// URL, got {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(
            c.isspace() or not c.isprintable() for c in url):
        raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
    return url


def parse_static_header(value: str) -> tuple[str, str]:
    """``Name: value`` (``--proxy-static-header``)."""
    name, sep, text = value.partition(":")
    if not sep or not is_token(name.strip()):
        raise ValueError(f"expected 'Name: value', got {value!r}")
    name, text = check_header_name(name.strip()), text.strip()
    if any(c in text for c in "\r\n\0") or not text.isascii():
        raise ValueError(f"{name}'s value must be ASCII without CR, LF or NUL")
    return name, text


def config() -> ProxyConfig | None:
    from realtime.settings import settings

    found: ProxyConfig | None = settings.pubsub_proxy
    return found


def configured(event: str) -> bool:
    proxy = config()
    return proxy is not None and proxy.url(event) is not None


def enabled(event: str, namespace: Namespace) -> bool:
    """A channel-wide proxy asked for a channel of ``namespace``: its endpoint is set and
    the namespace enables it (``subscribe_proxy_enabled``, ...)."""
    return bool(getattr(namespace, f"{event}_proxy_enabled")) and configured(event)


# -- the HTTP client ------------------------------------------------------------------------------

class ProxyFailure(Exception):
    """The backend gave no usable answer (unreachable, timeout, status, body)."""


class ProxyTimeout(ProxyFailure):
    """No answer within ``--proxy-timeout``."""


class QueueTimeout(ProxyTimeout):
    """``--proxy-timeout`` passed while the call waited for a place (``Gate``)."""


class ProxyGone(Exception):
    """The client left while its call waited for a place: the call is dropped."""


class _Body(Protocol):
    """A response body, up to ``MAX_RESPONSE`` bytes."""

    def __init__(self, limit: int) -> None:
        self.done: Deferred[bytes] = Deferred(self._cancel)
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.done.errback(ProxyFailure(f"response body over {self.limit} bytes"))
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self.parts.append(data)

    def _cancel(self, _: Deferred[bytes]) -> None:
        if self.transport is not None:  # the timeout: stop reading
            self.transport.stopProducing()

    def connectionLost(self, reason: Any = None) -> None:
        from twisted.web.client import ResponseDone

        if self.done.called:
            return
        if reason is not None and reason.check(ResponseDone):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(ProxyFailure("response body cut short"))


class _Client:
    """An ``Agent`` on a persistent pool, made at the first request (in the reactor)."""

    def __init__(self) -> None:
        from twisted.internet import reactor as running
        from twisted.web.client import Agent, HTTPConnectionPool

        reactor: Any = running
        self.reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 16
        self.agent = Agent(reactor, pool=self.pool)
        self.trigger = reactor.addSystemEventTrigger("before", "shutdown", close)

    async def post(self, url: str, body: bytes, headers: dict[bytes, list[bytes]],
                   timeout: float) -> Any:
        from twisted.internet.defer import TimeoutError as DeferTimeout
        from twisted.internet.error import ConnectError
        from twisted.internet.error import TimeoutError as ConnTimeout
        from twisted.web.client import FileBodyProducer, ResponseFailed
        from twisted.web.http_headers import Headers

        async def exchange() -> tuple[int, bytes]:
            from io import BytesIO

            producer: Any = FileBodyProducer(BytesIO(body))
            response: Any = await self.agent.request(b"POST", url.encode("ascii"),
                                                     Headers(headers), producer)
            protocol = _Body(MAX_RESPONSE)
            response.deliverBody(protocol)
            return response.code, await protocol.done

        request = Deferred.fromCoroutine(exchange())
        # Our own timer, not addTimeout: cancelled, the Agent fails with its own errors
        # (ResponseNeverReceived, ConnectingCancelledError, RequestGenerationFailed), which
        # addTimeout passes on as they are: a timeout would be told as another failure.
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            request.cancel()

        timer = self.reactor.callLater(timeout, expire)
        try:
            status, payload = await request
        except Exception as exc:
            if expired or isinstance(exc, DeferTimeout | ConnTimeout):
                raise ProxyTimeout(f"no answer within {timeout:.3g} s") from None
            if isinstance(exc, ProxyFailure):
                raise
            if isinstance(exc, ConnectError):
                raise ProxyFailure(f"cannot connect ({exc.__class__.__name__})") from None
            if isinstance(exc, ResponseFailed):
                reasons = ", ".join(r.getErrorMessage() for r in exc.reasons) or "no response"
                raise ProxyFailure(f"request failed ({reasons})") from None
            # TLS, DNS, a URL Agent refuses
            raise ProxyFailure(f"request failed ({type(exc).__name__}: {exc})") from None
        finally:
            if timer.active():
                timer.cancel()
        if status != 200:
            raise ProxyFailure(f"HTTP status {status}")
        from realtime.consumer import refuse_constant

        try:
            return json.loads(payload, parse_constant=refuse_constant)
        except (ValueError, RecursionError):
            raise ProxyFailure("the response is not JSON") from None


_CLIENT: _Client | None = None


def close() -> Deferred[None]:
    """Close the pool's idle connections (at shutdown; tests, before the leak check)."""
    global _CLIENT
    client, _CLIENT = _CLIENT, None
    if client is None:
        from twisted.internet.defer import succeed

        return succeed(None)
    try:
        client.reactor.removeSystemEventTrigger(client.trigger)
    except (ValueError, KeyError):  # running as that trigger
        pass
    closed: Deferred[None] = client.pool.closeCachedConnections()
    return closed


def _client() -> _Client:
    global _CLIENT
    if _CLIENT is None:
        _CLIENT = _Client()
    return _CLIENT


# -- the bound on requests in flight -------------------------------------------------------------

class _Waiter:
    """A call waiting for a place: its client, what fires when it has one, its deadline."""

    __slots__ = ("done", "p", "ready", "timer")

    def __init__(self, p: _Protocol) -> None:
        self.p = p
        self.ready: Deferred[None] = Deferred(lambda _: GATE._forget(self))
        self.timer: Any = None
        self.done = False


class Gate:
    """At most ``limit`` proxy requests in flight in this process (every endpoint
    together); the other calls wait first come first served. ``calls`` counts them by
    (event, outcome): ``answered`` (a JSON object: a result, an error or a disconnect),
    ``failed`` (unreachable, a status, a body that cannot be used), ``timeout`` (in flight
    past its deadline), ``queue_timeout`` (never left the queue), ``dropped`` (its client
    left while it waited)."""

    def __init__(self) -> None:
        self.inflight = 0
        #: Waiters in order; those timed out or dropped are skipped (``waiting`` counts the
        #: others), so leaving the queue costs nothing.
        self.queue: deque[_Waiter] = deque()
        self.waiting = 0
        self.calls: Counter[tuple[str, str]] = Counter()
        self._granting = False
        #: Queue timeouts not logged yet, and when the last line was (one a second at most:
        #: a reconnect storm is not a line per client).
        self._unlogged = 0
        self._logged_at = float("-inf")

    async def enter(self, p: _Protocol, limit: int, timeout: float, reactor: Any) -> None:
        """A place for one request (``leave`` gives it back); ``QueueTimeout`` when
        ``QUEUE_SHARE`` of ``timeout`` passes first, ``ProxyGone`` when the client leaves
        first."""
        if limit <= 0 or (self.inflight < limit and not self.waiting):
            self.inflight += 1
            return
        waiter = _Waiter(p)
        waiter.timer = reactor.callLater(timeout * QUEUE_SHARE, self._expire, waiter,
                                         timeout * QUEUE_SHARE, limit, reactor)
        self.queue.append(waiter)
        self.waiting += 1
        p._proxy_waiting.add(waiter)
        if limit <= 0 or self.inflight < limit:  # (a limit raised since): let them in now
            self._grant()
        await waiter.ready

    def leave(self) -> None:
        self.inflight -= 1
        self._grant()

    def _grant(self) -> None:
        """Places to the first waiters (a trampoline: a call that fails at once and leaves
        again does not recurse)."""
        if self._granting:
            return
        self._granting = True
        try:
            while self.waiting:
                proxy = config()
                limit = proxy.max_inflight if proxy is not None else 0
                if 0 < limit <= self.inflight:
                    return
                waiter = self.queue.popleft()
                if waiter.done:
                    continue
                if waiter.p._conn.closing_or_closed:  # gone (a stream tells no one at once)
                    self._drop(waiter, ProxyGone())
                    continue
                self._forget(waiter)
                self.inflight += 1
                waiter.ready.callback(None)
        finally:
            self._granting = False

    def _forget(self, waiter: _Waiter) -> None:
        """Out of the queue (it stays in the deque, skipped)."""
        if waiter.done:
            return
        waiter.done = True
        self.waiting -= 1
        waiter.p._proxy_waiting.discard(waiter)
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        if not self.waiting:
            self.queue.clear()

    def _drop(self, waiter: _Waiter, why: Exception) -> None:
        if not waiter.done:
            self._forget(waiter)
            waiter.ready.errback(why)

    def _expire(self, waiter: _Waiter, waited: float, limit: int, reactor: Any) -> None:
        waiter.timer = None
        self._unlogged += 1
        now = reactor.seconds()
        if now - self._logged_at >= 1.0:
            log.warn("pubsub: {count} proxy call(s) waited {waited:.3g} s (3/4 of "
                     "--proxy-timeout) for one of the {limit} places in flight "
                     "(--proxy-max-inflight) and failed (the clients get error 100)",
                     count=self._unlogged, waited=waited, limit=limit)
            self._unlogged, self._logged_at = 0, now
        self._drop(waiter, QueueTimeout(f"no place within {waited:.3g} s"))

    def drop(self, p: _Protocol) -> None:
        """``p``'s client left: its waiting calls go (``ProxyGone``)."""
        for waiter in list(getattr(p, "_proxy_waiting", ())):
            self._drop(waiter, ProxyGone())


GATE = Gate()


def drop_waiting(p: _Protocol) -> None:
    """The connection is over: its calls waiting for a place leave the queue."""
    GATE.drop(p)


# -- requests ----------------------------------------------------------------------------------

def _put_data(body: dict[str, Any], key: str, data: Any, proxy: ProxyConfig) -> None:
    """``data`` as ``key`` (JSON), or ``b64`` + key for binary data (and always with
    ``binary_encoding``)."""
    if isinstance(data, bytes | bytearray | memoryview):
        body["b64" + key] = base64.b64encode(bytes(data)).decode("ascii")
    elif proxy.binary_encoding:
        from realtime.pubsub import _dumps

        body["b64" + key] = base64.b64encode(_dumps(data).encode("utf-8")).decode("ascii")
    else:
        body[key] = data


def take_emulated_headers(p: _Protocol, params: dict[str, Any]) -> None:
    """The connect command's ``headers`` map (Centrifugo's headers emulation): the names in
    ``--proxy-emulated-headers`` (any case) are kept for this connection's proxy requests;
    others are ignored. ``PubSubError`` 107 for a map that is not of strings, or a kept
    value with CR, LF, NUL, non-ASCII, or over ``MAX_EMULATED_VALUE`` bytes."""
    from realtime.pubsub import BAD_REQUEST, PubSubError

    proxy = config()
    given = params.get("headers")
    if proxy is None or not proxy.emulated_headers or given is None or given == {}:
        return
    if not isinstance(given, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in given.items()):
        raise PubSubError(BAD_REQUEST, "bad request: headers must map names to strings")
    wanted = {name.lower() for name in proxy.emulated_headers}
    kept: dict[bytes, bytes] = {}
    for name, value in given.items():
        key = name.lower()
        if key not in wanted:
            continue
        if not value.isascii() or any(c in value for c in "\r\n\0") \
                or len(value) > MAX_EMULATED_VALUE:
            raise PubSubError(BAD_REQUEST, f"bad request: header {name[:64]!r} must be "
                              f"ASCII without CR, LF or NUL, at most {MAX_EMULATED_VALUE} "
                              "bytes")
        kept.setdefault(key.encode("ascii"), value.encode("ascii"))
    p._emulated_headers = kept


def _request(p: _Protocol, event: str, proxy: ProxyConfig) -> dict[str, Any]:
    """The fields every request has: Centrifugo's ``client``, ``transport``,
    ``protocol``, ``encoding`` (and ``user``, ``meta`` past the connect). ``encoding`` is
    the proxy's, as Centrifugo's: ``binary`` with ``binary_encoding`` (payloads as
    ``b64data``), whatever the client's protocol."""
    body: dict[str, Any] = {
        "client": p.client_id, "transport": p.transport_name,
        "protocol": "protobuf" if p.binary else "json",
        "encoding": "binary" if proxy.binary_encoding else "json",
    }
    if event != "connect":
        body["user"] = p.user
        if proxy.include_connection_meta and p.conn_meta is not None:
            body["meta"] = p.conn_meta
    return body


def _headers(p: _Protocol, proxy: ProxyConfig) -> dict[bytes, list[bytes]]:
    """Static headers, under the connect command's emulated ones, under the handshake's
    (Centrifugo's order: the edge's win over the client's map)."""
    headers: dict[bytes, list[bytes]] = {}
    for name, value in proxy.static_headers:
        headers[name.lower().encode("ascii")] = [value.encode("ascii")]
    for key, text in p._emulated_headers.items():
        headers[key] = [text]
    wanted = {name.lower().encode("ascii") for name in proxy.http_headers}
    forwarded: dict[bytes, list[bytes]] = {}
    for raw, value in p.scope.get("headers") or ():
        key = bytes(raw).lower()
        if key in wanted:
            forwarded.setdefault(key, []).append(bytes(value))
    headers.update(forwarded)  # the handshake's win over the emulated and static ones
    headers[b"content-type"] = [b"application/json"]
    return headers


async def _call(p: _Protocol, event: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` to the event's endpoint: the response's ``result`` (``{}`` when it has
    none, for the events that may answer so); its ``error`` as ``PubSubError``, its
    ``disconnect`` as a close (connect, subscribe, publish, rpc only, as Centrifugo);
    anything unexpected as error 100 (temporary), logged."""
    from realtime.pubsub import INTERNAL, PubSubError, _Close, _dumps

    proxy = config()
    url = proxy.url(event) if proxy is not None else None
    if proxy is None or url is None:
        raise PubSubError(INTERNAL, temporary=True)
    client = _client()
    deadline = client.reactor.seconds() + proxy.timeout  # from the queue on
    try:
        await GATE.enter(p, proxy.max_inflight, proxy.timeout, client.reactor)
    except ProxyGone:
        GATE.calls[event, "dropped"] += 1
        raise PubSubError(INTERNAL, temporary=True) from None
    except QueueTimeout:  # (Gate logs these, a line a second at most)
        GATE.calls[event, "queue_timeout"] += 1
        raise PubSubError(INTERNAL, temporary=True) from None
    try:
        try:
            reply = await client.post(url, _dumps(body).encode("utf-8"), _headers(p, proxy),
                                      max(0.001, deadline - client.reactor.seconds()))
        finally:
            GATE.leave()
        result = _answer(event, reply)
    except ProxyFailure as exc:
        GATE.calls[event, "timeout" if isinstance(exc, ProxyTimeout) else "failed"] += 1
        log.warn("pubsub: the {event} proxy {url} failed: {why} (the client gets error "
                 "100)", event=event, url=url, why=str(exc))
        raise PubSubError(INTERNAL, temporary=True) from None
    except (PubSubError, _Close):  # the backend's error or disconnect
        GATE.calls[event, "answered"] += 1
        raise
    GATE.calls[event, "answered"] += 1
    return result


def _answer(event: str, reply: Any) -> dict[str, Any]:
    """The result of a proxy's JSON answer (see ``_call``)."""
    from realtime.pubsub import _Close

    if not isinstance(reply, dict):
        raise ProxyFailure("the response is not a JSON object")
    if event not in ("refresh", "sub_refresh"):
        disconnect = reply.get("disconnect")
        if disconnect is not None:
            raise _Close(_disconnect(disconnect))
        error = reply.get("error")
        if error is not None:
            raise _error(error)
    result = reply.get("result")
    if result is None and event in ("subscribe", "publish", "rpc"):
        return {}
    if result is None and event in ("refresh", "sub_refresh"):
        return {"expired": True}  # (Centrifugo's: no result, an error say, expires)
    if not isinstance(result, dict):
        raise ProxyFailure("no result object in the response")
    return result


def _disconnect(value: Any) -> tuple[int, str]:
    if not isinstance(value, dict):
        raise ProxyFailure("disconnect is not an object")
    code, reason = value.get("code"), value.get("reason", "")
    if isinstance(code, bool) or not isinstance(code, int) or not 3000 <= code <= 4999:
        raise ProxyFailure(f"disconnect code {code!r} is not 3000-4999")
    if not isinstance(reason, str):
        raise ProxyFailure("disconnect reason is not a string")
    # A close frame's reason is at most 123 bytes (Centrifugo asks for 32).
    return code, reason.encode("utf-8")[:123].decode("utf-8", "ignore")


def _error(value: Any) -> Exception:
    from realtime.pubsub import PubSubError

    if not isinstance(value, dict):
        return ProxyFailure("error is not an object")
    code, message = value.get("code"), value.get("message")
    if isinstance(code, bool) or not isinstance(code, int) or not 0 < code < 1 << 32:
        return ProxyFailure(f"error code {code!r} is not a positive integer")
    if message is not None and not isinstance(message, str):
        return ProxyFailure("error message is not a string")
    return PubSubError(code, message or None, temporary=value.get("temporary") is True)


def _payload(result: dict[str, Any], key: str) -> tuple[bool, Any]:
    """(present, value) of ``key`` or its ``b64`` twin (decoded as ``from_bytes`` does)."""
    from realtime.pubsub import from_bytes

    encoded = result.get("b64" + key)
    if encoded is not None:
        if not isinstance(encoded, str):
            raise ProxyFailure(f"b64{key} is not a string")
        try:
            return True, from_bytes(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            raise ProxyFailure(f"b64{key} is not base64") from None
    if key in result:
        return True, result[key]
    return False, None


def _expire_at(result: dict[str, Any]) -> float | None:
    """Unix seconds up to ``MAX_EXPIRE_AT``: an integer past a float's range (an
    OverflowError, a traceback), infinity (1e400 in JSON) or 1e300 (a timer the reactor
    cannot wait for) is a ``ProxyFailure``, as is a negative one."""
    at = result.get("expire_at")
    if at is None or at == 0:
        return None
    if isinstance(at, bool) or not isinstance(at, int | float) or not 0 <= at <= MAX_EXPIRE_AT:
        raise ProxyFailure(f"expire_at {str(at)[:40]} is not Unix seconds "
                           f"(0 to {MAX_EXPIRE_AT})")
    return float(at)


def _info(result: dict[str, Any]) -> tuple[bool, Any]:
    present, info = _payload(result, "info")
    if isinstance(info, bytes):  # it goes into JSON documents (presence, publications)
        raise ProxyFailure("b64info is not JSON text")
    return present, info


# -- the events ----------------------------------------------------------------------------------

@dataclass
class Granted:
    """What a connect, subscribe or publish proxy answered, checked."""

    user: str = ""
    info: tuple[bool, Any] = (False, None)
    data: tuple[bool, Any] = (False, None)
    expire_at: float | None = None
    channels: list[str] = field(default_factory=list)
    meta: Any = None
    override: dict[str, bool] = field(default_factory=dict)
    tags: dict[str, str] | None = None


async def connect(p: _Protocol, params: dict[str, Any]) -> Granted:
    """Centrifugo's ConnectRequest (with ``channels``: the server-side subscriptions a
    client coming back asks to recover, its ``subs``' keys); the result's ``user``,
    ``info``, ``data``, ``channels`` (and the keys of ``subs``), ``expire_at`` and
    ``meta``."""
    from realtime.pubsub import INTERNAL, PubSubError

    proxy = config()
    assert proxy is not None
    body = _request(p, "connect", proxy)
    for key in ("name", "version"):
        if isinstance(params.get(key), str) and params[key]:
            body[key] = params[key]
    asked = params.get("subs")
    if isinstance(asked, dict) and asked:
        body["channels"] = [channel for channel in asked if isinstance(channel, str)]
    if params.get("data") is not None:
        _put_data(body, "data", params["data"], proxy)
    result = await _call(p, "connect", body)
    try:
        user = result.get("user", "")
        if not isinstance(user, str):
            raise ProxyFailure("user is not a string")
        channels = result.get("channels") or []
        subs = result.get("subs") or {}
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels) \
                or not isinstance(subs, dict):
            raise ProxyFailure("channels is not a list of strings (or subs not an object)")
        return Granted(user=user, info=_info(result), data=_payload(result, "data"),
                       expire_at=_expire_at(result), channels=[*channels, *subs],
                       meta=result.get("meta"))
    except ProxyFailure as exc:
        log.warn("pubsub: the connect proxy answered what cannot be used: {why} (the "
                 "client gets error 100)", why=str(exc))
        raise PubSubError(INTERNAL, temporary=True) from None


async def subscribe(p: _Protocol, channel: str, data: Any) -> Granted:
    """Centrifugo's SubscribeRequest: ``info`` (the subscription's chan_info), ``data``
    (in the subscribe reply), ``override`` and ``expire_at``."""
    proxy = config()
    assert proxy is not None
    body = _request(p, "subscribe", proxy)
    body["channel"] = channel
    if data is not None:
        _put_data(body, "data", data, proxy)
    result = await _call(p, "subscribe", body)
    return _checked("subscribe", lambda: Granted(
        info=_info(result), data=_payload(result, "data"), expire_at=_expire_at(result),
        override=_override(result.get("override"))))


async def publish(p: _Protocol, channel: str, data: Any) -> Granted:
    """Centrifugo's PublishRequest: ``data`` (or ``b64data``) replaces what the client
    published, ``tags`` go with the publication; ``skip_history`` is checked (true or
    false) and not acted on, as the server API's: a namespace with history keeps it."""
    proxy = config()
    assert proxy is not None
    body = _request(p, "publish", proxy)
    body["channel"] = channel
    _put_data(body, "data", data, proxy)
    result = await _call(p, "publish", body)

    def granted() -> Granted:
        tags = result.get("tags")
        if tags is not None and not (isinstance(tags, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in tags.items())):
            raise ProxyFailure("tags is not an object of strings")
        if not isinstance(result.get("skip_history", False), bool):
            raise ProxyFailure("skip_history is not true or false")
        return Granted(data=_payload(result, "data"), tags=tags or None)

    return _checked("publish", granted)


async def rpc(p: _Protocol, method: str, data: Any) -> Any:
    """Centrifugo's RPCRequest: the result's ``data`` (or ``b64data``) is the reply's."""
    proxy = config()
    assert proxy is not None
    body = _request(p, "rpc", proxy)
    if method:
        body["method"] = method
    if data is not None:
        _put_data(body, "data", data, proxy)
    result = await _call(p, "rpc", body)
    return _checked("rpc", lambda: _payload(result, "data")[1])


def _checked(event: str, make: Any) -> Any:
    from realtime.pubsub import INTERNAL, PubSubError

    try:
        return make()
    except ProxyFailure as exc:
        log.warn("pubsub: the {event} proxy answered what cannot be used: {why} (the "
                 "client gets error 100)", event=event, why=str(exc))
        raise PubSubError(INTERNAL, temporary=True) from None


def _override(value: Any) -> dict[str, bool]:
    """``{"presence": {"value": true}, ...}`` as ``{"presence": True}``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProxyFailure("override is not an object")
    found = {}
    for name in _OVERRIDES:
        item = value.get(name)
        if item is None:
            continue
        if not isinstance(item, dict) or not isinstance(item.get("value", False), bool):
            raise ProxyFailure(f"override.{name} is not {{\"value\": true|false}}")
        found[name] = bool(item.get("value", False))
    return found


def overridden(namespace: Namespace, override: dict[str, bool]) -> Namespace:
    """The namespace as this subscription sees it (``SubscribeResult.override``):
    recovery and positioning only where the namespace keeps history."""
    if not override:
        return namespace
    if not namespace.history:
        override = {k: v for k, v in override.items()
                    if k not in ("force_recovery", "force_positioning")}
    changes: dict[str, Any] = dict(override)
    return replace(namespace, **changes)


# -- refresh and sub_refresh -------------------------------------------------------------------

def arm_refresh(p: _Protocol, at: float | None) -> None:
    """The proxied connection lasts until ``at`` (Unix seconds; None: for ever): then the
    refresh proxy is asked (without one it closes 3005: the client reconnects and the
    connect proxy is asked again). Its answer must prolong it (a later ``expire_at``);
    any other (``expired``, no ``result``, none or a past ``expire_at``) closes 3005,
    as Centrifugo's; a call that failed is asked again ``RETRY_AFTER`` later."""
    call = p._proxy_refresh_call
    if call is not None and call.active():
        call.cancel()
    p._proxy_refresh_call = None
    if at is not None and not p._conn.closing_or_closed:
        p._proxy_refresh_call = p._conn.reactor.callLater(
            max(0.0, at - p._now()), _refresh_due, p)


def _refresh_due(p: _Protocol) -> None:
    from realtime.pubsub import CLOSE_EXPIRED

    p._proxy_refresh_call = None
    if p._conn.closing_or_closed:
        return
    if not configured("refresh"):
        p._conn.close(*CLOSE_EXPIRED)
        return
    Deferred.fromCoroutine(_refresh(p)).addErrback(
        lambda failure: log.failure("pubsub: the refresh proxy call failed", failure))


async def _prolonged(p: _Protocol, event: str, body: dict[str, Any]
                     ) -> tuple[float | None, bool, Any] | None:
    """A refresh or sub_refresh call's answer: the new expiry (None: expired, or not
    prolonged), whether it gives ``info``, and that info; None when the call failed (an
    answer that cannot be used is logged): the caller asks again after ``RETRY_AFTER``."""
    from realtime.pubsub import PubSubError

    try:
        result = await _call(p, event, body)
        at = None if result.get("expired") is True else _expire_at(result)
        present, info = _info(result)
    except (PubSubError, ProxyFailure) as exc:
        if isinstance(exc, ProxyFailure):
            log.warn("pubsub: the {event} proxy answered what cannot be used: {why}",
                     event=event, why=str(exc))
        return None
    return at, present, info


async def _refresh(p: _Protocol) -> None:
    from realtime.pubsub import CLOSE_EXPIRED

    proxy = config()
    if proxy is None:
        return
    answer = await _prolonged(p, "refresh", _request(p, "refresh", proxy))
    if answer is None:
        if not p._conn.closing_or_closed:  # asked again later: the connection stays
            p._proxy_refresh_call = p._conn.reactor.callLater(RETRY_AFTER, _refresh_due, p)
        return
    at, present, info = answer
    if p._conn.closing_or_closed:
        return
    if at is None or at <= p._now():  # expired, or not prolonged (Centrifugo's: it ends)
        p._conn.close(*CLOSE_EXPIRED)
        return
    if present:
        p.conn_info = info
    arm_refresh(p, at)


def arm_sub_refresh(p: _Protocol, sub: _Sub, at: float | None) -> None:
    """A proxied subscription lasts until ``at``: then the sub_refresh proxy is asked
    where the namespace enables it (else it closes 3006, as an unrefreshed token)."""
    if sub.expiry is not None and sub.expiry.active():
        sub.expiry.cancel()
    sub.expiry = None
    if at is not None and not p._conn.closing_or_closed:
        sub.expiry = p._conn.reactor.callLater(max(0.0, at - p._now()),
                                               _sub_refresh_due, p, sub)


def _sub_refresh_due(p: _Protocol, sub: _Sub) -> None:
    from realtime.pubsub import CLOSE_SUB_EXPIRED

    sub.expiry = None
    if p._conn.closing_or_closed or p._subs.get(sub.channel) is not sub:
        return
    if not enabled("sub_refresh", sub.namespace):
        p._conn.close(*CLOSE_SUB_EXPIRED)
        return
    Deferred.fromCoroutine(_sub_refresh(p, sub)).addErrback(
        lambda failure: log.failure("pubsub: the sub_refresh proxy call failed", failure))


async def _sub_refresh(p: _Protocol, sub: _Sub) -> None:
    from realtime.pubsub import CLOSE_SUB_EXPIRED

    proxy = config()
    if proxy is None:
        return
    body = _request(p, "sub_refresh", proxy)
    body["channel"] = sub.channel
    answer = await _prolonged(p, "sub_refresh", body)
    if answer is None:
        if not p._conn.closing_or_closed and p._subs.get(sub.channel) is sub:
            sub.expiry = p._conn.reactor.callLater(RETRY_AFTER, _sub_refresh_due, p, sub)
        return
    at, present, info = answer
    if p._conn.closing_or_closed or p._subs.get(sub.channel) is not sub:
        return
    if at is None or at <= p._now():  # expired, or not prolonged (Centrifugo's: it ends)
        p._conn.close(*CLOSE_SUB_EXPIRED)
        return
    if present:
        sub.info = p._client_info(info)
    arm_sub_refresh(p, sub, at)
