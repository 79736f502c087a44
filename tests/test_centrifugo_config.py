# ruff: noqa: F811  (the fixtures imported from tests.test_pubsub*, taken as arguments)
"""``--centrifugo-config FILE`` (``realtime.centrifugo_config``): a Centrifugo v5 or v6 file
in JSON, YAML or TOML becomes realtime's options; what realtime cannot honour stops
start-up with one line naming the key, what it has no use for is one warning line each;
the converter's TOML, given to ``--config``, makes the same options; a real server
started on contrib/pubsub/config.json serves Centrifugo's own client and API with the
file's secret and key; and one started in process on a v6 file with named proxies and RPC
namespaces sends each subscribe and RPC to the real backend its proxy names."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import pytest
import pytest_twisted
import yaml

from realtime import centrifugo_config
from realtime.config import StartupError
from realtime.tap import Options
from tests.clients import http_get, in_thread
from tests.e2e.support import REPO, run, start
from tests.test_pubsub import pubsub_server, sdk_client, subscribed, token  # noqa: F401
from tests.test_pubsub import run as run_sdk
from tests.test_pubsub_proxy import backend  # noqa: F401 (a fixture)
from tests.test_pubsub_proxy_named import second  # noqa: F401 (a fixture)

SECRET = "s" * 40
API_KEY = "k" * 24
SAMPLE = REPO / "contrib" / "pubsub" / "config.json"

#: A Centrifugo v6 setup as its Django tutorial grows one: a connect proxy that reads the
#: session cookie, namespaces with history and presence, the Redis engine.
V6 = {
    "http_server": {"address": "127.0.0.1", "port": 8000, "internal_port": "9000"},
    "log": {"level": "debug"},
    "client": {
        "token": {"hmac_secret_key": SECRET},
        "allowed_origins": ["http://localhost:9000"],
        "proxy": {"connect": {"enabled": True,
                              "endpoint": "http://127.0.0.1:8001/centrifugo/connect",
                              "timeout": "3s", "http_headers": ["Cookie"],
                              "http": {"static_headers": {"X-Proxy-Key": "pk"}}},
                  "refresh": {"enabled": True,
                              "endpoint": "http://127.0.0.1:8001/centrifugo/refresh",
                              "timeout": "3s", "http_headers": ["Cookie"],
                              "http": {"static_headers": {"X-Proxy-Key": "pk"}}}},
        "channel_limit": 64,
        "user_connection_limit": 4,
        "allow_anonymous_connect_without_token": True,
    },
    "http_api": {"key": API_KEY},
    "channel": {
        "without_namespace": {"allow_subscribe_for_client": True},
        "namespaces": [
            {"name": "personal"},
            {"name": "chat", "presence": True, "join_leave": True, "history_size": 100,
             "history_ttl": "5m", "force_recovery": True,
             "allow_subscribe_for_client": True, "allow_history_for_subscriber": True},
        ],
    },
    "engine": {"type": "redis",
               "redis": {"address": ["127.0.0.1:6379", "redis://10.0.0.2:6380"],
                         "db": 2, "password": "p@ss", "prefix": "cf"}},
    "prometheus": {"enabled": True},
    "health": {"enabled": True},
    "websocket": {"compression": True, "message_size_limit": 65536},
    "shutdown": {"timeout": "30s"},
}

#: The same setup in Centrifugo v5's flat keys.
V5 = {
    "address": "127.0.0.1", "port": "8000", "internal_port": "9000", "log_level": "debug",
    "token_hmac_secret_key": SECRET, "allowed_origins": ["http://localhost:9000"],
    "proxy_connect_endpoint": "http://127.0.0.1:8001/centrifugo/connect",
    "proxy_refresh_endpoint": "http://127.0.0.1:8001/centrifugo/refresh",
    "proxy_connect_timeout": "3s", "proxy_refresh_timeout": "3s",
    "proxy_http_headers": ["Cookie"], "proxy_static_http_headers": {"X-Proxy-Key": "pk"},
    "client_channel_limit": 64, "client_user_connection_limit": 4,
    "allow_anonymous_connect_without_token": True,
    "api_key": API_KEY,
    "allow_subscribe_for_client": True,
    "namespaces": V6["channel"]["namespaces"],  # type: ignore[index]
    "engine": "redis", "redis_address": ["127.0.0.1:6379", "redis://10.0.0.2:6380"],
    "redis_db": 2, "redis_password": "p@ss", "redis_prefix": "cf",
    "prometheus": True, "health": True,
    "websocket_compression": True, "websocket_message_size_limit": 65536,
    "shutdown_timeout": "30s",
}

#: Centrifugo v6's proxies as they are: an event's own object, named proxies that channel
#: namespaces (the top level's too) and RPC namespaces pick, another RPC boundary, and the
#: transports the file enables.
V6_NAMED = {
    "http_server": {"address": "127.0.0.1"},
    "client": {"token": {"hmac_secret_key": SECRET}, "allowed_origins": ["http://app"],
               "proxy": {"connect": {"enabled": True, "endpoint": "http://127.0.0.1:8001/c",
                                     "timeout": "500ms", "http_headers": ["Cookie"]}}},
    "http_api": {"key": API_KEY},
    "proxies": [
        {"name": "connect", "endpoint": "http://127.0.0.1:8001/c", "timeout": "500ms",
         "http_headers": ["Cookie"]},
        {"name": "chat-backend", "endpoint": "http://127.0.0.1:8002/centrifugo",
         "timeout": "2s", "http_headers": ["Authorization"], "include_connection_meta": True,
         "http": {"static_headers": {"X-Secret": "v"}}},
        {"name": "payments", "endpoint": "http://127.0.0.1:8003/rpc", "binary_encoding": True},
    ],
    "channel": {
        "without_namespace": {"subscribe_proxy_enabled": True,
                              "subscribe_proxy_name": "chat-backend"},
        "namespaces": [{"name": "chat", "subscribe_proxy_enabled": True,
                        "subscribe_proxy_name": "chat-backend", "publish_proxy_enabled": True,
                        "publish_proxy_name": "chat-backend"}]},
    "rpc": {"namespace_boundary": ".",
            "without_namespace": {"proxy_enabled": True, "proxy_name": "payments"},
            "namespaces": [{"name": "billing", "proxy_enabled": True, "proxy_name": "payments"},
                           {"name": "off"}]},
    "uni_sse": {"enabled": True}, "http_stream": {"enabled": True},
}

#: The same in Centrifugo v5's granular proxy mode (where the connect proxy is a named one).
V5_NAMED = {
    "address": "127.0.0.1", "token_hmac_secret_key": SECRET,
    "allowed_origins": ["http://app"], "api_key": API_KEY,
    "granular_proxy_mode": True,
    "proxies": [{**V6_NAMED["proxies"][0]},  # type: ignore[index]
                {"name": "chat-backend", "endpoint": "http://127.0.0.1:8002/centrifugo",
                 "timeout": "2s", "http_headers": ["Authorization"],
                 "include_connection_meta": True, "static_http_headers": {"X-Secret": "v"}},
                {**V6_NAMED["proxies"][2]}],  # type: ignore[index]
    "connect_proxy_name": "connect",
    "subscribe_proxy_name": "chat-backend",
    "namespaces": [{"name": "chat", "subscribe_proxy_name": "chat-backend",
                    "publish_proxy_name": "chat-backend"}],
    "rpc_namespace_boundary": ".", "rpc_proxy_name": "payments",
    "rpc_namespaces": [{"name": "billing", "rpc_proxy_name": "payments"}, {"name": "off"}],
    "uni_sse": True, "http_stream": True,
}

EXPECTED = {
    "app": "realtime.pubsub:application",
    "port": ["8000"], "bind": "127.0.0.1", "internal-port": "tcp:9000:interface=127.0.0.1",
    "verbosity": "2",
    "layer": "redis://:p%40ss@127.0.0.1:6379/2?prefix=cf "
             "redis://:p%40ss@10.0.0.2:6380/2?prefix=cf",
    "jwt-key": SECRET, "allowed-origins": "http://localhost:9000",
    "pubsub-anonymous": True,
    "max-groups-per-connection": "64", "max-connections-per-user": "4",
    "proxy-connect-endpoint": "http://127.0.0.1:8001/centrifugo/connect",
    "proxy-refresh-endpoint": "http://127.0.0.1:8001/centrifugo/refresh",
    # each proxy's own settings, as the file has them (v5's common ones in each)
    "proxy-event": [(event, {"timeout": 3.0, "http_headers": ("Cookie",),
                             "static_headers": (("X-Proxy-Key", "pk"),)})
                    for event in ("connect", "refresh")],
    "api-key": API_KEY, "metrics": True, "health-path": "/health",
    "compression": True, "max-message-size": "65536", "max-frame-size": "65536",
    "shutdown-timeout": "30", "pubsub-transports": "websocket",
    "namespace": [":allow_subscribe_for_client=true", "personal:",
                  "chat:presence=true,join_leave=true,history_size=100,history_ttl=300s,"
                  "force_recovery=true,allow_subscribe_for_client=true,"
                  "allow_history_for_subscriber=true"],
}


def _toml(table: dict[str, Any], head: str = "") -> str:
    """Enough of a TOML writer for these samples (tomllib only reads)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + "}"

    lines, tables = [], []
    for key, v in table.items():
        if isinstance(v, dict) and v and head != "__item__":
            tables.append(_toml(v, f"{head}{key}."))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for item in v:
                tables.append(f"[[{head}{key}]]\n" + _toml(item, "__item__"))
        else:
            lines.append(f"{json.dumps(key)} = {value(v)}")
    own = "\n".join(lines)
    if head and head != "__item__" and lines:
        own = f"[{head[:-1]}]\n{own}"
    return "\n".join(part for part in [own, *tables] if part) + "\n"


def write(tmp_path: Path, data: dict[str, Any], fmt: str = "json") -> Path:
    path = tmp_path / f"config.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(data))
    elif fmt == "yaml":
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    else:
        path.write_text(_toml(data))
    return path


def parsed(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def refusal(path: Path, *args: str) -> str:
    with pytest.raises(StartupError) as error:
        parsed("--centrifugo-config", str(path), *args)
    message = str(error.value)
    assert "\n" not in message, message
    return message


@pytest.fixture(autouse=True)
def _quiet_environment(monkeypatch: pytest.MonkeyPatch) -> Any:
    """No REALTIME_*/CENTRIFUGO_* variable of the machine's; the process-wide settings a
    parse made (namespaces, proxies, transports) undone after each test."""
    import os

    from realtime.settings import reset

    for name in list(os.environ):
        if name.startswith(("REALTIME_", "CENTRIFUGO_")):
            monkeypatch.delenv(name)
    yield
    reset()


@pytest.mark.parametrize("fmt", ["json", "yaml", "toml"])
@pytest.mark.parametrize("sample", [V6, V5], ids=["v6", "v5"])
def test_v5_and_v6_in_every_format_make_the_same_options(tmp_path, fmt, sample):
    path = write(tmp_path, sample, fmt)
    translation = centrifugo_config.read(str(path))
    assert translation.version == (6 if sample is V6 else 5)
    assert translation.problems == []
    assert translation.options == EXPECTED
    # Each option names the key it came from, as the file wrote it.
    sources = translation.sources
    connect = translation.proxy_events[0][2]
    assert sources["internal-port"] == ("http_server.internal_port" if sample is V6
                                        else "internal_port")
    if sample is V6:
        assert sources["jwt-key"] == "client.token.hmac_secret_key"
        assert connect["timeout"] == "client.proxy.connect.timeout"
        assert sources["layer"] == "engine.redis.address"
    else:
        assert sources["jwt-key"] == "token_hmac_secret_key"
        assert connect["timeout"] == "proxy_connect_timeout"
        assert sources["layer"] == "redis_address"
    # And the tap takes them: a real parse, the layer built (not connected).
    options = parsed("--centrifugo-config", str(path), "--port", "0")
    assert options["app"] == "realtime.pubsub:application"
    assert options.config.api_keys == (API_KEY,)
    assert options.layer.__class__.__name__ == "ShardedRedisChannelLayer"
    from realtime.settings import settings

    assert set(settings.pubsub_namespaces) == {"", "personal", "chat"}
    assert settings.pubsub_namespaces["chat"].history_ttl == 300.0
    for event in ("connect", "refresh"):
        proxy = settings.pubsub_proxy.own(event)
        assert (proxy.timeout, proxy.http_headers, proxy.static_headers) == (
            3.0, ("Cookie",), (("X-Proxy-Key", "pk"),))
    assert settings.pubsub_transports == {"websocket"}


def test_redis_forms_sentinel_cluster_tls_and_unix(tmp_path):
    def layer(redis: dict[str, Any]) -> str:
        out = centrifugo_config.translate({"engine": {"type": "redis", "redis": redis}})
        assert out.problems == [], out.problems
        return str(out.options["layer"])

    assert layer({}) == "redis://127.0.0.1:6379"
    assert layer({"address": "redis://u:pw@h:1/3", "db": 5}) == "redis://u:pw@h:1/3"
    assert layer({"address": "tcp://h:1", "user": "ada", "password": "pw"}) == \
        "redis://ada:pw@h:1"
    assert layer({"address": "unix:///run/redis.sock", "db": 1}) == \
        "unix:///run/redis.sock?db=1"
    assert layer({"address": "h:1", "tls": {"enabled": True, "server_ca_pem": "/ca.pem"}}) \
        == "rediss://h:1?ssl_ca_certs=/ca.pem"
    # One item: one Sentinel deployment (its sentinels separated by commas); several: a
    # shard each, every one's master named sentinel_master_name (Centrifugo's
    # getRedisShardConfigs), so a sharded layer of redis+sentinel:// URLs.
    assert layer({"sentinel_address": ["s1:26379,redis://s2:26379"],
                  "sentinel_master_name": "mymaster", "password": "pw"}) == \
        "redis+sentinel://:pw@s1:26379,s2:26379/mymaster/0"
    assert layer({"sentinel_address": ["a1:26379,a2:26379", "b1:26379"],
                  "sentinel_master_name": "my master", "db": 2, "prefix": "app"}) == (
        "redis+sentinel://a1:26379,a2:26379/my%20master/2?prefix=app "
        "redis+sentinel://b1:26379/my%20master/2?prefix=app")
    assert layer({"cluster_address": ["c1:7000,c2:7001"]}) == "redis+cluster://c1:7000,c2:7001"


def test_several_sentinel_addresses_are_a_sharded_layer_of_sentinel_deployments(tmp_path):
    """A v6 file's two ``sentinel_address`` items (v5's ``redis_sentinel_address`` too) are
    two shards, as in Centrifugo: the tap builds a sharded layer (not connected) whose
    shards ask their own sentinels for the master; never one deployment of every
    sentinel (which could answer two masters)."""
    for data in ({"engine": {"type": "redis", "redis": {
                     "sentinel_address": ["127.0.0.1:26379,127.0.0.1:26380", "127.0.0.1:26381"],
                     "sentinel_master_name": "mymaster"}}},
                 {"engine": "redis", "redis_sentinel_master_name": "mymaster",
                  "redis_sentinel_address": ["127.0.0.1:26379,127.0.0.1:26380",
                                             "127.0.0.1:26381"]}):
        path = write(tmp_path, data)
        options = parsed("--centrifugo-config", str(path), "--port", "0")
        shards = [shard.address for shard in options.layer.shards]
        assert [(a.kind, a.sentinels, a.master) for a in shards] == [
            ("sentinel", (("127.0.0.1", 26379), ("127.0.0.1", 26380)), "mymaster"),
            ("sentinel", (("127.0.0.1", 26381),), "mymaster")]


@pytest_twisted.ensureDeferred
async def test_each_sentinel_address_item_reaches_its_own_deployments_master(tmp_path):
    """End to end on real Sentinels: two deployments, each a redis-server and a Sentinel
    calling it ``mymaster``, one ``sentinel_address`` item each. The layer the tap builds
    from the file asks each shard's own Sentinel and connects to that deployment's master
    (one deployment of both Sentinels would have been a single connection to either), and
    a group on each shard carries a message between two such layers (two processes)."""
    from twisted.internet import reactor

    from tests.redis_support import RedisServer
    from tests.test_layers import until
    from tests.test_layers_redis import Probe
    from tests.test_layers_sharded import groups_on

    with RedisServer() as a, RedisServer() as b, \
            RedisServer(sentinel_of=("mymaster", a.port)) as sentinel_a, \
            RedisServer(sentinel_of=("mymaster", b.port)) as sentinel_b:
        path = write(tmp_path, {"engine": {"type": "redis", "redis": {
            "sentinel_address": [f"127.0.0.1:{sentinel_a.port}",
                                 f"127.0.0.1:{sentinel_b.port}"],
            "sentinel_master_name": "mymaster", "prefix": "sentinels"}}})
        layers = [parsed("--centrifugo-config", str(path), "--port", "0").layer
                  for _ in range(2)]
        try:
            for layer in layers:
                layer.start(reactor)
                await layer.when_ready(10)
            one, two = layers
            assert [shard._pub.proto.transport.getPeer().port for shard in one.shards] == [
                a.port, b.port]
            probe = Probe()
            member = two.attach(probe)
            groups = [groups_on(one, index, 1, "room")[0] for index in (0, 1)]
            for group in groups:
                await two.group_add(group, member)
            for group in groups:
                await one.group_send(group, {"type": "to." + group})
            await until(lambda: sorted(e["type"] for e in probe.events) == sorted(
                "to." + group for group in groups))
            # each master carries its shard's groups (their topics subscribed there)
            assert all(server.call("PUBSUB", "CHANNELS", "sentinels*") for server in (a, b))
        finally:
            for layer in layers:
                await layer.close()


def test_http_server_tls_is_an_ssl_port_and_v5_says_the_same():
    v6 = centrifugo_config.translate({"http_server": {
        "address": "127.0.0.1", "port": 8443,
        "tls": {"enabled": True, "cert_pem": "/etc/c:1.pem", "key_pem": "/etc/k.pem"}}})
    v5 = centrifugo_config.translate({"address": "127.0.0.1", "port": "8443", "tls": True,
                                      "tls_cert": "/etc/c:1.pem", "tls_key": "/etc/k.pem"})
    for out in (v6, v5):
        assert out.problems == []
        assert out.options["port"] == [
            "ssl:8443:privateKey=/etc/k.pem:certKey=/etc/c\\:1.pem:interface=127.0.0.1"]
        assert "bind" not in out.options


@pytest.mark.parametrize("origins", [[], [""]], ids=["empty", "blank"])
def test_an_empty_allowed_origins_is_warned_of_as_not_set(origins):
    """Centrifugo checks Origin against Host for an empty list as for none."""
    out = centrifugo_config.translate({"client": {"allowed_origins": origins}})
    assert "allowed-origins" not in out.options
    assert [m for o, m in out.warnings if o == "allowed-origins"] == [
        "client.allowed_origins: not set: Centrifugo then refuses browsers of other origins, "
        "realtime lets every origin in (set it, or --allowed-origins)"]


def test_full_origins_are_taken_as_they_are():
    out = centrifugo_config.translate({"client": {"allowed_origins": [
        "https://app.example.com", "http://localhost:3000/", "*"]}})
    assert out.problems == []
    assert out.options["allowed-origins"] == "https://app.example.com http://localhost:3000/ *"


def test_what_centrifugo_takes_as_its_default_asks_for_nothing():
    """Empty or null sections, "" for a namespace's recovery mode and proxy names (Centrifugo
    fills a zero value with its default), -1 for "no pings" (an ignored key warns, whatever
    its form): no refusal."""
    out = centrifugo_config.translate({
        "client": {"token": {}, "proxy": None, "allowed_origins": ["*"],
                   "ping_interval": -1, "pong_timeout": -1},
        "http_server": {"address": "127.0.0.1", "tls": None},
        "engine": {"type": "memory", "redis": {}},
        "channel": {"namespaces": [{"name": "chat", "force_recovery_mode": "",
                                    "subscribe_proxy_name": "", "publish_proxy_name": ""}]},
    })
    assert out.problems == []
    assert out.options["namespace"] == ["chat:"]
    assert sorted(m.split(":")[0] for _, m in out.warnings) == [
        "client.ping_interval", "client.pong_timeout"]


def test_redis_user_without_a_password_stays_a_user():
    """realtime reads redis://NAME@host as a password alone (redis-py's way); Centrifugo's
    user is a user."""
    out = centrifugo_config.translate({"engine": {"type": "redis", "redis": {
        "address": ["h:1", "redis://h:2", "unix:///s.sock"], "user": "ada"}}})
    assert out.options["layer"] == "redis://ada:@h:1 redis://ada:@h:2 unix://ada:@/s.sock"
    from realtime.layers.redis import parse_url

    address, _ = parse_url("redis://ada:@h:1")
    assert (address.username, address.password) == ("ada", "")


def test_tls_without_an_address_listens_everywhere_as_centrifugo_does():
    """An ssl: description without interface= listens on every interface (Twisted's
    default), as Centrifugo does: no "realtime on 127.0.0.1" warning."""
    out = centrifugo_config.translate({"http_server": {"port": 8443, "tls": {
        "enabled": True, "cert_pem": "/c.pem", "key_pem": "/k.pem"}},
        "client": {"allowed_origins": ["*"]}})
    assert out.options["port"] == ["ssl:8443:privateKey=/k.pem:certKey=/c.pem"]
    assert out.warnings == []


#: (http_server's keys, v5's flat ones for the same, the --internal-port made, the key it
#: names). Centrifugo's internal server is at internal_address (else address) and
#: internal_port (else port), with internal_tls, else the main TLS unless tls_external
#: (internal/app/mux.go, runHTTPServers).
TLS = {"enabled": True, "cert_pem": "/etc/c:1.pem", "key_pem": "/etc/k.pem"}
INTERNAL = [
    ({"address": "127.0.0.1", "internal_port": "9000"},
     {"address": "127.0.0.1", "internal_port": "9000"},
     "tcp:9000:interface=127.0.0.1", "internal_port"),
    ({"address": "0.0.0.0", "internal_port": 9000},  # (a number too, as YAML may have it)
     {"address": "0.0.0.0", "internal_port": 9000},
     "tcp:9000:interface=0.0.0.0", "internal_port"),
    ({"address": "127.0.0.1", "internal_port": 0},  # (Centrifugo reads it as "0": a free
     {"address": "127.0.0.1", "internal_port": 0},  # port, not the main one)
     "tcp:0:interface=127.0.0.1", "internal_port"),
    ({"address": "0.0.0.0", "internal_address": "10.0.0.5", "internal_port": "9000"},
     {"address": "0.0.0.0", "internal_address": "10.0.0.5", "internal_port": "9000"},
     "tcp:9000:interface=10.0.0.5", "internal_port"),
    ({"address": "10.0.0.5", "internal_address": "::1"},  # the main port's number
     {"address": "10.0.0.5", "internal_address": "::1"},
     "tcp:8000:interface=\\:\\:1", "internal_address"),
    ({"address": "127.0.0.1", "port": 8443, "internal_port": "9000", "tls": TLS},
     {"address": "127.0.0.1", "port": 8443, "internal_port": "9000", "tls": True,
      "tls_cert": "/etc/c:1.pem", "tls_key": "/etc/k.pem"},
     "ssl:9000:privateKey=/etc/k.pem:certKey=/etc/c\\:1.pem:interface=127.0.0.1",
     "internal_port"),
    ({"address": "127.0.0.1", "port": 8443, "internal_port": "9000", "tls": TLS,
      "tls_external": True},
     {"address": "127.0.0.1", "port": 8443, "internal_port": "9000", "tls": True,
      "tls_cert": "/etc/c:1.pem", "tls_key": "/etc/k.pem", "tls_external": True},
     "tcp:9000:interface=127.0.0.1", "internal_port"),
    ({"port": 8443, "internal_port": "9000", "tls": TLS, "tls_external": True,
      "internal_tls": {"enabled": True, "cert_pem": "/i/c.pem", "key_pem": "/i/k.pem",
                       "server_name": "ignored.example"}},
     None,  # (v5 has no internal_tls)
     "ssl:9000:privateKey=/i/k.pem:certKey=/i/c.pem", "internal_tls.enabled"),
]


@pytest.mark.parametrize(("v6", "v5", "description", "key"), INTERNAL,
                         ids=[str(i) for i in range(len(INTERNAL))])
def test_an_internal_port_is_served_where_centrifugo_serves_it(v6, v5, description, key):
    files = [(6, {"http_server": v6, "client": {"allowed_origins": ["*"]}})]
    if v5 is not None:
        files.append((5, {**v5, "allowed_origins": ["*"]}))
    for version, data in files:
        out = centrifugo_config.translate(data)
        assert out.problems == [], out.problems
        assert out.options["internal-port"] == description
        assert out.sources["internal-port"] == (f"http_server.{key}" if version == 6 else key)
        # Nothing warned of but a TLS client's option (the server does not use it).
        assert [m.split(":")[0] for _, m in out.warnings] == (
            ["http_server.internal_tls.server_name"] if key == "internal_tls.enabled" else [])


def test_an_internal_port_without_any_address_is_127_0_0_1_with_a_warning(tmp_path):
    """Centrifugo's internal server then listens on every interface; realtime's --internal-
    port on loopback, as its main port (a warning each, dropped by what overrides them)."""
    path = write(tmp_path, {"http_server": {"internal_port": "9000"},
                            "client": {"allowed_origins": ["*"]}})
    out = centrifugo_config.read(str(path))
    assert out.options["internal-port"] == "9000"
    assert [m for o, m in out.warnings if o == "internal-port"] == [
        "http_server.internal_address: not set: Centrifugo's internal server listens on every "
        "interface, realtime's --internal-port on 127.0.0.1 (set it, e.g. to 0.0.0.0, or give "
        "--internal-port)"]
    options = parsed("--centrifugo-config", str(path), "--port", "0")
    assert options.internal_listener == ("tcp:port=9000:interface=127.0.0.1:backlog=1024",) * 2
    assert options.internal_what == " (internal: /healthz, /readyz)"


@pytest.mark.parametrize("data", [
    {"http_server": {"port": 8000, "internal_port": "8000", "tls_external": True}},
    {"http_server": {"address": "127.0.0.1", "internal_address": "127.0.0.1",
                     "internal_tls": {"enabled": True, "cert_pem": "/c", "key_pem": "/k"}}},
    {"port": "8000", "internal_port": "8000", "tls_external": True},
], ids=["v6-same-port", "v6-same-address", "v5-same-port"])
def test_an_internal_server_at_the_main_address_is_none(data):
    """Centrifugo then runs one server for everything, with the main TLS: no --internal-
    port, and tls_external or internal_tls is one warning each (nothing uses it)."""
    origins = {"client": {"allowed_origins": ["*"]}} if "http_server" in data else {
        "allowed_origins": ["*"]}
    out = centrifugo_config.translate({**data, **origins})
    assert out.problems == []
    assert "internal-port" not in out.options
    ignored = [m for _, m in out.warnings if "no internal server" in m]
    assert len(ignored) == 1 and ignored[0].split(":")[0] in (
        "http_server.tls_external", "http_server.internal_tls.enabled", "tls_external")


def test_an_internal_address_realtime_would_bind_twice_stops_start_up_naming_the_key(
        tmp_path):
    """No http_server.address: Centrifugo's main server takes every interface (its internal
    one on 127.0.0.1:8000 would fail to bind); realtime's main port is 127.0.0.1:8000, so
    --internal-port's check says it, under the key."""
    path = write(tmp_path, {"http_server": {"internal_address": "127.0.0.1"},
                            "client": {"allowed_origins": ["*"]}})
    assert refusal(path) == (
        f"realtime: error: --centrifugo-config {path}: http_server.internal_address "
        "(--internal-port) tcp:8000:interface=127.0.0.1: the same address as --port "
        "tcp:port=8000:interface=127.0.0.1:backlog=1024 (a listener of its own: another port "
        "or interface)")


@pytest.mark.parametrize("fmt", ["json", "yaml", "toml"])
@pytest.mark.parametrize("sample", [V6_NAMED, V5_NAMED], ids=["v6", "v5"])
def test_named_proxies_and_rpc_namespaces_as_centrifugo_has_them(tmp_path, fmt, sample):
    """Each proxy object as it is (no folding into one set of options), the named ones, the
    namespaces' choice (the top level's too), RPC namespaces and their boundary; v5's
    granular proxy mode makes the same (its named connect proxy: that event's own)."""
    from realtime.pubsub import PubSubError
    from realtime.pubsub_proxy import Proxy, RpcNamespace
    from realtime.settings import settings

    path = write(tmp_path, sample, fmt)
    out = centrifugo_config.read(str(path))
    assert (out.version, out.problems) == (6 if sample is V6_NAMED else 5, [])
    assert [m.split(":")[0] for _, m in out.warnings] == [
        "client.allowed_origins" if sample is V6_NAMED else "allowed_origins"]
    options = out.options
    assert options["proxy-connect-endpoint"] == "http://127.0.0.1:8001/c"
    assert options["proxy-event"] == [("connect", {"timeout": 0.5,
                                                   "http_headers": ("Cookie",)})]
    chat = Proxy("http://127.0.0.1:8002/centrifugo", name="chat-backend", timeout=2.0,
                 http_headers=("Authorization",), include_connection_meta=True,
                 static_headers=(("X-Secret", "v"),))
    payments = Proxy("http://127.0.0.1:8003/rpc", name="payments", binary_encoding=True)
    assert options["proxy"] == [Proxy("http://127.0.0.1:8001/c", name="connect", timeout=0.5,
                                      http_headers=("Cookie",)), chat, payments]
    assert options["rpc-namespace"] == [RpcNamespace("", True, "payments"),
                                        RpcNamespace("billing", True, "payments"),
                                        RpcNamespace("off")]
    assert options["rpc-namespace-boundary"] == "."
    assert options["pubsub-transports"] == "websocket,http_stream,uni_sse"
    assert not any(name.startswith("proxy-") and name.endswith(("timeout", "headers"))
                   for name in options)  # (no global --proxy-* settings)
    # realtime's start-up takes them: each channel and method gets the proxy it names.
    parsed("--centrifugo-config", str(path), "--port", "0")
    proxy, namespaces = settings.pubsub_proxy, settings.pubsub_namespaces
    assert proxy.for_channel("subscribe", namespaces[""]) == chat
    assert proxy.for_channel("publish", namespaces["chat"]) == chat
    assert proxy.for_channel("publish", namespaces[""]) is None
    assert proxy.own("connect").timeout == 0.5
    assert proxy.for_rpc("billing.charge") == proxy.for_rpc("billing:x") == payments
    for method, code in (("off.x", 108), ("nope.x", 104)):
        with pytest.raises(PubSubError) as error:
            proxy.for_rpc(method)
        assert error.value.code == code, method


def test_an_rpc_proxy_follows_v6s_namespaces_and_v5s_every_method():
    """v6: the RPC proxy serves methods without a namespace only where
    ``rpc.without_namespace.proxy_enabled`` says so (108 otherwise), and a method with a
    namespace not configured is 104, not sent to the proxy, where some namespace enables
    it (none does: Centrifugo has no RPC handler, and every method is 108); v5 (no
    granular mode) sends every method, as v5 did."""
    from realtime.pubsub import PubSubError
    from realtime.pubsub_proxy import ProxyConfig, RpcNamespace

    def routes(data: dict[str, Any]) -> list[Any]:
        out = centrifugo_config.translate(data)
        assert out.problems == [], out.problems
        config = ProxyConfig(endpoints={"rpc": out.options["proxy-rpc-endpoint"]},
                             rpc_namespaces={n.name: n for n in out.options.get(
                                 "rpc-namespace", [])} or None)
        found = []
        for method in ("plain", "ns:x"):
            try:
                found.append(config.for_rpc(method).endpoint)
            except PubSubError as exc:
                found.append(exc.code)
        return found

    endpoint = "http://b/rpc"
    assert routes({"rpc": {"proxy": {"endpoint": endpoint},
                           "without_namespace": {"proxy_enabled": True}}}) == [endpoint, 104]
    assert routes({"rpc": {"proxy": {"endpoint": endpoint}}}) == [108, 108]
    assert routes({"rpc": {"proxy": {"endpoint": endpoint},
                           "namespaces": [{"name": "ns", "proxy_enabled": True}]}}) == [
        108, endpoint]
    assert routes({"proxy_rpc_endpoint": endpoint}) == [endpoint, endpoint]
    out = centrifugo_config.translate({"proxy_rpc_endpoint": endpoint,
                                       "rpc_namespaces": [{"name": "ns"}]})
    assert "rpc-namespace" not in out.options
    assert (None, "rpc_namespaces: ignored (only with granular_proxy_mode: Centrifugo v5 "
                  "does not use it)") in out.warnings
    out = centrifugo_config.translate({"granular_proxy_mode": True, "rpc_proxy_name": "pay",
                                       "proxy_rpc_endpoint": endpoint,
                                       "proxies": [{"name": "pay", "endpoint": endpoint}]})
    assert out.options["rpc-namespace"] == [RpcNamespace("", True, "pay")]
    assert (None, "proxy_rpc_endpoint: ignored (granular_proxy_mode: the named proxies are "
                  "used)") in out.warnings


def test_what_v5_does_not_use_in_its_proxy_mode_is_warned_of_and_dropped():
    """v5 without ``granular_proxy_mode`` uses no named proxy; with it, no
    ``proxy_*_endpoint``, no common ``proxy_*`` option and no ``proxy_subscribe`` flag."""
    global_mode = centrifugo_config.translate({
        "address": "127.0.0.1", "allowed_origins": ["*"], "proxy_subscribe_endpoint": "http://b/s",
        "proxies": [{"name": "pay", "endpoint": "http://b/p"}], "connect_proxy_name": "pay",
        "namespaces": [{"name": "chat", "proxy_subscribe": True,
                        "subscribe_proxy_name": "pay"}]})
    assert global_mode.problems == []
    assert "proxy" not in global_mode.options
    assert global_mode.options["namespace"] == ["chat:proxy_subscribe=true"]
    granular = centrifugo_config.translate({
        "address": "127.0.0.1", "allowed_origins": ["*"], "granular_proxy_mode": True,
        "proxy_subscribe_endpoint": "http://b/s", "proxy_http_headers": ["Cookie"],
        "proxies": [{"name": "pay", "endpoint": "http://b/p"}],
        "namespaces": [{"name": "chat", "proxy_subscribe": True},
                       {"name": "room", "publish_proxy_name": "pay"}]})
    assert granular.problems == []
    assert "proxy-subscribe-endpoint" not in granular.options
    assert granular.options["namespace"] == [
        "chat:", "room:publish_proxy_name=pay,publish_proxy_enabled=true"]
    named = "ignored (only with granular_proxy_mode: Centrifugo v5 does not use it)"
    assert [m for _, m in global_mode.warnings] == [
        f"proxies: {named}", f"connect_proxy_name: {named}",
        f"namespaces[0].subscribe_proxy_name: {named}"]
    assert [m for _, m in granular.warnings] == [
        "proxy_subscribe_endpoint: ignored (granular_proxy_mode: the named proxies are used)",
        "proxy_http_headers: ignored (granular_proxy_mode: each named proxy has its own)",
        "namespaces[0].proxy_subscribe: ignored (granular_proxy_mode: subscribe_proxy_name "
        "picks the proxy)"]


def test_transforms_and_settings_off_load_as_they_are():
    """``http.status_to_code_transforms`` are realtime's too; ``http.tls`` and ``grpc``
    with everything off, empty headers and ``*_proxy_name: default`` ask for nothing."""
    from realtime.pubsub_proxy import StatusTransform

    out = centrifugo_config.translate({
        **HTTP, "client": {"allowed_origins": ["*"], "proxy": {"refresh": {
            "enabled": True, "endpoint": "http://b/r", "http_headers": [],
            "binary_encoding": False, "grpc": {"tls": {"enabled": False}},
            "http": {"tls": {"enabled": False, "server_ca_pem": "/ca.pem"},
                     "static_headers": {}, "status_to_code_transforms": [
                         {"status_code": 404, "to_error": {"code": 404, "message": "gone"}},
                         {"status_code": 403, "to_disconnect": {"code": 4403,
                                                                "reason": "no"}}]}}}},
        "channel": {"namespaces": [{"name": "chat", "publish_proxy_name": "default"}]}})
    assert (out.problems, out.warnings) == ([], [])
    assert out.options["proxy-event"] == [("refresh", {"status_to_code_transforms": (
        StatusTransform(404, error=(404, "gone", False)),
        StatusTransform(403, disconnect=(4403, "no"))),
    })]
    assert out.options["namespace"] == ["chat:"]


def test_centrifugos_defaults_where_realtimes_differ():
    """``shutdown.timeout`` not set is Centrifugo's 30 s (realtime's own is 10 s); the
    transports not enabled are not served (Centrifugo serves WebSocket alone by
    default), ``websocket.disabled`` leaves WebSocket out."""
    out = centrifugo_config.translate({"client": {"allowed_origins": ["*"]}})
    assert out.options["shutdown-timeout"] == "30"
    assert out.sources["shutdown-timeout"] == "shutdown.timeout (not set: Centrifugo's default)"
    assert out.options["pubsub-transports"] == "websocket"
    v5 = centrifugo_config.translate({"websocket_disable": True, "uni_websocket": True,
                                      "sse": True, "allowed_origins": ["*"]})
    assert v5.problems == []
    assert (v5.options["pubsub-transports"], v5.sources["pubsub-transports"]) == (
        "sse,uni_websocket", "websocket_disable, sse, uni_websocket")


def test_v5_proxy_options_without_a_proxy_are_warned_of():
    out = centrifugo_config.translate({"proxy_http_headers": ["Cookie"], "api_key": API_KEY})
    assert out.problems == []
    assert (None, "proxy_http_headers: ignored (no proxy endpoint is set)") in out.warnings
    assert "proxy-http-headers" not in out.options


@pytest.mark.parametrize(("data", "version"), [
    ({"webtransport": False, "allowed_origins": ["*"]}, 5),  # v5's flag
    ({"webtransport": {"enabled": False}, "client": {"allowed_origins": ["*"]}}, 6),
    ({"uni_sse": True, "allowed_origins": ["*"]}, 5),
    ({"uni_sse": {"enabled": True}}, 6),
    ({"broker": "nats", "allowed_origins": ["*"]}, 5),  # v5's broker name
    ({"broker": {"enabled": False}}, 6),
], ids=["webtransport-v5", "webtransport-v6", "uni_sse-v5", "uni_sse-v6", "broker-v5",
        "broker-v6"])
def test_a_key_that_is_a_flag_or_name_in_v5_and_a_section_in_v6_tells_by_its_value(
        data, version):
    """v5's ``webtransport: false`` is no v6 section: the file is read as v5 (not refused
    as v5 keys in a v6 file)."""
    out = centrifugo_config.translate(data)
    assert out.version == version
    assert not any("a Centrifugo v5 key in a v6 file" in m or "expected a table" in m
                   for _, m in out.problems), out.problems


#: A v6 section: a file of named proxies alone reads as v5's (its keys are v5's too).
HTTP = {"http_server": {"address": "127.0.0.1"}}

#: (the file, what its one line says after "--centrifugo-config PATH: ")
REFUSALS = [
    ({"channel": {"proxy": {"subscribe_stream": {"endpoint": "http://b/stream"}}}},
     "channel.proxy.subscribe_stream.endpoint: not supported (subscription streams"),
    ({"grpc_api": {"enabled": True}}, "grpc_api.enabled: not supported (the gRPC"),
    ({"consumers": [{"name": "k", "enabled": True, "type": "kafka"}]},
     "consumers[0]: not supported (no consumers"),
    ({"consumers": [{"name": "k", "type": "kafka"}]}, "consumers[0]: not supported"),  # v5
    ({"client": {"token": {"user_id_claim": "uid"}}},
     "client.token.user_id_claim: not supported (the user is the token's sub claim)"),
    ({"client": {"token": {"audience_regex": "^a"}}}, "client.token.audience_regex: not"),
    ({"client": {"subscription_token": {"enabled": True}}},
     "client.subscription_token.enabled: not supported"),
    ({"client": {"insecure": True}}, "client.insecure: not supported"),
    ({"client": {"token": {"hmac_secret_key": SECRET, "rsa_public_key": "-----BEGIN"}}},
     "client.token.hmac_secret_key and client.token.rsa_public_key: not supported together"),
    ({"client": {"allowed_origins": ["https://*.example.com"]}},
     "client.allowed_origins: 'https://*.example.com': not supported (no globs here"),
    ({"client": {"proxy": {"connect": {"enabled": True, "endpoint": "http://b/c",
                                       "http_headers": ["Cookie"]}}}},
     "client.allowed_origins: needed when a proxy forwards Cookie"),
    # Any proxy: a page of another site connects anonymously, subscribes or calls an RPC,
    # and the backend answers for the visitor the cookie names.
    ({"client": {"allow_anonymous_connect_without_token": True},
      "channel": {"proxy": {"subscribe": {"endpoint": "http://b/s", "http_headers": ["Cookie"]}},
                  "namespaces": [{"name": "me", "subscribe_proxy_enabled": True}]}},
     "client.allowed_origins: needed when a proxy forwards Cookie"),
    ({"allow_anonymous_connect_without_token": True, "proxy_rpc_endpoint": "http://b/r",
      "proxy_http_headers": ["cookie"], "allowed_origins": []},
     "allowed_origins: needed when a proxy forwards Cookie"),
    # Centrifugo matches each pattern (a glob) against the whole Origin header.
    ({"client": {"allowed_origins": ["example.com"]}},
     "client.allowed_origins: 'example.com': not supported (Centrifugo matches the whole "
     "Origin (scheme://host[:port])"),
    ({"client": {"allowed_origins": [".example.com"]}},
     "client.allowed_origins: '.example.com': not supported (Centrifugo matches the whole"),
    ({"client": {"allowed_origins": ["null"]}},
     "client.allowed_origins: 'null': not supported (Centrifugo matches the whole"),
    ({"client": {"allowed_origins": ["https://app?.example.com"]}},
     "client.allowed_origins: 'https://app?.example.com': not supported (no globs here"),
    ({"client": {"allowed_origins": ["https://{a,b}.example.com"]}},
     "client.allowed_origins: 'https://{a,b}.example.com': not supported (no globs here"),
    # ... a named proxy too, whatever uses it
    ({"proxies": [{"name": "auth", "endpoint": "http://b/a", "http_headers": ["Cookie"]}],
      "channel": {"namespaces": [{"name": "me", "subscribe_proxy_enabled": True,
                                  "subscribe_proxy_name": "auth"}]}},
     "client.allowed_origins: needed when a proxy forwards Cookie"),
    ({"client": {"proxy": {"connect": {"enabled": True, "endpoint": "grpc://b:1"}}}},
     "client.proxy.connect.endpoint: not supported (gRPC proxies"),
    ({**HTTP, "proxies": [{"name": "pay", "endpoint": "grpc://b:1"}]},
     "proxies[0].endpoint: not supported (gRPC proxies"),
    ({**HTTP, "proxies": [{"endpoint": "http://b"}]}, "proxies[0].name: every proxy needs a name"),
    ({**HTTP, "proxies": [{"name": "pay", "endpoint": "http://b"},
                          {"name": "pay", "endpoint": "http://c"}]},
     "proxies[1].name: 'pay' given twice"),
    ({**HTTP, "proxies": [{"name": "default", "endpoint": "http://b"}]},
     "proxies[0]: 'default' is reserved (it names the events' own proxies)"),
    ({**HTTP, "proxies": [{"name": "pay", "endpoint": "http://b", "timout": "2s"}]},
     "proxies[0].timout: unknown key"),
    # realtime's own bound on requests in flight is no Centrifugo key: said so.
    ({**HTTP, "proxies": [{"name": "pay", "endpoint": "http://b", "max_inflight": 4}]},
     "proxies[0].max_inflight: not a Centrifugo key (realtime's own: --proxy "
     "NAME:max_inflight=N, or max_inflight in that table of the converted --config TOML)"),
    ({"rpc": {"proxy": {"endpoint": "http://b/r", "max_inflight": 4}}},
     "rpc.proxy.max_inflight: not a Centrifugo key (realtime's own: --proxy-event "
     "EVENT:max_inflight=N"),
    ({**HTTP, "proxies": [{"name": "pay", "endpoint": "http://b", "http": {
        "status_to_code_transforms": [{"status_code": 200, "to_error": {"code": 1}}]}}]},
     "proxies[0]: 'pay': status_to_code_transforms[0]: status 200 is not an HTTP status"),
    ({"client": {"proxy": {"connect": {"enabled": True, "endpoint": "http://b/c",
                                       "http": {"tls": {"enabled": True}}}}}},
     "client.proxy.connect.http.tls.enabled: not supported (https backends"),
    ({"channel": {"proxy": {"subscribe": {"endpoint": "http://b/s",
                                          "http_headers": ["Host"]}}}},
     "channel.proxy.subscribe: http_headers: 'Host' is the proxy request's own header"),
    ({"channel": {"namespaces": [{"name": "chat", "subscribe_proxy_enabled": True,
                                  "subscribe_proxy_name": "nope"}]}},
     "channel.namespaces[0].subscribe_proxy_name: no proxy 'nope' in proxies"),
    ({"channel": {"namespaces": [{"name": "chat", "publish_proxy_enabled": True}]}},
     "channel.namespaces[0].publish_proxy_enabled: needs channel.proxy.publish.endpoint"),
    ({"rpc": {"without_namespace": {"proxy_enabled": True}}},
     "rpc.without_namespace.proxy_enabled: needs rpc.proxy.endpoint"),
    ({"proxies": [{"name": "pay", "endpoint": "http://b"}],
      "rpc": {"namespaces": [{"name": "billing", "proxy_enabled": True, "proxy_name": "nope"}]}},
     "rpc.namespaces[0].proxy_name: no proxy 'nope' in proxies"),
    ({"rpc": {"proxy": {"endpoint": "http://b/r"}, "namespaces": [{"name": "x"}]}},
     "rpc.namespaces[0]: an RPC namespace's name is 2 or more letters"),
    ({"rpc": {"proxy": {"endpoint": "http://b/r"}, "namespaces": [{"proxy_enabled": True}]}},
     "rpc.namespaces[0].name: every RPC namespace needs a name"),
    ({"rpc": {"proxy": {"endpoint": "http://b/r"},
              "namespaces": [{"name": "pay", "proxy": True}]}},
     "rpc.namespaces[0].proxy: unknown key"),
    ({"rpc": {"proxy": {"endpoint": "http://b/r"}, "namespace_boundary": ".",
              "namespaces": [{"name": "pay.eu", "proxy_enabled": True}]}},
     "rpc.namespaces (--rpc-namespace): 'pay.eu': no method reaches it with "
     "--rpc-namespace-boundary '.'"),
    ({"granular_proxy_mode": True, "connect_proxy_name": "nope"},
     "connect_proxy_name: no proxy \"nope\" in proxies"),
    ({"granular_proxy_mode": "yes"}, "granular_proxy_mode: expected true or false"),
    ({"channel": {"namespaces": [{"name": "chat", "channel_regex": "^[a-z]+$"}]}},
     "channel.namespaces[0].channel_regex: not supported"),
    ({"channel": {"namespaces": [{"name": "chat", "force_recovery_mode": "cache"}]}},
     "channel.namespaces[0].force_recovery_mode: not supported"),
    # realtime's own namespace checks speak, under the key.
    ({"channel": {"namespaces": [{"name": "chat", "presense": True}]}},
     "channel.namespaces[0]: namespace 'chat': no option 'presense'"),
    ({"channel": {"namespaces": [{"name": "chat", "history_size": 10}]}},
     "channel.namespaces[0]: namespace 'chat': history_size and history_ttl go together"),
    ({"channel": {"namespaces": [{"name": "chat", "history_size": 1, "history_ttl": 300}]}},
     "channel.namespaces[0].history_ttl: expected a duration"),
    ({"channel": {"namespace_boundary": "."}}, "channel.namespace_boundary: not supported"),
    ({"http_server": {"internal_port": "70000"}},
     "http_server.internal_port: expected a port number (0-65535), got \"70000\""),
    ({"http_server": {"internal_port": "nine"}},
     "http_server.internal_port: expected a whole number"),
    # The API or the admin UI on the main port, the rest on the internal one: not split here.
    ({"http_server": {"address": "127.0.0.1", "internal_port": "9000"},
      "http_api": {"key": API_KEY, "external": True}},
     "http_api.external: not supported (the server API goes to --internal-port"),
    ({"http_server": {"address": "127.0.0.1", "internal_port": "9000"},
      "http_api": {"key": API_KEY}, "admin": {"enabled": True, "external": True}},
     "admin.external: not supported (the admin UI goes to --internal-port"),
    ({"address": "127.0.0.1", "internal_port": "9000", "api_key": API_KEY,
      "api_external": True}, "api_external: not supported (the server API goes to"),
    ({"http_server": {"internal_port": "9000", "internal_tls": {
        "enabled": True, "cert_pem": "/c.pem", "key_pem": "/k.pem",
        "client_ca_pem": "/ca.pem"}}},
     "http_server.internal_tls.client_ca_pem: not supported (client certificates"),
    ({"http_server": {"internal_port": "9000", "internal_tls": {
        "enabled": True, "cert_pem": "/c.pem"}}},
     "http_server.internal_tls.key_pem: needed with http_server.internal_tls.enabled"),
    ({"http_server": {"internal_port": "9000", "internal_tls": {"enable": True}}},
     "http_server.internal_tls.enable: unknown key"),
    ({"http_server": {"tls": {"enabled": True, "cert_pem": "-----BEGIN CERTIFICATE-----",
                              "key_pem": "k.pem"}}},
     "http_server.tls.cert_pem: not supported (inline PEM"),
    ({"http_api": {"handler_prefix": "/capi"}}, "http_api.handler_prefix: not supported"),
    ({"websocket": {"disabled": True}},
     "websocket.disabled: not supported with no other transport enabled"),
    ({"websocket_disable": True, "uni_grpc": True}, "uni_grpc: not supported (the "),
    ({"websocket": {"disabled": True}, "uni_grpc": {"enabled": True}},
     "uni_grpc.enabled: not supported (the "),
    ({"engine": {"type": "nats"}}, "engine.type: expected memory or redis, got \"nats\""),
    ({"engine": {"type": "redis", "redis": {"cluster_address": ["a:1", "b:1"]}}},
     "engine.redis.cluster_address: not supported (several Redis Clusters"),
    ({"engine": {"type": "redis", "redis": {"sentinel_address": ["s:1"],
                                            "sentinel_master_name": "m",
                                            "sentinel_password": "pw"}}},
     "engine.redis.sentinel_password: not supported"),
    ({"engine": {"type": "redis", "redis": {"sentinel_address": ["s:1", " , "],
                                            "sentinel_master_name": "m"}}},
     "engine.redis.sentinel_address: an empty item (each is a shard's sentinels, host:port "
     "separated by commas)"),
    ({"broker": {"enabled": True, "type": "nats"}}, "broker.enabled: not supported"),
    ({"shutdown": {"timeout": 30}}, "shutdown.timeout: expected a duration"),
    ({"log": {"level": "loud"}}, "log.level: expected trace, debug"),
    ({"client": {"channel_limit": "many"}}, "client.channel_limit: expected a whole number"),
    # Typos are refused, where Centrifugo only warns (a setting must not vanish).
    ({"client": {"allowed_origin": ["http://a"]}}, "client.allowed_origin: unknown key"),
    ({"client": {"token": {"hmac_secret": SECRET}}}, "client.token.hmac_secret: unknown key"),
    ({"log_level": "debug", "client": {"allowed_origins": ["*"]}},
     "log_level: a Centrifugo v5 key in a v6 file (v6's is log.level"),
    ({"token_hmac_secret": SECRET}, "token_hmac_secret: unknown key"),
    # realtime's own rules, naming the key.
    ({"client": {"token": {"hmac_secret_key": "secret"}}},
     "client.token.hmac_secret_key (--jwt-key): an HMAC JWT secret must be at least 32"),
    ({"token_hmac_secret_key": "secret"},
     "token_hmac_secret_key (--jwt-key): an HMAC JWT secret must be at least 32"),
    ({"http_api": {"key": "short"}},
     "http_api.key (--api-key): a key must be at least 16 characters"),
    ({"admin": {"enabled": True}}, "admin.enabled (--admin-path) needs --api-key"),
    ({"client": {"proxy": {"connect": {"enabled": True, "endpoint": "ftp://b/c"}}}},
     "client.proxy.connect.endpoint (--proxy-connect-endpoint): expected an http://"),
]


@pytest.mark.parametrize(("data", "expected"), REFUSALS,
                         ids=[m.split(":")[0] for _, m in REFUSALS])
def test_what_realtime_cannot_honour_stops_start_up_naming_the_key(tmp_path, data, expected):
    path = write(tmp_path, data)
    message = refusal(path, "--port", "0")
    assert message.startswith(f"realtime: error: --centrifugo-config {path}: {expected}"), \
        message


PEM_B64 = "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tCk1JSUV2UUlCQURBTkJna3Foa2lHOXcwQkFRRUZBQVND" \
          "QktjdwotLS0tLUVORCBQUklWQVRFIEtFWS0tLS0tCg=="  # a (cut) private key, base64

#: (the file, the secret it holds, the key the one line names)
SECRETS = [
    ({"client": {"token": {"hmac_secret_key": 98765432109876543210987654321098765}}},
     "98765432109876543210987654321098765", "client.token.hmac_secret_key: expected a string"),
    ({"token_hmac_secret_key": ["s3cret-in-a-list-" * 3]}, "s3cret-in-a-list-",
     "token_hmac_secret_key: expected a string"),
    ({"http_api": {"key": {"k": "s3cret-api-key-in-a-table"}}}, "s3cret-api-key",
     "http_api.key: expected a string"),
    ({"engine": {"type": "redis", "redis": {"password": 55501234567890}}}, "55501234567890",
     "engine.redis.password: expected a string"),
    ({"engine": {"type": "redis", "redis": {"address": ["redis://:s3cretpw@h:1", 7]}}},
     "s3cretpw", "engine.redis.address: expected a list of strings"),
    ({"engine": {"type": "redis", "redis": {
        "address": "redis+sentinel://:s3cretpw@h:26379?sentinel_master_name=m"}}},
     "s3cretpw", "engine.redis.address: expected host:port, redis://"),
    # A Sentinel's or Cluster node's address is host:port (Centrifugo's net.SplitHostPort
    # refuses the rest): a password there was taken into the section's, the shard's own.
    ({"engine": {"type": "redis", "redis": {
        "sentinel_address": ["s1:26379", "redis://:s3cretpw@s2:26379"],
        "sentinel_master_name": "m", "password": "pw"}}},
     "s3cretpw", "engine.redis.sentinel_address: expected host:port (commas between "
                 "them), got 'redis://***@s2:26379'"),
    ({"engine": {"type": "redis", "redis": {"sentinel_address": ["ada:s3cretpw@s1:26379"],
                                            "sentinel_master_name": "m"}}},
     "s3cretpw", "engine.redis.sentinel_address: expected host:port (commas between "
                 "them), got '***@s1:26379'"),
    ({"engine": {"type": "redis", "redis": {"cluster_address": [
        "c1:7000,redis://ada:s3cretpw@c2:7001/0"]}}},
     "s3cretpw", "engine.redis.cluster_address: expected host:port (commas between them), "
                 "got 'redis://***@c2:7001/0'"),
    ({"client": {"token": "s3cret-token-as-a-string"}}, "s3cret-token", "client.token: "),
    ({"client": {"allowed_origins": ["*"], "proxy": {"connect": {
        "enabled": True, "endpoint": "http://b/c",
        "http": {"static_headers": {"X-Key": ["s3cret-header"]}}}}}},
     "s3cret-header", "client.proxy.connect.http.static_headers: expected a table"),
    ({"http_server": {"tls": {"enabled": True, "cert_pem": "/c.pem", "key_pem": PEM_B64}}},
     PEM_B64[:40], "http_server.tls.key_pem: not supported (base64 PEM"),
    # A proxy URL's password, in a URL refused for its scheme, its port or gRPC.
    ({"client": {"allowed_origins": ["*"]}, "proxies": [
        {"name": "pay", "endpoint": "ftp://ada:s3cretpw@h/x"}]},
     "s3cretpw", "proxies[0]: 'pay': endpoint: expected an http:// or https:// URL, got "
                 "'ftp://ada:***@h/x'"),
    ({"client": {"allowed_origins": ["*"], "proxy": {"connect": {
        "enabled": True, "endpoint": "http://ada:s3cretpw@h:99999/c"}}}},
     "s3cretpw", "client.proxy.connect.endpoint (--proxy-connect-endpoint): expected an "
                 "http:// or https:// URL, got 'http://ada:***@h:99999/c'"),
    ({"rpc": {"proxy": {"endpoint": "grpc://ada:s3cretpw@h:9000"},
              "without_namespace": {"proxy_enabled": True}}},
     "s3cretpw", "rpc.proxy.endpoint: not supported (gRPC proxies are not built"),
]


@pytest.mark.parametrize(("data", "secret", "expected"), SECRETS,
                         ids=[m.split(":")[0] for _, _, m in SECRETS])
def test_no_message_shows_a_secret(tmp_path, data, secret, expected):
    path = write(tmp_path, data)
    message = refusal(path, "--port", "0")
    assert message.startswith(f"realtime: error: --centrifugo-config {path}: {expected}"), \
        message
    assert secret not in message


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("config.ini", "", "expected a .json, .yaml, .yml or .toml file"),
    ("config.json", "{", "not JSON: "),
    ("config.json", "[1]", "expected a table of keys at the top level"),
    ("config.toml", "a = ", "not TOML: "),
    ("config.yaml", "a: [", "not YAML: "),
    ("missing.json", None, "No such file or directory"),
])
def test_a_bad_file_is_one_line(tmp_path, name, text, expected):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    message = refusal(path)
    assert message.startswith(f"realtime: error: --centrifugo-config {path}: {expected}")


def _alias_bomb(levels: int = 9) -> str:
    """YAML whose aliases expand to 10**levels tables under a v6 section ("billion laughs")."""
    lines = ["client:", "  x0: &a0 {" + ", ".join(f"k{j}: 1" for j in range(10)) + "}"]
    for i in range(1, levels):
        lines.append(f"  x{i}: &a{i} {{" + ", ".join(f"k{j}: *a{i - 1}" for j in range(10))
                     + "}")
    return "\n".join(lines) + "\n"


#: (the file's name, its text, what the one line says after the path)
HOSTILE_FILES = [
    ("deep.json", '{"client": ' + "[" * 50_000 + "]" * 50_000 + "}", "nested too deeply"),
    ("deep.toml", "a = " + "[" * 50_000 + "]" * 50_000 + "\n", "nested too deeply"),
    ("deep.yaml", "a: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested too deeply"),
    ("bomb.yaml", _alias_bomb(), "too large once its YAML aliases are expanded"),
    ("dup.json", f'{{"client": {{"token": {{"hmac_secret_key": "{SECRET}"}}, "token": {{}}}}}}',
     "client.token: given twice in one table"),
    ("dup.yaml", f"http_api:\n  key: {API_KEY}\n  key: {'x' * 20}\n",
     "key: given twice in one table (line 3;"),
    ("big.json", '{"node": {"name": "' + "n" * (17 << 20) + '"}}', "larger than 16 MiB"),
    ("surrogate.json", f'{{"http_api": {{"key": "\\ud800{API_KEY}"}}}}',
     "not UTF-8 text (a lone surrogate"),
]


@pytest.mark.parametrize(("name", "text", "expected"), HOSTILE_FILES,
                         ids=[name for name, _, _ in HOSTILE_FILES])
def test_a_hostile_file_is_one_line_and_bounded(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(centrifugo_config.CentrifugoConfigError) as error:
        centrifugo_config.load(str(path))
    assert str(error.value).startswith(expected), str(error.value)
    assert SECRET not in str(error.value) and API_KEY not in str(error.value)


@pytest.mark.parametrize("text", [
    f'client:\n  token:\n    hmac_secret_key: "{SECRET}\n  allowed_origins: [\n',
    f"client:\n  token:\n    hmac_secret_key: {SECRET}: x\n",
], ids=["unterminated", "mapping"])
def test_a_yaml_syntax_error_never_quotes_the_file(tmp_path, text):
    """PyYAML's message quotes the line it stopped on: the secret's, here."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    message = refusal(path)
    assert message.startswith(f"realtime: error: --centrifugo-config {path}: not YAML: ")
    assert "(line 3, column " in message
    assert SECRET not in message


def test_a_yaml_bomb_stops_the_real_command_at_once(tmp_path):
    """The whole path (load, translate, the tap), in a subprocess: one line, exit 1; the
    timeout only keeps a regression from hanging the suite."""
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb())
    result = run([sys.executable, "-m", "realtime", "--centrifugo-config", str(path),
                  "--check"], cwd=REPO, timeout=120)
    assert result.returncode == 1, result
    assert result.stderr.splitlines() == [
        f"realtime: error: --centrifugo-config {path}: too large once its YAML aliases are "
        "expanded (more than 100000 values): not a configuration file"]


def test_yaml_anchors_and_merge_keys_still_load(tmp_path):
    """Anchors are YAML's own way to share settings (a merge key overrides nothing twice)."""
    path = tmp_path / "config.yaml"
    path.write_text("channel:\n  namespaces:\n"
                    "    - &chat {name: chat, presence: true, join_leave: true}\n"
                    "    - <<: *chat\n      name: room\n")
    out = centrifugo_config.read(str(path))
    assert out.problems == []
    assert out.options["namespace"] == ["chat:presence=true,join_leave=true",
                                        "room:presence=true,join_leave=true"]


def test_yaml_without_pyyaml_is_one_line(tmp_path, monkeypatch):
    path = write(tmp_path, {"http_api": {"key": API_KEY}}, "yaml")
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml raises ImportError
    assert refusal(path) == (f"realtime: error: --centrifugo-config {path}: a YAML file "
                             "needs PyYAML (pip install 'realtime[yaml]', or PyYAML)")


def test_a_refusal_exits_1_with_one_line_and_no_traceback(tmp_path):
    path = write(tmp_path, {"grpc_api": {"enabled": True}})
    result = run([sys.executable, "-m", "realtime", "--centrifugo-config", str(path),
                  "--check"], cwd=REPO)
    assert result.returncode == 1, result
    assert result.stderr.splitlines() == [
        f"realtime: error: --centrifugo-config {path}: grpc_api.enabled: not supported (the "
        "gRPC server API is not built: use the HTTP API)"]
    assert result.stdout == ""


def test_ignored_keys_are_one_warning_line_each(tmp_path, capsys):
    path = write(tmp_path, {"http_server": {"port": 8000}, "log": {"file": "/var/log/c.log"},
                            "pid_file": "/run/c.pid", "swagger": {"enabled": True},
                            "admin": {"enabled": True, "password": "pw"},
                            "http_api": {"key": API_KEY},
                            "client": {"ping_interval": "10s", "allowed_origins": ["*"]},
                            "uni_sse": {"enabled": False}})
    options = parsed("--centrifugo-config", str(path))
    assert options["admin-path"] == "/admin"
    assert options["pubsub-transports"] == "websocket"  # (uni_sse off: as in Centrifugo)
    lines = capsys.readouterr().err.splitlines()
    head = f"realtime: warning: --centrifugo-config {path}: "
    assert all(line.startswith(head) for line in lines), lines
    assert sorted(line[len(head):].split(":")[0] for line in lines) == sorted([
        "http_server.address", "log.file", "pid_file", "swagger.enabled", "admin.enabled",
        "admin.password", "client.ping_interval"])
    # A key at Centrifugo's default asks for nothing: no line.
    path = write(tmp_path, {"http_server": {"address": "127.0.0.1"},
                            "client": {"ping_interval": "25s", "allowed_origins": ["*"]},
                            "swagger": {"enabled": False, "handler_prefix": "/swagger"},
                            "grpc_api": {"enabled": False, "port": 10000}})
    parsed("--centrifugo-config", str(path))
    assert capsys.readouterr().err == ""


def test_the_environment_and_the_command_line_win(tmp_path, monkeypatch, capsys):
    path = write(tmp_path, {"http_server": {"address": "127.0.0.1", "port": 8000},
                            "client": {"allowed_origins": ["https://*.example.com"]},
                            "http_api": {"key": API_KEY}})
    # The glob is refused, unless --allowed-origins (or its variable) says instead.
    refusal(path)
    options = parsed("--centrifugo-config", str(path), "--allowed-origins", ".example.com",
                     "--port", "0")
    assert options["allowed-origins"] == ".example.com" and options["port"] == ["0"]
    monkeypatch.setenv("REALTIME_ALLOWED_ORIGINS", ".example.com")
    monkeypatch.setenv("REALTIME_API_KEY", "e" * 20)
    options = parsed("--centrifugo-config", str(path), "--app",
                     "realtime.examples.bench:application")
    assert options.config.api_keys == ("e" * 20,)
    assert options["app"] == "realtime.examples.bench:application"
    # REALTIME_CENTRIFUGO_CONFIG names the file as the option does.
    monkeypatch.setenv("REALTIME_CENTRIFUGO_CONFIG", str(path))
    assert parsed("--port", "0")["bind"] == "127.0.0.1"
    capsys.readouterr()
    # A value the environment sets is still judged, under its own name.
    monkeypatch.setenv("REALTIME_API_KEY", "short")
    with pytest.raises(StartupError, match=r"^realtime: error: --api-key: a key must be"):
        parsed("--port", "0")


def test_the_transports_file_then_environment_then_command_line(tmp_path, monkeypatch):
    """--pubsub-transports: the file's (uni_sse enabled), under REALTIME_PUBSUB_TRANSPORTS,
    under the command line; a file that serves nothing (websocket.disabled alone) is
    refused until one of them names the transports."""
    from realtime.settings import settings

    path = write(tmp_path, {**HTTP, "client": {"allowed_origins": ["*"]},
                            "uni_sse": {"enabled": True}})
    parsed("--centrifugo-config", str(path), "--port", "0")
    assert settings.pubsub_transports == {"websocket", "uni_sse"}
    monkeypatch.setenv("REALTIME_PUBSUB_TRANSPORTS", "sse")
    parsed("--centrifugo-config", str(path), "--port", "0")
    assert settings.pubsub_transports == {"sse"}
    parsed("--centrifugo-config", str(path), "--port", "0", "--pubsub-transports", "websocket")
    assert settings.pubsub_transports == {"websocket"}
    monkeypatch.delenv("REALTIME_PUBSUB_TRANSPORTS")
    off = write(tmp_path, {**HTTP, "client": {"allowed_origins": ["*"]},
                           "websocket": {"disabled": True}})
    assert refusal(off, "--port", "0").endswith(
        "websocket.disabled: not supported with no other transport enabled (realtime.pubsub "
        "serves one at least)")
    parsed("--centrifugo-config", str(off), "--port", "0", "--pubsub-transports", "uni_sse")
    assert settings.pubsub_transports == {"uni_sse"}


def test_the_cookie_refusal_goes_only_with_the_files_cookie(tmp_path):
    """The file's connect proxy forwards Cookie without allowed_origins: refused, as long as
    that header is forwarded (``--proxy-timeout`` leaves it); ``--proxy-http-headers``
    replaces every event's headers, and the refusal with them."""
    from realtime.settings import settings

    path = write(tmp_path, {"http_server": {"address": "127.0.0.1"}, "client": {"proxy": {
        "connect": {"enabled": True, "endpoint": "http://b/c", "http_headers": ["Cookie"]}}}})
    for args in ((), ("--proxy-timeout", "2s")):
        assert "needed when a proxy forwards Cookie" in refusal(path, "--port", "0", *args)
    parsed("--centrifugo-config", str(path), "--port", "0",
           "--proxy-http-headers", "Authorization")
    assert settings.pubsub_proxy.own("connect").http_headers == ("Authorization",)


def test_centrifugos_own_variables_are_refused_not_lost(tmp_path, monkeypatch, capsys):
    """Centrifugo reads CENTRIFUGO_CLIENT_ALLOWED_ORIGINS over the file: realtime would
    silently serve without it. The line names the variable, never its value."""
    path = write(tmp_path, {"http_server": {"address": "127.0.0.1"},
                            "client": {"allowed_origins": ["*"]}})
    monkeypatch.setenv("CENTRIFUGO_CLIENT_ALLOWED_ORIGINS", "https://s3cret.example")
    expected = ("CENTRIFUGO_CLIENT_ALLOWED_ORIGINS: not supported (Centrifugo reads its "
                "CENTRIFUGO_* variables over the file, realtime does not: put the setting in "
                "the file, or give realtime's option or REALTIME_* variable)")
    assert refusal(path, "--port", "0") == \
        f"realtime: error: --centrifugo-config {path}: {expected}"
    assert centrifugo_config.main([str(path)]) == 1
    assert capsys.readouterr().err == f"realtime: error: {path}: {expected}\n"


def test_websocket_message_size_limit_is_centrifugos_64_kib_when_not_set():
    out = centrifugo_config.translate({"client": {"allowed_origins": ["*"]}})
    assert out.options["max-message-size"] == out.options["max-frame-size"] == "65536"
    assert out.sources["max-message-size"] == \
        "websocket.message_size_limit (not set: Centrifugo's default)"
    v5 = centrifugo_config.translate({"allowed_origins": ["*"]})
    assert v5.options["max-message-size"] == "65536"
    assert v5.sources["max-message-size"] == \
        "websocket_message_size_limit (not set: Centrifugo's default)"


def test_flags_and_repeatable_options_yield_as_the_others_do(tmp_path, monkeypatch, capsys):
    """A flag the file turns on, the environment turns off; a repeatable option given by the
    environment or the command line replaces the file's whole list (and drops a refusal of
    it: a namespace realtime cannot honour), with a warning naming what it replaced; a
    ``--proxy-*`` setting given there wins over the file's per-event ones (its own
    objects' ``timeout``, ``http.static_headers``, ...), as every option does."""
    path = write(tmp_path, {
        "http_server": {"address": "127.0.0.1"}, "client": {"allowed_origins": ["*"],
        "proxy": {"connect": {"enabled": True, "endpoint": "http://b/c", "timeout": "3s",
                              "http": {"static_headers": {"X-A": "1", "X-B": "2"}}}}},
        "rpc": {"proxy": {"endpoint": "http://b/r", "http_headers": ["Authorization"]},
                "without_namespace": {"proxy_enabled": True}},
        "prometheus": {"enabled": True}, "websocket": {"compression": True},
        "channel": {"namespaces": [{"name": "chat", "channel_regex": "^[a-z]+$"}]}})
    refusal(path, "--port", "0")  # the namespace's channel_regex
    monkeypatch.setenv("REALTIME_METRICS", "0")
    monkeypatch.setenv("REALTIME_COMPRESSION", "false")
    monkeypatch.setenv("REALTIME_NAMESPACE", "room:presence")
    capsys.readouterr()
    options = parsed("--centrifugo-config", str(path), "--port", "0")
    assert not options["metrics"] and not options["compression"]
    assert options["namespace"] == ["room:presence"]
    assert options["proxy-event"] == [
        ("connect", {"timeout": 3.0, "static_headers": (("X-A", "1"), ("X-B", "2"))}),
        ("rpc", {"http_headers": ("Authorization",)})]
    replaced = [line.split(": ", 3)[-1] for line in capsys.readouterr().err.splitlines()
                if "replaced by" in line]
    assert replaced == ["channel.namespaces: replaced by --namespace, all of them"]
    options = parsed("--centrifugo-config", str(path), "--port", "0",
                     "--proxy-event", "connect:static_header=X-C: 3", "--namespace", "x:")
    assert options["proxy-event"] == ["connect:static_header=X-C: 3"]
    assert options["namespace"] == ["x:"]
    replaced = [line.split(": ", 3)[-1] for line in capsys.readouterr().err.splitlines()
                if "replaced by" in line]
    assert replaced == [
        "channel.namespaces: replaced by --namespace, all of them",
        "client.proxy, channel.proxy, rpc.proxy: replaced by --proxy-event, each event's "
        "proxy settings (the endpoints stay)"]
    from realtime.settings import settings

    assert settings.pubsub_proxy.own("connect").static_headers == (("X-C", "3"),)
    assert settings.pubsub_proxy.own("rpc").http_headers == ()
    options = parsed("--centrifugo-config", str(path), "--port", "0", "--namespace", "x:",
                     "--proxy-static-header", "X-D: 4", "--proxy-timeout", "5s")
    connect, rpc = settings.pubsub_proxy.own("connect"), settings.pubsub_proxy.own("rpc")
    assert (connect.timeout, connect.static_headers) == (5.0, (("X-D", "4"),))
    assert (rpc.timeout, rpc.static_headers, rpc.http_headers) == (
        5.0, (("X-D", "4"),), ("Authorization",))  # (what the command line leaves: the file's)
    monkeypatch.setenv("REALTIME_PROXY_HTTP_HEADERS", "X-Forwarded-For")
    parsed("--centrifugo-config", str(path), "--port", "0")
    connect, rpc = settings.pubsub_proxy.own("connect"), settings.pubsub_proxy.own("rpc")
    assert (connect.timeout, rpc.http_headers) == (3.0, ("X-Forwarded-For",))
    capsys.readouterr()


def test_config_and_centrifugo_config_together_are_refused(tmp_path):
    path = write(tmp_path, {"http_api": {"key": API_KEY}})
    toml = tmp_path / "realtime.toml"
    toml.write_text("metrics = true\n")
    with pytest.raises(StartupError, match="--config and --centrifugo-config: give one"):
        parsed("--config", str(toml), "--centrifugo-config", str(path))


@pytest.mark.parametrize("sample", [V6, V5, V6_NAMED, V5_NAMED, "contrib"],
                         ids=["v6", "v5", "v6-named", "v5-named", "contrib"])
def test_the_converters_toml_makes_the_same_options(tmp_path, sample, capsys):
    """Every option, repeatable ones too (``[[namespaces]]``, ``[proxy_events.EVENT]``,
    ``[[proxies]]``, ``[[rpc_namespaces]]``), and what start-up makes of them."""
    from realtime.settings import settings

    path = SAMPLE if sample == "contrib" else write(tmp_path, sample)
    assert centrifugo_config.main([str(path)]) == 0
    printed = capsys.readouterr().out
    assert "jwt-key = " in printed and "  # " in printed
    toml = tmp_path / "realtime.toml"
    toml.write_text(printed)
    names = [p[0] for p in Options.optParameters] + [f[0] for f in Options.optFlags]
    names += list(Options._repeatable)

    def started(*args: str) -> tuple[Options, tuple[Any, ...]]:
        options = parsed(*args, "--port", "0")
        return options, (settings.pubsub_proxy, settings.pubsub_namespaces,
                         settings.pubsub_transports)

    from_centrifugo, made = started("--centrifugo-config", str(path))
    from_toml, made_from_toml = started("--config", str(toml))
    for name in names:
        if name not in ("config", "centrifugo-config"):
            assert from_centrifugo[name] == from_toml[name], name
    assert made == made_from_toml
    assert from_toml["namespace"] and from_toml["api-key"]
    if sample in (V6_NAMED, V5_NAMED, "contrib"):
        assert from_toml["proxy"] and from_toml["rpc-namespace"]
        assert "[[proxies]]" in printed and "[[rpc_namespaces]]" in printed


def test_the_converters_toml_quotes_every_string_and_no_comment_breaks_it(tmp_path, capsys):
    """Strings with quotes, backslashes, '#', newlines, a tab, DEL, non-ASCII and U+2028
    come back the same through --config; a file name with a newline stays in its comment."""
    secret = 'S"\\\'#\n\t\x7f\u00e9\u2028\U0001f600' + "s" * 32
    key = 'k"\\\'#=' + "k" * 16  # API keys and header values are ASCII
    origin = "https://\u00e9t\u00e9.example"
    data = {"http_server": {"address": "127.0.0.1"},
            "client": {"allowed_origins": [origin], "token": {"hmac_secret_key": secret},
                       "proxy": {"connect": {"enabled": True, "endpoint": "http://b/c",
                                             "http": {"static_headers": {"X-K": key}}}}},
            "http_api": {"key": key}}
    folder = tmp_path / "a\nb = 1 # c"
    folder.mkdir()
    path = folder / "config.json"
    path.write_text(json.dumps(data))
    assert centrifugo_config.main([str(path)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(
        f"# realtime --config file from Centrifugo v6's {json.dumps(str(path))}\n")
    toml = tmp_path / "realtime.toml"
    toml.write_text(printed)
    from_toml = parsed("--config", str(toml), "--port", "0")
    capsys.readouterr()
    assert from_toml["jwt-key"] == secret and from_toml["api-key"] == key
    assert from_toml["allowed-origins"] == origin
    assert from_toml["proxy-event"] == [("connect", {"static_headers": (("X-K", key),)})]
    assert from_toml.config.api_keys == (key,)


def test_the_real_converter_ends_each_stream_with_a_newline():
    """``python -m realtime.centrifugo_config contrib/pubsub/config.json``, the real
    command: the TOML ends with one newline and each warning is a line of its own, so on a
    terminal (both streams on one screen) no line runs into the next or into the prompt."""
    import subprocess
    import tomllib

    from tests.e2e.support import environment

    cmd = [sys.executable, "-m", "realtime.centrifugo_config", str(SAMPLE)]
    result = run(cmd, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n") and not result.stdout.endswith("\n\n")
    assert result.stderr.endswith("\n")
    assert all(line.startswith(f"realtime: warning: {SAMPLE}: ")
               for line in result.stderr.splitlines())
    assert tomllib.loads(result.stdout)["rpc_namespaces"][-1]["proxy_name"] == "payments"
    merged = subprocess.run(cmd, cwd=REPO, env=environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=30,
                            stdin=subprocess.DEVNULL).stdout
    assert sorted(merged.splitlines()) == sorted(
        result.stderr.splitlines() + result.stdout.splitlines())


def test_the_converter_refuses_with_one_line(tmp_path, capsys):
    path = write(tmp_path, {"consumers": [{"name": "pg", "enabled": True}]})
    assert centrifugo_config.main([str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"realtime: error: {path}: consumers[0]: not supported (no consumers of PostgreSQL "
        "or Kafka: publish through the API)"]


@pytest.mark.parametrize(("given", "ttl", "seconds"), [
    ("720h", "2592000s", 2592000.0), ("300h", "1080000s", 1080000.0), ("1m30s", "90s", 90.0),
    ("500ms", "500ms", 0.5), ("1.5s", "1.5s", 1.5), ("10us", "0.00001s", 0.00001),
])
def test_a_duration_is_written_as_realtime_reads_it(given, ttl, seconds):
    """No exponent ("2.592e+06s" is no duration to realtime): a month of history loads."""
    out = centrifugo_config.translate({
        "client": {"allowed_origins": ["*"]}, "shutdown": {"timeout": given},
        "channel": {"namespaces": [{"name": "chat", "history_size": 10, "history_ttl": given}]}})
    assert out.problems == []
    assert out.options["namespace"] == [f"chat:history_size=10,history_ttl={ttl}"]
    from realtime import pubsub

    assert pubsub.parse_namespace(out.options["namespace"][0]).history_ttl == \
        pytest.approx(seconds)
    assert float(out.options["shutdown-timeout"]) == pytest.approx(seconds)
    assert "e" not in out.options["shutdown-timeout"]


def test_go_durations():
    assert centrifugo_config.go_duration("1h30m") == 5400
    assert centrifugo_config.go_duration("1.5s") == 1.5
    assert centrifugo_config.go_duration("250ms") == 0.25
    for bad in ("", "5", "1d", "s", "1h 30m"):
        with pytest.raises(ValueError):
            centrifugo_config.go_duration(bad)


# -- end to end ------------------------------------------------------------------------------

def test_a_server_runs_on_a_centrifugo_config_json(tmp_path):
    """``python -m realtime --centrifugo-config contrib/pubsub/config.json``: Centrifugo's
    Python SDK connects with a JWT signed by the file's secret, subscribes to a namespace
    with history, and a publish to /api/publish with the file's API key reaches it."""
    from centrifuge import Client

    from tests.test_pubsub import Recorder

    config = json.loads(SAMPLE.read_text())
    secret = config["client"]["token"]["hmac_secret_key"]
    api_key = config["http_api"]["key"]
    origin = config["client"]["allowed_origins"][0]
    cmd = [sys.executable, "-m", "realtime", "--centrifugo-config", str(SAMPLE),
           "--port", "tcp:0:interface=127.0.0.1"]  # the command line wins over the file
    with start(cmd, cwd=REPO) as server:
        base = server.ws_url("", scheme="http")

        async def scenario() -> Any:
            token = jwt.encode({"sub": "ada", "exp": int(time.time()) + 60}, secret,
                               algorithm="HS256")
            events = Recorder()
            client = Client(server.ws_url("/connection/websocket"), token=token,
                            headers={"Origin": origin}, proxy=None, timeout=15.0)
            await client.connect()
            sub = client.new_subscription("chat:lobby", events=events)
            await sub.subscribe()
            await sub.ready(15.0)
            request = urllib.request.Request(
                base + "/api/publish", method="POST",
                data=json.dumps({"channel": "chat:lobby", "data": {"text": "hi"}}).encode(),
                headers={"X-API-Key": api_key, "Content-Type": "application/json"})
            answer = await asyncio.to_thread(
                lambda: json.loads(urllib.request.urlopen(request, timeout=15).read()))
            publication = await events.next("publication", 15.0)
            await client.disconnect()
            return answer, publication

        answer, publication = asyncio.run(asyncio.wait_for(scenario(), 60))
        # A wrong key is refused, as Centrifugo does.
        wrong = urllib.request.Request(base + "/api/publish", method="POST", data=b"{}",
                                       headers={"X-API-Key": "x" * 20})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(wrong, timeout=15)
        assert refused.value.code == 401
        with urllib.request.urlopen(base + "/health", timeout=15) as health:
            assert health.status == 200  # health.enabled: Centrifugo's path
        result = server.stop()
    assert publication.pub.data == {"text": "hi"}
    assert answer["result"]["offset"] == publication.pub.offset == 1  # history: positioned
    assert result.returncode == 0, result.output
    assert "client.allowed_origins: a WebSocket without an Origin header" in result.stderr


def test_a_centrifugo_internal_port_serves_the_api_apart_from_the_clients(tmp_path):
    """A v6 config.json with ``http_server.internal_port``: centrifuge-python connects and
    subscribes on the main port, ``/api/publish`` with the file's key on the internal port
    reaches it; the API, /health and /metrics answer there and 404 on the main port."""
    from centrifuge import Client

    from tests.test_pubsub import Recorder

    path = write(tmp_path, {
        "http_server": {"address": "127.0.0.1", "internal_port": "0"},  # (0: a free port)
        "client": {"token": {"hmac_secret_key": SECRET}, "allowed_origins": ["http://app"]},
        "channel": {"namespaces": [{"name": "chat", "history_size": 10, "history_ttl": "60s",
                                    "allow_subscribe_for_client": True}]},
        "http_api": {"key": API_KEY}, "prometheus": {"enabled": True},
        "health": {"enabled": True}})
    cmd = [sys.executable, "-m", "realtime", "--centrifugo-config", str(path),
           "--port", "tcp:0:interface=127.0.0.1"]
    with start(cmd, cwd=REPO, listeners=2) as server:
        main, internal = (f"http://{address.removeprefix('tcp:')}"
                          for address in server.addresses)
        assert "(internal: /health, /readyz, /metrics, /api/)" in server.output()

        def post(base: str, method: str, params: dict[str, Any]) -> tuple[int, Any]:
            request = urllib.request.Request(
                f"{base}/api/{method}", method="POST", data=json.dumps(params).encode(),
                headers={"X-API-Key": API_KEY, "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=15) as answer:
                    return answer.status, json.loads(answer.read())
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        async def scenario() -> Any:
            token = jwt.encode({"sub": "ada", "exp": int(time.time()) + 60}, SECRET,
                               algorithm="HS256")
            events = Recorder()
            client = Client(server.ws_url("/connection/websocket"), token=token,
                            headers={"Origin": "http://app"}, proxy=None, timeout=15.0)
            await client.connect()
            sub = client.new_subscription("chat:lobby", events=events)
            await sub.subscribe()
            await sub.ready(15.0)
            refused = await asyncio.to_thread(post, main, "publish",
                                              {"channel": "chat:lobby", "data": {"n": 0}})
            answer = await asyncio.to_thread(post, internal, "publish",
                                             {"channel": "chat:lobby", "data": {"n": 1}})
            publication = await events.next("publication", 15.0)
            await client.disconnect()
            return refused, answer, publication

        refused, answer, publication = asyncio.run(asyncio.wait_for(scenario(), 60))
        assert refused[0] == 404  # no API on the public port
        assert answer[0] == 200 and answer[1]["result"]["offset"] == 1
        assert publication.pub.data == {"n": 1} and publication.pub.offset == 1
        for path_, status in (("/health", 200), ("/metrics", 200), ("/readyz", 200)):
            assert http_get(internal + path_)[0] == status, path_
            assert http_get(main + path_)[0] == 404, path_
        result = server.stop()
    assert result.returncode == 0, result.output


def test_workers_take_the_files_options_and_warn_once(tmp_path, redis_url):
    """``--workers 2``: every worker re-reads the file to the same options (/health, the
    API key, Redis from engine.redis, the transports: uni_sse, not enabled, is 404 in
    both), and only the supervisor says the warnings."""
    path = write(tmp_path, {
        "http_server": {"address": "127.0.0.1"}, "log": {"file": "/var/log/c.log"},
        "client": {"allowed_origins": ["*"]}, "http_api": {"key": API_KEY},
        "health": {"enabled": True},
        "engine": {"type": "redis", "redis": {"address": redis_url}}})
    cmd = [sys.executable, "-m", "realtime", "--centrifugo-config", str(path),
           "--workers", "2", "--port", "tcp:0:interface=127.0.0.1", "--shutdown-timeout", "5"]
    with start(cmd, cwd=REPO) as server:
        server.wait_for(r"all 2 workers ready", timeout=60)
        server.wait_for(r"worker \d: .*subscriber connected to Redis", count=2, timeout=60)
        base = server.ws_url("", scheme="http")
        for _ in range(12):  # the kernel spreads connections over both workers
            with urllib.request.urlopen(base + "/health", timeout=15) as health:
                assert health.status == 200
            info = urllib.request.Request(base + "/api/info", method="POST", data=b"{}",
                                          headers={"X-API-Key": API_KEY})
            with urllib.request.urlopen(info, timeout=15) as answer:
                body = json.loads(answer.read())
                assert len(body["result"]["nodes"]) == 2, body  # both on engine.redis
            with pytest.raises(urllib.error.HTTPError) as left_off:
                urllib.request.urlopen(base + "/connection/uni_sse", timeout=15)
            assert left_off.value.code == 404
        result = server.stop()
    assert result.returncode == 0, result.output
    assert result.output.count("log.file: ignored") == 1, result.output
    assert result.output.count("realtime: warning:") == 1, result.output


@pytest_twisted.ensureDeferred
async def test_named_proxies_and_rpc_namespaces_of_a_config_json_reach_their_backends(
        tmp_path, pubsub_server, backend, second):
    """A Centrifugo v6 config.json: a namespace subscribes through a named proxy, another
    through the event's own, an RPC namespace calls a named proxy and methods without one
    the RPC proxy, on two real twisted.web backends. realtime started from it (the tap's
    parse, a real server) serves centrifuge-python: each subscribe and RPC reaches the
    backend its proxy names, with that proxy's static header; a method of a namespace not
    configured is 104 and reaches none; a transport the file leaves off is 404."""
    from realtime.testing import serve

    config = {
        "http_server": {"address": "127.0.0.1"},
        "client": {"token": {"hmac_secret_key": SECRET}, "allowed_origins": ["*"]},
        "channel": {
            "proxy": {"subscribe": {"endpoint": backend.url("subscribe"),
                                    "http": {"static_headers": {"X-Key": "own"}}}},
            "namespaces": [{"name": "chat", "subscribe_proxy_enabled": True,
                            "subscribe_proxy_name": "chat-backend"},
                           {"name": "news", "subscribe_proxy_enabled": True}]},
        "proxies": [{"name": "chat-backend", "endpoint": second.url("subscribe"),
                     "http": {"static_headers": {"X-Key": "named"}}},
                    {"name": "payments", "endpoint": second.url("rpc"), "timeout": "5s"}],
        "rpc": {"proxy": {"endpoint": backend.url("rpc")},
                "without_namespace": {"proxy_enabled": True},
                "namespaces": [{"name": "billing", "proxy_enabled": True,
                                "proxy_name": "payments"}]},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    options = parsed("--centrifugo-config", str(path), "--port", "0")
    backend.answers["subscribe"] = lambda body: {"result": {"data": {"by": "own"}}}
    backend.answers["rpc"] = lambda body: {"result": {"data": ["own", body["method"]]}}
    second.answers["subscribe"] = lambda body: {"result": {"data": {"by": "named"}}}
    second.answers["rpc"] = lambda body: {"result": {"data": ["payments", body["method"]]}}
    server = await serve(options.application, options.config, layer=options.layer)

    async def scenario() -> Any:
        client, _ = sdk_client(server, token("ada", key=SECRET))
        await client.connect()
        data = {}
        for channel in ("chat:1", "news:1"):
            _, events = await subscribed(client, channel)
            data[channel] = (await events.next("subscribed")).data
        answers = []
        for method in ("billing:charge", "plain", "nope:x"):
            try:
                answers.append((await client.rpc(method, {"n": 1})).data)
            except Exception as exc:  # centrifuge.ReplyError
                answers.append(exc.code)  # type: ignore[attr-defined]
        await client.disconnect()
        return data, answers

    try:
        data, answers = await run_sdk(scenario)
        off = await in_thread(lambda: http_get(server.http_url("/connection/uni_sse"))[0])
    finally:
        await server.stop()
    assert data == {"chat:1": {"by": "named"}, "news:1": {"by": "own"}}
    assert answers == [["payments", "billing:charge"], ["own", "plain"], 104]
    assert off == 404  # (uni_sse: not enabled in the file)

    def seen(found: Any) -> list[tuple[str, str, str | None]]:
        return [(event, body.get("channel") or body["method"], headers.get("x-key"))
                for event, headers, body in found.requests]

    assert seen(backend) == [("subscribe", "news:1", "own"), ("rpc", "plain", None)]
    assert seen(second) == [("subscribe", "chat:1", "named"),
                            ("rpc", "billing:charge", None)]
