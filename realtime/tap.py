"""``twistd realtime``: the command line and the service it builds.

Every option is validated in ``postOptions``, before twistd forks or binds anything, and a
bad value stops start-up with one line naming the option (``StartupError``), never a usage
dump or a traceback. Every option also reads ``REALTIME_<NAME>`` from the environment and
a key of the ``--config`` TOML file; the command line wins over the environment, the
environment over the file.
"""

from __future__ import annotations

import importlib
import os
import re
import socket
import sys
from functools import partial
from typing import Any

from twisted.logger import Logger
from twisted.python import usage

from realtime.config import (
    LIFESPAN_MODES,
    MiB,
    ServerConfig,
    StartupError,
    admin_path_problem,
    is_token,
    unread_header,
)
from realtime.endpoints import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    adopted_socket_family,
    build_endpoint_description_strings,
    is_port_number,
    port_description,
    with_backlog,
)
from realtime.settings import ConfigurationError

_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]i?[bB]?|[bB])?\s*$")
_UNITS = {"": 1, "b": 1, "k": 1024, "m": MiB, "g": 1024 * MiB}


def parse_size(value: str) -> int:
    """``1048576``, ``1MiB``, ``64k``, ``256KiB`` -> bytes."""
    m = _SIZE.match(value)
    if not m:
        raise ValueError(value)
    unit = (m.group(2) or "").lower()[:1]
    return int(m.group(1)) * _UNITS[unit]


#: Notes from option parsing that are not errors (a JWKS key skipped, say).
_log = Logger(namespace="realtime")


def _seconds(name: str, value: str, allow_negative_one: bool = False) -> float:
    try:
        number = float(value)
    except ValueError:
        raise StartupError(f"--{name}: expected a number of seconds, got {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise StartupError(f"--{name}: expected a number of seconds, got {value!r}")
    if allow_negative_one and number == -1:
        return number
    if number < 0:
        raise StartupError(f"--{name}: must not be negative, got {value!r}")
    return number


#: Daphne's underscore spellings of options we share, so its command lines carry over.
DAPHNE_SPELLINGS = {
    "--websocket_timeout": "--websocket-timeout",
    "--websocket_connect_timeout": "--websocket-connect-timeout",
    "--application_close_timeout": "--application-close-timeout",
}


def _daphne_spellings(args: list[str] | None) -> list[str] | None:
    if args is None:
        return None
    out = []
    for arg in args:
        name, sep, value = arg.partition("=")
        out.append(DAPHNE_SPELLINGS.get(name, name) + sep + value)
    return out


def _broadcast_delay(value: str) -> float:
    number = _seconds("broadcast-delay", value)
    if number > 1:
        raise StartupError(f"--broadcast-delay: must be at most 1 second, got {value!r}")
    return number


def _count(name: str, value: str, minimum: int = 0, maximum: int | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise StartupError(f"--{name}: expected a whole number, got {value!r}") from None
    if number < minimum:
        raise StartupError(f"--{name}: must be at least {minimum}, got {value!r}")
    if maximum is not None and number > maximum:
        raise StartupError(f"--{name}: must be between {minimum} and {maximum}, got {value!r}")
    return number


def _size(name: str, value: str) -> int:
    try:
        number = parse_size(value)
    except ValueError:
        raise StartupError(
            f"--{name}: expected a size in bytes (e.g. 1048576, 64KiB, 1MiB), got {value!r}"
        ) from None
    if number < 1:
        raise StartupError(f"--{name}: must be at least 1 byte, got {value!r}")
    return number


def _body_limit(name: str, value: str) -> int:
    """A size, or ``0``/``none`` for no limit (uploads a proxy in front already bounds)."""
    if value.strip().lower() == "none":
        return 0
    try:
        return parse_size(value)
    except ValueError:
        raise StartupError(
            f"--{name}: expected a size in bytes (e.g. 1048576, 64KiB, 10MiB) or 0/none for "
            f"no limit, got {value!r}"
        ) from None


def _words(value: str | None) -> list[str]:
    return [w for w in re.split(r"[,\s]+", value or "") if w]


def _read_file(name: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise StartupError(f"--{name} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise StartupError(f"--{name} {path}: not a text file") from None


def _rate(name: str, value: str | None) -> float:
    """``20``, ``20/s``, ``1200/m`` -> messages per second; None -> 0 (off)."""
    if not value:
        return 0.0
    number, _, unit = value.strip().partition("/")
    per = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0}.get(unit.strip().lower())
    try:
        rate = float(number)
    except ValueError:
        rate = -1.0
    if per is None or not rate > 0 or rate == float("inf"):
        raise StartupError(f"--{name}: expected a rate such as 20/s or 600/m, got {value!r}")
    return rate / per


def _import(module_name: str) -> Any:
    """Import ``module_name``; a top-level package that is nowhere on ``sys.path`` is looked
    for in the current directory too, last (as Daphne and uvicorn do: ``twistd`` and the
    ``realtime`` script, unlike ``python -m``, do not put it on the path), so ``--app
    myapp.consumers:application`` works from the project's directory, and an installed
    package of the same name still wins."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        here = os.getcwd()
        if exc.name != module_name.partition(".")[0] or here in sys.path or "" in sys.path:
            raise
        sys.path.append(here)
        return importlib.import_module(module_name)


def _config_path(argv: list[str], short: str, long: list[str],
                 option: str = "config") -> str | None:
    """``--config PATH`` (or ``--centrifugo-config``) from the arguments as getopt reads
    them (``--config=PATH``, and an abbreviation such as ``--conf PATH``, which the parse
    that follows takes as ``--config`` too), else ``REALTIME_CONFIG``
    (``REALTIME_CENTRIFUGO_CONFIG``): read before the rest, whose values win over the
    file's. Arguments getopt refuses are left to that parse to report."""
    import getopt

    path = os.environ.get("REALTIME_" + option.upper().replace("-", "_")) or None
    try:
        found, _ = getopt.getopt(argv, short, long)
    except getopt.GetoptError:
        return path
    for name, value in found:
        if name == "--" + option:
            path = value
    return path


def _split_app(spec: str) -> tuple[str, str]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise StartupError(f"--app: expected MODULE:ATTRIBUTE, got {spec!r}")
    return module_name, attr


def load_application(spec: str) -> Any:
    """Import ``package.module:attribute``; errors name the module or the attribute."""
    module_name, attr = _split_app(spec)
    try:
        module = _import(module_name)
    except ImportError as exc:
        raise StartupError(
            f"--app {spec!r}: cannot import module {module_name!r}: {exc}"
        ) from None
    except ConfigurationError as exc:
        raise StartupError(f"--app {spec!r}: {exc}") from None
    except Exception as exc:
        raise StartupError(
            f"--app {spec!r}: importing module {module_name!r} raised "
            f"{type(exc).__name__}: {exc}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise StartupError(
                f"--app {spec!r}: module {module_name!r} has no attribute {attr!r}"
            ) from None
    if not callable(obj):
        raise StartupError(f"--app {spec!r}: {attr!r} is not callable")
    from realtime.routing import mount

    return mount(obj)


def _namespace_specs(value: Any, where: str) -> list[str]:
    """``[[namespaces]]`` tables (``name = "chat"``, ``presence = true``,
    ``history_ttl = "300s"``, ...) as ``--namespace`` values."""
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise StartupError(f"{where}: expected [[namespaces]] tables")
    specs = []
    for table in value:
        name = table.get("name")
        if not isinstance(name, str):  # a forgotten name must not open unnamespaced channels
            raise StartupError(f"{where}: every [[namespaces]] table needs a name (a string; "
                               'name = "" for channels without a namespace)')
        options = []
        for option, setting in table.items():
            if option == "name":
                continue
            if isinstance(setting, bool):
                options.append(f"{option}={'true' if setting else 'false'}")
            elif isinstance(setting, int | float | str) and "," not in str(setting):
                options.append(f"{option}={setting}")
            elif isinstance(setting, list) and all(
                    isinstance(item, str) and item.isidentifier() for item in setting):
                options.append(f"{option}={'+'.join(setting)}")  # allowed_delta_types
            else:
                raise StartupError(f"{where}: {name or '(default)'}.{option}: expected true, "
                                   f"false, a number, a duration or a list of names, got "
                                   f"{setting!r}")
        specs.append(f"{name}:{','.join(options)}")
    return specs


def _proxy_tables(name: str, value: Any, where: str) -> tuple[str, list[Any]]:
    """``[[proxies]]`` (``realtime.pubsub_proxy.Proxy``), ``[proxy_events.EVENT]`` (an
    event's own settings) and ``[[rpc_namespaces]]`` tables, read: an error names the
    table and its key."""
    from realtime import pubsub_proxy

    try:
        if name == "proxy-events":
            if not isinstance(value, dict):
                raise ValueError("expected [proxy_events.EVENT] tables")
            return "proxy-event", [pubsub_proxy.proxy_event_from_table(event, table)
                                   for event, table in value.items()]
        if not isinstance(value, list):
            raise ValueError(f"expected [[{name.replace('-', '_')}]] tables")
        if name == "proxies":
            return "proxy", [pubsub_proxy.proxy_from_table(table) for table in value]
        return "rpc-namespace", [pubsub_proxy.rpc_namespace_from_table(table)
                                 for table in value]
    except ValueError as exc:
        raise StartupError(f"{where}: {exc}") from None


#: The events' own proxies' settings as options, and the field each sets in a proxy.
_PROXY_OWN_FIELDS = {"proxy-timeout": "timeout", "proxy-http-headers": "http_headers",
                     "proxy-emulated-headers": "emulated_headers",
                     "proxy-static-header": "static_headers",
                     "proxy-include-connection-meta": "include_connection_meta",
                     "proxy-binary-encoding": "binary_encoding"}


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve an application of Channels-style consumers over WebSocket and HTTP. "
        "With no listener option, listens on tcp:8000:interface=127.0.0.1. "
        "Every option also reads REALTIME_<NAME> from the environment (e.g. "
        "REALTIME_PING_INTERVAL) and from the TOML file of --config (ping-interval = 10); "
        "the command line wins over the environment, the environment over the file. "
        "Built-in paths (--health-path, --ready-path, /metrics, the server API's /api/ "
        "paths with a key, --admin-path) match before the application's routes; with "
        "--internal-port they are served there, and not on the main ports."
    )

    optParameters: list[list[Any]] = [
        ["app", None, None, "The application, MODULE:ATTRIBUTE (required)."],
        ["bind", "b", None, "Host for a bare --port number (default 127.0.0.1)."],
        ["unix-socket", "u", None, "Listen on this unix socket path."],
        ["ping-interval", None, "20", "Seconds between keepalive pings."],
        ["ping-timeout", None, "30", "Seconds to wait for a pong before dropping."],
        ["broadcast-delay", None, "0",
         "Seconds (0-1) a broadcast() may wait, so a busy group's messages reach each member "
         "in fewer writes: less CPU, more latency. 0: none."],
        ["websocket-timeout", None, "86400",
         "Maximum WebSocket lifetime in seconds, then close 1000 (-1: none)."],
        ["websocket-connect-timeout", None, "5",
         "Seconds from TCP accept to the end of connect(); past it: dropped, or 503."],
        ["application-close-timeout", None, "10",
         "Seconds a consumer's handlers may run after its socket closed; then cancelled."],
        ["http-timeout", "t", None,
         "Seconds an HTTP request to the application may take: a response not started by "
         "then gets 503, one started is cut off (default: none; leave unset for SSE)."],
        ["max-message-size", None, "1MiB", "Largest inbound message; 1009 past it."],
        ["max-frame-size", None, "1MiB", "Largest inbound frame; 1009 past it."],
        ["max-inflight", None, "64",
         "Inbound messages queued per connection before reading pauses."],
        ["max-connections", None, "0", "Open WebSockets before upgrades get 503 (0: none)."],
        ["max-send-buffer", None, "1MiB",
         "Outbound bytes waiting per connection before --slow-consumer acts."],
        ["compression-level", None, "1",
         "zlib level 1 (fastest) to 9 (smallest) for --compression."],
        ["compression-min-size", None, "128",
         "With --compression, smaller messages go out uncompressed (bytes)."],
        ["slow-consumer", None, "close",
         "close (4008, abort if the close cannot be written in time) or drop (skip, count)."],
        ["max-connections-per-ip", None, "0",
         "Open WebSockets per client address before upgrades get 429 (0: none)."],
        ["rate-limit", None, None,
         "Inbound messages per second per connection, e.g. 20/s; close 1008 past it."],
        ["rate-burst", None, None, "Messages allowed in a burst (default: the rate)."],
        ["max-groups-per-connection", None, "128",
         "Groups one connection may be in (Centrifugo's channel_limit); a group_add past it "
         "fails with TooManyGroups. 0: no limit."],
        ["max-connections-per-user", None, "0",
         "Open WebSockets one signed-in user may have (in this process); past it 429 "
         "(3504 for a realtime.pubsub connect command's user). "
         "0: no limit."],
        ["handshake-rate", None, None,
         "WebSocket handshakes per second this process starts (e.g. 200/s, 6000/m); past it "
         "503 with Retry-After: a reconnect storm cannot swamp the CPU (default: no limit)."],
        ["handshake-burst", None, None,
         "Handshakes allowed at once above --handshake-rate (default: the rate)."],
        ["trusted-proxies", None, "127.0.0.0/8,::1",
         "Peers whose X-Forwarded-* headers count (with --proxy-headers)."],
        ["proxy-headers-host", None, None,
         "With --proxy-headers: the header with the client's address (default "
         "X-Forwarded-For; e.g. X-Real-IP)."],
        ["proxy-headers-port", None, None,
         "With --proxy-headers: the header with the client's port (default "
         "X-Forwarded-Port)."],
        ["root-path-header", None, None,
         "With --proxy-headers: the header a --trusted-proxies peer names root_path with "
         "(Daphne's Daphne-Root-Path; default: none). Your proxy must set it."],
        ["server-name", "s", None,
         "Send 'Server: NAME' on HTTP responses and the handshake (default: no Server "
         "header)."],
        ["allowed-origins", None, None,
         "Refuse (403) Origins matching none of these patterns (comma or space separated)."],
        ["allowed-hosts", None, None,
         "Refuse (403) Origins whose host is not one of these (AllowedHostsOriginValidator)."],
        ["session-store", None, "auto",
         "Sessions: auto (Django's in a Django project, else cookie), django, cookie (signed), "
         "memory or redis://..."],
        ["secret-key", None, None, "Key that signs session cookies."],
        ["secret-key-file", None, None, "Read the secret key from this file."],
        ["old-secret-keys", None, None,
         "Earlier secret keys (comma or space separated): they still verify."],
        ["jwt-key", None, None, "JWT verification key: an HMAC secret or a PEM public key."],
        ["jwt-key-file", None, None, "Read the JWT key (secret or PEM) from this file."],
        ["jwks-file", None, None, "A JSON Web Key Set file of verification keys."],
        ["jwks-url", None, None,
         "Fetch verification keys from this JWKS endpoint (https://; an identity provider's): "
         "at start-up, every --jwks-refresh seconds, at SIGHUP and for an unknown key id."],
        ["jwks-refresh", None, "300", "Seconds between two fetches of --jwks-url (0: none)."],
        ["jwt-algorithms", None, None,
         "Algorithms the key may verify (default: every one of its type; never none)."],
        ["jwt-audience", None, None, "Required 'aud' claim."],
        ["jwt-issuer", None, None, "Required 'iss' claim."],
        ["jwt-leeway", None, "0", "Seconds of clock skew allowed for exp/nbf."],
        ["metrics-port", None, None,
         "Serve /metrics on its own listener (a port number on 127.0.0.1, or a description) "
         "instead of the main ports; implies --metrics."],
        ["internal-port", None, None,
         "Serve the operator endpoints (--health-path, --ready-path, /metrics with "
         "--metrics, the server API, --admin-path) on a listener of their own (a port "
         "number on 127.0.0.1, or a description) and not on the main ports (Centrifugo's "
         "http_server.internal_port); --metrics-port keeps /metrics on its own."],
        ["api-key", None, None,
         "Enables the HTTP API on /api/ (realtime's with 'Authorization: Bearer KEY', "
         "Centrifugo's with 'X-API-Key: KEY') and --admin-path."],
        ["api-key-file", None, None, "API keys, one per line (rotation: several may hold)."],
        ["api-body-limit", None, "64KiB", "Largest API request body; 413 past it."],
        ["http-body-limit", None, "10MiB",
         "Largest request body on every other path; 413 past it (0 or none: no limit)."],
        ["access-log", None, None,
         "Access log file, or - for stdout: HTTP requests and WebSocket connect/refuse/close."],
        ["log-format", None, "text", "Access log format: text or json."],
        ["verbosity", "v", "1",
         "Log level: 0 warnings and errors, 1 info, 2 debug, 3 debug and asyncio's debug "
         "mode (slow callbacks; with --reactor=asyncio). The access log is --access-log."],
        ["drain-batch", None, "1000", "Sockets closed with 1001 per drain batch."],
        ["drain-interval", None, "0.1", "Seconds between drain batches."],
        ["layer", None, "memory",
         "Channel layer: memory, redis://host:port/db, rediss://..., unix:///path, "
         "redis+sentinel://h1:p1,h2:p2/master/db; several Redis URLs separated by spaces "
         "spread the groups over those servers; redis+cluster://h1:p1,h2:p2 over a Redis "
         "Cluster."],
        ["root-path", None, "", "Prefix stripped from paths before routing (e.g. /ws)."],
        ["shutdown-timeout", None, "10",
         "Seconds the drain on SIGTERM/SIGINT may take (WebSockets closed with 1001, HTTP "
         "responses in progress finished), then as long for the ASGI lifespan shut-down."],
        ["health-path", None, "/healthz", "Liveness path (200 while running; '' turns it off)."],
        ["ready-path", None, "/readyz",
         "Readiness path (503 while draining; '' turns it off)."],
        ["admin-path", None, "",
         "Serve the admin web UI (status, channels, publish, disconnect; it calls /api/ "
         "with the key typed into it) at this path, e.g. /admin; needs --api-key. "
         "Default: off."],
        ["gc-threshold", None, "7000",
         "Python's collector: the first generation's threshold (Python's own: 700), the "
         "heap built at start-up frozen out of collections; 0 leaves the collector as it "
         "is."],
        ["lifespan", None, "auto",
         "ASGI lifespan for the application's raw ASGI apps (Starlette/FastAPI startup and "
         "shutdown): auto (apps that do not speak it are skipped), on (they must), off."],
        ["proxy-connect-endpoint", None, "",
         "realtime.pubsub: Centrifugo's connect proxy: POST a connect without a token to "
         "this http(s) URL; the backend's result names the user (realtime.pubsub_proxy)."],
        ["proxy-refresh-endpoint", None, "",
         "realtime.pubsub: Centrifugo's refresh proxy, asked when a proxied connection's "
         "expire_at comes (without it, the connection closes 3005 then)."],
        ["proxy-subscribe-endpoint", None, "",
         "realtime.pubsub: Centrifugo's subscribe proxy, for namespaces with "
         "subscribe_proxy_enabled."],
        ["proxy-publish-endpoint", None, "",
         "realtime.pubsub: Centrifugo's publish proxy, for namespaces with "
         "publish_proxy_enabled."],
        ["proxy-sub-refresh-endpoint", None, "",
         "realtime.pubsub: Centrifugo's sub_refresh proxy, for namespaces with "
         "sub_refresh_proxy_enabled."],
        ["proxy-rpc-endpoint", None, "",
         "realtime.pubsub: Centrifugo's RPC proxy, asked for every RPC method."],
        ["proxy-timeout", None, None,
         "Seconds a proxy request may take from when it is asked, a wait for a place "
         "(--proxy-max-inflight) included (1, 1s, 500ms; default 1s); past it the client "
         "gets error 100."],
        ["proxy-max-inflight", None, None,
         "Proxy requests in flight at once in this process to each proxy (each event's "
         "own, each --proxy) that sets no max_inflight of its own (default 64; 0: no "
         "bound); the others wait in that proxy's queue, in order, 3/4 of its timeout at "
         "most (a call let in has the rest)."],
        ["proxy-http-headers", None, "",
         "Headers of the client's handshake sent on to the proxies (e.g. 'Cookie "
         "Authorization Origin X-Forwarded-For'); default: none."],
        ["pubsub-transports", None, None,
         "realtime.pubsub: the transports served, of websocket, http_stream, sse, "
         "uni_websocket, uni_sse, uni_http_stream (comma separated; default: all); a path "
         "left off answers 404 (/emulation goes with http_stream or sse)."],
        ["rpc-namespace-boundary", None, None,
         "realtime.pubsub: what ends an RPC namespace's name in a method (default ':'; "
         "Centrifugo's rpc.namespace_boundary), with --rpc-namespace."],
        ["proxy-emulated-headers", None, "",
         "Headers of the connect command's headers map (centrifuge-js's headers option: "
         "the client's own, untrusted) sent on to the proxies, under the handshake's; "
         "default: none."],
        ["workers", None, "1",
         "Worker processes sharing the listeners (more than 1 needs --layer redis://...)."],
        ["config", None, None,
         "A TOML file of options (ping-interval = 10, port = [\"tcp:8000\"], metrics = "
         "true); the environment and the command line win over it."],
        ["centrifugo-config", None, None,
         "A Centrifugo configuration file (JSON, YAML or TOML; v5 or v6 keys), served as "
         "realtime.pubsub (--app's default with it); a key realtime cannot honour stops "
         "start-up naming it. The environment and the command line win over it; not with "
         "--config (python -m realtime.centrifugo_config FILE prints it as --config TOML)."],
    ]

    optFlags: list[list[Any]] = [
        ["compression", None,
         "Accept permessage-deflate offers: messages compressed, no zlib state kept per "
         "socket (see --compression-level, --compression-min-size)."],
        ["metrics", None, "Serve Prometheus metrics on /metrics (on the main ports)."],
        ["proxy-headers", None,
         "Use X-Forwarded-For/-Proto/-Port from --trusted-proxies, walked from the right."],
        ["no-server-name", None, "No Server header (the default; wins over --server-name)."],
        ["no-http2", None,
         "Offer only HTTP/1.1 on TLS listeners (HTTP/2 is offered over ALPN by default)."],
        ["reload", None,
         "Development only: run the server in a child process and restart it when a "
         "watched file changes (see --reload-dir; not with --workers)."],
        ["check", None,
         "Check the options and import the application, then exit 0 without serving "
         "(before a restart: a bad value exits 1 with the line that says why)."],
        ["pubsub-anonymous", None,
         "realtime.pubsub: a client may connect without a token (Centrifugo's "
         "allow_anonymous_connect_without_token)."],
        ["proxy-include-connection-meta", None,
         "Send the connect proxy's meta with the other proxy requests."],
        ["proxy-binary-encoding", None,
         "Proxy payloads as b64data/b64info (Centrifugo's binary_encoding)."],
    ]

    _repeatable = ("port", "fd", "history", "reload-dir", "reload-include", "reload-exclude",
                   "namespace", "proxy-static-header", "proxy", "proxy-event", "rpc-namespace")

    def __init__(self) -> None:
        super().__init__()
        self["port"] = []
        self["fd"] = []
        self["history"] = []
        self["reload-dir"] = []
        self["reload-include"] = []
        self["reload-exclude"] = []
        self["namespace"] = []
        self["proxy-static-header"] = []
        self["proxy"] = []
        self["proxy-event"] = []
        self["rpc-namespace"] = []
        #: ``--jwks-url``'s ``realtime.jwks.JwksUrl`` (set by ``postOptions``).
        self.jwks_source: Any = None
        #: ``--centrifugo-config``'s path and ``centrifugo_config.Translation``.
        self.centrifugo: tuple[str, Any] | None = None
        #: Options the environment or the command line set (they win over a file's).
        self.given: set[str] = set()

    def opt_port(self, value: str) -> None:
        """A port number or a Twisted endpoint description (tcp:, ssl:, unix:, systemd:);
        repeatable."""
        self["port"].append(value)

    opt_p = opt_port

    def opt_endpoint(self, value: str) -> None:
        """Daphne's spelling of --port (an endpoint description); repeatable."""
        self["port"].append(value)

    opt_e = opt_endpoint

    def opt_fd(self, value: str) -> None:
        """Adopt an inherited listening socket on this file descriptor; repeatable."""
        self["fd"].append(value)

    def opt_history(self, value: str) -> None:
        """PATTERN=SIZE:TTL: groups matching the glob keep their last SIZE group_send
        messages for TTL seconds after the last, and clients can recover what they missed
        (group_add(..., since=position)); repeatable, the first match wins."""
        self["history"].append(value)

    def opt_namespace(self, value: str) -> None:
        """NAME:OPTION,OPTION=VALUE,...: a realtime.pubsub namespace with Centrifugo's
        option names (presence, join_leave, history_size=100, history_ttl=300s,
        allow_subscribe_for_client, ...); ':OPTIONS' for channels without one; repeatable."""
        self["namespace"].append(value)

    def opt_proxy_static_header(self, value: str) -> None:
        """'Name: value': a header every proxy request carries (a forwarded one of the same
        name wins: never name a secret's header in --proxy-http-headers); repeatable."""
        self["proxy-static-header"].append(value)

    def opt_proxy(self, value: str) -> None:
        """NAME:endpoint=URL,timeout=2s,http_headers=Cookie+Authorization,
        static_header=X-Key: v,...: a named proxy (Centrifugo's proxies) that a namespace's
        subscribe_proxy_name (publish_, sub_refresh_) or an --rpc-namespace's proxy_name
        picks; its settings are its own; repeatable."""
        self["proxy"].append(value)

    def opt_proxy_event(self, value: str) -> None:
        """EVENT:timeout=3s,http_headers=Cookie,...: one event's own proxy's settings
        (connect, refresh, subscribe, publish, sub_refresh, rpc), over the --proxy-*
        options; repeatable."""
        self["proxy-event"].append(value)

    def opt_rpc_namespace(self, value: str) -> None:
        """NAME:proxy_enabled,proxy_name=NAME: a realtime.pubsub RPC namespace (methods
        NAME:...; Centrifugo's rpc.namespaces); ':OPTIONS' for methods without one; with
        any, a method of no such namespace is error 104; repeatable."""
        self["rpc-namespace"].append(value)

    def opt_reload_dir(self, value: str) -> None:
        """With --reload: a directory to watch (repeatable, or comma separated; default:
        the current directory and the one the --app package is in)."""
        self["reload-dir"].append(value)

    def opt_reload_include(self, value: str) -> None:
        """With --reload: also watch files matching these globs (e.g. '*.html'); repeatable
        or comma separated (*.py always)."""
        self["reload-include"].append(value)

    def opt_reload_exclude(self, value: str) -> None:
        """With --reload: ignore files and directories matching these globs (e.g.
        'migrations'); repeatable or comma separated."""
        self["reload-exclude"].append(value)

    def parseOptions(self, options: list[str] | None = None) -> None:
        #: The subcommand's own arguments, which ``--workers`` children are started with.
        self.argv = list(options or [])
        argv = _daphne_spellings(self.argv) or []
        path = _config_path(argv, self.shortOpt, self.longOpt)
        centrifugo = _config_path(argv, self.shortOpt, self.longOpt, "centrifugo-config")
        if path and centrifugo:
            raise StartupError("--config and --centrifugo-config: give one of them (python "
                               "-m realtime.centrifugo_config FILE prints the Centrifugo file "
                               "as a TOML file for --config, to add realtime's own options to)")
        if path:
            self._from_file(path)
        if centrifugo:
            self._from_centrifugo(centrifugo)
        self._from_environment()
        self.given |= self._on_command_line(argv)
        try:
            super().parseOptions(_daphne_spellings(options))
        except usage.UsageError as exc:
            raise StartupError(str(exc)) from None

    def _from_file(self, path: str) -> None:
        """``--config``: a TOML table of option names (``ping-interval`` or
        ``ping_interval``) filling what the environment and the command line will not set;
        an unknown name or a value of the wrong kind stops start-up, naming it."""
        import tomllib

        try:
            with open(path, "rb") as handle:
                table = tomllib.load(handle)
        except OSError as exc:
            raise StartupError(f"--config {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise StartupError(f"--config {path}: not TOML: {exc}") from None
        parameters = {p[0] for p in self.optParameters} - {"config", "centrifugo-config"}
        flags = {f[0] for f in self.optFlags}
        spelled: dict[str, str] = {}
        for key, value in table.items():
            name = key.replace("_", "-")
            where = f"--config {path}: {key}"
            if name == "namespaces":  # Centrifugo's shape: [[namespaces]] tables
                name, value = "namespace", _namespace_specs(value, where)
            elif name in ("proxies", "proxy-events", "rpc-namespaces"):
                name, value = _proxy_tables(name, value, where)
            elif name in ("proxy-static-headers", "proxy-static-http-headers") and isinstance(
                    value, dict):  # Centrifugo's map (v5: proxy_static_http_headers)
                name, value = "proxy-static-header", [f"{k}: {v}" for k, v in value.items()]
            elif name in ("proxy-http-headers", "proxy-emulated-headers") and isinstance(
                    value, list) and all(
                    isinstance(v, str) for v in value):  # Centrifugo's array
                value = " ".join(value)
            if name in spelled:  # ping-interval and ping_interval: which was meant?
                raise StartupError(f"{where}: the same option as {spelled[name]}")
            spelled[name] = key
            if name in flags:
                if not isinstance(value, bool):
                    raise StartupError(f"{where}: expected true or false, got {value!r}")
                self[name] = int(value)
            elif name in self._repeatable:
                items = value if isinstance(value, list) else [value]
                if name in ("proxy", "proxy-event", "rpc-namespace") and spelled[name] in (
                        "proxies", "proxy_events", "proxy-events", "rpc_namespaces",
                        "rpc-namespaces"):
                    self["_env_" + name] = items  # (tables, read: realtime.pubsub_proxy's)
                    continue
                if not all(isinstance(v, str | int) and not isinstance(v, bool)
                           for v in items):
                    shown = ("something else (its values are not shown: secrets)"
                             if name == "proxy-static-header" else repr(value))
                    raise StartupError(f"{where}: expected a string or a list of strings, "
                                       f"got {shown}")
                self["_env_" + name] = [str(v) for v in items]
            elif name in parameters:
                if isinstance(value, bool) or not isinstance(value, str | int | float):
                    raise StartupError(f"{where}: expected a string or a number, "
                                       f"got {value!r}")
                self[name] = str(value)
            else:
                raise StartupError(f"{where}: no such option")

    def _from_centrifugo(self, path: str) -> None:
        """``--centrifugo-config``: a Centrifugo file's settings as options
        (``realtime.centrifugo_config``), filling what the environment and the command line
        will not set; its refusals and warnings wait for ``postOptions``, where an option
        set over them drops them."""
        from realtime import centrifugo_config

        try:
            translation = centrifugo_config.read(path)
        except centrifugo_config.CentrifugoConfigError as exc:
            raise StartupError(f"--centrifugo-config {path}: {exc}") from None
        flags = {f[0] for f in self.optFlags}
        for name, value in translation.options.items():
            if name in flags:
                self[name] = int(bool(value))
            elif name in self._repeatable:
                self["_env_" + name] = list(value)
            else:
                self[name] = str(value)
        self.centrifugo = (path, translation)

    def _on_command_line(self, argv: list[str]) -> set[str]:
        """The options ``argv`` names (their long names), as getopt reads them."""
        import getopt

        try:
            found, _ = getopt.getopt(argv, self.shortOpt, self.longOpt)
        except getopt.GetoptError:
            return set()
        return {self.synonyms.get(name.lstrip("-"), name.lstrip("-")) for name, _ in found}

    def _from_environment(self) -> None:
        """``REALTIME_<NAME>`` fills what the command line will not set."""
        for name in [p[0] for p in self.optParameters] + list(self._repeatable):
            value = os.environ.get("REALTIME_" + name.upper().replace("-", "_"))
            if value is None:
                continue
            self.given.add(name)
            if name in self._repeatable:
                self["_env_" + name] = value.split()
            else:
                self[name] = value
        for flag in [f[0] for f in self.optFlags]:
            value = os.environ.get("REALTIME_" + flag.upper().replace("-", "_"))
            if value is not None:
                self.given.add(flag)
                if value.strip().lower() not in ("1", "true", "yes", "0", "false", "no", ""):
                    raise StartupError(
                        f"REALTIME_{flag.upper().replace('-', '_')}: expected 1/true/yes or "
                        f"0/false/no, got {value!r}"
                    )
                self[flag] = 1 if value.strip().lower() in ("1", "true", "yes") else 0

    def postOptions(self) -> None:
        if self.centrifugo is None:
            self._post_options()
            return
        path, translation = self.centrifugo
        def stands(option: str | None) -> bool:
            """Whether a refusal or warning on ``option`` (``a|b``: on either) still
            holds: nothing the environment or the command line set overrides it."""
            return option is None or not set(option.split("|")) & self.given

        for option, message in translation.problems:
            if stands(option):
                raise StartupError(f"--centrifugo-config {path}: {message}")
        from realtime.workers import worker_info

        if worker_info() is None:  # a worker's supervisor said it already
            for option, message in translation.warnings:
                if stands(option):
                    sys.stderr.write(f"realtime: warning: --centrifugo-config {path}: "
                                     f"{message}\n")
            for name in ("namespace", "proxy", "proxy-event", "rpc-namespace"):
                if name in self.given and translation.options.get(name):
                    # (a repeated option replaces the file's, all of them: say which)
                    what = ("each event's proxy settings (the endpoints stay)"
                            if name == "proxy-event" else "all of them")
                    sys.stderr.write(f"realtime: warning: --centrifugo-config {path}: "
                                     f"{translation.sources[name]}: replaced by --{name}, "
                                     f"{what}\n")
        try:
            self._post_options()
        except StartupError as exc:
            # realtime's own rules (a JWT secret of 32 characters, ...) name the key.
            text = str(exc).removeprefix("realtime: error: ")
            match = re.match(r"(--[a-z][a-z-]*)", text)
            if match is None:
                raise
            name = match.group(1)[2:]
            key = translation.sources.get(name)
            if key is None or name in self.given:
                raise
            raise StartupError(f"--centrifugo-config {path}: {key} ({match.group(1)})"
                               f"{text[match.end():]}") from None

    def _post_options(self) -> None:
        for name in self._repeatable:
            if not self[name]:
                self[name] = self.get("_env_" + name, [])
        if not self["app"]:
            raise StartupError("--app is required (MODULE:ATTRIBUTE, e.g. "
                               "realtime.examples.bench:application)")
        from realtime.workers import worker_info

        if worker_info() is not None:
            # A reload (SIGHUP) passed on while this worker still starts (imports the app,
            # fetches --jwks-url) must not kill it: SIGHUP's default action would.
            import signal

            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.config = self._build_config()
        self.workers = _count("workers", self["workers"], 1)
        self.verbosity = _count("verbosity", self["verbosity"], 0, 3)
        self.gc_threshold = _count("gc-threshold", self["gc-threshold"], 0)
        #: Set in a ``--workers`` child: it serves the supervisor's sockets, spawns nothing.
        self.worker = worker_info()
        self._reload_options()
        if self.worker is not None:
            self.workers = 1
            self.listeners = self.worker.listener_specs()
        else:
            self.listeners = self._build_listeners()
        self.layer = self._build_layer()
        self._build_proxy()
        if self.workers > 1 and self["layer"] in ("memory", "memory://"):
            raise StartupError(f"--workers {self.workers} needs a shared channel layer: "
                               "use --layer redis://...")
        self._build_extras()
        self._configure_settings()
        # Before the import: a module-level get_channel_layer() must get the --layer layer,
        # not a private in-memory one that no consumer reads.
        from realtime.layers import set_channel_layer

        set_channel_layer(self.layer)
        if self.reload and not self["check"]:
            # Its child imports the application; a broken one must not stop it.
            _split_app(self["app"])
            self.application = None
            return
        self.application = self._wrap(load_application(self["app"]))
        if self["check"]:
            where = ", ".join(desc for desc, _ in self.listeners) or "no listener"
            if self.internal_listener is not None:
                where += f" (internal: {self.internal_listener[0]})"
            # The layer as its log lines name it: a password in the URL stays out.
            address = getattr(self.layer, "address", None)
            layer = address.describe() if address is not None else "memory"
            print(f"realtime: configuration OK: {self['app']} on {where}, layer {layer}",
                  flush=True)
            raise SystemExit(0)

    def _reload_options(self) -> None:
        """``--reload`` and its directories and globs; a ``--reload`` server's child (a
        worker) serves and watches nothing."""
        from realtime.autoreload import DEFAULT_INCLUDE, default_dirs, outermost

        self.reload = bool(self["reload"]) and self.worker is None
        dirs = [d for value in self["reload-dir"] for d in _words(value)]
        self.reload_include = [*DEFAULT_INCLUDE, *(p for value in self["reload-include"]
                                                   for p in _words(value))]
        self.reload_exclude = [p for value in self["reload-exclude"] for p in _words(value)]
        self.reload_dirs: list[str] = []
        if self.worker is not None:
            return
        if not self.reload:
            for name in ("reload-dir", "reload-include", "reload-exclude"):
                if self[name]:
                    raise StartupError(f"--{name}: needs --reload")
            return
        if self.workers > 1:
            raise StartupError(f"--reload and --workers {self.workers} cannot be used "
                               "together: --reload runs one server process")
        for directory in dirs:
            if not os.path.isdir(directory):
                raise StartupError(f"--reload-dir {directory}: not a directory")
        self.reload_dirs = outermost(dirs or default_dirs(self["app"]))

    def _configure_settings(self) -> None:
        """What middleware reads at import time; set before the application is imported."""
        from realtime import settings as settings_module
        from realtime.redis_url import parse_redis_url
        from realtime.sessions import REDIS_SCHEMES

        secret = self["secret-key"]
        if self["secret-key-file"]:
            secret = _read_file("secret-key-file", self["secret-key-file"]).strip()
            if not secret:
                raise StartupError(
                    f"--secret-key-file {self['secret-key-file']}: the file is empty"
                )
        store = self["session-store"]
        if store.startswith(REDIS_SCHEMES):
            try:
                parse_redis_url(store)
            except ValueError as exc:
                raise StartupError(f"--session-store: {exc}") from None
        elif store not in ("auto", "django", "cookie", "memory"):
            from realtime.layers.redis import redact_url

            raise StartupError(
                f"--session-store: expected auto, django, cookie, memory or redis://..., "
                f"got {redact_url(store)!r}"
            )
        keys = self._jwt_keys()
        self.jwks_source = self._jwks_url(keys)
        if self.jwks_source is not None:
            keys = self.jwks_source.static + self.jwks_source.keys
        settings_module.configure(
            secret_key=secret or None,
            old_secret_keys=_words(self["old-secret-keys"]),
            session_store=store,
            jwt_keys=keys,
            jwt_key_source=self.jwks_source,
            jwt_audience=self["jwt-audience"],
            jwt_issuer=self["jwt-issuer"],
            jwt_leeway=_seconds("jwt-leeway", self["jwt-leeway"]),
            allowed_hosts=_words(self["allowed-hosts"]),
            allowed_origins=_words(self["allowed-origins"]),
        )

    def _jwt_keys(self) -> list[Any]:
        from realtime.settings import ConfigurationError
        from realtime.tokens import key_from_text, keys_from_jwks

        algorithms = _words(self["jwt-algorithms"]) or None
        if algorithms and "none" in [a.lower() for a in algorithms]:
            raise StartupError("--jwt-algorithms: 'none' is never accepted")
        keys: list[Any] = []
        for name in ("jwt-key", "jwt-key-file", "jwks-file"):
            value = self[name]
            if not value:
                continue
            where = f"--{name}" if name == "jwt-key" else f"--{name} {value}"
            text = value if name == "jwt-key" else _read_file(name, value)
            try:
                if name == "jwks-file":
                    skipped: list[str] = []
                    keys.extend(keys_from_jwks(text, algorithms, skipped=skipped))
                    for reason in skipped:
                        _log.info("--jwks-file {path}: skipped {reason}", path=value,
                                  reason=reason)
                else:
                    keys.append(key_from_text(text, algorithms))
            except ConfigurationError as exc:
                raise StartupError(f"{where}: {exc}") from None
        return keys

    def _jwks_url(self, static: list[Any]) -> Any:
        """``--jwks-url``'s keys, fetched now (a failure stops start-up), as a ``JwksUrl``
        that refetches them; None without the option."""
        from realtime.jwks import MISS_INTERVAL, JwksUrl, check_url, fetch
        from realtime.settings import ConfigurationError

        url = self["jwks-url"]
        interval = _seconds("jwks-refresh", self["jwks-refresh"])
        if 0 < interval < 1:
            raise StartupError(f"--jwks-refresh: 0 (off) or at least 1 second, got "
                               f"{self['jwks-refresh']!r}")
        if not url:
            return None
        why = check_url(url)
        if why is not None:
            raise StartupError(f"--jwks-url: {why}")
        algorithms = _words(self["jwt-algorithms"]) or None
        skipped: list[str] = []
        try:
            keys = fetch(url, algorithms, skipped)
        except ConfigurationError as exc:
            from realtime.workers import worker_info

            if worker_info() is None:
                raise StartupError(f"--jwks-url {url}: {exc}") from None
            # A worker (re)started while the provider is away: the supervisor checked the
            # URL when it started, so serve, refusing tokens, until the provider answers.
            _log.error("--jwks-url {url}: {error}; tokens are refused until it answers "
                       "(asked every {every:g} s)", url=url, error=str(exc),
                       every=MISS_INTERVAL)
            return JwksUrl(url, algorithms, static, [], interval, skipped, missing=True)
        return JwksUrl(url, algorithms, static, keys, interval, skipped)

    def _wrap(self, application: Any) -> Any:
        """``--allowed-origins`` / ``--allowed-hosts`` apply the validators without code."""
        from realtime.origins import AllowedHostsOriginValidator, OriginValidator

        if self["allowed-hosts"]:
            application = AllowedHostsOriginValidator(application,
                                                      _words(self["allowed-hosts"]))
        if self["allowed-origins"]:
            application = OriginValidator(application, _words(self["allowed-origins"]))
        return application

    def _build_config(self) -> ServerConfig:
        root_path = self["root-path"] or ""
        if root_path and not root_path.startswith("/"):
            raise StartupError(f"--root-path: must start with '/', got {root_path!r}")
        root_path = root_path.rstrip("/")  # Daphne takes "/ws/" too
        for name in ("health-path", "ready-path"):
            if self[name] and not self[name].startswith("/"):
                raise StartupError(f"--{name}: must start with '/', got {self[name]!r}")
        api_keys = self._api_keys()
        return ServerConfig(
            ping_interval=_seconds("ping-interval", self["ping-interval"]),
            ping_timeout=_seconds("ping-timeout", self["ping-timeout"]),
            broadcast_delay=_broadcast_delay(self["broadcast-delay"]),
            websocket_timeout=_seconds("websocket-timeout", self["websocket-timeout"], True),
            connect_timeout=_seconds(
                "websocket-connect-timeout", self["websocket-connect-timeout"]
            ),
            application_close_timeout=_seconds(
                "application-close-timeout", self["application-close-timeout"]
            ),
            max_message_size=_size("max-message-size", self["max-message-size"]),
            max_frame_size=_size("max-frame-size", self["max-frame-size"]),
            max_inflight=_count("max-inflight", self["max-inflight"], 1),
            max_connections=_count("max-connections", self["max-connections"], 0),
            max_send_buffer=_size("max-send-buffer", self["max-send-buffer"]),
            slow_consumer=self._choice("slow-consumer", ("close", "drop")),
            lifespan=self._choice("lifespan", LIFESPAN_MODES),
            compression=bool(self["compression"]),
            http2=not self["no-http2"],
            compression_level=_count("compression-level", self["compression-level"], 1, 9),
            compression_min_size=_count(
                "compression-min-size", self["compression-min-size"], 0
            ),
            max_connections_per_ip=_count(
                "max-connections-per-ip", self["max-connections-per-ip"], 0
            ),
            rate_limit=_rate("rate-limit", self["rate-limit"]),
            rate_burst=_count("rate-burst", self["rate-burst"], 1) if self["rate-burst"] else 0,
            max_connections_per_user=_count(
                "max-connections-per-user", self["max-connections-per-user"], 0
            ),
            handshake_rate=_rate("handshake-rate", self["handshake-rate"]),
            handshake_burst=(_count("handshake-burst", self["handshake-burst"], 1)
                             if self["handshake-burst"] else 0),
            proxy_headers=bool(self["proxy-headers"]),
            trusted_proxies=self._networks(),
            proxy_headers_host=self._proxy_header("proxy-headers-host", "X-Forwarded-For"),
            proxy_headers_port=self._proxy_header("proxy-headers-port", "X-Forwarded-Port"),
            root_path_header=self._proxy_header("root-path-header", ""),
            http_response_timeout=(
                _seconds("http-timeout", self["http-timeout"]) if self["http-timeout"] else 0.0
            ),
            server_header=self._server_name(),
            api_keys=api_keys,
            api_body_limit=_size("api-body-limit", self["api-body-limit"]),
            http_body_limit=_body_limit("http-body-limit", self["http-body-limit"]),
            drain_batch=_count("drain-batch", self["drain-batch"], 1),
            drain_interval=_seconds("drain-interval", self["drain-interval"]),
            root_path=root_path,
            shutdown_timeout=_seconds("shutdown-timeout", self["shutdown-timeout"]),
            health_path=self["health-path"],
            ready_path=self["ready-path"],
            admin_path=self._admin_path(api_keys),
        )

    def _admin_path(self, api_keys: tuple[str, ...]) -> str:
        """``--admin-path``: a path of its own, and only with the server API's key (the
        page is nothing but a client of that API)."""
        path = self["admin-path"] or ""
        if not path:
            return ""
        problem = admin_path_problem(path, self["health-path"], self["ready-path"],
                                     ServerConfig.metrics_path)
        if problem is not None and problem[0] == "syntax":
            raise StartupError(f"--admin-path: expected a path starting with '/', got {path!r}")
        if not api_keys:
            raise StartupError("--admin-path needs --api-key (or --api-key-file): the admin "
                               "UI calls the server API with that key")
        if problem is not None and problem[0] == "taken":
            option = {"health_path": "--health-path", "ready_path": "--ready-path",
                      "metrics_path": "--metrics"}[problem[1]]
            raise StartupError(f"--admin-path {path}: the same path as {option}")
        if problem is not None:
            raise StartupError(f"--admin-path {path}: /api/ is the server API's")
        return str(path)

    def _api_keys(self) -> tuple[str, ...]:
        keys = [self["api-key"]] if self["api-key"] else []
        if self["api-key-file"]:
            keys += [line.strip() for line in
                     _read_file("api-key-file", self["api-key-file"]).splitlines() if line.strip()]
        for number, key in enumerate(keys):
            where = ("--api-key" if number == 0 and self["api-key"]
                     else f"--api-key-file {self['api-key-file']}")
            if len(key) < 16:
                raise StartupError(f"{where}: a key must be at least 16 characters")
            if not key.isascii() or any(c.isspace() for c in key):
                raise StartupError(f"{where}: a key must be ASCII without spaces")
        return tuple(keys)

    def _build_extras(self) -> None:
        """The metrics and internal listeners and the access log, checked now."""
        value = self["metrics-port"]
        self.metrics_listener: str | None = (self._own_listener("metrics-port", value)
                                             if value else None)
        self.metrics_enabled = bool(self["metrics"]) or value is not None
        self._build_internal()
        if self["log-format"] not in ("text", "json"):
            raise StartupError(f"--log-format: expected text or json, got {self['log-format']!r}")
        self.access_log: Any = None
        if self["access-log"]:
            from realtime.accesslog import AccessLog

            try:
                self.access_log = AccessLog(self["access-log"], self["log-format"])
            except OSError as exc:
                raise StartupError(f"--access-log {self['access-log']}: {exc.strerror}") from None

    def _own_listener(self, name: str, value: str) -> str:
        """``--metrics-port``'s or ``--internal-port``'s description: a bare port number
        listens on 127.0.0.1 (whatever ``--bind`` says: these endpoints are not for the
        public), anything else is a description, checked now."""
        from twisted.internet.endpoints import serverFromString

        if is_port_number(value):
            if not 0 <= int(value) <= 65535:
                raise StartupError(f"--{name}: {value} is not a port number (0-65535)")
            description = build_endpoint_description_strings(DEFAULT_HOST, int(value))[0]
        elif value.startswith("fd:"):
            raise StartupError(f"--{name} {value!r}: 'fd:' is not an endpoint here; give a "
                               "port or a description (tcp:, ssl:, unix:, systemd:)")
        else:
            description = value
        try:
            serverFromString(None, description)
        except Exception as exc:  # Twisted raises many kinds here
            raise StartupError(f"--{name} {value!r}: {_describe_error(exc, description)}"
                               ) from None
        return description

    def _build_internal(self) -> None:
        """``--internal-port``: the operator endpoints' own listener (``internal_listener``,
        as ``listeners``; a worker's is the supervisor's socket), and what it serves, for
        its log line (``internal_what``)."""
        self.internal_listener: tuple[str, Any] | None = None
        self.internal_what = ""
        value = self["internal-port"]
        if not value:
            return
        config = self.config
        served = [path for path in (config.health_path, config.ready_path) if path]
        if self.metrics_enabled and self.metrics_listener is None:
            served.append(config.metrics_path)
        if config.api_keys:
            served.append("/api/")
            if config.admin_path:
                served.append(config.admin_path)
        if not served:
            raise StartupError("--internal-port: it would serve nothing (no --health-path "
                               "nor --ready-path, no /metrics there, no --api-key)")
        self.internal_what = f" (internal: {', '.join(served)})"
        if self.worker is not None:
            # The supervisor checked the value (and a systemd: socket is its alone).
            spec = self.worker.internal_spec()
            if spec is None:
                raise StartupError("--internal-port: the supervisor passed no socket for it")
            self.internal_listener = spec
            return
        description = with_backlog(self._own_listener("internal-port", value))
        taken = [(f"--fd {spec[0]}" if isinstance(spec, tuple) else f"--port {d}", d, spec)
                 for d, spec in self.listeners]
        if self.metrics_listener is not None:
            taken.append((f"--metrics-port {self['metrics-port']}", self.metrics_listener,
                          None))
        mine = _listens_on(description)
        for what, other, spec in taken:
            if _same_address(mine, _listens_on(other, spec)):
                raise StartupError(f"--internal-port {value}: the same address as {what} "
                                   "(a listener of its own: another port or interface)")
        self.internal_listener = (description, description)

    def _proxy_header(self, name: str, default: str) -> str:
        """Daphne's --proxy-headers-host/-port, --root-path-header: a header name, only with
        --proxy-headers."""
        value = self[name]
        if value is None or (value == "" and not default):
            return default
        if not self["proxy-headers"]:
            raise StartupError(f"--{name}: needs --proxy-headers")
        if not is_token(value):
            raise StartupError(f"--{name}: expected an HTTP header name, got {value!r}")
        problem = unread_header(value)
        if problem is not None:
            raise StartupError(f"--{name}: {problem}")
        return str(value)

    def _server_name(self) -> str:
        """The ``Server`` header's value; none by default, and with --no-server-name."""
        name = self["server-name"]
        if self["no-server-name"] or not name:
            return ""
        if any(c in name for c in "\r\n\0"):
            raise StartupError(f"--server-name: CR, LF and NUL are not allowed, got {name!r}")
        try:
            name.encode("latin-1")
        except UnicodeEncodeError:
            raise StartupError(f"--server-name: expected latin-1 text, got {name!r}") from None
        return str(name)

    def _networks(self) -> tuple[str, ...]:
        from realtime.proxy import parse_networks

        values = tuple(_words(self["trusted-proxies"]))
        try:
            parse_networks(values)
        except ValueError as exc:
            raise StartupError(f"--trusted-proxies: {exc}") from None
        return values

    def _choice(self, name: str, allowed: tuple[str, ...]) -> str:
        value = self[name]
        if value not in allowed:
            raise StartupError(f"--{name}: expected one of {', '.join(allowed)}, got {value!r}")
        return str(value)

    def _build_layer(self) -> Any:
        """The layer, built (not connected) now so a bad URL stops start-up."""
        from realtime.layers import layer_from_url
        from realtime.layers.history import apply_rules

        try:
            layer = layer_from_url(self["layer"])
        except ValueError as exc:
            raise StartupError(f"--layer: {exc}") from None
        try:
            apply_rules(layer, self["history"])
        except ValueError as exc:
            raise StartupError(f"--history: {exc}") from None
        from realtime import pubsub

        try:
            transports = pubsub.parse_transports(self["pubsub-transports"]) \
                if self["pubsub-transports"] is not None else None
        except ValueError as exc:
            raise StartupError(f"--pubsub-transports: {exc}") from None
        try:
            pubsub.configure(self["namespace"], anonymous=bool(self["pubsub-anonymous"]),
                             layer=layer, transports=transports)
        except ValueError as exc:
            raise StartupError(f"--namespace: {exc}") from None
        layer.max_groups_per_connection = _count(
            "max-groups-per-connection", self["max-groups-per-connection"], 0)
        return layer

    def _build_proxy(self) -> None:
        """Centrifugo's event proxies (``realtime.pubsub_proxy``), each option checked: the
        events' own (``--proxy-*-endpoint``, the ``--proxy-*`` options, ``--proxy-event``),
        the named ones (``--proxy``), RPC namespaces; a namespace that enables a channel
        proxy needs it (its endpoint, or its ``--proxy`` name)."""
        from realtime import pubsub, pubsub_proxy
        from realtime.settings import settings

        endpoints: dict[str, str] = {}
        for event in pubsub_proxy.EVENTS:
            name = f"proxy-{event.replace('_', '-')}-endpoint"
            url = (self[name] or "").strip()
            if url:
                try:
                    endpoints[event] = pubsub_proxy.check_endpoint(url)
                except ValueError as exc:
                    raise StartupError(f"--{name}: {exc}") from None
        events: dict[str, dict[str, Any]] = {}
        seen: set[str] = set()
        # A file's per-event settings (--config, --centrifugo-config) give way to the
        # --proxy-* options the environment or the command line sets: they win over the file.
        overridden = set() if "proxy-event" in self.given else {
            field for option, field in _PROXY_OWN_FIELDS.items() if option in self.given}
        for spec in self["proxy-event"]:
            try:
                event, own = (pubsub_proxy.parse_proxy_event(spec) if isinstance(spec, str)
                              else spec)
            except ValueError as exc:
                raise StartupError(f"--proxy-event: {exc}") from None
            option = f"--proxy-{event.replace('_', '-')}-endpoint"
            if event in seen:
                raise StartupError(f"--proxy-event: {event!r} given twice")
            seen.add(event)
            own = {key: value for key, value in own.items() if key not in overridden}
            if not own.pop("enabled", True):  # (v6's connect or refresh enabled = false)
                endpoints.pop(event, None)
                continue
            if "endpoint" in own:
                if event in endpoints:
                    raise StartupError(f"--proxy-event: {event}: endpoint given twice (and "
                                       f"{option})")
                endpoints[event] = own.pop("endpoint")
            elif event not in endpoints:
                raise StartupError(f"--proxy-event: {event}: needs its endpoint ({option}, "
                                   "or endpoint=URL)")
            events[event] = own
        named: dict[str, pubsub_proxy.Proxy] = {}
        for spec in self["proxy"]:
            try:
                proxy = pubsub_proxy.parse_proxy(spec) if isinstance(spec, str) else spec
            except ValueError as exc:
                raise StartupError(f"--proxy: {exc}") from None
            if proxy.name in named:
                raise StartupError(f"--proxy: {proxy.name!r} given twice")
            named[proxy.name] = proxy
        rpc: dict[str, pubsub_proxy.RpcNamespace] = {}
        for spec in self["rpc-namespace"]:
            try:
                found = (pubsub_proxy.parse_rpc_namespace(spec) if isinstance(spec, str)
                         else spec)
            except ValueError as exc:
                raise StartupError(f"--rpc-namespace: {exc}") from None
            if found.name in rpc:
                raise StartupError(f"--rpc-namespace: {found.name or '(default)'!r} given "
                                   "twice")
            rpc[found.name] = found
        boundary = self["rpc-namespace-boundary"]
        # The events' own proxies' settings (a --proxy has its own: that setting's name),
        # and the bound on requests in flight, each proxy's that sets none of its own.
        own_settings = {"proxy-timeout": "timeout=", "proxy-http-headers": "http_headers=",
                        "proxy-emulated-headers": "emulated_headers=",
                        "proxy-static-header": "static_header=",
                        "proxy-include-connection-meta": "include_connection_meta",
                        "proxy-binary-encoding": "binary_encoding"}
        if not endpoints:
            for option in ("proxy-timeout", "proxy-max-inflight", *list(own_settings)[1:]):
                if self[option] in (None, "", [], 0):
                    continue
                if option == "proxy-max-inflight":
                    if named:
                        continue
                    raise StartupError("--proxy-max-inflight: needs a proxy (--proxy-connect-"
                                       "endpoint, ..., --proxy-rpc-endpoint, or a --proxy)")
                hint = f"; a --proxy has its own {own_settings[option]}" if named else ""
                raise StartupError(f"--{option}: needs a proxy endpoint (--proxy-connect-"
                                   f"endpoint, ..., --proxy-rpc-endpoint{hint})")
        if rpc and not endpoints and not named:
            raise StartupError("--rpc-namespace: needs a proxy (--proxy-rpc-endpoint or "
                               "--proxy)")
        if boundary is not None and not rpc:
            raise StartupError("--rpc-namespace-boundary: needs --rpc-namespace")
        boundary = ":" if boundary is None else boundary
        if any(c.isspace() or not c.isprintable() for c in boundary) or len(boundary) > 16:
            raise StartupError(f"--rpc-namespace-boundary: expected up to 16 printable "
                               f"characters, got {boundary!r}")
        try:
            timeout = pubsub._duration(self["proxy-timeout"] or "1s", "--proxy-timeout")
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        if not timeout > 0:
            raise StartupError(f"--proxy-timeout: must be more than 0, got "
                               f"{self['proxy-timeout']!r}")
        max_inflight = _count("proxy-max-inflight", self["proxy-max-inflight"] or "64")
        lists: dict[str, tuple[str, ...]] = {}
        for option in ("proxy-http-headers", "proxy-emulated-headers"):
            for header in _words(self[option]):
                try:
                    if option == "proxy-http-headers":
                        pubsub_proxy.check_forwarded_name(header)
                    pubsub_proxy.check_header_name(header)
                except ValueError as exc:
                    raise StartupError(f"--{option}: {exc}") from None
            lists[option] = tuple(_words(self[option]))
        static = []
        for value in self["proxy-static-header"]:
            try:
                name, text = pubsub_proxy.parse_static_header(value)
            except ValueError as exc:
                raise StartupError(f"--proxy-static-header: {exc}") from None
            static.append((name, text))

        def missing(event: str, name: str) -> str | None:
            """Why ``name`` (a namespace's choice of proxy for ``event``) has none."""
            if name in ("", pubsub_proxy.DEFAULT):
                if event not in endpoints:
                    return f"--proxy-{event.replace('_', '-')}-endpoint"
            elif name not in named:
                return (f"a --proxy of that name (known: "
                        f"{', '.join(sorted(named)) or 'none'})")
            return None

        for namespace in settings.pubsub_namespaces.values():
            where = f"--namespace: namespace {namespace.name or '(default)'!r}"
            for event in pubsub_proxy.CHANNEL_EVENTS:
                name = getattr(namespace, f"{event}_proxy_name")
                lacking = missing(event, name)
                if name and name != pubsub_proxy.DEFAULT and lacking:
                    raise StartupError(f"{where}: {event}_proxy_name {name!r} needs {lacking}")
                if getattr(namespace, f"{event}_proxy_enabled") and lacking:
                    raise StartupError(f"{where}: {event}_proxy_enabled needs {lacking}")
        for found in rpc.values():
            where = f"--rpc-namespace: {found.name or '(default)'!r}"
            if found.name and (not boundary or boundary in found.name):
                raise StartupError(f"{where}: no method reaches it with "
                                   f"--rpc-namespace-boundary {boundary!r}")
            lacking = missing("rpc", found.proxy_name)
            if found.proxy_name and found.proxy_name != pubsub_proxy.DEFAULT and lacking:
                raise StartupError(f"{where}: proxy_name {found.proxy_name!r} needs {lacking}")
            if found.proxy_enabled and lacking:
                raise StartupError(f"{where}: proxy_enabled needs {lacking}")
        try:
            settings.pubsub_proxy = pubsub_proxy.ProxyConfig(
                endpoints=endpoints, timeout=timeout,
                http_headers=lists["proxy-http-headers"], static_headers=tuple(static),
                include_connection_meta=bool(self["proxy-include-connection-meta"]),
                binary_encoding=bool(self["proxy-binary-encoding"]),
                max_inflight=max_inflight,
                emulated_headers=lists["proxy-emulated-headers"],
                events=events, proxies=named, rpc_namespaces=rpc or None,
                rpc_namespace_boundary=boundary,
            ) if endpoints or named else None
        except ValueError as exc:  # (an event's settings over the options)
            raise StartupError(f"--proxy-event: {exc}") from None

    def _build_listeners(self) -> list[tuple[str, Any]]:
        """(description, how to build the endpoint) pairs, each checked now."""
        from twisted.internet.endpoints import serverFromString

        bind = self["bind"]
        if bind is not None and not bind.strip("[] "):
            raise StartupError("-b/--bind: expected a host, got an empty value")
        # (what the user wrote, the description we listen on)
        descriptions: list[tuple[str, str]] = []
        for value in self["port"]:
            if is_port_number(value) and not 0 <= int(value) <= 65535:
                raise StartupError(f"--port: {value} is not a port number (0-65535)")
            descriptions.append((value, with_backlog(port_description(value, bind))))
        if bind is not None and not self["port"]:
            descriptions.extend(
                (f"-b {bind}", with_backlog(d))
                for d in build_endpoint_description_strings(bind, DEFAULT_PORT)
            )
        if self["unix-socket"]:
            descriptions.extend(
                (f"-u {self['unix-socket']}", d)
                for d in build_endpoint_description_strings(unix_socket=self["unix-socket"])
            )
        listeners: list[tuple[str, Any]] = []
        for value, desc in descriptions:
            if desc.startswith("fd:"):
                raise StartupError(
                    f"--port {value!r}: 'fd:' is not an endpoint here; use --fd N or systemd:"
                )
            try:
                serverFromString(None, desc)
            except Exception as exc:  # Twisted raises many kinds here
                raise StartupError(f"--port {value!r}: {_describe_error(exc, desc)}") from None
            listeners.append((desc, desc))
        for value in self["fd"]:
            fd = _count("fd", value, 0)
            try:
                family = adopted_socket_family(fd)
            except ValueError as exc:
                raise StartupError(f"--fd {fd}: {exc}") from None
            listeners.append((f"fd:{fd}", (fd, family)))
        if not listeners:
            default = build_endpoint_description_strings(DEFAULT_HOST, DEFAULT_PORT)[0]
            listeners.append((with_backlog(default), with_backlog(default)))
        return listeners


def _listens_on(description: str, spec: Any = None) -> tuple[Any, ...] | None:
    """Where a listener takes its connections, as the kernel has it, to tell two apart:
    ``("inet", addresses, port)`` for TCP (inside ``ssl:``, ``tls:``, ``haproxy:`` too;
    ``addresses`` from ``_addresses``), ``("unix", path)``; an inherited socket (``--fd``:
    ``spec`` is ``(fd, family)``; ``systemd:``) by the address it is bound to. None when
    unknown."""
    from twisted.internet.endpoints import (
        AdoptedStreamServerEndpoint,
        TCP6ServerEndpoint,
        UNIXServerEndpoint,
        serverFromString,
    )

    from realtime.workers import _innermost

    if isinstance(spec, tuple):
        return _socket_listens_on(spec[0])
    try:
        endpoint = serverFromString(None, description)
    except Exception:  # (checked already)
        return None
    tcp = _innermost(endpoint)
    if tcp is not None:
        host = str(tcp._interface)
        family = socket.AF_INET6 if isinstance(tcp, TCP6ServerEndpoint) or ":" in host \
            else socket.AF_INET
        return "inet", _addresses(host, family), int(tcp._port)
    while (inner := getattr(endpoint, "_wrappedEndpoint", None) or getattr(
            endpoint, "endpoint", None)) is not None:
        endpoint = inner
    if isinstance(endpoint, AdoptedStreamServerEndpoint):
        return _socket_listens_on(endpoint.fileno)
    if isinstance(endpoint, UNIXServerEndpoint):
        return "unix", _unix_name(endpoint._address)
    return None


def _socket_listens_on(fd: int) -> tuple[Any, ...] | None:
    """``_listens_on`` for an inherited socket: its own address (a copy of it looked at)."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    with sock:
        try:
            name = sock.getsockname()
        except OSError:
            return None
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            return "inet", _addresses(name[0], sock.family), int(name[1])
        if sock.family == socket.AF_UNIX and name:
            return "unix", _unix_name(name)
    return None


def _addresses(host: str, family: int) -> frozenset[str]:
    """The addresses a TCP listener bound to ``host`` takes connections on, one spelling
    each: a name resolved as bind() resolves it (``localhost``), a literal's other
    spellings made one (``127.1``, ``0:0::1``), an IPv4-mapped IPv6 address its IPv4 one;
    ``*`` for every interface (``""``, ``0.0.0.0``, ``::``)."""
    import ipaddress

    if not host.strip("[]"):
        return frozenset({"*"})
    try:
        found = socket.getaddrinfo(host.strip("[]"), None, family, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return frozenset({host})  # (it cannot be bound either: that error comes later)
    addresses: set[str] = set()
    for *_, sockaddr in found:
        address: Any = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        addresses.add("*" if address.is_unspecified else str(address))
    return frozenset(addresses)


def _unix_name(name: str | bytes) -> str:
    """A unix socket's path, absolute and without ``..`` (an abstract name as it is)."""
    text = name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else name
    return text if text.startswith("\0") else os.path.normpath(os.path.abspath(text))


def _same_address(one: tuple[Any, ...] | None, other: tuple[Any, ...] | None) -> bool:
    """Whether two listeners (``_listens_on``) would take the same connections: one socket,
    or TCP on one port of the same interface or of every interface (port 0 picks a free
    port for each). Under --workers two SO_REUSEPORT groups on one address become one,
    whose connections the kernel spreads over both listeners' sockets."""
    if one is None or other is None or one[0] != other[0]:
        return False
    if one[0] == "unix":
        return bool(one[1] == other[1])
    (_, mine, port), (_, theirs, their_port) = one, other
    if port != their_port or port == 0:
        return False
    return bool(mine & theirs) or "*" in mine or "*" in theirs


def _describe_error(exc: BaseException, description: str = "") -> str:
    text = str(exc) or type(exc).__name__
    if description.startswith("systemd:") and isinstance(exc, LookupError | ValueError):
        # Twisted reads LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES once, at import.
        text = (
            "no such socket passed by systemd (LISTEN_FDS="
            f"{os.environ.get('LISTEN_FDS', 'unset')}, LISTEN_FDNAMES="
            f"{os.environ.get('LISTEN_FDNAMES', 'unset')}; LISTEN_PID must be this process)"
        )
    elif isinstance(exc, OSError) and exc.filename:
        text = f"{exc.strerror}: {exc.filename}"
    elif type(exc).__name__ == "Error" and exc.args:  # pyOpenSSL's list of reasons
        text = f"cannot load certificate or key ({exc.args[0]!r})"
    return text.splitlines()[0] if text else type(exc).__name__


def makeService(options: Options) -> Any:
    """Build the service tree; the reactor is installed by now, so it is imported here."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.logger import Logger

    from realtime.endpoints import adopted_endpoint, keep_adopted_unix
    from realtime.layers.base import set_broadcast_delay
    from realtime.lifespan import Lifespans
    from realtime.service import ListenerService, RealtimeService, exit_after_shutdown
    from realtime.site import RealtimeSite

    log = Logger(namespace="realtime")
    from realtime.verbosity import apply_verbosity

    apply_verbosity(options.verbosity, reactor, under_twistd=options.parent is not None)
    try:
        from autobahn.websocket import USES_NVX

        log.info("autobahn NVX acceleration: {on}", on="on" if USES_NVX else "off")
    except ImportError:  # pragma: no cover - older autobahn
        pass
    if options.workers > 1 or options.reload:
        from realtime.autoreload import ReloadSupervisor
        from realtime.workers import SupervisorService

        supervisor = (ReloadSupervisor(options, reactor) if options.reload
                      else SupervisorService(options, reactor))
        supervisor.on_failure = partial(exit_after_shutdown, reactor, _pidfile(options))
        if not (options.metrics_enabled and options.metrics_listener):
            return supervisor
        # --metrics-port under --workers: the supervisor serves it, adding up every
        # worker's snapshot (the workers write them; none binds the metrics port).
        from twisted.application.service import MultiService

        parent = MultiService()
        supervisor.setServiceParent(parent)
        _metrics_listener(parent, _SupervisorSnapshots(supervisor), options, reactor)
        return parent
    sites: list[RealtimeSite] = []
    listeners: list[ListenerService] = []
    # Process-wide, as held broadcasts are: one server per process.
    set_broadcast_delay(options.config.broadcast_delay, reactor)

    def endpoint_of(spec: Any) -> Any:
        if isinstance(spec, tuple):
            return adopted_endpoint(reactor, spec[0], spec[1])
        if callable(spec):  # a --workers child's inherited socket
            return spec(reactor)
        return keep_adopted_unix(reactor, serverFromString(reactor, spec))

    for description, spec in options.listeners:
        site = RealtimeSite(options.application, options.config, reactor, options.layer)
        sites.append(site)
        listeners.append(ListenerService(endpoint_of(spec), description, site))
    for site in sites[1:]:
        site.handshakes = sites[0].handshakes  # --handshake-rate is per process
    if options.internal_listener is not None:
        # --internal-port: the operator endpoints on a site of their own, which serves
        # nothing else (404), and are none of the main ports' business.
        for site in sites:
            site.operator = False
        description, spec = options.internal_listener
        internal = RealtimeSite(_no_application(), options.config, reactor, options.layer)
        sites.append(internal)
        listeners.append(ListenerService(endpoint_of(spec), description, internal,
                                         what=options.internal_what,
                                         option="--internal-port"))
    if options.worker is not None:
        from realtime.workers import become_worker

        for listener in listeners:
            listener.announce = "serving"
        become_worker(options.worker)
    for site in sites:
        site.access_log = options.access_log
    from realtime.reload import KeyFiles, on_sighup

    reloads: list[Any] = []
    if options.access_log is not None and options.access_log.path != "-":
        reloads.append(options.access_log.reopen)
    keys = KeyFiles(options, sites)
    if keys.wanted:
        reloads.append(keys)
    if options.jwks_source is not None:
        options.jwks_source.start(reactor)
        reloads.append(options.jwks_source.refresh)
    on_sighup(reactor, reloads)
    config = options.config
    service = RealtimeService(
        sites, reactor, config.shutdown_timeout, options.layer,
        lifespan=Lifespans(options.application, config.lifespan, reactor,
                           config.shutdown_timeout),
        on_failure=partial(exit_after_shutdown, reactor, _pidfile(options)),
    )
    for listener in listeners:
        listener.setServiceParent(service)
    if options.parent is not None and options.gc_threshold:  # a process of our own
        from realtime.service import tune_collector

        reactor.callWhenRunning(tune_collector, options.gc_threshold)
    if options.metrics_enabled:
        _add_metrics(service, sites, options, reactor)
    return service


def _pidfile(options: Options) -> str | None:
    """twistd's ``--pidfile`` (none under the ``realtime`` script or a test)."""
    return options.parent.get("pidfile") if options.parent is not None else None


def _add_metrics(service: Any, sites: list[Any], options: Options, reactor: Any) -> None:
    """/metrics on the main ports (on --internal-port's instead, when given), or on its own
    listener (--metrics-port); under --workers (``REALTIME_METRICS_DIR`` set by the
    parent) with totals across every worker. Every site's requests count (the internal
    one's too: the API's calls, the scrapes)."""
    from realtime.metrics import Collector, SnapshotWriter, snapshot_timer

    writer = None
    directory = os.environ.get("REALTIME_METRICS_DIR")
    if directory:
        writer = SnapshotWriter(directory, sites, options.layer)
        snapshot_timer(writer, reactor).setServiceParent(service)
    collector = Collector(sites, options.layer, writer)
    if options.metrics_listener is None:
        for site in sites:
            if site.operator:  # the main ports', or --internal-port's alone
                site.metrics = collector
        return
    if options.worker is not None:
        return  # the supervisor serves --metrics-port from the snapshots
    _metrics_listener(service, collector, options, reactor)


def _metrics_listener(service: Any, collector: Any, options: Options, reactor: Any) -> None:
    from twisted.internet.endpoints import serverFromString

    from realtime.layers import InMemoryChannelLayer
    from realtime.service import ListenerService
    from realtime.site import RealtimeSite

    metrics_config = ServerConfig(health_path="", ready_path="",
                                  server_header=options.config.server_header)
    metrics_site = RealtimeSite(_no_application(), metrics_config, reactor, InMemoryChannelLayer())
    metrics_site.metrics = collector
    description = options.metrics_listener
    assert description is not None
    endpoint = serverFromString(reactor, description)
    ListenerService(endpoint, description, metrics_site).setServiceParent(service)


class _SupervisorSnapshots:
    """The supervisor's view for /metrics: every worker's latest snapshot, added up."""

    def __init__(self, supervisor: Any) -> None:
        self.supervisor = supervisor

    def totals(self) -> dict[str, Any]:
        from realtime.metrics import SnapshotWriter, add_up, snapshot

        directory = self.supervisor.metrics_dir
        if not directory:
            return snapshot([], None)
        return add_up([snapshot([], None), *SnapshotWriter(directory, [], None).others()])

    def collect(self) -> Any:
        from realtime.metrics import Collector

        collector = Collector([], None)
        collector.totals = self.totals  # type: ignore[method-assign]
        return collector.collect()


def _no_application() -> Any:
    """The application of a listener of operator endpoints only: no route at all, so any
    other path is 404 (a WebSocket upgrade too; never the 426 of an application it cannot
    see into)."""
    from realtime.routing import URLRouter

    return URLRouter([])
