"""A Centrifugo configuration file as realtime's options: ``--centrifugo-config FILE``
(``REALTIME_CENTRIFUGO_CONFIG``), and ``python -m realtime.centrifugo_config FILE``, which
prints the same options as a realtime TOML file (``--config``), each line naming the
Centrifugo key it came from.

The file is JSON, YAML (PyYAML: ``pip install 'realtime[yaml]'``) or TOML, by its
extension, as Centrifugo reads it; its layout is Centrifugo v6's (nested:
``client.token.hmac_secret_key``) or v5's (flat: ``token_hmac_secret_key``), told apart by
its keys (a v6 file holds one of v6's sections: ``client``, ``channel``, ``http_server``,
...). v5 keys are read through Centrifugo's own v5 -> v6 map (the "Migrating to v6"
converter), so both speak the same rules below; messages name the key as the file wrote it.

Every key is decided, none passes unseen (Centrifugo v6 only warns of a key it does not
know; realtime refuses it, since a typo such as ``allowed_origin`` would otherwise drop a
setting without a word). A key set to Centrifugo's default (``false``, ``""``, ``0``, the
documented value) asks for nothing and is taken as it is; a section that is not
``enabled`` does nothing in Centrifugo either. Otherwise:

=================================================  ========================================
Centrifugo v6 key (v5)                             realtime
=================================================  ========================================
http_server.port (port), .address (address)        ``--port``, ``--bind`` (no address:
                                                   Centrifugo listens everywhere, realtime
                                                   on 127.0.0.1: warning)
http_server.tls.enabled, .cert_pem, .key_pem       ``--port ssl:PORT:privateKey=..:certKey=..``
(tls, tls_cert, tls_key)                           (file paths; inline or base64 PEM
                                                   refused)
http_server.internal_port, .internal_address       ``--internal-port`` when they name another
(internal_port, internal_address), .tls_external,  address than the main one (the address
.internal_tls                                      defaults to ``address``, the port to
                                                   ``port``): ``tcp:PORT:interface=HOST``,
                                                   ``ssl:`` with ``internal_tls``'s files, or
                                                   the main TLS's unless ``tls_external``
                                                   (no address at all: 127.0.0.1, warning);
                                                   ``http_api.external``/``admin.external``
                                                   with it refused
client.token.hmac_secret_key, rsa_public_key,      ``--jwt-key`` (one of them; two refused),
ecdsa_public_key, jwks_public_endpoint,            ``--jwks-url``, ``--jwt-audience``,
audience, issuer (token_*)                         ``--jwt-issuer``
client.allowed_origins (allowed_origins)           ``--allowed-origins`` (``*`` and whole
                                                   origins; globs and host-only patterns
                                                   refused; not set or empty: warning,
                                                   refused when a proxy forwards Cookie)
client.allow_anonymous_connect_without_token       ``--pubsub-anonymous``
client.channel_limit, user_connection_limit,       ``--max-groups-per-connection``,
connection_limit, connection_rate_limit,           ``--max-connections-per-user``,
queue_max_size (client_*)                          ``--max-connections``, ``--handshake-rate``,
                                                   ``--max-send-buffer``
client.proxy.connect / refresh (enabled),          ``--proxy-*-endpoint``, and each
channel.proxy.subscribe / publish / sub_refresh,   object's own settings as they are
rpc.proxy (proxy_*_endpoint, proxy_*_timeout,      (``--proxy-event``, TOML
and v5's proxy_* in each)                          ``[proxy_events.EVENT]``: ``timeout``,
                                                   ``http_headers``, ``emulated_headers``,
                                                   ``http.static_headers``,
                                                   ``http.status_to_code_transforms``,
                                                   ``binary_encoding``,
                                                   ``include_connection_meta``; a
                                                   ``--proxy-*`` option the environment or
                                                   the command line gives wins over them)
proxies (v5: with granular_proxy_mode;             ``--proxy`` (TOML ``[[proxies]]``, the
static_http_headers)                               objects as they are); v5's
                                                   ``connect_proxy_name``,
                                                   ``refresh_proxy_name``: that proxy's
                                                   object as the event's own
channel.namespaces, channel.without_namespace      ``--namespace`` (the same option names,
(namespaces, top-level channel options)            ``*_proxy_name`` too (v5 granular: a
                                                   name enables it); realtime's own checks
                                                   speak)
rpc.without_namespace, rpc.namespaces,             ``--rpc-namespace`` (TOML
rpc.namespace_boundary (rpc_proxy_name,            ``[[rpc_namespaces]]``, ``""`` for
rpc_namespaces, rpc_namespace_boundary)            methods without one; made whenever the
                                                   file proxies RPC, so v6's 104 and 108
                                                   hold), ``--rpc-namespace-boundary``; v5
                                                   without granular mode: every method to
                                                   ``proxy_rpc_endpoint``, as v5 did
http_api.key (api_key), http_api.disabled          ``--api-key``
admin.enabled, admin.handler_prefix (admin)        ``--admin-path`` (``/admin`` for
                                                   Centrifugo's ``/``: warning)
engine.type, engine.redis.address, user,           ``--layer``: ``redis://``, ``rediss://``
password, db, prefix, tls, sentinel_address,       (``ssl_ca_certs``), ``unix://``,
sentinel_master_name, cluster_address (engine,     ``redis+sentinel://`` (a
redis_*)                                           ``sentinel_address`` item each: a shard,
                                                   as Centrifugo), ``redis+cluster://``,
                                                   several: sharded
websocket.compression, compression_level,          ``--compression``, ``--compression-level``,
compression_min_size, message_size_limit           ``--compression-min-size``,
(websocket_*)                                      ``--max-message-size`` and
                                                   ``--max-frame-size`` (not set:
                                                   Centrifugo's 65536)
prometheus.enabled (prometheus)                    ``--metrics``
health.enabled, handler_prefix (health)            ``--health-path /health``
shutdown.timeout (shutdown_timeout)                ``--shutdown-timeout`` (not set:
                                                   Centrifugo's 30)
log.level (log_level)                              ``-v`` (trace/debug 2, info 1, warn,
                                                   error, fatal, none 0)
websocket.disabled, uni_websocket / uni_sse /      ``--pubsub-transports``: what the file
uni_http_stream / sse / http_stream ``.enabled``   enables (Centrifugo's defaults: WebSocket
                                                   alone; ``/emulation`` with sse or
                                                   http_stream)
=================================================  ========================================

Refused (security or delivery would change; one line naming the key and why): gRPC
(``grpc_api``, ``uni_grpc``, gRPC proxies), ``consumers``, a proxy name no ``proxies``
item has, ``channel.proxy.subscribe_stream``, ``subscribe_stream_proxy_enabled``,
``rpc.ping``, ``channel_regex``, ``force_recovery_mode: cache``, channel patterns, token
``audience_regex``, ``issuer_regex``, ``user_id_claim``, ``client.subscription_token``,
``disallow_anonymous_connection_tokens``, ``insecure_skip_token_signature_verify``,
``user_id_http_header``, every ``insecure`` mode, ``http_api.external`` or
``admin.external`` with an internal port (``--internal-port`` takes every operator
endpoint), client certificates (``client_ca_pem``,
Redis ``cert_pem``/``key_pem``), ``tls_autocert``, Redis Sentinel credentials or TLS,
several Redis Clusters, a ``handler_prefix`` other than Centrifugo's default, other
channel boundaries or prefixes, ``channel.max_length`` other than 255,
``http_api.error_mode``, ``connect_include_server_time``, a ``CENTRIFUGO_*``
variable (Centrifugo reads them over the file), a key given twice in one table,
``connect_code_to_http_response``/``_unidirectional_disconnect``,
``uni_websocket.join_push_messages``, ``broker``/``presence_manager`` (realtime has one
layer: ``engine``), ``init``, a proxy's own TLS (``http.tls.enabled``) and
``websocket.disabled`` with no other transport enabled. A proxy forwarding ``Cookie``
(any of them, named ones too) needs ``allowed_origins``.

Ignored with one warning line each (nothing a client or the backend relies on):
``log.file``, ``pid_file``, ``node.*``, ``debug``, ``dev``, ``swagger``, ``opentelemetry``,
``graphite``, ``admin.password``/``admin.secret`` (the admin page logs in with the API
key), ``admin.web_path``, ``*.external`` without an internal port, ``tls_external`` and
``internal_tls`` without one (nothing uses them), ``http3``, ``webtransport``, ``map_broker``,
``enable_unreleased_features``, timing and buffer tuning (``ping_interval``,
``pong_timeout``, ``*_close_delay``, ``presence_update_interval``, ``concurrency``,
``channel_position_*``, ``*_publication_limit``, ``history_meta_ttl``, ``read_buffer_size``,
``write_buffer_size``, ``use_write_buffer_pool``, ``write_timeout``,
``max_request_body_size``, Redis ``connect_timeout``, ``io_timeout``, ``client_name``,
``force_resp2``, ``history_use_lists``, ``presence_*``), ``uni_websocket``'s compression
(``websocket``'s is process-wide), a proxy's ``grpc_metadata``, a TLS client option
of the HTTP server (``server_ca_pem``, ``server_name``, ``insecure_skip_verify``), what
v5 does not use in its proxy mode (without ``granular_proxy_mode``: ``proxies``, the
``*_proxy_name`` keys, ``rpc_namespaces``; with it: ``proxy_*_endpoint`` and the common
``proxy_*`` options).
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

#: The application a Centrifugo configuration implies (``--app``'s default with it).
APP = "realtime.pubsub:application"
#: Centrifugo reads a file by its extension.
FORMATS = {".json": "json", ".yaml": "yaml", ".yml": "yaml", ".toml": "toml"}
#: Sections only a v6 file has at its top level (v5's flat keys are none of them).
_V6_SECTIONS = ("http_server", "log", "client", "channel", "rpc", "http_api", "grpc_api",
                "websocket", "emulation", "shutdown", "node", "presence_manager",
                "map_broker", "usage_stats", "init", "dev")
#: A v6 key's value that is a section in v6 but a flag or name in v5 (``webtransport:
#: true``, ``broker: "nats"``).
_SHARED_SECTIONS = ("engine", "admin", "prometheus", "health", "debug", "swagger",
                    "opentelemetry", "graphite", "uni_websocket", "uni_sse",
                    "uni_http_stream", "uni_grpc", "sse", "http_stream", "webtransport",
                    "broker")

_OFF = object()  # "Centrifugo's default is off": false, "", 0, [], {}
_MISSING = object()


class CentrifugoConfigError(ValueError):
    """What stops start-up, as one line: the key path, then why."""


@dataclass
class Translation:
    """Realtime's options from one Centrifugo file. ``options`` hold what ``--config``
    would (strings, booleans for flags, lists for repeatable options); ``sources`` name
    the Centrifugo key each came from; ``warnings`` and ``problems`` (refusals) each hang
    on the option they concern (None: on none), so an option the environment or the
    command line sets drops them."""

    version: int
    options: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    namespaces: list[tuple[dict[str, Any], dict[str, str]]] = field(default_factory=list)
    #: Centrifugo's proxy objects for ``--config``'s ``[proxy_events.EVENT]``,
    #: ``[[proxies]]`` and ``[[rpc_namespaces]]`` tables, each with its keys' sources.
    proxy_events: list[tuple[str, dict[str, Any], dict[str, str]]] = field(
        default_factory=list)
    proxies: list[tuple[dict[str, Any], dict[str, str]]] = field(default_factory=list)
    rpc_namespaces: list[tuple[dict[str, Any], dict[str, str]]] = field(default_factory=list)
    #: (the option it hangs on: ``a|b`` for either, None for none; the line)
    warnings: list[tuple[str | None, str]] = field(default_factory=list)
    problems: list[tuple[str | None, str]] = field(default_factory=list)


# -- loading ---------------------------------------------------------------------------------

#: A configuration file is small: past these it is refused, not read (a YAML alias
#: "bomb" expands to more values than any Centrifugo configuration has).
MAX_BYTES = 16 << 20
MAX_VALUES = 100_000
MAX_DEPTH = 64


class _Duplicate(Exception):
    """A key given twice in one YAML mapping (YAML, like JSON, keeps the last one without a
    word): the key and the line."""


class _Table(dict[str, Any]):
    """A JSON object that had a key twice (``twice``): ``_bounded`` names its path."""

    twice: str | None = None


def _json_table(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    table = _Table()
    for key, value in pairs:
        if key in table and table.twice is None:
            table.twice = key
        table[key] = value
    return table


def _yaml_loader() -> Any:
    """PyYAML's safe loader, refusing a key given twice in one mapping (a merge key's
    ``<<`` keys may be overridden: that is what it is for)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[tuple[str, str]] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and \
                        key_node.tag != "tag:yaml.org,2002:merge":
                    if (key_node.tag, key_node.value) in seen:
                        raise _Duplicate(key_node.value, key_node.start_mark.line + 1)
                    seen.add((key_node.tag, key_node.value))
            return super().construct_mapping(node, deep)

    return Loader


def _yaml_error(exc: Any) -> str:
    """A YAML error without the snippet of the file PyYAML quotes (a secret's line)."""
    parts = []
    for what, mark in ((getattr(exc, "context", None), getattr(exc, "context_mark", None)),
                       (getattr(exc, "problem", None), getattr(exc, "problem_mark", None))):
        if what:
            parts.append(f"{what}" + (f" (line {mark.line + 1}, column {mark.column + 1})"
                                      if mark is not None else ""))
    return "; ".join(parts) or type(exc).__name__


def _bounded(data: Any) -> None:
    """Refuse a table nested deeper than ``MAX_DEPTH`` or holding more than ``MAX_VALUES``
    values, counting a YAML alias each time it is used (without expanding anything)."""
    count = 0
    stack: list[tuple[Any, int, str]] = [(data, 0, "")]
    while stack:
        node, depth, path = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise CentrifugoConfigError(f"too large once its YAML aliases are expanded (more "
                                        f"than {MAX_VALUES} values): not a configuration file")
        if depth > MAX_DEPTH:
            raise CentrifugoConfigError(f"nested too deeply (more than {MAX_DEPTH} levels): "
                                        "not a configuration file")
        if isinstance(node, dict):
            if isinstance(node, _Table) and node.twice is not None:
                raise CentrifugoConfigError(f"{path}{node.twice}: given twice in one table "
                                            "(the last would win without a word)")
            for key, value in node.items():
                if not isinstance(key, str):
                    raise CentrifugoConfigError(f"{path}{key!r}: expected a name (a string) "
                                                "as the key")
                stack.append((value, depth + 1, f"{path}{key}."))
        elif isinstance(node, list):
            stack.extend((value, depth + 1, path) for value in node)


def load(path: str) -> dict[str, Any]:
    """The file's table; ``CentrifugoConfigError`` says in one line why not (never quoting
    the file: it holds secrets)."""
    kind = FORMATS.get(os.path.splitext(path)[1].lower())
    if kind is None:
        raise CentrifugoConfigError("expected a .json, .yaml, .yml or .toml file (Centrifugo "
                                    "reads the format from the extension)")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise CentrifugoConfigError(str(exc.strerror)) from None
    if len(raw) > MAX_BYTES:
        raise CentrifugoConfigError(f"larger than {MAX_BYTES >> 20} MiB: not a configuration "
                                    "file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CentrifugoConfigError("not UTF-8 text") from None
    data: Any
    try:
        if kind == "json":
            try:
                data = json.loads(text, object_pairs_hook=_json_table)
            except json.JSONDecodeError as exc:
                raise CentrifugoConfigError(f"not JSON: {exc}") from None
        elif kind == "toml":
            import tomllib

            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise CentrifugoConfigError(f"not TOML: {exc}") from None
        else:
            try:
                import yaml
            except ImportError:
                raise CentrifugoConfigError("a YAML file needs PyYAML (pip install "
                                            "'realtime[yaml]', or PyYAML)") from None
            try:
                data = yaml.load(text, Loader=_yaml_loader())  # a SafeLoader
            except yaml.YAMLError as exc:
                raise CentrifugoConfigError("not YAML: " + _yaml_error(exc)) from None
    except RecursionError:
        raise CentrifugoConfigError(f"nested too deeply (more than {MAX_DEPTH} levels): not "
                                    "a configuration file") from None
    except _Duplicate as exc:
        raise CentrifugoConfigError(f"{exc.args[0]}: given twice in one table (line "
                                    f"{exc.args[1]}; the last would win without a word)"
                                    ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CentrifugoConfigError("expected a table of keys at the top level")
    _bounded(data)
    try:
        json.dumps(data, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:
        raise CentrifugoConfigError("not UTF-8 text (a lone surrogate: an escape from "
                                    "\\ud800 to \\udfff without its pair)") from None
    return data


def version_of(data: dict[str, Any]) -> int:
    """6 for Centrifugo v6's nested layout, 5 for v5's flat one."""
    for key, value in data.items():
        if key in _V6_SECTIONS or (key in _SHARED_SECTIONS and isinstance(value, dict)):
            return 6
    return 5 if data else 6


# -- values ----------------------------------------------------------------------------------

_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
             "m": 60.0, "h": 3600.0}
_GO_PART = r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)"


def go_duration(text: str) -> float:
    """Seconds from a Go duration (``"300ms"``, ``"25s"``, ``"1h30m"``), as Centrifugo
    parses them; ``ValueError`` for anything else."""
    value = text.strip()
    sign = -1.0 if value.startswith("-") else 1.0
    value = value.lstrip("+-")
    if value == "0":
        return 0.0
    if not value or not re.fullmatch(f"(?:{_GO_PART})+", value):
        raise ValueError(text)
    return sign * sum(float(n) * _GO_UNITS[unit] for n, unit in re.findall(_GO_PART, value))


def _is_duration(text: str) -> bool:
    try:
        go_duration(text)
    except ValueError:
        return False
    return True


def _decimal(seconds: float) -> str:
    """Seconds as a plain decimal (never ``2.592e+06``, which realtime does not read)."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") or "0"


def _seconds_text(seconds: float) -> str:
    """A duration for realtime's ``--proxy-timeout`` and namespace ``history_ttl``."""
    if 0 < seconds < 1 and round(seconds * 1000, 6).is_integer():
        return f"{round(seconds * 1000)}ms"
    return f"{_decimal(seconds)}s"


def _shown(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


#: A key whose value may be a secret (or hold one: a Redis URL's password) is never shown
#: in a message, only what kind of value it is.
_SECRET_WORDS = ("key", "secret", "password", "token", "credential", "dsn", "header",
                 "address")


def _secret(path: str) -> bool:
    return any(word in path.lower() for word in _SECRET_WORDS)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    for kind, name in ((str, "a string"), (list, "a list"), (dict, "a table")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


def _redacted(url: str) -> str:
    """A Redis address with its user and password hidden."""
    return re.sub(r"(://)[^/@]*@", r"\1***@", url)


def _pem_inline(value: str) -> str | None:
    """What Centrifugo v6 would read ``value`` as besides a path (its ``PEMData``: PEM
    text, then base64 of it, then a file): "inline PEM", "base64 PEM" or None."""
    import base64
    import binascii

    if value.lstrip().startswith("-----BEGIN"):
        return "inline PEM"
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return "base64 PEM" if decoded.lstrip().startswith(b"-----BEGIN") else None


def _is_off(value: Any) -> bool:
    return value is _MISSING or value is None or value is False or value in ("", 0, [], {})


def _given(value: Any, default: Any) -> Any:
    return default if value is _MISSING or value is None else value


#: A TLS section's keys (Centrifugo's ``TLSConfig``).
_TLS_LEAVES = ("enabled", "cert_pem", "key_pem", "server_ca_pem", "client_ca_pem",
               "insecure_skip_verify", "server_name")
#: A Redis section's keys (Centrifugo's ``Redis`` and the engine's extras).
_REDIS_LEAVES = ("address", "prefix", "connect_timeout", "io_timeout", "db", "user",
                 "password", "client_name", "force_resp2", "cluster_address",
                 "sentinel_address", "sentinel_user", "sentinel_password",
                 "sentinel_master_name", "sentinel_client_name", "history_use_lists",
                 "presence_ttl", "presence_hash_field_ttl", "presence_user_mapping")


# -- Centrifugo v5's flat keys -----------------------------------------------------------------

#: v5 key -> v6 path: Centrifugo's "Migrating to v6" converter, the keys it maps that
#: Centrifugo's open-source server reads.
_V5_KEYS = dict(line.split() for line in """
redis_address engine.redis.address
redis_prefix engine.redis.prefix
redis_connect_timeout engine.redis.connect_timeout
redis_io_timeout engine.redis.io_timeout
redis_use_lists engine.redis.history_use_lists
redis_db engine.redis.db
redis_user engine.redis.user
redis_password engine.redis.password
redis_client_name engine.redis.client_name
redis_force_resp2 engine.redis.force_resp2
redis_cluster_address engine.redis.cluster_address
redis_sentinel_address engine.redis.sentinel_address
redis_sentinel_user engine.redis.sentinel_user
redis_sentinel_password engine.redis.sentinel_password
redis_sentinel_master_name engine.redis.sentinel_master_name
redis_sentinel_client_name engine.redis.sentinel_client_name
redis_tls engine.redis.tls.enabled
redis_tls_key engine.redis.tls.key_pem
redis_tls_cert engine.redis.tls.cert_pem
redis_tls_cert_pem engine.redis.tls.cert_pem
redis_tls_key_pem engine.redis.tls.key_pem
redis_tls_root_ca engine.redis.tls.server_ca_pem
redis_tls_root_ca_pem engine.redis.tls.server_ca_pem
redis_tls_client_ca engine.redis.tls.client_ca_pem
redis_tls_client_ca_pem engine.redis.tls.client_ca_pem
redis_tls_server_name engine.redis.tls.server_name
redis_tls_insecure_skip_verify engine.redis.tls.insecure_skip_verify
redis_sentinel_tls engine.redis.sentinel_tls.enabled
redis_sentinel_tls_key engine.redis.sentinel_tls.key_pem
redis_sentinel_tls_cert engine.redis.sentinel_tls.cert_pem
redis_sentinel_tls_cert_pem engine.redis.sentinel_tls.cert_pem
redis_sentinel_tls_key_pem engine.redis.sentinel_tls.key_pem
redis_sentinel_tls_root_ca engine.redis.sentinel_tls.server_ca_pem
redis_sentinel_tls_root_ca_pem engine.redis.sentinel_tls.server_ca_pem
redis_sentinel_tls_client_ca engine.redis.sentinel_tls.client_ca_pem
redis_sentinel_tls_client_ca_pem engine.redis.sentinel_tls.client_ca_pem
redis_sentinel_tls_server_name engine.redis.sentinel_tls.server_name
redis_sentinel_tls_insecure_skip_verify engine.redis.sentinel_tls.insecure_skip_verify
global_presence_ttl engine.redis.presence_ttl
global_redis_presence_user_mapping engine.redis.presence_user_mapping
redis_presence_hash_field_ttl engine.redis.presence_hash_field_ttl
name node.name
engine engine.type
pid_file pid_file
opentelemetry opentelemetry.enabled
opentelemetry_api opentelemetry.api
opentelemetry_consuming opentelemetry.consuming
client_insecure client.insecure
client_insecure_skip_token_signature_verify client.insecure_skip_token_signature_verify
api_insecure http_api.insecure
client_user_id_http_header client.user_id_http_header
token_hmac_secret_key client.token.hmac_secret_key
token_rsa_public_key client.token.rsa_public_key
token_ecdsa_public_key client.token.ecdsa_public_key
token_jwks_public_endpoint client.token.jwks_public_endpoint
token_audience client.token.audience
token_audience_regex client.token.audience_regex
token_issuer client.token.issuer
token_issuer_regex client.token.issuer_regex
token_user_id_claim client.token.user_id_claim
separate_subscription_token_config client.subscription_token.enabled
subscription_token_hmac_secret_key client.subscription_token.hmac_secret_key
subscription_token_rsa_public_key client.subscription_token.rsa_public_key
subscription_token_ecdsa_public_key client.subscription_token.ecdsa_public_key
subscription_token_jwks_public_endpoint client.subscription_token.jwks_public_endpoint
subscription_token_audience client.subscription_token.audience
subscription_token_audience_regex client.subscription_token.audience_regex
subscription_token_issuer client.subscription_token.issuer
subscription_token_issuer_regex client.subscription_token.issuer_regex
subscription_token_user_id_claim client.subscription_token.user_id_claim
allowed_origins client.allowed_origins
global_history_meta_ttl channel.history_meta_ttl
node_info_metrics_aggregate_interval node.info_metrics_aggregate_interval
allow_anonymous_connect_without_token client.allow_anonymous_connect_without_token
disallow_anonymous_connection_tokens client.disallow_anonymous_connection_tokens
client_expired_close_delay client.expired_close_delay
client_expired_sub_close_delay client.expired_sub_close_delay
client_stale_close_delay client.stale_close_delay
client_channel_limit client.channel_limit
client_queue_max_size client.queue_max_size
client_presence_update_interval client.presence_update_interval
client_user_connection_limit client.user_connection_limit
client_concurrency client.concurrency
client_channel_position_check_delay client.channel_position_check_delay
client_channel_position_max_time_lag client.channel_position_max_time_lag
client_connection_limit client.connection_limit
client_connection_rate_limit client.connection_rate_limit
client_connect_include_server_time client.connect_include_server_time
client_history_max_publication_limit client.history_max_publication_limit
client_recovery_max_publication_limit client.recovery_max_publication_limit
channel_max_length channel.max_length
channel_private_prefix channel.private_prefix
channel_namespace_boundary channel.namespace_boundary
channel_user_boundary channel.user_boundary
channel_user_separator channel.user_separator
rpc_namespace_boundary rpc.namespace_boundary
rpc_ping rpc.ping.enabled
rpc_ping_method rpc.ping.method
user_subscribe_to_personal client.subscribe_to_user_personal_channel.enabled
user_personal_channel_namespace client.subscribe_to_user_personal_channel.personal_channel_namespace
user_personal_single_connection client.subscribe_to_user_personal_channel.single_connection
debug debug.enabled
prometheus prometheus.enabled
health health.enabled
admin admin.enabled
admin_password admin.password
admin_secret admin.secret
admin_insecure admin.insecure
admin_web_path admin.web_path
admin_web_proxy_address admin.web_proxy_address
websocket_compression websocket.compression
websocket_compression_min_size websocket.compression_min_size
websocket_compression_level websocket.compression_level
websocket_read_buffer_size websocket.read_buffer_size
websocket_use_write_buffer_pool websocket.use_write_buffer_pool
websocket_write_buffer_size websocket.write_buffer_size
websocket_write_timeout websocket.write_timeout
websocket_message_size_limit websocket.message_size_limit
uni_websocket uni_websocket.enabled
uni_websocket_compression uni_websocket.compression
uni_websocket_compression_min_size uni_websocket.compression_min_size
uni_websocket_compression_level uni_websocket.compression_level
uni_websocket_read_buffer_size uni_websocket.read_buffer_size
uni_websocket_use_write_buffer_pool uni_websocket.use_write_buffer_pool
uni_websocket_write_buffer_size uni_websocket.write_buffer_size
uni_websocket_write_timeout uni_websocket.write_timeout
uni_websocket_message_size_limit uni_websocket.message_size_limit
uni_sse uni_sse.enabled
uni_http_stream uni_http_stream.enabled
log_level log.level
log_file log.file
tls http_server.tls.enabled
tls_key http_server.tls.key_pem
tls_cert http_server.tls.cert_pem
tls_cert_pem http_server.tls.cert_pem
tls_key_pem http_server.tls.key_pem
tls_root_ca http_server.tls.server_ca_pem
tls_root_ca_pem http_server.tls.server_ca_pem
tls_client_ca http_server.tls.client_ca_pem
tls_client_ca_pem http_server.tls.client_ca_pem
tls_server_name http_server.tls.server_name
tls_insecure_skip_verify http_server.tls.insecure_skip_verify
swagger swagger.enabled
admin_external admin.external
api_external http_api.external
address http_server.address
port http_server.port
internal_address http_server.internal_address
internal_port http_server.internal_port
tls_external http_server.tls_external
webtransport webtransport.enabled
http3 http_server.http3.enabled
proxy_connect_endpoint client.proxy.connect.endpoint
proxy_refresh_endpoint client.proxy.refresh.endpoint
proxy_subscribe_endpoint channel.proxy.subscribe.endpoint
proxy_publish_endpoint channel.proxy.publish.endpoint
proxy_sub_refresh_endpoint channel.proxy.sub_refresh.endpoint
proxy_subscribe_stream_endpoint channel.proxy.subscribe_stream.endpoint
proxy_rpc_endpoint rpc.proxy.endpoint
proxy_connect_timeout client.proxy.connect.timeout
proxy_refresh_timeout client.proxy.refresh.timeout
proxy_subscribe_timeout channel.proxy.subscribe.timeout
proxy_publish_timeout channel.proxy.publish.timeout
proxy_sub_refresh_timeout channel.proxy.sub_refresh.timeout
proxy_subscribe_stream_timeout channel.proxy.subscribe_stream.timeout
proxy_rpc_timeout rpc.proxy.timeout
api_key http_api.key
api_error_mode http_api.error_mode
uni_http_stream_max_request_body_size uni_http_stream.max_request_body_size
uni_sse_max_request_body_size uni_sse.max_request_body_size
http_stream_max_request_body_size http_stream.max_request_body_size
sse_max_request_body_size sse.max_request_body_size
tls_autocert http_server.tls_autocert.enabled
tls_autocert_host_whitelist http_server.tls_autocert.host_whitelist
tls_autocert_cache_dir http_server.tls_autocert.cache_dir
tls_autocert_email http_server.tls_autocert.email
tls_autocert_server_name http_server.tls_autocert.server_name
tls_autocert_http http_server.tls_autocert.http
tls_autocert_http_addr http_server.tls_autocert.http_addr
grpc_api grpc_api.enabled
grpc_api_error_mode grpc_api.error_mode
grpc_api_address grpc_api.address
grpc_api_port grpc_api.port
grpc_api_key grpc_api.key
grpc_api_reflection grpc_api.reflection
grpc_api_tls grpc_api.tls.enabled
grpc_api_tls_key grpc_api.tls.key_pem
grpc_api_tls_cert grpc_api.tls.cert_pem
grpc_api_tls_cert_pem grpc_api.tls.cert_pem
grpc_api_tls_key_pem grpc_api.tls.key_pem
grpc_api_tls_root_ca grpc_api.tls.server_ca_pem
grpc_api_tls_root_ca_pem grpc_api.tls.server_ca_pem
grpc_api_tls_client_ca grpc_api.tls.client_ca_pem
grpc_api_tls_client_ca_pem grpc_api.tls.client_ca_pem
grpc_api_tls_server_name grpc_api.tls.server_name
grpc_api_tls_insecure_skip_verify grpc_api.tls.insecure_skip_verify
grpc_api_max_receive_message_size grpc_api.max_receive_message_size
shutdown_timeout shutdown.timeout
graphite graphite.enabled
graphite_host graphite.host
graphite_port graphite.port
graphite_prefix graphite.prefix
graphite_interval graphite.interval
graphite_tags graphite.tags
websocket_disable websocket.disabled
api_disable http_api.disabled
websocket_handler_prefix websocket.handler_prefix
webtransport_handler_prefix webtransport.handler_prefix
http_stream_handler_prefix http_stream.handler_prefix
sse_handler_prefix sse.handler_prefix
uni_websocket_handler_prefix uni_websocket.handler_prefix
uni_sse_handler_prefix uni_sse.handler_prefix
uni_http_stream_handler_prefix uni_http_stream.handler_prefix
uni_grpc uni_grpc.enabled
uni_grpc_address uni_grpc.address
uni_grpc_port uni_grpc.port
uni_grpc_max_receive_message_size uni_grpc.max_receive_message_size
uni_grpc_tls uni_grpc.tls.enabled
uni_grpc_tls_key uni_grpc.tls.key_pem
uni_grpc_tls_cert uni_grpc.tls.cert_pem
uni_grpc_tls_cert_pem uni_grpc.tls.cert_pem
uni_grpc_tls_key_pem uni_grpc.tls.key_pem
uni_grpc_tls_root_ca uni_grpc.tls.server_ca_pem
uni_grpc_tls_root_ca_pem uni_grpc.tls.server_ca_pem
uni_grpc_tls_client_ca uni_grpc.tls.client_ca_pem
uni_grpc_tls_client_ca_pem uni_grpc.tls.client_ca_pem
uni_grpc_tls_server_name uni_grpc.tls.server_name
uni_grpc_tls_insecure_skip_verify uni_grpc.tls.insecure_skip_verify
http_stream http_stream.enabled
sse sse.enabled
emulation_handler_prefix emulation.handler_prefix
emulation_max_request_body_size emulation.max_request_body_size
admin_handler_prefix admin.handler_prefix
api_handler_prefix http_api.handler_prefix
prometheus_handler_prefix prometheus.handler_prefix
health_handler_prefix health.handler_prefix
swagger_handler_prefix swagger.handler_prefix
usage_stats_disable usage_stats.disabled
ping_interval client.ping_interval
pong_timeout client.pong_timeout
namespaces channel.namespaces
rpc_namespaces rpc.namespaces
proxies proxies
rpc_proxy_name rpc.without_namespace.proxy_name
enable_unreleased_features enable_unreleased_features
consumers consumers
""".strip().splitlines())

_V6_TO_V5 = {v6: v5 for v5, v6 in reversed(_V5_KEYS.items())}

#: v5's channel options at the top level: v6's ``channel.without_namespace``.
_V5_CHANNEL_OPTIONS = (
    "allowed_delta_types", "delta_publish", "presence", "join_leave", "force_push_join_leave",
    "history_size", "history_ttl", "history_meta_ttl", "force_positioning",
    "allow_positioning", "force_recovery", "allow_recovery", "force_recovery_mode",
    "allow_subscribe_for_anonymous", "allow_subscribe_for_client",
    "allow_publish_for_anonymous", "allow_publish_for_client", "allow_publish_for_subscriber",
    "allow_presence_for_anonymous", "allow_presence_for_client",
    "allow_presence_for_subscriber", "allow_history_for_anonymous", "allow_history_for_client",
    "allow_history_for_subscriber", "allow_user_limited_channels", "channel_regex",
    "proxy_subscribe", "proxy_publish", "proxy_sub_refresh", "proxy_subscribe_stream",
    "subscribe_proxy_name", "publish_proxy_name", "sub_refresh_proxy_name",
    "subscribe_stream_proxy_name", "allow_tags_filter")
#: v5's options shared by every proxy: v6 has them in each proxy.
_V5_PROXY_COMMON = {"proxy_http_headers": "http_headers",
                    "proxy_static_http_headers": "http.static_headers",
                    "proxy_binary_encoding": "binary_encoding",
                    "proxy_include_connection_meta": "include_connection_meta",
                    "proxy_grpc_metadata": "grpc_metadata",
                    "proxy_http_status_code_transforms": "http.status_to_code_transforms",
                    "proxy_grpc_tls": "grpc.tls.enabled",
                    "proxy_grpc_compression": "grpc.compression",
                    "proxy_grpc_credentials_key": "grpc.credentials_key",
                    "proxy_grpc_credentials_value": "grpc.credentials_value"}
_PROXIES = {"connect": "client.proxy.connect", "refresh": "client.proxy.refresh",
            "subscribe": "channel.proxy.subscribe", "publish": "channel.proxy.publish",
            "sub_refresh": "channel.proxy.sub_refresh", "rpc": "rpc.proxy"}


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    *heads, last = path.split(".")
    for head in heads:
        tree = tree.setdefault(head, {})
    tree[last] = value


#: v5's granular proxy mode (Centrifugo's converter maps none of these: v6 has no named
#: connect or refresh proxy, so the named proxy's object becomes that event's own here).
_V5_GRANULAR = ("granular_proxy_mode", "connect_proxy_name", "refresh_proxy_name")
#: Where v5's named proxies are kept by the mode: "only with granular_proxy_mode".
_V5_NAMED_ONLY = "ignored (only with granular_proxy_mode: Centrifugo v5 does not use it)"


def _v5_proxy(table: Any) -> Any:
    """A v5 ``proxies`` item in v6's shape: ``static_http_headers`` is
    ``http.static_headers``, ``grpc_*`` go under ``grpc`` (as the converter moves them)."""
    if not isinstance(table, dict):
        return table
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key == "static_http_headers":
            out.setdefault("http", {})["static_headers"] = value
        elif key.startswith("grpc_") and key != "grpc_metadata":
            out.setdefault("grpc", {})[key[5:]] = value
        else:
            out[key] = value
    return out


@dataclass
class _V5:
    """A v5 table in v6's layout (``tree``), where each v6 path came from (``origin``), and
    ``notes``: (key, None) for a key Centrifugo's map does not know, (key, why) for one
    that does nothing (a warning)."""

    tree: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    notes: list[tuple[str, str | None]] = field(default_factory=list)
    #: ``granular_proxy_mode``: named proxies, picked per event and namespace; without it
    #: v5's RPC proxy is asked for every method (no RPC namespaces).
    granular: bool = False


def from_v5(data: dict[str, Any]) -> _V5:
    """A v5 table in v6's layout: Centrifugo's v5 -> v6 map, then v5's proxy modes (the
    common ``proxy_*`` options into each proxy in use, as the converter does; with
    ``granular_proxy_mode`` the named proxies, which it leaves half done, as v5 used them)."""
    out = _V5()
    granular = data.get("granular_proxy_mode", False)
    if not isinstance(granular, bool):
        raise CentrifugoConfigError(f"granular_proxy_mode: expected true or false, got "
                                    f"{_shown(granular)}")
    out.granular = granular
    tree, origin = out.tree, out.origin
    for key, value in data.items():
        if key in _V5_KEYS:
            path = _V5_KEYS[key]
        elif key in _V5_CHANNEL_OPTIONS:
            path = f"channel.without_namespace.{key}"
        elif key in _V5_PROXY_COMMON or key in _V5_GRANULAR:
            continue  # below, once the proxies are known
        else:
            out.notes.append((key, None))
            continue
        if granular and path.startswith(("client.proxy.", "channel.proxy.", "rpc.proxy.")):
            if not _is_off(value):
                out.notes.append((key, "ignored (granular_proxy_mode: the named proxies are "
                                       "used)"))
            continue
        _set(tree, path, value)
        origin[path] = key
    if granular:
        _v5_granular(data, out)
    else:
        _v5_global(data, out)
    return out


def _v5_global(data: dict[str, Any], out: _V5) -> None:
    """v5 without granular mode: the ``proxy_*`` options go into each proxy with an
    endpoint; named proxies and RPC namespaces do nothing (every RPC method is proxied)."""
    tree, origin = out.tree, out.origin
    for event, base in _PROXIES.items():
        if _is_off(data.get(f"proxy_{event}_endpoint")):
            continue
        if event in ("connect", "refresh"):  # v5: an endpoint enables them
            _set(tree, f"{base}.enabled", True)
            origin[f"{base}.enabled"] = f"proxy_{event}_endpoint"
        for key, leaf in _V5_PROXY_COMMON.items():
            if key in data:
                _set(tree, f"{base}.{leaf}", data[key])
                origin[f"{base}.{leaf}"] = key
    used = set(origin.values())
    out.notes += [(key, "ignored (no proxy endpoint is set)") for key in _V5_PROXY_COMMON
                  if key in data and key not in used]
    for key in ("proxies", "connect_proxy_name", "refresh_proxy_name", "rpc_proxy_name",
                "rpc_namespaces"):
        if not _is_off(data.get(key)):
            out.notes.append((key, _V5_NAMED_ONLY))
    for path in ("proxies", "rpc.without_namespace", "rpc.namespaces"):
        head, _, last = path.rpartition(".")
        (tree.get(head, {}) if head else tree).pop(last, None)
    for where, table in _v5_namespaces(out):
        for event in ("subscribe", "publish", "sub_refresh"):
            if not _is_off(table.pop(f"{event}_proxy_name", None)):
                out.notes.append((f"{where}{event}_proxy_name", _V5_NAMED_ONLY))


def _v5_namespaces(out: _V5) -> list[tuple[str, dict[str, Any]]]:
    """The channel namespaces' tables (copies, put back in the tree) with each one's key
    prefix, the top-level options' (``channel.without_namespace``) first."""
    found: list[tuple[str, dict[str, Any]]] = []
    channel = out.tree.get("channel", {})
    if isinstance(channel.get("without_namespace"), dict):
        found.append(("", channel["without_namespace"]))
    spaces = channel.get("namespaces")
    if isinstance(spaces, list):
        spaces = channel["namespaces"] = [dict(t) if isinstance(t, dict) else t
                                          for t in spaces]
        found += [(f"namespaces[{i}].", t) for i, t in enumerate(spaces) if isinstance(t, dict)]
    return found


def _v5_granular(data: dict[str, Any], out: _V5) -> None:
    """v5's granular proxy mode as v6 has it: ``proxies`` in v6's shape, the connect and
    refresh proxies' names as those events' own objects, a namespace's
    ``subscribe_proxy_name`` (publish_, sub_refresh_) enabling that proxy, RPC
    namespaces' and the top level's ``rpc_proxy_name`` enabling theirs."""
    tree, origin = out.tree, out.origin
    used = [key for key in _V5_PROXY_COMMON if not _is_off(data.get(key))]
    out.notes += [(key, "ignored (granular_proxy_mode: each named proxy has its own)")
                  for key in used]
    proxies = data.get("proxies")
    if isinstance(proxies, list):
        tree["proxies"] = [_v5_proxy(t) for t in proxies]
        for i, table in enumerate(proxies):
            if isinstance(table, dict) and "static_http_headers" in table:
                origin[f"proxies[{i}].http.static_headers"] = f"proxies[{i}].static_http_headers"
    for event in ("connect", "refresh"):
        key = f"{event}_proxy_name"
        name = data.get(key)
        if _is_off(name):
            continue
        at = [i for i, t in enumerate(proxies if isinstance(proxies, list) else [])
              if isinstance(t, dict) and t.get("name") == name]
        if not isinstance(name, str) or not at:
            raise CentrifugoConfigError(f"{key}: no proxy {_shown(name)} in proxies")
        base, i = _PROXIES[event], at[0]
        table = {k: v for k, v in tree["proxies"][i].items() if k != "name"}
        _set(tree, base, {**table, "enabled": True})
        origin[base] = origin[f"{base}.enabled"] = key
        for leaf in table:
            origin[f"{base}.{leaf}"] = f"proxies[{i}].{leaf}"
        if f"proxies[{i}].http.static_headers" in origin:
            origin[f"{base}.http.static_headers"] = origin[f"proxies[{i}].http.static_headers"]
    name = data.get("rpc_proxy_name")
    if not _is_off(name):
        _set(tree, "rpc.without_namespace.proxy_enabled", True)
        origin["rpc.without_namespace.proxy_enabled"] = "rpc_proxy_name"
    spaces = tree.get("rpc", {}).get("namespaces")
    if isinstance(spaces, list):
        tree["rpc"]["namespaces"] = [
            {**{k: v for k, v in t.items() if k != "rpc_proxy_name"},
             **({"proxy_enabled": True, "proxy_name": t["rpc_proxy_name"]}
                if not _is_off(t.get("rpc_proxy_name")) else {})}
            if isinstance(t, dict) else t for t in spaces]
    for where, table in _v5_namespaces(out):
        for event in ("subscribe", "publish", "sub_refresh"):
            if table.pop(f"proxy_{event}", False) not in (False, None):
                out.notes.append((f"{where}proxy_{event}", f"ignored (granular_proxy_mode: "
                                  f"{event}_proxy_name picks the proxy)"))
            if not _is_off(table.get(f"{event}_proxy_name")):
                table[f"{event}_proxy_enabled"] = True


# -- the translation ---------------------------------------------------------------------------

class _Translator:
    """Walks a v6-shaped table once; every key it reads is marked, and what is left
    unmarked at the end is an unknown key."""

    def __init__(self, data: dict[str, Any], version: int, origin: dict[str, str]) -> None:
        self.data = data
        self.origin = origin
        self.seen: set[str] = set()
        self.out = Translation(version)
        #: ``--proxy-event``, ``--proxy`` and ``--rpc-namespace`` values, as their TOML
        #: tables read (``realtime.pubsub_proxy``).
        self.parsed: dict[str, list[Any]] = {"proxy-event": [], "proxy": [],
                                             "rpc-namespace": []}
        #: Centrifugo v5 without granular proxy mode: its RPC proxy gets every method.
        self.every_method = False
        #: The operator endpoints on a server of their own (``internal_server``).
        self.internal_apart = False

    # -- bookkeeping --
    def name(self, path: str) -> str:
        """The key as the file wrote it (or would have)."""
        if path in self.origin:
            return self.origin[path]
        return _V6_TO_V5.get(path, path) if self.out.version == 5 else path

    def get(self, path: str) -> Any:
        self.seen.add(path)
        node: Any = self.data
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return _MISSING
            node = node[part]
        return node

    def section(self, path: str) -> dict[str, Any]:
        value = self.get(path)
        if value is _MISSING or value is None:
            return {}
        if not isinstance(value, dict):
            raise CentrifugoConfigError(f"{self.name(path)}: expected a table, got "
                                        f"{self.shown(path, value)}")
        return value

    def shown(self, path: str, value: Any) -> str:
        """``value`` for a message about ``path``: its kind only when it may be a secret."""
        if _secret(path) or _secret(self.name(path)):
            return f"{_kind(value)} (not shown: it may be a secret)"
        return _shown(value)

    def warn(self, message: str, option: str | None = None) -> None:
        self.out.warnings.append((option, message))

    def refuse(self, message: str, option: str | None = None) -> None:
        self.out.problems.append((option, message))

    def put(self, option: str, value: Any, path: str) -> None:
        self.out.options[option] = value
        self.out.sources[option] = self.name(path)

    # -- values --
    def boolean(self, path: str, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in (
                "1", "t", "true", "0", "f", "false"):  # Go's ParseBool, as Centrifugo reads
            return value.strip().lower() in ("1", "t", "true")
        raise CentrifugoConfigError(f"{self.name(path)}: expected true or false, got "
                                    f"{self.shown(path, value)}")

    def number(self, path: str, value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        raise CentrifugoConfigError(f"{self.name(path)}: expected a whole number, got "
                                    f"{self.shown(path, value)}")

    def text(self, path: str, value: Any) -> str:
        if isinstance(value, str):
            return value
        raise CentrifugoConfigError(f"{self.name(path)}: expected a string, got "
                                    f"{self.shown(path, value)}")

    def texts(self, path: str, value: Any) -> list[str]:
        if isinstance(value, str):
            return [value] if value else []
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise CentrifugoConfigError(f"{self.name(path)}: expected a list of strings, got "
                                    f"{self.shown(path, value)}")

    def seconds(self, path: str, value: Any) -> float:
        if isinstance(value, str):
            try:
                return go_duration(value)
            except ValueError:
                pass
        raise CentrifugoConfigError(
            f"{self.name(path)}: expected a duration such as \"30s\", \"500ms\" or \"1h\", "
            f"got {self.shown(path, value)} (Centrifugo v6 reads a bare number as "
            "nanoseconds)")

    def is_default(self, path: str, value: Any, default: Any) -> bool:
        if value is _MISSING or value is None or value == default:
            return True
        if default is _OFF:
            return _is_off(value)
        if isinstance(default, str) and re.fullmatch(f"(?:{_GO_PART})+", default):
            # Not a duration (Centrifugo's -1 for "off"): not the default either.
            return isinstance(value, str) and _is_duration(value) and \
                go_duration(value) == go_duration(default)
        return False

    # -- rules --
    def ignore(self, path: str, why: str, default: Any = _OFF) -> None:
        """A key realtime has no use for: a warning when it asks for something."""
        value = self.get(path)
        if not self.is_default(path, value, default):
            self.warn(f"{self.name(path)}: ignored ({why})")

    def unsupported(self, path: str, why: str, default: Any = _OFF,
                    option: str | None = None) -> None:
        """A key whose setting realtime cannot honour: start-up stops on it."""
        value = self.get(path)
        if not self.is_default(path, value, default):
            self.refuse(f"{self.name(path)}: not supported ({why})", option)

    def switched(self, path: str, why: str, refuse: bool = True) -> bool:
        """A section with an ``enabled`` switch: the rest of it does nothing while that is
        off (in Centrifugo too); on, it is refused (or warned of)."""
        section = self.section(path)
        self.seen.add(path)  # everything under it is read here
        on = self.boolean(f"{path}.enabled", section.get("enabled", False))
        if on:
            (self.refuse if refuse else self.warn)(
                f"{self.name(path + '.enabled')}: "
                f"{'not supported' if refuse else 'ignored'} ({why})")
        return on

    def external(self, path: str, what: str, served: bool) -> None:
        """``http_api.external``, ``admin.external``: that endpoint on the main port,
        the rest on the internal one. Without an internal server it changes nothing; with
        one realtime cannot split them (``--internal-port`` takes them all)."""
        if self.internal_apart and served:
            self.unsupported(path, f"{what} goes to --internal-port with the other operator "
                             "endpoints (http_server.internal_port): realtime does not "
                             "split them")
        else:
            self.ignore(path, "one port serves everything" if not self.internal_apart else
                        f"{what} is off")

    def prefix(self, path: str, default: str, what: str) -> None:
        self.unsupported(path, f"realtime serves {what} at {default} only", default)

    def translate(self) -> Translation:
        self.http_server()
        self.log()
        self.engine()
        self.client()
        self.channel()
        self.proxies()
        self.http_api()
        self.transports()
        self.admin_and_probes()
        self.the_rest()
        self.unknown_keys()
        for option, values in self.parsed.items():
            if values:
                self.out.options[option] = values
                self.out.sources[option] = {
                    "proxy-event": "client.proxy, channel.proxy, rpc.proxy" if
                    self.out.version == 6 else "proxy_*_endpoint",
                    "proxy": self.name("proxies"),
                    "rpc-namespace": self.name("rpc.namespaces")}[option]
        return self.out

    # -- sections --
    def http_server(self) -> None:
        base = "http_server"
        address = self.get(f"{base}.address")
        port_value = self.get(f"{base}.port")
        port = 8000 if port_value is _MISSING else self.number(f"{base}.port", port_value)
        port_key = f"{base}.port"
        host = "" if address is _MISSING else self.text(f"{base}.address", address)
        tls = {leaf: self.get(f"{base}.tls.{leaf}") for leaf in _TLS_LEAVES}
        use_tls = self.boolean(f"{base}.tls.enabled", _given(tls["enabled"], False))
        if not host and not use_tls:  # ssl: without interface= listens everywhere too
            self.warn(f"{self.name(base + '.address')}: not set: Centrifugo listens on every "
                      "interface, realtime on 127.0.0.1 (set it, e.g. to 0.0.0.0, or give "
                      "--bind)", "bind|port")
        files: dict[str, str] = {}
        if use_tls:
            files = self.tls_files(f"{base}.tls", tls)
            description = (f"ssl:{port}:privateKey={files['key_pem']}:"
                           f"certKey={files['cert_pem']}")
            if host:
                description += ":interface=" + host.strip("[]").replace(":", "\\:")
            self.put("port", [description],
                     port_key if port_value is not _MISSING else f"{base}.tls.enabled")
        else:
            if port_value is not _MISSING:
                self.put("port", [str(port)], port_key)
            if host:
                self.put("bind", host, f"{base}.address")
        self.internal_server(host, port, files)
        self.switched(f"{base}.tls_autocert", "no ACME certificates: give "
                      "http_server.tls.cert_pem and key_pem, or terminate TLS in front")
        self.switched(f"{base}.http3", "HTTP/3 is not served: clients use HTTP/1.1 or HTTP/2",
                      refuse=False)

    def tls_files(self, path: str, tls: dict[str, Any]) -> dict[str, str]:
        """An enabled TLS section's ``cert_pem`` and ``key_pem``: file paths, escaped for an
        ``ssl:`` description (inline or base64 PEM refused); client certificates refused,
        a TLS client's options warned of."""
        files = {}
        for leaf in ("cert_pem", "key_pem"):
            value = self.text(f"{path}.{leaf}", _given(tls[leaf], ""))
            if not value:
                raise CentrifugoConfigError(f"{self.name(f'{path}.{leaf}')}: needed with "
                                            f"{self.name(path + '.enabled')}")
            inline = _pem_inline(value)
            if inline:
                raise CentrifugoConfigError(f"{self.name(f'{path}.{leaf}')}: not supported "
                                            f"({inline}: give the path of a PEM file)")
            files[leaf] = value.replace("\\", "\\\\").replace(":", "\\:")
        self.unsupported(f"{path}.client_ca_pem", "client certificates are not asked for "
                         "here")
        for leaf in ("server_ca_pem", "server_name", "insecure_skip_verify"):
            self.ignore(f"{path}.{leaf}", "a TLS client's option: the server does not use it")
        return files

    def internal_server(self, host: str, port: int, files: dict[str, str]) -> None:
        """``internal_port``/``internal_address``: Centrifugo's second HTTP server, for the
        API, the admin UI, /metrics and the health check, at ``internal_address`` (else
        ``address``) and ``internal_port`` (else ``port``): when that is another address
        than the main one, ``--internal-port`` (internal/app/mux.go, ``runHTTPServers``).
        Its TLS is ``internal_tls`` when enabled, else the main ``tls`` unless
        ``tls_external`` keeps that to the main port."""
        base = "http_server"
        value = self.get(f"{base}.internal_port")
        # (a string in Centrifugo: 0 is "0", a free port, not the main one)
        own_port = value not in (_MISSING, None, "")
        internal_port = port
        if own_port:
            internal_port = self.number(f"{base}.internal_port", value)
            if internal_port > 65535:
                raise CentrifugoConfigError(f"{self.name(base + '.internal_port')}: expected "
                                            f"a port number (0-65535), got {_shown(value)}")
        value = self.get(f"{base}.internal_address")
        own_host = "" if _is_off(value) else self.text(f"{base}.internal_address", value)
        internal_host = own_host or host
        tls_external = self.get(f"{base}.tls_external")
        external_only = self.boolean(f"{base}.tls_external", _given(tls_external, False))
        tls = {leaf: self.get(f"{base}.internal_tls.{leaf}") for leaf in _TLS_LEAVES}
        own_tls = self.boolean(f"{base}.internal_tls.enabled", _given(tls["enabled"], False))
        #: Centrifugo serves the operator endpoints on a server of their own (read by the
        #: API and admin sections: their ``external`` keys).
        self.internal_apart = (internal_host, internal_port) != (host, port)
        if not self.internal_apart:
            # One server serves everything, with the main TLS: these do nothing.
            why = (f"no internal server: {self.name(base + '.internal_port')} and "
                   f"{self.name(base + '.internal_address')} are not set or name the main "
                   "address, so one port serves everything")
            self.ignore(f"{base}.tls_external", why)
            if own_tls:
                self.warn(f"{self.name(base + '.internal_tls.enabled')}: ignored ({why})")
            return
        source = f"{base}.internal_port" if own_port else f"{base}.internal_address"
        if own_tls:
            files = self.tls_files(f"{base}.internal_tls", tls)
            source = f"{base}.internal_tls.enabled"
        elif external_only:
            files = {}
        if files:
            description = (f"ssl:{internal_port}:privateKey={files['key_pem']}:"
                           f"certKey={files['cert_pem']}")
            if internal_host:
                description += ":interface=" + internal_host.strip("[]").replace(":", "\\:")
        elif internal_host:
            description = (f"tcp:{internal_port}:interface="
                           + internal_host.strip("[]").replace(":", "\\:"))
        else:  # (a bare port number is 127.0.0.1's, as --port's)
            description = str(internal_port)
            self.warn(f"{self.name(base + '.internal_address')}: not set: Centrifugo's "
                      "internal server listens on every interface, realtime's --internal-port "
                      "on 127.0.0.1 (set it, e.g. to 0.0.0.0, or give --internal-port)",
                      "internal-port")
        self.put("internal-port", description, source)

    def log(self) -> None:
        value = self.get("log.level")
        if value is not _MISSING:
            level = self.text("log.level", value).strip().lower()
            levels = {"trace": "2", "debug": "2", "info": "1", "warn": "0", "error": "0",
                      "fatal": "0", "none": "0"}
            if level not in levels:
                raise CentrifugoConfigError(f"{self.name('log.level')}: expected trace, debug, "
                                            f"info, warn, error, fatal or none, got "
                                            f"{_shown(value)}")
            self.put("verbosity", levels[level], "log.level")
            if level == "none":
                self.warn(f"{self.name('log.level')}: none is 0 here (warnings and errors "
                          "are still logged)", "verbosity")
        self.ignore("log.file", "the log goes where twistd sends it: stdout with -n, or "
                    "twistd's --logfile")

    def engine(self) -> None:
        kind_value = self.get("engine.type")
        kind = "memory" if kind_value is _MISSING else self.text("engine.type", kind_value)
        for name in ("broker", "presence_manager"):
            self.switched(name, "realtime has one channel layer: set engine.type and "
                          "engine.redis")
        self.ignore("map_broker.type", "map subscriptions are not built", "memory")
        self.seen.add("map_broker")  # its other keys serve map subscriptions only
        if kind == "memory":
            self.seen.add("engine.redis")  # not used by the memory engine, in Centrifugo too
            return
        if kind != "redis":
            raise CentrifugoConfigError(f"{self.name('engine.type')}: expected memory or "
                                        f"redis, got {_shown(kind_value)}")
        base = "engine.redis"
        self.section(base)
        got = {leaf: self.get(f"{base}.{leaf}") for leaf in _REDIS_LEAVES}
        tls = {leaf: self.get(f"{base}.tls.{leaf}") for leaf in _TLS_LEAVES}
        user = self.text(f"{base}.user", _given(got["user"], ""))
        password = self.text(f"{base}.password", _given(got["password"], ""))
        db = self.number(f"{base}.db", _given(got["db"], 0))
        prefix = self.text(f"{base}.prefix", _given(got["prefix"], ""))
        userinfo = ""
        if password:
            userinfo = f"{quote(user, safe='')}:{quote(password, safe='')}@"
        elif user:  # NAME@ alone is a password to realtime (as to redis-py)
            userinfo = f"{quote(user, safe='')}:@"
        use_tls = self.boolean(f"{base}.tls.enabled", _given(tls["enabled"], False))
        query = []
        if use_tls:
            ca = self.text(f"{base}.tls.server_ca_pem", _given(tls["server_ca_pem"], ""))
            inline = _pem_inline(ca) if ca else None
            if inline:
                raise CentrifugoConfigError(f"{self.name(base + '.tls.server_ca_pem')}: not "
                                            f"supported ({inline}: give the path of a PEM "
                                            "file)")
            if ca:
                query.append("ssl_ca_certs=" + quote(ca, safe="/"))
            for leaf, why in (("cert_pem", "no client certificate is sent to Redis"),
                              ("key_pem", "no client certificate is sent to Redis"),
                              ("client_ca_pem", "a server's option"),
                              ("insecure_skip_verify", "Redis's certificate is always "
                               "verified"),
                              ("server_name", "the certificate must name the address's "
                               "host")):
                self.unsupported(f"{base}.tls.{leaf}", why, option="layer")
        if prefix:
            query.append("prefix=" + quote(prefix, safe=""))
        tail = ("?" + "&".join(query)) if query else ""
        # Centrifugo's order: a cluster, else sentinels, else addresses.
        if not _is_off(got["cluster_address"]):
            source = base + ".cluster_address"
            seeds = self.texts(source, got["cluster_address"])
            if len(seeds) > 1:
                self.refuse(f"{self.name(source)}: not supported (several Redis Clusters: "
                            "realtime's layer runs on one)", "layer")
            nodes = ",".join(_host_port_of(n, self.name(source))
                             for n in seeds[0].split(",") if n.strip())
            scheme = "rediss+cluster" if use_tls else "redis+cluster"
            urls = [f"{scheme}://{userinfo}{nodes}{tail}"]
        elif not _is_off(got["sentinel_address"]):
            # Each item is a shard, its sentinels separated by commas, every shard's master
            # named sentinel_master_name (Centrifugo's internal/confighelpers/redis.go,
            # getRedisShardConfigs): a redis+sentinel:// URL each, several sharded.
            source = base + ".sentinel_address"
            shards = [",".join(_host_port_of(h, self.name(source))
                               for h in item.split(",") if h.strip())
                      for item in self.texts(source, got["sentinel_address"])]
            if not all(shards):
                raise CentrifugoConfigError(f"{self.name(source)}: an empty item (each is a "
                                            "shard's sentinels, host:port separated by "
                                            "commas)")
            master = self.text(f"{base}.sentinel_master_name",
                               _given(got["sentinel_master_name"], ""))
            if not master:
                raise CentrifugoConfigError(f"{self.name(base + '.sentinel_master_name')}: "
                                            f"needed with {self.name(source)}")
            if use_tls:
                self.refuse(f"{self.name(base + '.tls.enabled')}: not supported with Sentinel "
                            "(realtime's redis+sentinel:// has no TLS)", "layer")
            urls = [f"redis+sentinel://{userinfo}{hosts}/{quote(master, safe='')}/{db}{tail}"
                    for hosts in shards]
            for leaf in ("sentinel_user", "sentinel_password"):
                self.unsupported(f"{base}.{leaf}", "the sentinels are asked without "
                                 "credentials (the URL's are the master's)", option="layer")
            self.switched(f"{base}.sentinel_tls", "the sentinels are asked without TLS")
            self.ignore(f"{base}.sentinel_client_name", "no CLIENT SETNAME here")
        else:
            source = base + ".address"
            addresses = self.texts(source, _given(got["address"], ["redis://127.0.0.1:6379"]))
            if not addresses:
                raise CentrifugoConfigError(f"{self.name(source)}: no address")
            urls = [_redis_url(self.name(source), a, userinfo, db, use_tls, tail)
                    for a in addresses]
        self.seen.add(f"{base}.sentinel_tls")  # inert without sentinels, as in Centrifugo
        self.put("layer", " ".join(urls), source)
        for leaf, default, why in (
                ("connect_timeout", "1s", "realtime's Redis connections have their own"),
                ("io_timeout", "4s", "realtime's Redis connections have their own"),
                ("client_name", _OFF, "no CLIENT SETNAME here"),
                ("force_resp2", _OFF, "realtime speaks RESP2"),
                ("history_use_lists", _OFF, "realtime keeps history its own way"),
                ("presence_ttl", "60s", "realtime's presence expires its own way"),
                ("presence_hash_field_ttl", _OFF, "realtime's presence expires its own way"),
                ("presence_user_mapping", _OFF, "realtime counts users its own way")):
            self.ignore(f"{base}.{leaf}", why, default)

    def client(self) -> None:
        base = "client"
        tokens = [leaf for leaf in ("hmac_secret_key", "rsa_public_key", "ecdsa_public_key")
                  if not _is_off(self.get(f"{base}.token.{leaf}"))]
        if len(tokens) > 1:
            self.refuse(f"{self.name(base + '.token.' + tokens[0])} and "
                        f"{self.name(base + '.token.' + tokens[1])}: not supported together "
                        "(realtime takes one key inline: --jwt-key; give the other in a file "
                        "with --jwt-key-file)", "jwt-key")
        if tokens:
            path = f"{base}.token.{tokens[0]}"
            self.put("jwt-key", self.text(path, self.get(path)), path)
        jwks = self.get(f"{base}.token.jwks_public_endpoint")
        if not _is_off(jwks):
            url = self.text(f"{base}.token.jwks_public_endpoint", jwks)
            if "{{" in url:
                self.refuse(f"{self.name(base + '.token.jwks_public_endpoint')}: not supported "
                            "(a templated JWKS URL: realtime fetches one fixed URL)", "jwks-url")
            self.put("jwks-url", url, f"{base}.token.jwks_public_endpoint")
        for leaf, option in (("audience", "jwt-audience"), ("issuer", "jwt-issuer")):
            value = self.get(f"{base}.token.{leaf}")
            if not _is_off(value):
                self.put(option, self.text(f"{base}.token.{leaf}", value), f"{base}.token.{leaf}")
        self.unsupported(f"{base}.token.audience_regex", "tokens are checked against one "
                         "audience: client.token.audience", option="jwt-audience")
        self.unsupported(f"{base}.token.issuer_regex", "tokens are checked against one "
                         "issuer: client.token.issuer", option="jwt-issuer")
        self.unsupported(f"{base}.token.user_id_claim", "the user is the token's sub claim",
                         "sub")
        self.switched(f"{base}.subscription_token", "subscription tokens verify with the "
                      "connection tokens' keys here")
        origins = self.get(f"{base}.allowed_origins")
        key = self.name(base + ".allowed_origins")
        patterns = [] if origins in (_MISSING, None) else [
            p.strip() for p in self.texts(f"{base}.allowed_origins", origins) if p.strip()]
        if not patterns:  # Centrifugo: an empty list is no list (Origin checked against Host)
            self.warn(f"{key}: not set: Centrifugo then refuses browsers of other origins, "
                      "realtime lets every origin in (set it, or --allowed-origins)",
                      "allowed-origins")
        for pattern in patterns:
            # Centrifugo matches each pattern, a glob, against the whole lowercased Origin:
            # realtime takes "*" and whole origins; its host forms would let in more.
            if pattern == "*":
                continue
            if any(c in pattern for c in "*?[]{}\\"):
                self.refuse(f"{key}: {pattern!r}: not supported (no globs here: "
                            "'.example.com' lets in the domain and every subdomain, any "
                            "scheme; give --allowed-origins, which wins over the file)",
                            "allowed-origins")
            elif not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/]+/?", pattern):
                self.refuse(f"{key}: {pattern!r}: not supported (Centrifugo matches the whole "
                            "Origin (scheme://host[:port]), so this lets no browser in there; "
                            "realtime would read it as a host of any scheme and port: write "
                            "the origin, or give --allowed-origins)", "allowed-origins")
        if patterns:
            self.put("allowed-origins", " ".join(patterns), f"{base}.allowed_origins")
            if "*" not in patterns:
                self.warn(f"{key}: a WebSocket without an Origin header (centrifuge-python, "
                          "Node, the mobile SDKs) is refused here unless \"*\" is listed "
                          "(Centrifugo lets it in)", "allowed-origins")
        value = self.get(f"{base}.allow_anonymous_connect_without_token")
        if value is not _MISSING:
            self.put("pubsub-anonymous",
                     self.boolean(f"{base}.allow_anonymous_connect_without_token", value),
                     f"{base}.allow_anonymous_connect_without_token")
        for leaf, option, convert in (
                ("channel_limit", "max-groups-per-connection", str),
                ("queue_max_size", "max-send-buffer", str),
                ("connection_limit", "max-connections", str),
                ("user_connection_limit", "max-connections-per-user", str),
                ("connection_rate_limit", "handshake-rate", lambda n: f"{n}/s")):
            value = self.get(f"{base}.{leaf}")
            if value is None or value is _MISSING:
                continue
            number = self.number(f"{base}.{leaf}", value)
            if leaf == "connection_rate_limit" and number == 0:
                continue  # Centrifugo's "no limit"
            self.put(option, convert(number), f"{base}.{leaf}")
        for leaf in ("insecure", "insecure_skip_token_signature_verify"):
            self.unsupported(f"{base}.{leaf}", "every connection token is verified here")
        self.unsupported(f"{base}.disallow_anonymous_connection_tokens",
                         "a token with an empty sub connects as anonymous here")
        self.unsupported(f"{base}.user_id_http_header", "the user comes from a token, the "
                         "connect proxy or your middleware")
        self.unsupported(f"{base}.connect_include_server_time",
                         "the connect reply carries no time")
        self.switched(f"{base}.subscribe_to_user_personal_channel", "subscribe users "
                      "through the token's channels claim")
        self.switched(f"{base}.connect_code_to_unidirectional_disconnect",
                      "unidirectional connects close with realtime's codes")
        for leaf, default, why in (
                ("ping_interval", "25s", "realtime.pubsub pings every 25 s"),
                ("pong_timeout", "8s", "a pong is awaited until the next ping"),
                ("expired_close_delay", "25s", "realtime.pubsub waits 25 s"),
                ("expired_sub_close_delay", "25s", "realtime.pubsub waits 25 s"),
                ("stale_close_delay", "10s", "realtime.pubsub waits 10 s"),
                ("presence_update_interval", "27s", "presence is kept its own way"),
                ("concurrency", _OFF, "a connection's commands run one at a time"),
                ("channel_position_check_delay", "40s", "positions are checked on gaps"),
                ("channel_position_max_time_lag", _OFF, "positions are checked on gaps"),
                ("history_max_publication_limit", 300, "history pages are not capped"),
                ("recovery_max_publication_limit", 300, "a recovery is all or nothing")):
            self.ignore(f"{base}.{leaf}", why, default)

    def channel(self) -> None:
        base = "channel"
        for leaf, default, why in (
                ("private_prefix", "$", "channels starting with $ are private"),
                ("namespace_boundary", ":", "a namespace ends at ':'"),
                ("user_boundary", "#", "user-limited channels use '#'"),
                ("user_separator", ",", "user-limited channels separate users with ','"),
                ("max_length", 255, "channel names are at most 255 characters")):
            self.unsupported(f"{base}.{leaf}", why, default)
        self.ignore(f"{base}.history_meta_ttl", "a stream's position lives as long as its "
                    "history", "720h")
        without = self.get(f"{base}.without_namespace")
        if without not in (_MISSING, None):
            if not isinstance(without, dict):
                raise CentrifugoConfigError(f"{self.name(base + '.without_namespace')}: "
                                            f"expected a table, got {_shown(without)}")
            if "name" in without:
                raise CentrifugoConfigError(
                    f"{self.name(base + '.without_namespace.name')}: unknown key")
            if without:
                where = ("channel.without_namespace" if self.out.version == 6
                         else "(the top-level channel options)")
                self.namespace({"name": "", **without}, where, lambda option: self.name(
                    f"channel.without_namespace.{option}"))
        spaces = self.get(f"{base}.namespaces")
        if spaces not in (_MISSING, None):
            if not isinstance(spaces, list) or not all(isinstance(t, dict) for t in spaces):
                raise CentrifugoConfigError(f"{self.name(base + '.namespaces')}: expected a "
                                            "list of tables")
            for index, table in enumerate(spaces):
                where = f"{self.name(base + '.namespaces')}[{index}]"
                if not isinstance(table.get("name"), str) or not table["name"]:
                    raise CentrifugoConfigError(f"{where}.name: every namespace needs a name")
                self.namespace(table, where, lambda option, w=where: f"{w}.{option}")

    def namespace(self, table: dict[str, Any], where: str, key_of: Any) -> None:
        """One namespace's table, cleaned for ``--namespace``: realtime's own checks judge
        the options (the same names); what Centrifugo has and realtime lacks is said here."""
        from realtime import pubsub
        from realtime.tap import _namespace_specs

        cleaned: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for option, value in table.items():
            key = key_of(option)
            rule = _NAMESPACE_RULES.get(option)
            if rule is not None:
                default, why, refuse = rule
                # "" too: Centrifugo fills a zero value with its default.
                if not (value is None or value == default or value == "" or (
                        default is _OFF and _is_off(value))):
                    if refuse:
                        self.refuse(f"{key}: not supported ({why})", "namespace")
                    else:
                        self.warn(f"{key}: ignored ({why})", "namespace")
                continue
            if option in ("subscribe_proxy_name", "publish_proxy_name",
                          "sub_refresh_proxy_name") and value in (None, "", "default"):
                continue  # (the event's own proxy: Centrifugo fills "" with "default")
            if option == "history_ttl" and not _is_off(value):
                value = _seconds_text(self.seconds(key, value))
            elif option == "allowed_delta_types" and isinstance(value, str):
                value = [value]
            cleaned[option] = value
            sources[option] = where if option == "name" else key
        try:
            spec = _namespace_specs([cleaned], where)[0]
        except SystemExit as exc:  # tap's StartupError: "realtime: error: WHERE: ..."
            raise CentrifugoConfigError(str(exc).removeprefix("realtime: error: ")) from None
        try:
            pubsub.parse_namespace(spec)
        except ValueError as exc:
            self.refuse(f"{where}: {exc}", "namespace")
            return
        self.out.namespaces.append((cleaned, sources))

    def proxies(self) -> None:
        """Centrifugo's proxies as they are: each event's own object (its endpoint
        ``--proxy-EVENT-endpoint``, its settings ``[proxy_events.EVENT]``), the named ones
        (``[[proxies]]``), the namespaces' choice among them, RPC namespaces."""
        names: set[str] = set()
        named = self.get("proxies")
        if named not in (_MISSING, None):
            if not isinstance(named, list) or not all(isinstance(t, dict) for t in named):
                raise CentrifugoConfigError(f"{self.name('proxies')}: expected a list of "
                                            "tables")
            for index, table in enumerate(named):
                where = f"{self.name('proxies')}[{index}]"
                name = table.get("name")
                if not isinstance(name, str) or not name:
                    raise CentrifugoConfigError(f"{where}.name: every proxy needs a name")
                if name in names:
                    raise CentrifugoConfigError(f"{where}.name: {name!r} given twice")
                names.add(name)
                self.proxy_object(f"proxies[{index}]", where, table, name=name)
        for event, base in _PROXIES.items():
            section = self.section(base)
            self.seen.add(base)
            endpoint = section.get("endpoint", "")
            if event in ("connect", "refresh"):
                enabled = self.boolean(f"{base}.enabled", section.get("enabled", False))
                if _is_off(endpoint):
                    if enabled:
                        raise CentrifugoConfigError(f"{self.name(base + '.enabled')}: needs "
                                                    f"{self.name(base + '.endpoint')}")
                    continue
                if not enabled:
                    self.warn(f"{self.name(base + '.endpoint')}: ignored ({self.name(base)} "
                              "is not enabled)")
                    continue
            elif _is_off(endpoint):
                continue
            option = f"proxy-{event.replace('_', '-')}-endpoint"
            self.put(option, self.text(f"{base}.endpoint", endpoint), f"{base}.endpoint")
            where = self.name(base) if self.out.version == 6 else self.name(base + ".endpoint")
            self.proxy_object(base, where, section, event=event)
        self.channel_proxy_names(names)
        self.rpc_namespaces(names)

    def proxy_object(self, path: str, where: str, section: dict[str, Any],
                     event: str | None = None, name: str | None = None) -> None:
        """One proxy object, Centrifugo's keys kept (``timeout``, ``http_headers``,
        ``emulated_headers``, ``http.static_headers``, ``http.status_to_code_transforms``,
        ``binary_encoding``, ``include_connection_meta``) and read by realtime's own
        ``[[proxies]]``/``[proxy_events.EVENT]`` reader; gRPC's are warned of."""
        from realtime import pubsub_proxy

        option = "proxy-event" if event else "proxy"
        known = {"endpoint", "timeout", "http_headers", "emulated_headers", "grpc_metadata",
                 "binary_encoding", "include_connection_meta", "http", "grpc"}
        known |= {"enabled"} if event in ("connect", "refresh") else set()
        known |= {"name"} if name else set()
        for leaf in section:
            if leaf == "max_inflight":  # (realtime's own key, which Centrifugo has not)
                spec = "EVENT" if event else "NAME"
                self.refuse(f"{self.name(f'{path}.{leaf}')}: not a Centrifugo key (realtime's "
                            f"own: --{option} {spec}:max_inflight=N, or max_inflight in "
                            "that table of the converted --config TOML)", option)
            elif leaf not in known:
                self.refuse(f"{self.name(f'{path}.{leaf}')}: unknown key", option)
        endpoint = self.text(f"{path}.endpoint", section.get("endpoint", ""))
        if endpoint.lower().startswith("grpc://"):
            self.refuse(f"{self.name(path + '.endpoint')}: not supported (gRPC proxies are "
                        "not built: HTTP/JSON only)",
                        f"proxy-{event.replace('_', '-')}-endpoint" if event else option)
            return
        table: dict[str, Any] = {"name": name, "endpoint": endpoint} if name else {}
        sources = {"name": where, "endpoint": self.name(f"{path}.endpoint")} if name else {}
        for leaf, convert in (
                ("timeout", lambda at, v: _seconds_text(self.seconds(at, v))),
                ("http_headers", self.texts), ("emulated_headers", self.texts),
                ("binary_encoding", self.boolean), ("include_connection_meta", self.boolean)):
            value = section.get(leaf)
            if value is None:
                continue
            converted = convert(f"{path}.{leaf}", value)
            if converted not in ([], False):  # (Centrifugo's default asks for nothing)
                table[leaf] = converted
                sources[leaf] = self.name(f"{path}.{leaf}")
        http = section.get("http") or {}
        if not isinstance(http, dict):
            raise CentrifugoConfigError(f"{self.name(path + '.http')}: expected a table")
        inner: dict[str, Any] = {}
        for leaf, value in http.items():
            at = f"{path}.http.{leaf}"
            if leaf == "tls":
                if isinstance(value, dict) and self.boolean(f"{at}.enabled",
                                                            value.get("enabled", False)):
                    self.refuse(f"{self.name(at + '.enabled')}: not supported (https backends "
                                "are verified with the system's trust store)", option)
            elif leaf == "static_headers":
                if not isinstance(value, dict | None) or not all(
                        isinstance(v, str) for v in (value or {}).values()):
                    raise CentrifugoConfigError(f"{self.name(at)}: expected a table of header "
                                                "names to strings")
                if value:
                    inner[leaf] = value
            elif leaf == "status_to_code_transforms":
                if not _is_off(value):
                    inner[leaf] = value
            else:
                self.refuse(f"{self.name(at)}: unknown key", option)
        if inner:
            table["http"] = inner
            sources["http"] = self.name(path + ".http")
        grpc = section.get("grpc") or {}
        if isinstance(grpc, dict) and any(not _is_off(v) and not (
                isinstance(v, dict) and not v.get("enabled")) for v in grpc.values()):
            self.warn(f"{self.name(path + '.grpc')}: ignored (a gRPC proxy's options)")
        if not _is_off(section.get("grpc_metadata")):
            self.warn(f"{self.name(path + '.grpc_metadata')}: ignored (no gRPC clients here)")
        try:
            if name:
                self.parsed["proxy"].append(pubsub_proxy.proxy_from_table(table))
                self.out.proxies.append((table, sources))
            elif event:
                self.parsed["proxy-event"].append(pubsub_proxy.proxy_event_from_table(
                    event, table))
                if table:
                    self.out.proxy_events.append((event, table, sources))
        except ValueError as exc:
            self.refuse(f"{where}: {str(exc).removeprefix(f'{event}: ')}", option)

    def channel_proxy_names(self, names: set[str]) -> None:
        """A namespace's proxy, named or the event's own, must be there (said under its
        key, before realtime's own check would say it under ``--namespace``)."""
        for table, sources in self.out.namespaces:
            for event in ("subscribe", "publish", "sub_refresh"):
                name = table.get(f"{event}_proxy_name", "")
                if name:
                    if name not in names:
                        self.refuse(f"{sources[f'{event}_proxy_name']}: no proxy {name!r} in "
                                    f"{self.name('proxies')}", "namespace")
                elif table.get(f"{event}_proxy_enabled") is True and \
                        f"proxy-{event.replace('_', '-')}-endpoint" not in self.out.options:
                    self.refuse(f"{sources[f'{event}_proxy_enabled']}: needs "
                                f"{self.name(_PROXIES[event] + '.endpoint')}", "namespace")

    def rpc_namespaces(self, names: set[str]) -> None:
        """``rpc.without_namespace`` and ``rpc.namespaces`` as ``[[rpc_namespaces]]``
        whenever the file proxies RPC (Centrifugo v6's rules then: a method's namespace
        picks its proxy, 104 for a namespace not configured, 108 where its proxy is not
        enabled); v5 without granular mode proxies every method (none are made)."""
        from realtime import pubsub_proxy

        boundary = self.get("rpc.namespace_boundary")
        without = self.get("rpc.without_namespace")
        spaces = self.get("rpc.namespaces")
        tables: list[tuple[str, dict[str, Any], Any]] = []
        if without not in (_MISSING, None):
            if not isinstance(without, dict):
                raise CentrifugoConfigError(f"{self.name('rpc.without_namespace')}: expected "
                                            f"a table, got {_shown(without)}")
            if "name" in without:
                raise CentrifugoConfigError(
                    f"{self.name('rpc.without_namespace.name')}: unknown key")
            tables.append((self.name("rpc.without_namespace"), {"name": "", **without},
                           lambda leaf: self.name(f"rpc.without_namespace.{leaf}")))
        if spaces not in (_MISSING, None):
            if not isinstance(spaces, list) or not all(isinstance(t, dict) for t in spaces):
                raise CentrifugoConfigError(f"{self.name('rpc.namespaces')}: expected a list "
                                            "of tables")
            for index, table in enumerate(spaces):
                where = f"{self.name('rpc.namespaces')}[{index}]"
                if not isinstance(table.get("name"), str) or not table["name"]:
                    raise CentrifugoConfigError(f"{where}.name: every RPC namespace needs a "
                                                "name")
                tables.append((where, table, lambda leaf, w=where: f"{w}.{leaf}"))
        endpoint = "proxy-rpc-endpoint" in self.out.options
        for _, table, key_of in tables:
            for leaf in table:
                if leaf not in ("name", "proxy_enabled", "proxy_name"):
                    self.refuse(f"{key_of(leaf)}: unknown key", "rpc-namespace")
        enabled = [self.boolean(key_of("proxy_enabled"), table.get("proxy_enabled", False))
                   for _, table, key_of in tables]
        if self.every_method or not (endpoint or any(enabled)):
            return  # (no RPC proxy: 108 for every method, as Centrifugo without an RPC handler)
        if not any(table["name"] == "" for _, table, _ in tables):  # v6's default: off
            tables.insert(0, (f"{self.name('rpc.without_namespace')} (not set: methods "
                              "without a namespace are 108, as in Centrifugo)", {"name": ""},
                              lambda leaf: self.name(f"rpc.without_namespace.{leaf}")))
            enabled.insert(0, False)
        for (where, table, key_of), on in zip(tables, enabled, strict=True):
            name = self.text(key_of("proxy_name"), _given(table.get("proxy_name"), ""))
            name = "" if name == pubsub_proxy.DEFAULT else name
            cleaned: dict[str, Any] = {"name": table["name"]}
            sources = {"name": where}
            if on:
                cleaned["proxy_enabled"] = True
                sources["proxy_enabled"] = key_of("proxy_enabled")
            if name:
                cleaned["proxy_name"] = name
                sources["proxy_name"] = key_of("proxy_name")
                if name not in names:
                    self.refuse(f"{key_of('proxy_name')}: no proxy {name!r} in "
                                f"{self.name('proxies')}", "rpc-namespace")
                    continue
            elif on and not endpoint:
                self.refuse(f"{key_of('proxy_enabled')}: needs "
                            f"{self.name('rpc.proxy.endpoint')}", "rpc-namespace")
                continue
            try:
                self.parsed["rpc-namespace"].append(
                    pubsub_proxy.rpc_namespace_from_table(cleaned))
            except ValueError as exc:
                self.refuse(f"{where}: {exc}", "rpc-namespace")
                continue
            self.out.rpc_namespaces.append((cleaned, sources))
        if boundary not in (_MISSING, None):
            text = self.text("rpc.namespace_boundary", boundary)
            if text not in ("", ":"):  # ("": Centrifugo's default, ":")
                self.put("rpc-namespace-boundary", text, "rpc.namespace_boundary")

    def http_api(self) -> None:
        base = "http_api"
        disabled = self.get(f"{base}.disabled")
        off = disabled is not _MISSING and self.boolean(f"{base}.disabled", disabled)
        key = self.get(f"{base}.key")
        if not _is_off(key) and not off:
            self.put("api-key", self.text(f"{base}.key", key), f"{base}.key")
        self.prefix(f"{base}.handler_prefix", "/api", "the server API")
        self.unsupported(f"{base}.error_mode", "errors are answered as in Centrifugo's "
                         "default mode")
        self.unsupported(f"{base}.insecure", "the API always needs its key")
        self.external(f"{base}.external", "the server API", not off)
        self.switched("grpc_api", "the gRPC server API is not built: use the HTTP API")
        consumers = self.get("consumers")
        if consumers not in (_MISSING, None):
            if not isinstance(consumers, list):
                raise CentrifugoConfigError(f"{self.name('consumers')}: expected a list")
            for index, consumer in enumerate(consumers):
                enabled = isinstance(consumer, dict) and (
                    consumer.get("enabled") if self.out.version == 6
                    else not consumer.get("disabled"))
                if enabled:
                    self.refuse(f"{self.name('consumers')}[{index}]: not supported (no "
                                "consumers of PostgreSQL or Kafka: publish through the API)")

    def transports(self) -> None:
        served: list[str] = []
        given: list[str] = []
        value = self.get("websocket.disabled")
        if value not in (_MISSING, None):
            given.append(self.name("websocket.disabled"))
        if value in (_MISSING, None) or not self.boolean("websocket.disabled", value):
            served.append("websocket")
        self.prefix("websocket.handler_prefix", "/connection/websocket", "WebSockets")
        value = self.get("websocket.compression")
        if value is not _MISSING:
            self.put("compression", self.boolean("websocket.compression", value),
                     "websocket.compression")
        for leaf, option in (("compression_level", "compression-level"),
                             ("compression_min_size", "compression-min-size")):
            value = self.get(f"websocket.{leaf}")
            if value not in (_MISSING, None):
                self.put(option, str(self.number(f"websocket.{leaf}", value)),
                         f"websocket.{leaf}")
        value = self.get("websocket.message_size_limit")
        # Centrifugo's limit holds when the file says nothing (realtime's own is 1 MiB).
        size = "65536" if value in (_MISSING, None) else str(
            self.number("websocket.message_size_limit", value))
        for option in ("max-message-size", "max-frame-size"):
            self.put(option, size, "websocket.message_size_limit")
            if value in (_MISSING, None):
                self.out.sources[option] += " (not set: Centrifugo's default)"
        tuning = "realtime's writes and reads need no tuning of it"
        for leaf, default in (("read_buffer_size", _OFF), ("write_buffer_size", _OFF),
                              ("use_write_buffer_pool", _OFF), ("write_timeout", "1s")):
            self.ignore(f"websocket.{leaf}", tuning, default)
            self.ignore(f"uni_websocket.{leaf}", tuning, default)
        for leaf, default in (("compression", _OFF), ("compression_level", 1),
                              ("compression_min_size", _OFF),
                              ("message_size_limit", 65536)):
            self.ignore(f"uni_websocket.{leaf}", "websocket's settings apply to every "
                        "WebSocket", default)
        self.unsupported("uni_websocket.join_push_messages", "one push per frame here")
        for name, path in (("sse", "/connection/sse"), ("http_stream", "/connection/http_stream"),
                           ("uni_websocket", "/connection/uni_websocket"),
                           ("uni_sse", "/connection/uni_sse"),
                           ("uni_http_stream", "/connection/uni_http_stream")):
            value = self.get(f"{name}.enabled")
            if value not in (_MISSING, None):
                given.append(self.name(f"{name}.enabled"))
                if self.boolean(f"{name}.enabled", value):
                    served.append(name)
            self.prefix(f"{name}.handler_prefix", path, name)
            if name != "uni_websocket":
                self.ignore(f"{name}.max_request_body_size", "--max-message-size bounds a "
                            "first request", 65536)
        for name in ("uni_sse", "uni_http_stream"):
            self.switched(f"{name}.connect_code_to_http_response",
                          "a refused connect is answered with realtime's statuses")
        self.prefix("emulation.handler_prefix", "/emulation", "the emulation endpoint")
        self.ignore("emulation.max_request_body_size", "--max-message-size bounds it", 65536)
        self.switched("uni_grpc", "the unidirectional gRPC transport is not built")
        from realtime.pubsub import TRANSPORTS

        if not served:
            self.refuse(f"{self.name('websocket.disabled')}: not supported with no other "
                        "transport enabled (realtime.pubsub serves one at least)",
                        "pubsub-transports")
            return
        self.put("pubsub-transports", ",".join(t for t in TRANSPORTS if t in served),
                 "websocket.disabled")
        self.out.sources["pubsub-transports"] = ", ".join(given) if given else (
            f"{self.name('websocket.disabled')} (not set: Centrifugo serves WebSocket alone)")
        self.switched("webtransport", "WebTransport is not served: the SDKs fall back to "
                      "their next transport", refuse=False)

    def admin_and_probes(self) -> None:
        enabled = self.get("admin.enabled")
        prefix = self.get("admin.handler_prefix")
        if enabled is not _MISSING and self.boolean("admin.enabled", enabled):
            path = "" if prefix in (_MISSING, None) else self.text("admin.handler_prefix", prefix)
            if path in ("", "/"):
                self.warn(f"{self.name('admin.enabled')}: the admin UI is at /admin here "
                          "(Centrifugo's is at /)", "admin-path")
                path = "/admin"
            self.put("admin-path", path, "admin.enabled")
        self.ignore("admin.password", "the admin page logs in with the API key")
        self.ignore("admin.secret", "the admin page logs in with the API key")
        self.unsupported("admin.insecure", "the admin page always asks for the API key")
        self.ignore("admin.web_path", "the admin page is realtime's own")
        self.ignore("admin.web_proxy_address", "the admin page is realtime's own")
        self.external("admin.external", "the admin UI", "admin-path" in self.out.options)
        value = self.get("prometheus.enabled")
        if value is not _MISSING:
            self.put("metrics", self.boolean("prometheus.enabled", value), "prometheus.enabled")
        self.prefix("prometheus.handler_prefix", "/metrics", "metrics")
        self.ignore("prometheus.instrument_http_handlers", "HTTP requests are counted always")
        value = self.get("health.enabled")
        prefix = self.get("health.handler_prefix")
        if value is not _MISSING and self.boolean("health.enabled", value):
            path = "/health" if prefix in (_MISSING, None, "") else self.text(
                "health.handler_prefix", prefix)
            self.put("health-path", path, "health.enabled")
        value = self.get("shutdown.timeout")
        self.put("shutdown-timeout", "30" if value in (_MISSING, None) else _decimal(
            self.seconds("shutdown.timeout", value)), "shutdown.timeout")
        if value in (_MISSING, None):  # (realtime's own is 10 s)
            self.out.sources["shutdown-timeout"] += " (not set: Centrifugo's default)"

    def the_rest(self) -> None:
        self.switched("swagger", "no Swagger UI here", refuse=False)
        self.switched("debug", "no pprof here", refuse=False)
        self.switched("dev", "no dev page here", refuse=False)
        self.switched("init", "the connection init endpoint is not built")
        self.switched("opentelemetry", "no OpenTelemetry tracing here", refuse=False)
        self.switched("graphite", "metrics are Prometheus's (prometheus.enabled)",
                      refuse=False)
        self.seen.add("usage_stats")  # realtime sends none, whatever it says
        self.ignore("node.name", "a node's name is host_pid here")
        self.ignore("node.info_metrics_aggregate_interval", "info is asked of every process "
                    "each time", "60s")
        self.ignore("pid_file", "twistd's --pidfile writes one")
        self.ignore("enable_unreleased_features", "nothing unreleased here")
        self.unsupported("channel.proxy.subscribe_stream.endpoint", "subscription streams "
                         "are not built")
        self.seen.add("channel.proxy.subscribe_stream")
        self.switched("rpc.ping", "rpc calls go to the RPC proxy, ping too")

    def unknown_keys(self) -> None:
        for path in _leaf_paths(self.data):
            parts = path.split(".")
            if any(".".join(parts[:n]) in self.seen for n in range(1, len(parts) + 1)):
                continue
            if self.get(path) in (None, {}) and any(seen.startswith(path + ".")
                                                    for seen in self.seen):
                continue  # a known section, empty or null: Centrifugo's defaults
            name = self.name(path)
            if self.out.version == 6 and path in _V5_KEYS:
                self.refuse(f"{name}: a Centrifugo v5 key in a v6 file (v6's is "
                            f"{_V5_KEYS[path]}; Centrifugo v6 ignores it)")
            else:
                self.refuse(f"{name}: unknown key (a typo, or an option of Centrifugo PRO? "
                            "Centrifugo only warns; realtime refuses, so that no setting is "
                            "lost without a word)")


#: A namespace option Centrifugo has and realtime lacks: (its default, why, refuse it).
_NAMESPACE_RULES: dict[str, tuple[Any, str, bool]] = {
    "channel_regex": (_OFF, "channel names are not matched against a pattern here", True),
    "force_recovery_mode": ("stream", "only the stream recovery mode is built", True),
    "subscribe_stream_proxy_enabled": (_OFF, "subscription streams are not built", True),
    "proxy_subscribe_stream": (_OFF, "subscription streams are not built", True),
    "subscribe_stream_proxy_bidirectional": (_OFF, "subscription streams are not built", True),
    "subscribe_stream_proxy_name": ("default", "subscription streams are not built", True),
    "pattern": (_OFF, "channel patterns are not built", True),
    "history_meta_ttl": (_OFF, "a stream's position lives as long as its history", False),
}


def _leaf_paths(tree: dict[str, Any], head: str = "") -> list[str]:
    paths = []
    for key, value in tree.items():
        path = f"{head}{key}"
        if isinstance(value, dict) and value:
            paths.extend(_leaf_paths(value, path + "."))
        else:
            paths.append(path)
    return paths


#: A Sentinel's or a Cluster node's address once its scheme is off: a host (an IPv6 one in
#: brackets) and a port (realtime's default when left out).
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:/?#@\[\],;]+)(:[0-9]+)?\Z")


def _host_port_of(address: str, name: str) -> str:
    """``host:port`` from a Centrifugo address (``host:port``, ``redis://host:port``).
    Anything more (a user and password, a path, a query: Centrifugo's
    ``net.SplitHostPort`` refuses them, and here they would end up in the section's URL,
    a password in its password) is a ``CentrifugoConfigError`` naming the key ``name``,
    the password not shown."""
    text = address.strip()
    for scheme in ("redis://", "rediss://", "tcp://"):
        if text.startswith(scheme):
            text = text[len(scheme):]
    text = text.rstrip("/")
    if not _HOST_PORT.match(text):
        shown = re.sub(r"^((?:[A-Za-z][-+.A-Za-z0-9]*://)?).*@", r"\1***@", address.strip())
        raise CentrifugoConfigError(f"{name}: expected host:port (commas between them), got "
                                    f"{shown!r}")
    return text


def _redis_url(name: str, address: str, userinfo: str, db: int, tls: bool, tail: str) -> str:
    """One Centrifugo Redis address as realtime's layer URL: ``host:port`` and ``tcp://``
    take the user, password, db and TLS of the section; a ``redis://`` URL keeps what it
    says and takes what it leaves out; ``unix://`` a socket."""
    address = address.strip()
    if address.startswith("unix://"):
        path = address[len("unix://"):]
        url = f"unix://{userinfo}{path}"
        return url + (tail + ("&" if tail else "?") + f"db={db}" if db else tail)
    scheme = "rediss" if tls else "redis"
    if "://" in address:
        given, _, rest = address.partition("://")
        if given not in ("redis", "rediss", "tcp"):
            raise CentrifugoConfigError(f"{name}: expected host:port, redis://, rediss://, "
                                        f"tcp:// or unix://, got {_redacted(address)!r}")
        if given == "rediss":
            scheme = "rediss"
        rest, _, query = rest.partition("?")
        netloc, _, path = rest.partition("/")
        if "@" not in netloc:
            netloc = userinfo + netloc
        path = path or (str(db) if db else "")
        extra = "&".join(part for part in (query, tail.lstrip("?")) if part)
        return f"{scheme}://{netloc}{'/' + path if path else ''}{'?' + extra if extra else ''}"
    return f"{scheme}://{userinfo}{address}{'/' + str(db) if db else ''}{tail}"


def translate(data: dict[str, Any]) -> Translation:
    """Realtime's options from a Centrifugo table (v5 or v6). A value of the wrong kind
    raises ``CentrifugoConfigError`` at once; refusals are collected in ``problems``."""
    version = version_of(data)
    v5 = from_v5(data) if version == 5 else _V5(tree=data)
    translator = _Translator(v5.tree, version, v5.origin)
    translator.every_method = version == 5 and not v5.granular
    out = translator.translate()
    for key, why in v5.notes:
        if why is not None:
            out.warnings.append((None, f"{key}: {why}"))
        else:
            out.problems.append((None, f"{key}: unknown key (not a Centrifugo v5 key that "
                                       "realtime knows: a typo, or an option of Centrifugo "
                                       "PRO?)"))
    if out.namespaces:
        from realtime.tap import _namespace_specs

        out.options["namespace"] = _namespace_specs([t for t, _ in out.namespaces], "")
        out.sources["namespace"] = ("channel.namespaces" if version == 6 else "namespaces")
    out.options.setdefault("app", APP)
    _check_cookie_origins(out)
    return out


def _check_cookie_origins(out: Translation) -> None:
    """A proxy that forwards the browser's cookie with no origin check would let any site's
    page act as its visitor (connect, or connect anonymously and subscribe or call an RPC:
    the backend answers for the cookie's user): Centrifugo checks Origin against Host when
    ``allowed_origins`` is not set, realtime does not. Every proxy counts, named ones too."""
    def forwards(tables: list[dict[str, Any]]) -> bool:
        return any(str(h).lower() == "cookie" for t in tables for h in t.get("http_headers", ()))

    kinds = [option for option, tables in (
        ("proxy-event", [table for _, table, _ in out.proxy_events]),
        ("proxy", [table for table, _ in out.proxies])) if forwards(tables)]
    if kinds and "allowed-origins" not in out.options:
        # (dropped by --allowed-origins, or by the option that replaces every such proxy)
        # (--proxy-http-headers given replaces every event's own headers)
        hang = ["allowed-origins", *(kinds if len(kinds) == 1 else [])] + (
            ["proxy-http-headers"] if kinds == ["proxy-event"] else [])
        out.problems.append(("|".join(hang), (
            "client.allowed_origins" if out.version == 6 else "allowed_origins") +
            ": needed when a proxy forwards Cookie (without it Centrifugo checks Origin "
            "against Host, realtime checks nothing: any site's page could act as its "
            "visitor; or give --allowed-origins)"))


def environment_problem(environ: Any = None) -> str | None:
    """Centrifugo reads ``CENTRIFUGO_*`` variables over its file (a secret, the allowed
    origins, ...): realtime does not, so one set would be lost without a word."""
    names = sorted(n for n in (os.environ if environ is None else environ)
                   if n.startswith("CENTRIFUGO_"))
    if not names:
        return None
    return (f"{names[0]}: not supported (Centrifugo reads its CENTRIFUGO_* variables over the "
            "file, realtime does not: put the setting in the file, or give realtime's option "
            "or REALTIME_* variable)")


def read(path: str) -> Translation:
    """``load`` then ``translate``; a ``CENTRIFUGO_*`` variable is the first refusal."""
    out = translate(load(path))
    problem = environment_problem()
    if problem is not None:
        out.problems.insert(0, (None, problem))
    return out


# -- TOML for --config ---------------------------------------------------------------------

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table (a proxy's http, static_headers, ...)
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(value)


def _comment(text: str) -> str:
    """Text for a ``#`` comment: a control character (a newline would end the comment and
    start a line of TOML) written as its escape."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: json.dumps(m.group())[1:-1], text)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def to_toml(out: Translation, path: str) -> str:
    """The options as a realtime ``--config`` file, a comment on each line naming the
    Centrifugo key it came from (and what was ignored, at the top)."""
    lines = [f"# realtime --config file from Centrifugo v{out.version}'s "
             f"{json.dumps(path, ensure_ascii=False)}",
             "# (python -m realtime.centrifugo_config): review it, then run",
             "#   realtime --config THIS_FILE"]
    statics = [table for _, table, _ in out.proxy_events] + [t for t, _ in out.proxies]
    if "jwt-key" in out.options or "api-key" in out.options or any(
            "static_headers" in table.get("http", {}) for table in statics):
        lines.append("# It holds the file's secrets inline: keep it as private as the "
                     "original (or move them to jwt-key-file / api-key-file).")
    for _, message in out.warnings:
        lines.append(f"# warning: {_comment(message)}")
    lines.append("")
    for option, value in sorted(out.options.items(), key=lambda item: item[0] != "app"):
        if option in ("namespace", "proxy", "proxy-event", "rpc-namespace"):
            continue  # (tables, below)
        comment = out.sources.get(option, "(implied by a Centrifugo configuration)")
        lines.append(f"{option} = {_toml_value(value)}  # {_comment(comment)}")
    tables = [("[[namespaces]]", table, sources) for table, sources in out.namespaces]
    tables += [(f"[proxy_events.{event}]", table, sources)
               for event, table, sources in out.proxy_events]
    tables += [("[[proxies]]", table, sources) for table, sources in out.proxies]
    tables += [("[[rpc_namespaces]]", table, sources)
               for table, sources in out.rpc_namespaces]
    for head, table, sources in tables:
        lines.append("")
        lines.append(head)
        for option, value in table.items():
            comment = sources.get(option, "")
            line = f"{_toml_key(option)} = {_toml_value(value)}"
            lines.append(f"{line}  # {_comment(comment)}" if comment else line)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m realtime.centrifugo_config FILE``: the TOML on stdout; a refusal exits
    1 with its one line on stderr."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        sys.stderr.write("usage: python -m realtime.centrifugo_config CENTRIFUGO_CONFIG_FILE\n"
                         "Print the file's settings as a realtime --config TOML file.\n")
        return 0 if args and args[0] in ("-h", "--help") else 2
    path = args[0]
    try:
        out = read(path)
    except CentrifugoConfigError as exc:
        sys.stderr.write(f"realtime: error: {path}: {exc}\n")
        return 1
    if out.problems:
        sys.stderr.write(f"realtime: error: {path}: {out.problems[0][1]}\n")
        return 1
    for _, message in out.warnings:
        sys.stderr.write(f"realtime: warning: {path}: {message}\n")
    sys.stdout.write(to_toml(out, path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
