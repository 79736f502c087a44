"""Centrifugo's event proxies over HTTP for ``realtime.pubsub``: ``connect``, ``refresh``,
``subscribe``, ``publish``, ``sub_refresh`` and ``rpc`` as JSON POSTs to the backend's
endpoints, requests and responses as Centrifugo's proxy documentation has them.

Why: a team moving from Centrifugo already has these endpoints in its backend (the connect
proxy that authenticates by the session cookie, the subscribe proxy that checks
permissions); it points realtime at them and changes nothing there. HTTP/JSON only (no
gRPC proxies: a ``grpc://`` endpoint stops start-up).

Which proxy, as Centrifugo v6 has it: each event has its own (``--proxy-connect-endpoint``,
..., with the ``--proxy-*`` options, and ``--proxy-event``'s settings over them for that
event alone); named proxies (``--proxy``, Centrifugo's ``proxies``: each with its own
endpoint, timeout, headers and ``status_to_code_transforms``) are picked per namespace
(``subscribe_proxy_name``, ``publish_proxy_name``, ``sub_refresh_proxy_name``) and per RPC
namespace (``--rpc-namespace NAME:proxy_enabled,proxy_name=...``: a method ``NAME:rest``;
without any RPC namespace every method goes to ``--proxy-rpc-endpoint``, as before).

The in-process hooks stay the way to decide in Python: ``_Protocol.can_subscribe``,
``can_publish`` and ``rpc`` call the proxy here when it is configured (and, for channels,
enabled in the namespace); a subclass that overrides a hook decides instead (``super()``
still asks the proxy). The connect and refresh proxies have no hook: they are asked for a
connection without a token (nor a user from the handshake), and when such a connection's
``expire_at`` comes.

One ``HTTPConnectionPool`` per process keeps connections to the backends open; a backend
that is down, slow past its proxy's timeout, answers other than 200 (and a status its
proxy's ``status_to_code_transforms`` does not name) or not JSON (or more than
``MAX_RESPONSE`` bytes) fails that one command with Centrifugo's internal error (100,
temporary: the SDKs retry), logged in one line.

At most ``--proxy-max-inflight`` requests are in flight per proxy and process (a proxy's
own ``max_inflight`` instead; ``GATES``, a queue per proxy: each event's own proxy and each
named one; Centrifugo has no bound): after a deploy every client reconnects at once and
each connect is a backend request, so the rest wait first come first served, their proxy's
timeout counted from when they queued (a queue drains, it never grows without bound in
time): one still waiting at three quarters of it fails there (``QUEUE_SHARE``: the backend
gets no request it has no time left to answer), and a call whose client left is dropped
from the queue. A proxy of its own: a slow backend with a long timeout fills its own
places, never a fast one's.

Headers emulation (Centrifugo v6.9's ``emulated_headers``): a browser's WebSocket cannot
set headers, so centrifuge-js sends a ``headers`` map in the connect command; the names
a proxy lists (``--proxy-emulated-headers``, a named proxy's ``emulated_headers``) go from
it to that proxy's requests of that connection, under the handshake's
(``--proxy-http-headers``) and over the static ones.
They are the client's: never a name the backend trusts as the edge's.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
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
#: The name that stands for an event's own proxy (Centrifugo's ``default``, reserved).
DEFAULT = "default"
#: Centrifugo's rule for the name of a proxy (``proxies``) and of an RPC namespace.
_NAME = re.compile(r"[-a-zA-Z0-9_.]{2,}\Z")
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
class StatusTransform:
    """The backend's HTTP ``status`` answered to the client as Centrifugo's error
    (``code``, ``message``, ``temporary``) or disconnect (``code``, ``reason``) instead of
    error 100: Centrifugo's ``http.status_to_code_transforms``."""

    status: int
    error: tuple[int, str, bool] | None = None
    disconnect: tuple[int, str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.status, bool) or not isinstance(self.status, int) \
                or not 100 <= self.status <= 599 or self.status == 200:
            raise ValueError(f"status {self.status!r} is not an HTTP status other than 200")
        if (self.error is None) == (self.disconnect is None):
            raise ValueError(f"status {self.status}: an error or a disconnect, one of them")
        code, text = (self.error or self.disconnect or (0, ""))[:2]
        if self.error is not None and (isinstance(code, bool) or not isinstance(code, int)
                                       or not 0 < code < 1 << 32):
            raise ValueError(f"status {self.status}: error code {code!r} is not a positive "
                             "integer")
        if self.disconnect is not None and (isinstance(code, bool) or not isinstance(
                code, int) or not 3000 <= code <= 4999):
            raise ValueError(f"status {self.status}: disconnect code {code!r} is not "
                             "3000-4999")
        if not isinstance(text, str):
            raise ValueError(f"status {self.status}: the message must be a string")
        if self.disconnect is not None and len(text.encode("utf-8")) > 123:
            raise ValueError(f"status {self.status}: a disconnect reason is 123 bytes of "
                             f"UTF-8 at most (a close frame's), got {len(text.encode())}")

    def answer(self) -> dict[str, Any]:
        """The answer it stands for, as a backend's JSON would have it."""
        if self.error is not None:
            code, message, temporary = self.error
            return {"error": {"code": code, "message": message, "temporary": temporary}}
        assert self.disconnect is not None
        return {"disconnect": {"code": self.disconnect[0], "reason": self.disconnect[1]}}


@dataclass(frozen=True)
class Proxy:
    """One proxy, Centrifugo's proxy object: an endpoint and how requests go to it. An
    event's own (``name`` ``default``: ``--proxy-connect-endpoint`` with the ``--proxy-*``
    options, ``--proxy-event``'s over them) or a named one (``--proxy``)."""

    endpoint: str
    name: str = "default"
    #: Seconds a request may take (Centrifugo's default: 1 s).
    timeout: float = 1.0
    #: Headers of the client's handshake (WebSocket upgrade, stream request) sent on.
    http_headers: tuple[str, ...] = ()
    #: Headers every request carries (a forwarded header of the same name wins).
    static_headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # (secrets)
    #: Send the connection's ``meta`` (the connect proxy's) with the other requests.
    include_connection_meta: bool = False
    #: Payloads as ``b64data`` always (Centrifugo's ``binary_encoding``); otherwise only
    #: binary data that is not JSON text goes as ``b64data``.
    binary_encoding: bool = False
    #: Headers of the connect command's ``headers`` map (Centrifugo's headers emulation)
    #: sent on with this proxy's requests.
    emulated_headers: tuple[str, ...] = ()
    #: HTTP statuses answered as an error or a disconnect (not error 100).
    status_to_code_transforms: tuple[StatusTransform, ...] = ()
    #: Requests in flight to this proxy at once in this process (0: no bound); None:
    #: ``--proxy-max-inflight``'s (``ProxyConfig.max_inflight``). realtime's own setting:
    #: Centrifugo has no bound.
    max_inflight: int | None = None

    def __post_init__(self) -> None:
        check_endpoint(self.endpoint)
        if self.max_inflight is not None and (
                isinstance(self.max_inflight, bool) or not isinstance(self.max_inflight, int)
                or self.max_inflight < 0):
            raise ValueError("max_inflight must be a whole number, 0 or more")
        if not isinstance(self.timeout, int | float) or isinstance(self.timeout, bool) \
                or not self.timeout > 0 or self.timeout == float("inf"):
            raise ValueError("timeout must be more than 0 seconds")
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
        statuses = [t.status for t in self.status_to_code_transforms]
        if len(set(statuses)) != len(statuses):
            raise ValueError("status_to_code_transforms: a status given twice")

    def transform(self, status: int) -> StatusTransform | None:
        for transform in self.status_to_code_transforms:
            if transform.status == status:
                return transform
        return None


@dataclass(frozen=True)
class RpcNamespace:
    """Centrifugo's RPC namespace (``rpc.namespaces``; ``""``: ``rpc.without_namespace``):
    a method ``NAME:rest`` goes to ``proxy_name``'s proxy when ``proxy_enabled``."""

    name: str = ""
    proxy_enabled: bool = False
    #: A ``--proxy`` name; ``""`` or ``default``: ``--proxy-rpc-endpoint``.
    proxy_name: str = ""


@dataclass(frozen=True)
class ProxyConfig:
    """The events' own proxies (event -> http(s) URL, with the settings below, and
    ``events``' over them for one event), the named ones, RPC namespaces and the bound on
    requests in flight."""

    endpoints: Mapping[str, str] = field(default_factory=dict)
    #: Seconds a request may take (Centrifugo's default: 1 s).
    timeout: float = 1.0
    #: Headers of the client's handshake (WebSocket upgrade, stream request) sent on.
    http_headers: tuple[str, ...] = ()
    #: Headers every request carries (a forwarded header of the same name wins).
    static_headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # (secrets)
    #: Send the connection's ``meta`` (the connect proxy's) with the other requests.
    include_connection_meta: bool = False
    #: Payloads as ``b64data`` always (Centrifugo's ``binary_encoding``); otherwise only
    #: binary data that is not JSON text goes as ``b64data``.
    binary_encoding: bool = False
    #: Requests in flight at once in this process to each proxy that sets no
    #: ``max_inflight`` of its own (0: no bound); the others wait in that proxy's FIFO
    #: queue (``GATES``).
    max_inflight: int = 64
    #: Headers of the connect command's ``headers`` map (Centrifugo's headers emulation)
    #: sent on with every proxy request of that connection.
    emulated_headers: tuple[str, ...] = ()
    #: One event's own settings over the ones above (``--proxy-event``: ``timeout``,
    #: ``http_headers``, ``status_to_code_transforms``, ... as ``Proxy`` names them).
    events: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Named proxies (``--proxy``, Centrifugo's ``proxies``) by name.
    proxies: Mapping[str, Proxy] = field(default_factory=dict)
    #: RPC namespaces by name (``--rpc-namespace``); None: every method goes to the rpc
    #: endpoint.
    rpc_namespaces: Mapping[str, RpcNamespace] | None = None
    #: What ends an RPC namespace's name in a method (``--rpc-namespace-boundary``).
    rpc_namespace_boundary: str = ":"
    #: (made of the fields) The events' own proxies, and every proxy's emulated headers.
    _own: Mapping[str, Proxy] = field(init=False, default_factory=dict, repr=False,
                                      compare=False)
    all_emulated: frozenset[str] = field(init=False, default=frozenset(), repr=False,
                                         compare=False)

    def __post_init__(self) -> None:
        for event in [*self.endpoints, *self.events]:
            if event not in EVENTS:
                raise ValueError(f"no {event!r} proxy (known: {', '.join(EVENTS)})")
        for event in self.events:
            if event not in self.endpoints:
                raise ValueError(f"settings for the {event} proxy, which has no endpoint")
        if isinstance(self.max_inflight, bool) or not isinstance(self.max_inflight, int) \
                or self.max_inflight < 0:
            raise ValueError("max_inflight must be a whole number, 0 or more")
        defaults = {"timeout": self.timeout, "http_headers": self.http_headers,
                    "static_headers": self.static_headers,
                    "include_connection_meta": self.include_connection_meta,
                    "binary_encoding": self.binary_encoding,
                    "emulated_headers": self.emulated_headers}
        own = {event: Proxy(endpoint=url, **{**defaults, **self.events.get(event, {})})
               for event, url in self.endpoints.items()}
        for name, proxy in self.proxies.items():
            if name != proxy.name or not is_proxy_name(name):
                raise ValueError(f"{name!r} is not a proxy's name")
        emulated = {header.lower() for proxy in [*own.values(), *self.proxies.values()]
                    for header in proxy.emulated_headers}
        # (set on a frozen dataclass: what the fields make, once)
        object.__setattr__(self, "_own", own)
        object.__setattr__(self, "all_emulated", frozenset(emulated))

    def url(self, event: str) -> str | None:
        return self.endpoints.get(event) or None

    def own(self, event: str) -> Proxy | None:
        """The event's own proxy (``--proxy-EVENT-endpoint``), if it has one."""
        return self._own.get(event)

    def named(self, event: str, name: str) -> Proxy | None:
        """``name``'s proxy: the event's own for ``""`` and ``default``."""
        if name in ("", DEFAULT):
            return self.own(event)
        return self.proxies.get(name)

    def for_channel(self, event: str, namespace: Namespace) -> Proxy | None:
        """The proxy a channel-wide event of ``namespace`` asks (``subscribe_proxy_name``,
        ...), where the namespace enables it."""
        if not getattr(namespace, f"{event}_proxy_enabled"):
            return None
        return self.named(event, getattr(namespace, f"{event}_proxy_name"))

    @property
    def answers_rpc(self) -> bool:
        """Some method reaches an RPC proxy: the rpc endpoint without RPC namespaces, else
        a namespace that enables its proxy. Centrifugo sets a client's RPC handler only
        then (``internal/client/handler.go``, ``Handler.Setup``: ``client.OnRPC`` where
        ``rpcProxyHandler != nil``), and centrifuge answers 108 without one."""
        if self.rpc_namespaces is None:
            return self.own("rpc") is not None
        return any(namespace.proxy_enabled
                   and self.named("rpc", namespace.proxy_name) is not None
                   for namespace in self.rpc_namespaces.values())

    def for_rpc(self, method: str) -> Proxy:
        """The proxy of ``method``: without RPC namespaces, the rpc endpoint for every
        method; with them, Centrifugo's rule: the namespace before the first boundary
        (none: ``rpc.without_namespace``, the ``""`` one), error 104 for a namespace not
        configured, 108 (not available) where its proxy is not enabled; 108 for every
        method where none is (``answers_rpc``: no RPC handler, as Centrifugo)."""
        from realtime.pubsub import METHOD_NOT_FOUND, NOT_AVAILABLE, PubSubError

        if not self.answers_rpc:
            raise PubSubError(NOT_AVAILABLE)
        if self.rpc_namespaces is None:
            proxy = self.own("rpc")
            assert proxy is not None  # (answers_rpc)
            return proxy
        boundary = self.rpc_namespace_boundary
        name = method.partition(boundary)[0] if boundary and boundary in method else ""
        namespace = self.rpc_namespaces.get(name)
        if namespace is None and name:
            raise PubSubError(METHOD_NOT_FOUND)
        if namespace is None or not namespace.proxy_enabled:
            raise PubSubError(NOT_AVAILABLE)
        proxy = self.named("rpc", namespace.proxy_name)
        if proxy is None:  # (refused at start-up)
            raise PubSubError(NOT_AVAILABLE)
        return proxy


def check_header_name(name: str) -> str:
    """``name`` when a proxy request may carry it, else ``ValueError`` saying why."""
    if not is_token(name):
        raise ValueError(f"{name!r} is not a header name")
    if name.lower() in NOT_SENT_ON:
        raise ValueError(f"{name!r} is the proxy request's own header (its connection's "
                         "or framing's), not one to send")
    return name


def is_proxy_name(name: str) -> bool:
    """Centrifugo's rule: 2 or more letters, digits, ``-``, ``_``, ``.``."""
    return isinstance(name, str) and bool(_NAME.match(name))


def check_forwarded_name(name: str) -> str:
    """``name`` when the handshake's scope can carry it (``--proxy-http-headers``), else
    ``ValueError``: a name with ``_`` is left out of scopes (``config.unread_header``). The
    connect command's ``headers`` map is no request header: its names are not checked so."""
    problem = unread_header(name)
    if problem is not None:
        raise ValueError(problem)
    return name


def _without_password(url: Any) -> Any:
    """``url`` for a message: a ``user:password@``'s password as ``***`` (found without
    parsing, since the URL is shown because it did not parse)."""
    if not isinstance(url, str):
        return url
    return re.sub(r"^([^/?#]*//[^/?#@:]*):[^/?#]*@", r"\1:***@", url)


def check_endpoint(url: str) -> str:
    """``url`` when it is an http:// or https:// URL with a host, else ``ValueError``
    (gRPC's ``grpc://``: said so, they are not built; a ``user:password@``, which Go's
    client sends as basic auth and Twisted's ``Agent`` takes for the host, refused)."""
    if isinstance(url, str) and url.lower().startswith("grpc://"):
        raise ValueError(f"gRPC proxies are not built (HTTP/JSON only), got "
                         f"{_without_password(url)!r}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a bad port is a ValueError)
    except ValueError:
        raise ValueError(f"expected an http:// or https:// URL, got "
                         f"{_without_password(url)!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(
            c.isspace() or not c.isprintable() for c in url):
        raise ValueError(f"expected an http:// or https:// URL, got "
                         f"{_without_password(url)!r}")
    if "@" in parts.netloc:  # (Agent would take it for the host; the password never shown)
        user, _, host = parts.netloc.rpartition("@")
        shown = parts._replace(netloc=f"{user.partition(':')[0]}"
                                      f"{':***' if ':' in user else ''}@{host}").geturl()
        raise ValueError("a user and password in the URL are not sent (an Authorization "
                         f"static header is), got {shown!r}")
    return url


def parse_static_header(value: str) -> tuple[str, str]:
    """``Name: value`` (``--proxy-static-header``). An error names the header, never its
    value (a static header is where a backend's shared secret goes)."""
    name, sep, text = value.partition(":")
    if not sep:
        raise ValueError("expected 'Name: value' (no ':' in it)")
    if not is_token(name.strip()):
        raise ValueError(f"expected 'Name: value', got the name {name.strip()!r}")
    name, text = check_header_name(name.strip()), text.strip()
    if any(c in text for c in "\r\n\0") or not text.isascii():
        raise ValueError(f"{name}'s value must be ASCII without CR, LF or NUL")
    return name, text


# -- named proxies, an event's own settings, RPC namespaces (the options) -----------------------

#: The settings of ``--proxy`` and ``--proxy-event`` (``key=value``; the flags bare).
SPEC_KEYS = ("endpoint", "timeout", "http_headers", "emulated_headers", "static_header",
             "include_connection_meta", "binary_encoding", "status_to_error",
             "status_to_temporary_error", "status_to_disconnect", "max_inflight")
#: A comma ends a setting where a word (``key=``, a flag) follows: a comma inside a value
#: is one only before a digit, a symbol or ``word:`` (write a URL's as ``%2C``; a header
#: value's in the TOML form). A word that is no setting is refused, never read as part of
#: the value before it.
_SPEC_SPLIT = re.compile(r",(?=\s*[A-Za-z_][-\w]*\s*(?:=|,|\Z))")
#: Centrifugo's proxy object keys a TOML table takes (``http`` holds ``static_headers``
#: and ``status_to_code_transforms`` there; flat here as well), and realtime's own
#: ``max_inflight`` (not Centrifugo's: ``--centrifugo-config`` refuses it).
TABLE_KEYS = ("endpoint", "timeout", "http_headers", "emulated_headers", "static_headers",
              "include_connection_meta", "binary_encoding", "status_to_code_transforms",
              "http", "grpc_metadata", "grpc", "max_inflight")


def _flag(value: Any, where: str) -> bool:
    if value is None or value is True or (isinstance(value, str) and value.strip().lower()
                                          in ("true", "1", "yes")):
        return True
    if value is False or (isinstance(value, str) and value.strip().lower()
                          in ("false", "0", "no")):
        return False
    raise ValueError(f"{where}: expected true or false, got {value!r}")


def _spec_items(spec: str, shape: str, split: re.Pattern[str] = _SPEC_SPLIT
                ) -> tuple[str, list[tuple[str, str | None]]]:
    """``NAME:key=value,flag,...`` as the name and its (key, value or None) items."""
    name, sep, rest = spec.partition(":")
    if not sep:
        raise ValueError(f"expected {shape}, got {spec!r}")
    items: list[tuple[str, str | None]] = []
    for part in split.split(rest):
        if part.strip():
            key, has_value, value = part.partition("=")
            items.append((key.strip().replace("-", "_"), value.strip() if has_value else None))
    return name.strip(), items


def _spec_transform(key: str, value: str, where: str) -> StatusTransform:
    """``STATUS:CODE[:TEXT]`` of ``status_to_error`` (``_temporary_error``,
    ``_disconnect``)."""
    status, _, rest = value.partition(":")
    code, _, text = rest.partition(":")
    if not status.strip().isdigit() or not code.strip().isdigit():
        raise ValueError(f"{where}: expected STATUS:CODE[:MESSAGE], got {value!r}")
    if key == "status_to_disconnect":
        return StatusTransform(int(status), disconnect=(int(code), text))
    return StatusTransform(int(status), error=(int(code), text, key.endswith("temporary_error")))


def _spec_settings(items: list[tuple[str, str | None]], where: str) -> dict[str, Any]:
    """A ``--proxy``/``--proxy-event`` spec's items as ``Proxy`` keyword arguments."""
    found: dict[str, Any] = {}
    statics: list[tuple[str, str]] = []
    transforms: list[StatusTransform] = []
    for key, value in items:
        at = f"{where}: {key}"
        if key not in SPEC_KEYS:
            raise ValueError(f"{where}: no setting {key!r} (known: {', '.join(SPEC_KEYS)}; "
                             "a comma inside a value: %2C in a URL, or the TOML form)")
        if key in found:
            raise ValueError(f"{at} given twice")
        try:
            if key in ("include_connection_meta", "binary_encoding"):
                found[key] = _flag(value, at)
            elif value is None:
                raise ValueError(f"{at}: expected {key}=VALUE")
            elif key == "static_header":
                statics.append(parse_static_header(value))
            elif key.startswith("status_to_"):
                transforms.append(_spec_transform(key, value, at))
            elif key in ("http_headers", "emulated_headers"):
                found[key] = tuple(w for w in re.split(r"[+\s]+", value) if w)
            elif key == "max_inflight" and value.isascii() and value.isdigit():
                found[key] = int(value)
            else:
                found[key] = value
        except ValueError as exc:
            message = str(exc)
            raise ValueError(message if message.startswith(at) else f"{at}: {message}") \
                from None
    if statics:
        found["static_headers"] = tuple(statics)
    if transforms:
        found["status_to_code_transforms"] = tuple(transforms)
    return _typed(found, where)


def _strings(value: Any, at: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{at}: expected a list of names, got {value!r}")
    return tuple(value)


def _says_something(value: Any) -> bool:
    """A TOML value with something on in it: a table or array of ``false``, ``""``,
    ``0`` and empty ones (an exported v6 config's ``grpc``, ``tls``) says nothing."""
    if isinstance(value, dict):
        return any(_says_something(item) for item in value.values())
    if isinstance(value, list):
        return any(_says_something(item) for item in value)
    return bool(value)


def _kind(value: Any) -> str:
    """What a TOML value is, for a message that must not show it (a secret's table)."""
    kinds = ((bool, "true or false"), (int, "an integer"), (float, "a number"),
             (str, "a string"), (list, "an array"), (dict, "a table"))
    return next((kind for cls, kind in kinds if isinstance(value, cls)), "a date or time")


def _table_transform(value: Any, at: str) -> StatusTransform:
    """``{status_code = 404, to_error = {code = 404, message = "...", temporary = false}}``
    or ``to_disconnect = {code = 4904, reason = "..."}`` (a code of 0: not given, as
    Centrifugo reads it)."""
    if not isinstance(value, dict) or set(value) - {"status_code", "to_error",
                                                    "to_disconnect"}:
        raise ValueError(f"{at}: expected {{status_code, to_error or to_disconnect}}, got "
                         f"{value!r}")
    error, disconnect = value.get("to_error") or {}, value.get("to_disconnect") or {}
    if not isinstance(error, dict) or set(error) - {"code", "message", "temporary"} \
            or not isinstance(disconnect, dict) or set(disconnect) - {"code", "reason"}:
        raise ValueError(f"{at}: to_error is {{code, message, temporary}}, to_disconnect "
                         "{code, reason}")
    if error.get("temporary", False) not in (True, False):
        raise ValueError(f"{at}: to_error.temporary: expected true or false")
    try:
        return StatusTransform(
            value.get("status_code", 0),
            error=(error["code"], error.get("message", ""), error.get("temporary", False))
            if error.get("code") else None,
            disconnect=(disconnect["code"], disconnect.get("reason", ""))
            if disconnect.get("code") else None)
    except ValueError as exc:
        raise ValueError(f"{at}: {exc}") from None


def _table_settings(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A TOML table of Centrifugo's proxy object (``http.static_headers`` or
    ``static_headers``, ...) as ``Proxy`` keyword arguments."""
    found: dict[str, Any] = {}
    for key, value in table.items():
        at = f"{where}: {key}"
        if key not in TABLE_KEYS:
            raise ValueError(f"{where}: no setting {key!r} (known: {', '.join(TABLE_KEYS)})")
        if key in ("grpc_metadata", "grpc"):
            if _says_something(value):  # (an exported config's defaults say nothing)
                raise ValueError(f"{at}: gRPC proxies are not built (HTTP/JSON only)")
        elif key == "http":  # (its static_headers' values never in a message: secrets)
            known = ("static_headers", "status_to_code_transforms", "tls")
            if not isinstance(value, dict):
                raise ValueError(f"{at}: expected a table of static_headers and "
                                 f"status_to_code_transforms, got {_kind(value)}")
            for inner in value:
                if inner not in known:
                    raise ValueError(f"{at}: no key {inner!r} (known: {', '.join(known)})")
            if _says_something(value.get("tls")):
                raise ValueError(f"{at}.tls: not built (https uses the system's CA "
                                 "certificates)")
            for inner in ("static_headers", "status_to_code_transforms"):
                if inner in value:
                    if inner in table:
                        raise ValueError(f"{where}: {inner} given twice (and in http)")
                    found[inner] = value[inner]
        elif key in ("include_connection_meta", "binary_encoding"):
            if not isinstance(value, bool):
                raise ValueError(f"{at}: expected true or false, got {value!r}")
            found[key] = value
        elif key in ("http_headers", "emulated_headers"):
            found[key] = _strings(value, at)
        else:
            found[key] = value
    statics = found.get("static_headers")
    if statics is not None:
        if not isinstance(statics, dict):
            raise ValueError(f"{where}: static_headers: expected a table of strings, got "
                             f"{_kind(statics)}")
        for name, text in statics.items():
            if not isinstance(text, str):
                raise ValueError(f"{where}: static_headers: {name}: expected a string, got "
                                 f"{_kind(text)}")
        found["static_headers"] = tuple(statics.items())
    transforms = found.get("status_to_code_transforms")
    if transforms is not None:
        if not isinstance(transforms, list):
            raise ValueError(f"{where}: status_to_code_transforms: expected a list of "
                             f"tables, got {transforms!r}")
        found["status_to_code_transforms"] = tuple(
            _table_transform(item, f"{where}: status_to_code_transforms[{i}]")
            for i, item in enumerate(transforms))
    if isinstance(found.get("timeout"), bool) or not isinstance(
            found.get("timeout", ""), str | int | float):
        raise ValueError(f"{where}: timeout: expected a duration, got {found['timeout']!r}")
    if "timeout" in found and not isinstance(found["timeout"], str):
        found["timeout"] = str(found["timeout"])
    if not isinstance(found.get("endpoint", ""), str):
        raise ValueError(f"{where}: endpoint: expected a URL, got {found['endpoint']!r}")
    return _typed(found, where)


def _typed(found: dict[str, Any], where: str) -> dict[str, Any]:
    """Settings checked one by one, each error naming its key."""
    from realtime.pubsub import _duration

    if "endpoint" in found:
        try:
            check_endpoint(found["endpoint"])
        except ValueError as exc:
            raise ValueError(f"{where}: endpoint: {exc}") from None
    if "timeout" in found:
        seconds = _duration(found["timeout"], f"{where}: timeout")
        if not 0 < seconds < float("inf"):
            raise ValueError(f"{where}: timeout: must be more than 0, got "
                             f"{found['timeout']!r}")
        found["timeout"] = seconds
    places = found.get("max_inflight", 0)
    if isinstance(places, bool) or not isinstance(places, int) or places < 0:
        raise ValueError(f"{where}: max_inflight: expected a whole number of requests, 0 or "
                         f"more (0: no bound), got {places!r}")
    for option in ("http_headers", "emulated_headers"):
        for name in found.get(option, ()):
            try:
                check_header_name(name)
            except ValueError as exc:
                raise ValueError(f"{where}: {option}: {exc}") from None
    for name, value in found.get("static_headers", ()):
        try:
            parse_static_header(f"{name}: {value}")
        except ValueError as exc:
            raise ValueError(f"{where}: static_headers: {exc}") from None
    return found


def _proxy_named(name: Any) -> str:
    if name == DEFAULT:
        raise ValueError(f"{DEFAULT!r} is reserved (it names the events' own proxies)")
    if not is_proxy_name(name):
        raise ValueError(f"a proxy's name is 2 or more letters, digits, '-', '_', '.' "
                         f"(Centrifugo's rule), got {name!r}")
    return str(name)


def _made(name: str, settings: dict[str, Any], where: str) -> Proxy:
    if "endpoint" not in settings:
        raise ValueError(f"{where}: needs an endpoint (an http:// or https:// URL)")
    try:
        return Proxy(name=name, **settings)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def parse_proxy(spec: str) -> Proxy:
    """``NAME:endpoint=URL,timeout=2s,http_headers=Cookie+Authorization,
    static_header=X-Key: v,status_to_error=404:404:not found,...`` (``--proxy``): a named
    proxy, Centrifugo's ``proxies`` item. Its settings are its own: the ``--proxy-*``
    options are the events' own proxies'. ``ValueError`` names what is wrong."""
    name, items = _spec_items(spec, "NAME:endpoint=URL,SETTING=VALUE,...")
    _proxy_named(name)
    return _made(name, _spec_settings(items, repr(name)), repr(name))


def proxy_from_table(table: Any) -> Proxy:
    """A ``[[proxies]]`` TOML table (``name``, then Centrifugo's proxy object)."""
    if not isinstance(table, dict):
        raise ValueError(f"expected [[proxies]] tables, got {table!r}")
    if "name" not in table:
        raise ValueError("every [[proxies]] table needs a name")
    name = _proxy_named(table["name"])
    where = repr(name)
    settings = _table_settings({k: v for k, v in table.items() if k != "name"}, where)
    return _made(name, settings, where)


def _event(name: str) -> str:
    event = name.strip().replace("-", "_")
    if event not in EVENTS:
        raise ValueError(f"no event {name!r} (the events: {', '.join(EVENTS)})")
    return event


def parse_proxy_event(spec: str) -> tuple[str, dict[str, Any]]:
    """``EVENT:timeout=3s,http_headers=Cookie,...`` (``--proxy-event``): one event's own
    proxy's settings, over the ``--proxy-*`` options (``endpoint=URL`` instead of
    ``--proxy-EVENT-endpoint`` too)."""
    name, items = _spec_items(spec, "EVENT:SETTING=VALUE,...")
    event = _event(name)
    switches = [value for key, value in items if key == "enabled"]
    found = _spec_settings([item for item in items if item[0] != "enabled"], event)
    if len(switches) > 1:
        raise ValueError(f"{event}: enabled given twice")
    if switches:
        found["enabled"] = _event_enabled(event, _flag(switches[0], f"{event}: enabled"))
    return event, found


def proxy_event_from_table(event: str, table: Any) -> tuple[str, dict[str, Any]]:
    """A ``[proxy_events.EVENT]`` TOML table (Centrifugo's ``client.proxy.connect``, ...
    object, ``enabled`` too)."""
    event = _event(event)
    if not isinstance(table, dict):
        raise ValueError(f"{event}: expected a table, got {table!r}")
    found = _table_settings({k: v for k, v in table.items() if k != "enabled"}, event)
    if "enabled" in table:
        if not isinstance(table["enabled"], bool):
            raise ValueError(f"{event}: enabled: expected true or false, got "
                             f"{table['enabled']!r}")
        found["enabled"] = _event_enabled(event, table["enabled"])
    return event, found


def _event_enabled(event: str, enabled: bool) -> bool:
    """``enabled`` of v6's ``client.proxy.connect`` and ``.refresh`` (false: that proxy
    is off, its endpoint set or not); the other events' objects have none."""
    if event not in ("connect", "refresh"):
        turns = ("an RPC namespace's proxy_enabled (or, without any, the endpoint alone)"
                 if event == "rpc" else f"a namespace's {event}_proxy_enabled")
        raise ValueError(f"{event}: enabled: only connect and refresh have it (Centrifugo's "
                         f"client.proxy.connect and .refresh); {turns} turns this one on")
    return enabled


def _rpc_named(name: Any) -> str:
    if name != "" and not is_proxy_name(name):
        raise ValueError(f"an RPC namespace's name is 2 or more letters, digits, '-', '_', "
                         f"'.' (Centrifugo's rule; \"\" for methods without one), got "
                         f"{name!r}")
    return str(name)


def _proxy_name_setting(value: Any, at: str) -> str:
    if value != DEFAULT and not is_proxy_name(value):
        raise ValueError(f"{at}: expected a --proxy name (or {DEFAULT!r}), got {value!r}")
    return str(value)


def parse_rpc_namespace(spec: str) -> RpcNamespace:
    """``NAME:proxy_enabled,proxy_name=billing`` (``--rpc-namespace``); ``:OPTIONS`` is
    Centrifugo's ``rpc.without_namespace``."""
    name, items = _spec_items(spec, "NAME:OPTIONS (':OPTIONS' for methods without a "
                                    "namespace)", re.compile(","))
    where = repr(_rpc_named(name))
    return _rpc_namespace(name, dict(_once(items, where)), where)


def _once(items: list[tuple[str, Any]], where: str) -> list[tuple[str, Any]]:
    seen = set()
    for key, _ in items:
        if key in seen:
            raise ValueError(f"{where}: {key} given twice")
        seen.add(key)
    return items


def rpc_namespace_from_table(table: Any) -> RpcNamespace:
    """A ``[[rpc_namespaces]]`` TOML table (``name = ""``: methods without a namespace)."""
    if not isinstance(table, dict) or not isinstance(table.get("name"), str):
        raise ValueError('every [[rpc_namespaces]] table needs a name (a string; name = "" '
                         "for methods without a namespace)")
    name = table["name"]
    where = repr(_rpc_named(name))
    return _rpc_namespace(name, {k: v for k, v in table.items() if k != "name"}, where)


def _rpc_namespace(name: str, options: dict[str, Any], where: str) -> RpcNamespace:
    unknown = set(options) - {"proxy_enabled", "proxy_name"}
    if unknown:
        raise ValueError(f"{where}: no option {sorted(unknown)[0]!r} (known: proxy_enabled, "
                         "proxy_name)")
    enabled = _flag(options.get("proxy_enabled", False), f"{where}: proxy_enabled")
    proxy_name = options.get("proxy_name", "")
    if proxy_name is None:
        raise ValueError(f"{where}: expected proxy_name=NAME")
    if proxy_name:
        proxy_name = _proxy_name_setting(proxy_name, f"{where}: proxy_name")
    return RpcNamespace(name=name, proxy_enabled=enabled, proxy_name=proxy_name or "")


def config() -> ProxyConfig | None:
    from realtime.settings import settings

    found: ProxyConfig | None = settings.pubsub_proxy
    return found


def own_proxy(event: str) -> Proxy | None:
    """The event's own proxy (``--proxy-EVENT-endpoint``), if it has one."""
    proxy = config()
    return proxy.own(event) if proxy is not None else None


def configured(event: str) -> bool:
    """The event has its own proxy (``--proxy-EVENT-endpoint``)."""
    return own_proxy(event) is not None


def channel_proxy(event: str, namespace: Namespace) -> Proxy | None:
    """The proxy a channel-wide event of ``namespace`` asks: where the namespace enables
    it (``subscribe_proxy_enabled``, ...), its ``subscribe_proxy_name``'s (none: the
    event's own)."""
    proxy = config()
    return proxy.for_channel(event, namespace) if proxy is not None else None


def enabled(event: str, namespace: Namespace) -> bool:
    """A channel-wide proxy is asked for a channel of ``namespace``."""
    return channel_proxy(event, namespace) is not None


# -- the HTTP client ------------------------------------------------------------------------------

class ProxyFailure(Exception):
    """The backend gave no usable answer (unreachable, timeout, status, body)."""


class ProxyStatus(ProxyFailure):
    """The backend answered an HTTP status other than 200."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP status {status}")
        self.status = status


class ProxyTimeout(ProxyFailure):
    """No answer within ``--proxy-timeout``."""


class QueueTimeout(ProxyTimeout):
    """``--proxy-timeout`` passed while the call waited for a place (``Gate``)."""


class ProxyGone(Exception):
    """The client left while its call waited for a place: the call is dropped."""


class _Body(Protocol):
    """A response body, up to ``MAX_RESPONSE`` bytes kept. One over it is read off to its
    end and dropped (within the call's timeout, which stops it), then fails: stopped
    mid-way, a connection whose response ended in that same read goes back to the pool
    closing, and the next request there fails (POST is not retried)."""

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
            self.parts.clear()
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
            if self.size > self.limit:
                self.done.errback(ProxyFailure(f"response body over {self.limit} bytes"))
            else:
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
        from twisted.internet.defer import CancelledError
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
            if response.code != 200:
                # The status decides, as Centrifugo's (which never reads such a body): it is
                # read off (up to MAX_RESPONSE, within the timeout) only to keep the
                # connection; one too big, cut short or endless fails nothing.
                try:
                    await protocol.done
                except (ProxyFailure, CancelledError):
                    pass
                return response.code, b""
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
            raise ProxyStatus(status)
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
    """A call waiting for a place: its gate, its client, what fires when it has one, its
    deadline."""

    __slots__ = ("done", "gate", "p", "ready", "timer")

    def __init__(self, gate: Gate, p: _Protocol) -> None:
        self.gate = gate
        self.p = p
        self.ready: Deferred[None] = Deferred(lambda _: gate._forget(self))
        self.timer: Any = None
        self.done = False


class Gate:
    """At most ``limit`` requests in flight to one proxy in this process; the other calls
    wait first come first served. One per proxy (``Gates.of``): ``proxy`` is its name
    (``default``: an event's own, ``event`` saying which; a named one serves every event
    that picks it, ``event`` ``""``)."""

    def __init__(self, proxy: str = DEFAULT, event: str = "") -> None:
        self.proxy, self.event = proxy, event
        #: The latest call's bound (a configuration replaced since counts from then on),
        #: and where it came from, for the log line.
        self.limit = 0
        self.set_by = "--proxy-max-inflight"
        self.inflight = 0
        #: Waiters in order; those timed out or dropped are skipped (``waiting`` counts the
        #: others), so leaving the queue costs nothing.
        self.queue: deque[_Waiter] = deque()
        self.waiting = 0
        self._granting = False
        #: Queue timeouts not logged yet, and when the last line was (one a second at most:
        #: a reconnect storm is not a line per client).
        self._unlogged = 0
        self._logged_at = float("-inf")

    @property
    def title(self) -> str:
        """The proxy, as a log line names it."""
        return f"the {self.event} proxy" if self.proxy == DEFAULT else f"the proxy {self.proxy}"

    async def enter(self, p: _Protocol, limit: int, timeout: float, reactor: Any,
                    set_by: str = "--proxy-max-inflight") -> None:
        """A place for one request (``leave`` gives it back); ``QueueTimeout`` when
        ``QUEUE_SHARE`` of ``timeout`` passes first, ``ProxyGone`` when the client leaves
        first."""
        self.limit, self.set_by = limit, set_by
        if limit <= 0 or (self.inflight < limit and not self.waiting):
            self.inflight += 1
            return
        waiter = _Waiter(self, p)
        waiter.timer = reactor.callLater(timeout * QUEUE_SHARE, self._expire, waiter,
                                         timeout * QUEUE_SHARE, reactor)
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
                if 0 < self.limit <= self.inflight:
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

    def _expire(self, waiter: _Waiter, waited: float, reactor: Any) -> None:
        waiter.timer = None
        self._unlogged += 1
        now = reactor.seconds()
        if now - self._logged_at >= 1.0:
            log.warn("pubsub: {count} call(s) to {proxy} waited {waited:.3g} s (3/4 of its "
                     "timeout) for one of its {limit} places in flight ({set_by}) and "
                     "failed (the clients get error 100)", count=self._unlogged,
                     proxy=self.title, waited=waited, limit=self.limit, set_by=self.set_by)
            self._unlogged, self._logged_at = 0, now
        self._drop(waiter, QueueTimeout(f"no place within {waited:.3g} s"))


class Gates:
    """Every proxy's ``Gate`` in this process, made at its first call and kept (a proxy
    replaced by one of the same name and event keeps its place count). ``calls`` counts
    the calls by (event, proxy name: ``default`` for the event's own, outcome):
    ``answered`` (a JSON object: a result, an error or a disconnect; a transformed status
    too), ``failed`` (unreachable, a status, a body that cannot be used), ``timeout`` (in
    flight past its deadline), ``queue_timeout`` (never left the queue), ``dropped`` (its
    client left while it waited)."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[str, str], Gate] = {}
        self.calls: Counter[tuple[str, str, str]] = Counter()

    @staticmethod
    def key(event: str, name: str) -> tuple[str, str]:
        """The gate of proxy ``name`` for ``event``: an event's own has one per event, a
        named one one for every event that picks it (one backend service), event ``""``."""
        return name, event if name == DEFAULT else ""

    def of(self, event: str, proxy: Proxy) -> Gate:
        """``proxy``'s gate (``key``), made at its first call."""
        key = self.key(event, proxy.name)
        gate = self.by_key.get(key)
        if gate is None:
            gate = self.by_key[key] = Gate(*key)
        return gate

    def gauges(self, proxy: ProxyConfig | None) -> dict[tuple[str, str], tuple[int, int]]:
        """(in flight, queued) by gate key: every gate made, and each proxy ``proxy``
        configures at (0, 0) before its first call, so that its series are there from the
        first scrape."""
        found = dict.fromkeys([self.key(event, DEFAULT) for event in proxy.endpoints]
                              + [self.key("", name) for name in proxy.proxies], (0, 0)) \
            if proxy is not None else {}
        found.update({key: (gate.inflight, gate.waiting) for key, gate in self.by_key.items()})
        return found

    @property
    def inflight(self) -> int:
        return sum(gate.inflight for gate in self.by_key.values())

    @property
    def waiting(self) -> int:
        return sum(gate.waiting for gate in self.by_key.values())

    def drop(self, p: _Protocol) -> None:
        """``p``'s client left: its waiting calls go (``ProxyGone``), from every queue."""
        for waiter in list(getattr(p, "_proxy_waiting", ())):
            waiter.gate._drop(waiter, ProxyGone())


GATES = Gates()


def drop_waiting(p: _Protocol) -> None:
    """The connection is over: its calls waiting for a place leave the queues."""
    GATES.drop(p)


# -- requests ----------------------------------------------------------------------------------

def _put_data(body: dict[str, Any], key: str, data: Any, proxy: Proxy) -> None:
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
    """The connect command's ``headers`` map (Centrifugo's headers emulation): the names
    any proxy's ``emulated_headers`` lists (any case) are kept for this connection's proxy
    requests (each proxy sends its own names); others are ignored. ``PubSubError`` 107
    for a map that is not of strings, or a kept value with CR, LF, NUL, non-ASCII, or
    over ``MAX_EMULATED_VALUE`` bytes."""
    from realtime.pubsub import BAD_REQUEST, PubSubError

    proxy = config()
    given = params.get("headers")
    if proxy is None or not proxy.all_emulated or given is None or given == {}:
        return
    if not isinstance(given, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in given.items()):
        raise PubSubError(BAD_REQUEST, "bad request: headers must map names to strings")
    wanted = proxy.all_emulated
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


def _request(p: _Protocol, event: str, proxy: Proxy) -> dict[str, Any]:
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


def _headers(p: _Protocol, proxy: Proxy) -> dict[bytes, list[bytes]]:
    """Static headers, under the connect command's emulated ones (this proxy's names),
    under the handshake's (Centrifugo's order: the edge's win over the client's map)."""
    headers: dict[bytes, list[bytes]] = {}
    for name, value in proxy.static_headers:
        headers[name.lower().encode("ascii")] = [value.encode("ascii")]
    if p._emulated_headers:
        emulated = {name.lower().encode("ascii") for name in proxy.emulated_headers}
        for key, text in p._emulated_headers.items():
            if key in emulated:
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


async def _call(p: _Protocol, event: str, proxy: Proxy, body: dict[str, Any]
                ) -> dict[str, Any]:
    """POST ``body`` to ``proxy``: the response's ``result`` (``{}`` when it has none, for
    the events that may answer so); its ``error`` as ``PubSubError``, its ``disconnect``
    as a close (connect, subscribe, publish, rpc only, as Centrifugo); a status of the
    proxy's ``status_to_code_transforms`` as the error or disconnect it names; anything
    unexpected as error 100 (temporary), logged."""
    from realtime.pubsub import INTERNAL, PubSubError, _Close, _dumps

    settings = config()
    if settings is None:
        raise PubSubError(INTERNAL, temporary=True)
    calls, name, gate = GATES.calls, proxy.name, GATES.of(event, proxy)
    client = _client()
    deadline = client.reactor.seconds() + proxy.timeout  # from the queue on
    limit, set_by = (settings.max_inflight, "--proxy-max-inflight") \
        if proxy.max_inflight is None else (proxy.max_inflight, "its max_inflight")
    try:
        await gate.enter(p, limit, proxy.timeout, client.reactor, set_by)
    except ProxyGone:
        calls[event, name, "dropped"] += 1
        raise PubSubError(INTERNAL, temporary=True) from None
    except QueueTimeout:  # (Gate logs these, a line a second at most)
        calls[event, name, "queue_timeout"] += 1
        raise PubSubError(INTERNAL, temporary=True) from None
    try:
        try:
            reply = await client.post(proxy.endpoint, _dumps(body).encode("utf-8"),
                                      _headers(p, proxy),
                                      max(0.001, deadline - client.reactor.seconds()))
        except ProxyStatus as exc:
            transform = proxy.transform(exc.status)
            if transform is None:
                raise
            reply = transform.answer()  # (Centrifugo's: as if the backend had said so)
        finally:
            gate.leave()
        result = _answer(event, reply)
    except ProxyFailure as exc:
        calls[event, name, "timeout" if isinstance(exc, ProxyTimeout) else "failed"] += 1
        log.warn("pubsub: the {event} proxy {which}{url} failed: {why} (the client gets "
                 "error 100)", event=event, url=proxy.endpoint, why=str(exc),
                 which="" if name == DEFAULT else f"{name} ")
        raise PubSubError(INTERNAL, temporary=True) from None
    except (PubSubError, _Close):  # the backend's error or disconnect
        calls[event, name, "answered"] += 1
        raise
    calls[event, name, "answered"] += 1
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

    proxy = own_proxy("connect")
    if proxy is None:
        raise PubSubError(INTERNAL, temporary=True)
    body = _request(p, "connect", proxy)
    for key in ("name", "version"):
        if isinstance(params.get(key), str) and params[key]:
            body[key] = params[key]
    asked = params.get("subs")
    if isinstance(asked, dict) and asked:
        body["channels"] = [channel for channel in asked if isinstance(channel, str)]
    if params.get("data") is not None:
        _put_data(body, "data", params["data"], proxy)
    result = await _call(p, "connect", proxy, body)
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
    proxy = _of_channel(p, "subscribe", channel)
    body = _request(p, "subscribe", proxy)
    body["channel"] = channel
    if data is not None:
        _put_data(body, "data", data, proxy)
    result = await _call(p, "subscribe", proxy, body)
    return _checked("subscribe", lambda: Granted(
        info=_info(result), data=_payload(result, "data"), expire_at=_expire_at(result),
        override=_override(result.get("override"))))


async def publish(p: _Protocol, channel: str, data: Any) -> Granted:
    """Centrifugo's PublishRequest: ``data`` (or ``b64data``) replaces what the client
    published, ``tags`` go with the publication; ``skip_history`` is checked (true or
    false) and not acted on, as the server API's: a namespace with history keeps it."""
    proxy = _of_channel(p, "publish", channel)
    body = _request(p, "publish", proxy)
    body["channel"] = channel
    _put_data(body, "data", data, proxy)
    result = await _call(p, "publish", proxy, body)

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
    """Centrifugo's RPCRequest to the method's proxy (``ProxyConfig.for_rpc``: error 104
    or 108 where there is none): the result's ``data`` (or ``b64data``) is the
    reply's."""
    from realtime.pubsub import NOT_AVAILABLE, PubSubError

    settings = config()
    if settings is None:
        raise PubSubError(NOT_AVAILABLE)
    proxy = settings.for_rpc(method)
    body = _request(p, "rpc", proxy)
    if method:
        body["method"] = method
    if data is not None:
        _put_data(body, "data", data, proxy)
    result = await _call(p, "rpc", proxy, body)
    return _checked("rpc", lambda: _payload(result, "data")[1])


def _of_channel(p: _Protocol, event: str, channel: str) -> Proxy:
    """The proxy of ``channel``'s namespace for ``event`` (error 100 where, configured
    anew since it was asked, there is none)."""
    from realtime.pubsub import INTERNAL, PubSubError, _namespace

    proxy = channel_proxy(event, _namespace(channel, p._namespaces()))
    if proxy is None:
        raise PubSubError(INTERNAL, temporary=True)
    return proxy


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


async def _prolonged(p: _Protocol, event: str, proxy: Proxy, body: dict[str, Any]
                     ) -> tuple[float | None, bool, Any] | None:
    """A refresh or sub_refresh call's answer: the new expiry (None: expired, or not
    prolonged), whether it gives ``info``, and that info; None when the call failed (an
    answer that cannot be used is logged): the caller asks again after ``RETRY_AFTER``."""
    from realtime.pubsub import PubSubError

    try:
        result = await _call(p, event, proxy, body)
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

    proxy = own_proxy("refresh")
    if proxy is None:
        return
    answer = await _prolonged(p, "refresh", proxy, _request(p, "refresh", proxy))
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

    proxy = channel_proxy("sub_refresh", sub.namespace)
    if proxy is None:
        return
    body = _request(p, "sub_refresh", proxy)
    body["channel"] = sub.channel
    answer = await _prolonged(p, "sub_refresh", proxy, body)
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
