"""Property tests: random request lines, header lines, hosts, handshakes and paths fed to the
request checks, the scope builder, the router and a whole ``RealtimeChannel`` (in memory).
Each one answers or refuses; none raises. tests/e2e/test_hostile.py has the table of
answers on a real socket."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http_headers import _nameEncoder

from realtime import ProtocolTypeRouter, URLRouter, path, re_path
from realtime.config import ServerConfig
from realtime.exceptions import NoRoute, Refuse
from realtime.routing import route_matches
from realtime.scope import (
    BadRequest,
    build_scope,
    check_h2_head,
    check_handshake,
    check_header_line,
    check_host,
    check_request_line,
    origin_form,
)
from tests.clients import captured_log

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

CLIENT = IPv4Address("TCP", "10.0.0.1", 5555)
SERVER = IPv4Address("TCP", "127.0.0.1", 8000)

TCHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
token = st.text(alphabet=TCHARS, min_size=1, max_size=12).map(str.encode)
methods = st.one_of(st.sampled_from([b"GET", b"POST", b"HEAD", b"OPTIONS", b"CONNECT", b"get"]),
                    token, st.binary(max_size=8))
versions = st.one_of(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2",
                                      b"http/1.1", b"HTTP/1", b""]), st.binary(max_size=10))
# Paths: printable ASCII pieces, percent escapes (good, bad, non-UTF-8), raw high bytes.
path_piece = st.one_of(
    st.text(alphabet="abcXYZ019-._~!$&'()*+,;=:@/?#", min_size=1, max_size=6).map(str.encode),
    st.sampled_from([b"%20", b"%2F", b"%C3%A9", b"%ff", b"%c3", b"%zz", b"%4", b"%", b"%00",
                     b"\x80", b"\xc3\xa9", b"\x7f", b" ", b"\t", b"\x00", b"\r", b"\n"]),
    st.binary(min_size=1, max_size=4),
)
paths = st.lists(path_piece, max_size=8).map(lambda parts: b"/" + b"".join(parts))
targets = st.one_of(paths, st.sampled_from([b"*", b"echo", b"http://a/echo", b"host:443", b""]),
                    st.binary(max_size=20))
header_names = st.one_of(
    st.sampled_from([b"Host", b"Upgrade", b"Connection", b"Sec-WebSocket-Key",
                     b"Sec-WebSocket-Version", b"Sec-WebSocket-Protocol", b"Content-Length",
                     b"Transfer-Encoding", b"Origin", b"Cookie", b"X-A ", b"", b"X\x00"]),
    token, st.binary(max_size=8),
)
header_values = st.one_of(
    st.sampled_from([b"websocket", b"Upgrade", b"keep-alive, Upgrade", b"13", b"8", b"",
                     base64.b64encode(b"0123456789abcdef"), b"!!!", b"chunked", b"gzip",
                     b"1", b"1x", b"127.0.0.1:8000", b"[::1]", b"a/b", b"a\x00b", b"a\rb",
                     b"a\nb", b"\xff\xfe", b" spaced "]),
    st.binary(max_size=30),
)


@SETTINGS
@given(methods, targets, versions)
@example(b"GET", b"/" + b"a" * 9000, b"HTTP/1.1")
def test_request_line_check_answers_or_refuses(method, target, version):
    line = method + b" " + target + b" " + version
    status = check_request_line(line)
    assert status in (None, 400, 414, 505)
    if status is None:
        # Whatever we let through, twisted.web parses.
        assert http._parseRequestLine(line) == (method, target, version)


@SETTINGS
@given(st.binary(max_size=60))
def test_request_line_check_on_raw_bytes(line):
    assert check_request_line(line) in (None, 400, 414, 505)


@SETTINGS
@given(header_names, header_values, st.sampled_from([b":", b": ", b" : ", b"", b"::"]))
def test_header_line_check_answers_or_refuses(name, value, sep):
    line = name + sep + value
    status = check_header_line(line)
    assert status in (None, 400, 501)
    if status is None:
        parsed_name, _, parsed_value = line.partition(b":")
        _nameEncoder.encode(parsed_name)  # a token: twisted.web takes it as a name
        assert not set(parsed_value.strip(b" \t")) & {0, 10, 13}
        # no line break to str.splitlines() once decoded as Django's META does (NEL, VT...)
        assert len(parsed_value.decode("latin-1").splitlines()) <= 1


def test_header_names_twisted_would_take_or_choke_on_are_refused_first():
    for bad in (b"X-A ", b"", b"X\x00"):
        assert check_header_line(bad + b": v") == 400


@SETTINGS
@given(methods, targets, st.lists(st.tuples(header_names, st.lists(header_values, max_size=2)),
                                  max_size=5))
@example(b"GET", b"/", [(b"x-a", [b"a\x85b"])])
def test_h2_head_check_answers_or_refuses_as_http11(method, target, headers):
    """What h2 lets through gets HTTP/1.1's answers: what passes is tokens, a visible-ASCII
    target and values without a line break to str.splitlines()."""
    status = check_h2_head(method, target, headers)
    assert status in (None, 400, 414, 501)
    if status is None:
        assert http._parseRequestLine(method + b" " + target + b" HTTP/1.1")
        assert target.isascii() and b"#" not in target
        for name, values in headers:
            for value in values:
                _nameEncoder.encode(name)  # a token: twisted.web takes it as a name
                assert len(value.decode("latin-1").splitlines()) <= 1


headers_maps = st.dictionaries(
    st.sampled_from([b"host", b"upgrade", b"connection", b"sec-websocket-key",
                     b"sec-websocket-version", b"sec-websocket-protocol"]),
    st.lists(header_values, max_size=3),
)


@SETTINGS
@given(methods, versions, headers_maps)
@example(b"GET", b"HTTP/1.1", {b"host": [b"x"], b"upgrade": [b"websocket"],
                               b"connection": [b"Upgrade"], b"sec-websocket-version": [b"13"],
                               b"sec-websocket-key": [base64.b64encode(b"0123456789abcdef")]})
def test_handshake_check_answers_or_refuses(method, version, headers):
    refusal = check_handshake(method, version, headers)
    if refusal is None:
        assert method == b"GET" and version == b"HTTP/1.1"
        assert len(base64.b64decode(headers[b"sec-websocket-key"][0].strip())) == 16
        assert headers[b"sec-websocket-version"][0].strip() == b"13"
    else:
        assert isinstance(refusal, Refuse)
        assert refusal.status in (400, 405, 426)


@SETTINGS
@given(st.lists(header_values, max_size=3), versions)
def test_host_check_answers_or_refuses(hosts, version):
    assert check_host(hosts, version) in (None, 400)


@SETTINGS
@given(st.sampled_from(["websocket", "http"]), methods, st.binary(max_size=40),
       st.lists(st.tuples(header_names, st.lists(header_values, max_size=2)), max_size=5),
       st.sampled_from(["", "/root"]))
def test_build_scope_builds_or_raises_bad_request(kind, method, uri, headers, root):
    try:
        scope = build_scope(kind, method, uri, headers, CLIENT, SERVER, False, root)
    except BadRequest:
        return
    assert isinstance(scope["path"], str)
    assert scope["type"] == kind


@SETTINGS
@given(paths)
def test_accepted_request_lines_build_a_scope_or_a_bad_request(path_):
    line = b"GET " + path_ + b" HTTP/1.1"
    if check_request_line(line) is not None:
        return
    try:
        scope = build_scope("websocket", b"GET", path_, [], CLIENT, SERVER, False, "")
    except BadRequest:
        # Only a percent escape that decodes to invalid UTF-8 gets this far.
        assert re.search(rb"%[89a-fA-F][0-9a-fA-F]", path_)
        return
    assert scope["path"].startswith("/")


def _app(name):
    def app(scope):
        return (name, scope["url_route"])

    return app


ROUTER = ProtocolTypeRouter({
    "websocket": URLRouter([
        path("echo", _app("echo")),
        path("room/<slug:name>/", _app("room")),
        path("n/<int:n>", _app("int")),
        path("u/<uuid:id>", _app("uuid")),
        path("files/<path:rest>", _app("files")),
        re_path(r"^re/(?P<x>[a-z]+)/(\d+)$", _app("re")),
        path("nest/", URLRouter([path("<str:leaf>", _app("leaf"))])),
    ]),
})


@SETTINGS
@given(st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(["echo", "room", "n", "u", "files", "re", "nest", "x", "", "1",
                              "-", "é", "\x00", "%", "..", "12345678-1234-5678-1234-567812345678",
                              "9" * 5000]), max_size=5).map("/".join),
).map(lambda s: "/" + s), st.sampled_from(["", "/root"]))
@example("/n/" + "9" * 5000, "")
def test_router_resolves_or_refuses_with_404(path_, root):
    scope = {"type": "websocket", "path": path_, "root_path": root}
    try:
        result = ROUTER(scope)
    except NoRoute as exc:
        assert exc.status == 404
        assert not route_matches(ROUTER, scope)
        return
    assert route_matches(ROUTER, scope)
    assert hasattr(result, "__await__") or isinstance(result, tuple)


# -- a whole channel, in memory: random heads in random chunks ----------------------------------
def _refuse_app(scope):
    raise Refuse(403)


def _channel():
    from realtime.layers import InMemoryChannelLayer
    from realtime.site import RealtimeSite

    site = RealtimeSite(_refuse_app, ServerConfig(), Clock(), layer=InMemoryChannelLayer())
    channel = site.buildProtocol(CLIENT)
    transport = StringTransport(peerAddress=CLIENT, hostAddress=SERVER)
    channel.makeConnection(transport)
    return site, channel, transport


request_lines = st.one_of(
    st.builds(lambda m, t, v: m + b" " + t + b" " + v, methods, targets, versions),
    st.binary(max_size=40),
)
header_lines = st.one_of(
    st.builds(lambda n, v: n + b": " + v, header_names, header_values),
    st.sampled_from([b" folded", b"\tfolded", b"no colon", b": empty name"]),
    st.binary(max_size=30),
)
ANSWERS = {200, 400, 403, 405, 414, 426, 431, 501, 503, 505}


@SETTINGS
@given(request_lines, st.lists(header_lines, max_size=8),
       st.sampled_from([b"\r\n", b"\n", b"\r"]), st.booleans(), st.integers(1, 64))
@example(b"GET /echo HTTP/1.1", [b"Host: x", b"Upgrade: websocket", b"Connection: Upgrade",
                                 b"Sec-WebSocket-Version: 13",
                                 b"Sec-WebSocket-Key: " + base64.b64encode(b"k" * 16)],
         b"\r\n", True, 7)
def test_channel_answers_or_waits_never_raises(line, headers, eol, complete, chunk):
    site, channel, transport = _channel()
    data = eol.join([line, *headers]) + (eol + eol if complete else b"")
    with captured_log() as events:
        for i in range(0, len(data), chunk):
            if transport.disconnecting:
                break
            channel.dataReceived(data[i : i + chunk])
    failures = [e for e in events if e.get("log_failure") is not None]
    assert not failures, failures[0]["log_failure"].getTraceback()
    written = transport.value()
    if written:
        assert re.match(rb"HTTP/1\.[01] \d{3} ", written), written[:100]
        status = int(written.split(b" ")[1])
        assert status in ANSWERS, written[:200]
        assert b"Traceback" not in written
    channel.connectionLost(Failure(ConnectionDone()))
    for call in site.reactor.getDelayedCalls():
        call.cancel()


@pytest.mark.parametrize("target, expected", [
    (b"/chat?x=1", (b"/chat?x=1", None)),
    (b"*", (b"*", None)),
    (b"http://example.com:8000/ws/chat?x=1", (b"/ws/chat?x=1", b"example.com:8000")),
    (b"HTTPS://Example.com/a", (b"/a", b"Example.com")),
    (b"http://example.com", (b"/", b"example.com")),
    (b"http://example.com?q", (b"/?q", b"example.com")),
    (b"http://user:pw@example.com/a", (b"/a", b"example.com")),
    (b"http:///a", (b"/a", b"")),
    (b"ftp://example.com/a", (b"ftp://example.com/a", None)),
    (b"/redirect?to=http://x/", (b"/redirect?to=http://x/", None)),
])
def test_an_absolute_form_target_is_its_path_and_its_authority(target, expected):
    """RFC 9112 3.2.2: a server accepts ``GET http://host/path``; the path routes, the
    authority is the Host."""
    assert origin_form(target) == expected


@given(st.binary(max_size=200))
@SETTINGS
def test_origin_form_never_raises_and_keeps_a_path(target):
    path, authority = origin_form(target)
    assert (authority is None and path == target) or path.startswith(b"/")
