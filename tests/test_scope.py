"""Scope building from a parsed request, without I/O."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from realtime.lifespan import LIFESPAN_ASGI
from realtime.scope import (
    AsgiKey,
    BadRequest,
    address_pair,
    build_scope,
    decode_path,
    split_subprotocols,
)

CLIENT = IPv4Address("TCP", "10.0.0.1", 5555)
SERVER = IPv4Address("TCP", "127.0.0.1", 8000)


def scope(kind="websocket", uri=b"/a", headers=(), secure=False, root="", method=b"GET",
          version=b"HTTP/1.1", client=CLIENT):
    return build_scope(kind, method, uri, list(headers), client, SERVER, secure, root, version)


def test_websocket_scope():
    s = scope(uri=b"/a%20b/%C3%A9?x=1&y=%20", headers=[
        (b"Host", [b"example.com"]),
        (b"X-Multi", [b"One", b"Two"]),
        (b"Sec-WebSocket-Protocol", [b"chat, json", b" v2 ,,"]),
    ])
    assert s["type"] == "websocket"
    assert s["path"] == "/a b/é"
    assert s["raw_path"] == b"/a%20b/%C3%A9"
    assert s["query_string"] == b"x=1&y=%20"
    assert s["root_path"] == ""
    assert s["headers"] == [(b"host", b"example.com"), (b"x-multi", b"One"),
                            (b"x-multi", b"Two"), (b"sec-websocket-protocol", b"chat, json"),
                            (b"sec-websocket-protocol", b" v2 ,,")]
    assert s["client"] == ("10.0.0.1", 5555)
    assert s["server"] == ("127.0.0.1", 8000)
    assert s["scheme"] == "ws"
    assert s["subprotocols"] == ["chat", "json", "v2"]
    assert "method" not in s


def test_http_scope():
    s = scope("http", uri=b"/x?", method=b"POST", version=b"HTTP/1.0", secure=True, root="/r")
    assert s["type"] == "http"
    assert s["method"] == "POST"
    assert s["scheme"] == "https"
    assert s["http_version"] == "1.0"
    assert s["query_string"] == b""
    assert s["root_path"] == "/r"
    assert "subprotocols" not in s


@pytest.mark.parametrize("kind", ["http", "websocket"])
def test_every_scope_says_which_asgi(kind):
    """ASGI's required ``asgi`` key, as Daphne and uvicorn set it (a Channels consumer may
    read it): one dict per kind, shared by every scope."""
    assert scope(kind)["asgi"]["version"] == "3.0"
    assert scope(kind)["asgi"] is scope(kind)["asgi"]
    assert scope("websocket")["asgi"]["spec_version"] == "2.4"  # send after close: OSError


@pytest.mark.parametrize("kind", ["http", "websocket"])
def test_one_scopes_asgi_key_cannot_change_anothers(kind):
    """The shared ``asgi`` dict is read-only: a write in one consumer would reach every
    scope; copies of it are plain dicts (json, copy, deepcopy, pickle work)."""
    mine, other = scope(kind), scope(kind)
    before = dict(other["asgi"])
    writes = [lambda a: a.__setitem__("x", 1), lambda a: a.update(x=1),
              lambda a: a.setdefault("x", 1), lambda a: a.pop("version"),
              lambda a: a.popitem(), lambda a: a.clear(), lambda a: a.__delitem__("version"),
              lambda a: a.__ior__({"x": 1})]
    for write in writes:
        with pytest.raises(TypeError, match="read-only"):
            write(mine["asgi"])
    assert other["asgi"] == before
    assert json.loads(json.dumps(mine["asgi"])) == before
    for copied in (dict(mine["asgi"]), copy.copy(mine["asgi"]),
                   copy.deepcopy(mine)["asgi"], pickle.loads(pickle.dumps(mine["asgi"]))):
        assert type(copied) is dict and copied == before
        copied["x"] = 1
    assert "x" not in other["asgi"]
    assert isinstance(LIFESPAN_ASGI, AsgiKey)


@pytest.mark.parametrize("kind", ["http", "websocket"])
def test_header_names_with_underscores_are_left_out(kind):
    s = scope(kind, headers=[(b"X_Forwarded_For", [b"6.6.6.6"]),
                             (b"X-Forwarded-For", [b"1.2.3.4"]), (b"Cookie_", [b"a=1"])])
    assert s["headers"] == [(b"x-forwarded-for", b"1.2.3.4")]


def test_the_method_is_as_sent():
    # case-sensitive (RFC 9110 9.1): "get" is an unknown method, not GET
    assert scope("http", method=b"get")["method"] == "get"
    assert scope("http", method=b"PURGE")["method"] == "PURGE"


def test_secure_websocket_scheme():
    assert scope(secure=True)["scheme"] == "wss"


def test_addresses():
    assert address_pair(IPv6Address("TCP", "::1", 9)) == ("::1", 9)
    assert address_pair(UNIXAddress(b"/tmp/sock")) is None
    assert scope(client=UNIXAddress(b"/tmp/sock"))["client"] is None


def test_path_not_utf8_is_bad_request():
    with pytest.raises(BadRequest):
        decode_path(b"/%ff")
    with pytest.raises(BadRequest):
        scope(uri=b"/%c3")
    assert issubclass(BadRequest, ValueError)


def test_encoded_slash_and_query_mark_stay_in_the_path():
    s = scope(uri=b"/a%2Fb%3Fc?q")
    assert s["path"] == "/a/b?c"
    assert s["raw_path"] == b"/a%2Fb%3Fc"
    assert s["query_string"] == b"q"


def test_split_subprotocols_ignores_other_headers():
    assert split_subprotocols([(b"x", b"a"), (b"sec-websocket-protocol", b"a,b")]) == ["a", "b"]
    assert split_subprotocols([]) == []
