"""The server's validated settings, shared by the bridge, the testing toolkit and ``tap``.

``tap.Options`` turns the command line into one of these; tests build them directly. The
defaults are Daphne's (README, "Command line").
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024

_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def is_token(value: str) -> bool:
    """An RFC 9110 token: what a header name may be."""
    return bool(value) and _TCHARS.issuperset(value)


def unread_header(name: str) -> str | None:
    """Why a request header of this name is never read (an option naming one would be
    silently ignored), or None: a name with ``_`` is left out of every scope (as Daphne's,
    CVE-2015-0219)."""
    if "_" in name:
        return (f"{name!r} holds '_': request headers so named are left out (as Daphne's "
                "scopes, CVE-2015-0219), so it would never be read; name it with '-'")
    return None


def _latin1(value: str) -> bool:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def admin_path_problem(path: str, health_path: str, ready_path: str,
                       metrics_path: str) -> tuple[str, str] | None:
    """What is wrong with an admin path, or None: ``("syntax", "")`` (not a path starting
    with '/', or with '?', '#', a space or a character outside printable ASCII: a request's
    path never equals it), ``("taken", "health_path" | "ready_path" | "metrics_path")``
    (a built-in path: those match first, or it would hide them) or ``("api", "")`` (under
    ``/api/``, the server API's). ``ServerConfig`` and ``tap.Options`` both ask this."""
    if not path.startswith("/") or not all(
            c.isascii() and c.isprintable() and not c.isspace() and c not in "?#"
            for c in path):
        return ("syntax", "")
    for name, taken in (("health_path", health_path), ("ready_path", ready_path),
                        ("metrics_path", metrics_path)):
        if taken and path == taken:
            return ("taken", name)
    if path == "/api" or path.startswith("/api/"):
        return ("api", "")
    return None


class StartupError(SystemExit):
    """A start-up problem: one line on stderr, exit status 1, no traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(f"realtime: error: {message}")


#: ``--lifespan``'s values (``realtime.lifespan``).
LIFESPAN_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class ServerConfig:
    ping_interval: float = 20.0
    ping_timeout: float = 30.0
    #: Maximum lifetime of a WebSocket, then close 1000; negative means none.
    websocket_timeout: float = 86400.0
    #: Absolute deadline from TCP accept to the end of ``connect()``.
    connect_timeout: float = 5.0
    max_message_size: int = MiB
    max_frame_size: int = MiB
    max_inflight: int = 64
    #: Outbound bytes waiting for one client before ``slow_consumer`` acts.
    max_send_buffer: int = MiB
    #: ``close`` (4008, then abort if the close cannot be written in time) or ``drop``.
    slow_consumer: str = "close"
    #: Open WebSockets (and handshakes in progress) before new upgrades get 503; 0: none.
    max_connections: int = 0
    #: Open WebSockets per client address before upgrades get 429; 0: none.
    max_connections_per_ip: int = 0
    #: Inbound messages per second per connection (token bucket; close 1008 past it); 0: off.
    rate_limit: float = 0.0
    rate_burst: int = 0
    #: WebSocket handshakes a second the process starts (``--handshake-rate``), and how
    #: many may come at once; past them 503 with ``Retry-After``. 0: no limit.
    handshake_rate: float = 0.0
    handshake_burst: int = 0
    #: Open WebSockets one signed-in user may have in this process (``--max-connections-
    #: per-user``; Centrifugo's ``user_connection_limit``); past it 429. 0: no limit.
    max_connections_per_user: int = 0
    #: Seconds a ``broadcast()`` may wait so that a group's messages of that time reach each
    #: member in one write (less CPU, more latency); 0: only to the end of the reactor turn.
    #: Process-wide: applied by ``twistd realtime`` and ``testing.serve`` (until ``stop()``),
    #: not by a ``RealtimeSite`` built directly nor by the communicators (per read there).
    broadcast_delay: float = 0.0
    #: Trust X-Forwarded-For/-Proto/-Port from peers in ``trusted_proxies``.
    proxy_headers: bool = False
    trusted_proxies: tuple[str, ...] = ("127.0.0.0/8", "::1")
    #: The headers that carry the client's address and port (Daphne's
    #: ``--proxy-headers-host/-port``; e.g. ``X-Real-IP``), read only with ``proxy_headers``.
    proxy_headers_host: str = "X-Forwarded-For"
    proxy_headers_port: str = "X-Forwarded-Port"
    #: The header a trusted proxy names ``root_path`` with (Daphne's ``Daphne-Root-Path``),
    #: read only with ``proxy_headers``; empty: none (a proxy passes on a client's headers
    #: unless told otherwise: the operator opts in once the proxy sets it).
    root_path_header: str = ""
    #: Serve /metrics on this port (the service sets ``site.metrics``).
    metrics_path: str = "/metrics"
    #: Keys that may POST /api/publish and /api/broadcast; empty: the API is off (404).
    api_keys: tuple[str, ...] = ()
    api_body_limit: int = 64 * 1024
    #: Largest request body on every other path (413 past it: twisted.web would otherwise
    #: spool any size to a temporary file before the application runs); 0: none.
    http_body_limit: int = 10 * MiB
    #: Drain: sockets closed with 1001 per batch, and the pause between batches.
    drain_batch: int = 1000
    drain_interval: float = 0.1
    root_path: str = ""
    shutdown_timeout: float = 10.0
    #: How long a close frame we sent may wait for the peer's reply before the TCP is dropped.
    close_timeout: float = 1.0
    #: Idle timeout of plain HTTP keep-alive connections (twisted.web's own).
    http_timeout: float = 60.0
    #: Seconds an HTTP request routed to the application may take (Daphne's ``-t``): not
    #: started by then, 503; started but not finished, the connection is cut. 0: none.
    http_response_timeout: float = 0.0
    #: Seconds a consumer's handlers may still run after its socket closed (a disconnect()
    #: that hangs, say); then they are cancelled and a warning logged (Daphne's option).
    application_close_timeout: float = 10.0
    health_path: str = "/healthz"
    ready_path: str = "/readyz"
    #: The admin UI's page (``--admin-path``, ``realtime.admin``); empty: off. Served only
    #: with ``api_keys``: the page calls the server API with one.
    admin_path: str = ""
    #: ``Server`` header value on HTTP responses, refusals and the 101 (``--server-name``);
    #: empty: none (it tells a scanner nothing).
    server_header: str = ""
    #: Offer HTTP/2 over ALPN on TLS listeners (``realtime.http2``); ``--no-http2`` turns
    #: it off. Plain-TCP listeners speak HTTP/1.1 whatever this says.
    http2: bool = True
    #: The ASGI lifespan protocol for the application's raw ASGI apps
    #: (``realtime.lifespan``): ``auto``, ``on`` or ``off``.
    lifespan: str = "auto"
    #: permessage-deflate for clients that offer it (``realtime.deflate``): zlib level
    #: 1-9, and the smallest payload worth compressing (smaller ones go uncompressed).
    compression: bool = False
    compression_level: int = 1
    compression_min_size: int = 128

    def __post_init__(self) -> None:
        for name in ("ping_interval", "ping_timeout", "connect_timeout", "shutdown_timeout",
                     "close_timeout", "http_timeout", "application_close_timeout",
                     "http_response_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if not 0 <= self.broadcast_delay <= 1:
            raise ValueError("broadcast_delay must be between 0 and 1 second")
        if self.lifespan not in LIFESPAN_MODES:
            raise ValueError("lifespan must be 'auto', 'on' or 'off'")
        if self.slow_consumer not in ("close", "drop"):
            raise ValueError("slow_consumer must be 'close' or 'drop'")
        if self.drain_batch < 1 or self.drain_interval < 0:
            raise ValueError("drain_batch must be at least 1 and drain_interval not negative")
        for name in ("max_message_size", "max_frame_size", "max_inflight", "max_send_buffer",
                     "api_body_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.handshake_rate < 0 or self.handshake_burst < 0:
            raise ValueError("handshake_rate and handshake_burst must not be negative")
        if self.max_connections_per_user < 0:
            raise ValueError("max_connections_per_user must not be negative")
        if self.rate_limit < 0 or self.rate_burst < 0 or self.max_connections_per_ip < 0:
            raise ValueError(
                "rate_limit, rate_burst and max_connections_per_ip must not be negative"
            )
        if not 1 <= self.compression_level <= 9:
            raise ValueError("compression_level must be between 1 and 9")
        if self.compression_min_size < 0:
            raise ValueError("compression_min_size must not be negative")
        if self.max_connections < 0:
            raise ValueError("max_connections must not be negative")
        if self.http_body_limit < 0:
            raise ValueError("http_body_limit must not be negative (0: no limit)")
        if any(c in self.server_header for c in "\r\n\0") or not _latin1(self.server_header):
            raise ValueError("server_header must be latin-1 without CR, LF or NUL")
        for name in ("proxy_headers_host", "proxy_headers_port", "root_path_header"):
            header = getattr(self, name)
            if not header and name == "root_path_header":  # (optional: empty is none)
                continue
            if not is_token(header):
                raise ValueError(f"{name} must be an HTTP header name")
            problem = unread_header(header)
            if problem is not None:
                raise ValueError(f"{name}: {problem}")
        if self.admin_path:
            self._check_admin_path()
        if self.root_path and (not self.root_path.startswith("/") or self.root_path.endswith("/")):
            raise ValueError("root_path must start with '/' and not end with '/'")

    def _check_admin_path(self) -> None:
        problem = admin_path_problem(self.admin_path, self.health_path, self.ready_path,
                                     self.metrics_path)
        if problem is None and self.api_keys:
            return
        if problem is None or problem[0] == "syntax":
            raise ValueError("admin_path must start with '/' (printable ASCII without spaces, "
                             "'?' or '#') and needs api_keys")
        if problem[0] == "taken":
            raise ValueError(f"admin_path {self.admin_path!r} is the same path as {problem[1]}")
        raise ValueError(f"admin_path {self.admin_path!r}: /api/ is the server API's")
