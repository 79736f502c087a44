"""Hostile input against a real server running ``realtime.socketio`` (Engine.IO v4 /
Socket.IO v5): every malformed request, packet and frame gets its specific answer, never a
traceback, a 1011, a hang or an effect on other clients.

The tables below ARE the documentation: each row is one input, sent as raw bytes over TCP
to a real listening server (``AsyncServer`` mounted at ``/socket.io/``, an ``echo`` event
whose ack returns its arguments), and the answer the server gives. The server runs with
python-engineio's defaults except ``max_http_buffer_size`` (maxPayload) 64 KiB,
``cors_allowed_origins=["https://good.example"]``, and the short ``connect_timeout`` and
``close_timeout`` (0.5 s) of ``tests/e2e/test_hostile.py``. Every row also fails if the
server logged a failure (a traceback) while answering it.

- ``POLL_TABLE`` (HTTP long-polling): ``HTTP n code c``: a complete response with status
  ``n`` and Engine.IO's JSON error ``{"code": c, ...}`` (0 transport unknown, 1 session ID
  unknown, 2 bad handshake method, 3 bad request, 4 forbidden, 5 unsupported protocol
  version); ``HTTP n`` another answer (200 ``ok`` for a POST taken, 204 a CORS preflight,
  413 over maxPayload), with the response headers the row names (a preflight's
  ``Access-Control-Allow-Headers``: the header names asked for, only when they are names);
  ``dropped``: closed without a byte at the connect deadline (a body that never
  completes). ``session`` says whether the row's polling session is still open
  after it (a bad request closes it: "transport error").
- ``WS_TABLE`` (after the WebSocket handshake and a CONNECT to "/"): ``close n``: the server
  closes with code ``n`` (1002 a packet that is not Engine.IO's or Socket.IO's, 1003 an
  unexpected binary frame, 1009 over maxPayload, 1000 Engine.IO's close packet);
  ``frames``: the messages it answers, after which the connection still echoes.
- ``MSGPACK_TABLE``: the same on a ``serializer="msgpack"`` server (each Socket.IO packet
  one binary message).
- ``RECOVERY_TABLE``: CONNECT auth with forged ``pid``/``offset`` on a server with
  ``connection_state_recovery``: a new socket (``40{"sid","pid"}``), never a restored one.
- ``PROBE_TABLE``: the upgrade of a polling session misused (the probing WebSocket closes;
  polling goes on).

After the tables, floods: polling sessions from one IP past ``--max-connections-per-ip``
(429), a poller that never polls (its session closes at ``MAX_QUEUED_PACKETS``), 10,000
tiny packets in one write (at most ``--max-inflight`` handlers run), ``call()``s whose
acks never come (the socket's pending acks stay bounded), 200 slowloris polling POSTs (all
dropped at the connect deadline while a fresh client works); last, a fresh client still
echoes and RSS grew by less than 50 MB over the module. The proxy path's table
(``realtime.pubsub_proxy``: a backend answering garbage) is ``GARBAGE_TABLE`` in
``tests/test_pubsub_proxy.py``.
"""

from __future__ import annotations

import base64
import gc
import gzip
import json
import re
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from realtime import socketio as rsio
from realtime.routing import URLRouter, path
from tests.clients import (
    captured_log,
    client_frame,
    closed_by_server,
    dribbling,
    handshake,
    parse_response,
    raw_connect,
    rss_kb,
    split_response,
    until,
    wait_close_handshake,
)

CONNECT_TIMEOUT = 0.5
CLOSE_TIMEOUT = 0.5
MAX_PAYLOAD = 64 * 1024
GOOD = "https://good.example"
EVIL = "https://evil.example"
WS_PATH = "/socket.io/?EIO=4&transport=websocket"


def make_server(**options: Any) -> rsio.AsyncServer:
    """The server every row talks to: ``echo`` acks its arguments; ``hold`` waits for the
    test's ``release`` (the in-flight bound)."""
    options = {"max_http_buffer_size": MAX_PAYLOAD, "cors_allowed_origins": [GOOD],
               **options}
    sio = rsio.AsyncServer(**options)
    held: list[Deferred[None]] = []
    sio.held = held  # type: ignore[attr-defined]

    @sio.event
    async def echo(sid: str, *args: Any) -> Any:
        return args

    @sio.event
    async def hold(sid: str) -> None:
        d: Deferred[None] = Deferred()
        held.append(d)
        await d

    return sio


async def start(live: Any, sio: rsio.AsyncServer | None = None, **config: Any) -> Any:
    config.setdefault("connect_timeout", CONNECT_TIMEOUT)
    config.setdefault("close_timeout", CLOSE_TIMEOUT)
    sio = sio or make_server()
    server = await live(URLRouter([path("socket.io/", sio.as_asgi())]), **config)
    server.sio = sio
    return server


def failures(events: list[dict[str, Any]]) -> list[str]:
    """The tracebacks logged (``log.failure``), and any critical/error event."""
    out = []
    for event in events:
        level = getattr(event.get("log_level"), "name", "")
        if "log_failure" in event or level in ("error", "critical"):
            out.append(str(event.get("log_format")) + repr(event.get("log_failure", "")))
    return out


# -- HTTP long-polling -----------------------------------------------------------------------
def request(method: str, query: str, body: bytes = b"", *headers: str,
            length: int | None = None) -> bytes:
    """A raw HTTP/1.1 request to ``/socket.io/?<query>`` (``SID`` in it: the row's
    session's sid); ``length`` overrides Content-Length (a lie), -1 leaves it out."""
    lines = [f"{method} /socket.io/?{query} HTTP/1.1", "Host: 127.0.0.1", *headers]
    n = len(body) if length is None else length
    if n >= 0 and (body or length is not None or method == "POST"):
        lines.append(f"Content-Length: {n}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def post(body: bytes, *headers: str, length: int | None = None) -> bytes:
    return request("POST", "EIO=4&transport=polling&sid=SID", body, *headers, length=length)


def get(query: str = "EIO=4&transport=polling&sid=SID", *headers: str) -> bytes:
    return request("GET", query, b"", *headers)


@dataclass(frozen=True)
class PollRow:
    id: str
    input: str
    send: bytes
    answer: str
    status: int | None = None
    code: int | None = None  # Engine.IO's error code in the JSON body
    body: bytes | None = None  # the exact body otherwise
    #: Whether the row's polling session is open after it (None: the row opens none).
    session: bool | None = None
    #: Before the row: a GET of the session waits (the "second GET" rows).
    waiting_get: bool = False
    #: Response headers: a value (the only one), a tuple (every line's, any order), or
    #: None (no such header).
    headers: tuple[tuple[bytes, bytes | tuple[bytes, ...] | None], ...] = ()


def http(id: str, input: str, send: bytes, status: int, code: int | None = None, *,
         body: bytes | None = None, session: bool | None = None, waiting_get: bool = False,
         **headers: bytes | tuple[bytes, ...] | None) -> PollRow:
    hdrs = tuple((k.replace("_", "-").encode(), v) for k, v in headers.items())
    answer = f"HTTP {status}" + (f" code {code}" if code is not None else "")
    return PollRow(id, input, send, answer, status, code, body, session, waiting_get, hdrs)


def needs(send: bytes) -> bool:
    return b"SID" in send


POLL_TABLE: list[PollRow] = [
    # the handshake's query
    http("eio-3", "a handshake with EIO=3 (Engine.IO v3)", get("EIO=3&transport=polling"),
         400, 5),
    http("eio-missing", "a handshake without EIO", get("transport=polling"), 400, 5),
    http("eio-junk", "EIO=4x", get("EIO=4x&transport=polling"), 400, 5),
    http("eio-twice", "EIO=3&EIO=4 (a repeated EIO is no version, as in python-engineio)",
         get("EIO=3&EIO=4&transport=polling"), 400, 5),
    http("eio-percent-encoded", "EIO=%34 (percent-decoded: 4)",
         get("EIO=%34&transport=polling"), 200),
    http("transport-unknown", "transport=flashsocket", get("EIO=4&transport=flashsocket"), 400, 0),
    http("transport-missing", "no transport", get("EIO=4"), 400, 0),
    http("transport-websocket-plain-get", "transport=websocket on a GET without Upgrade",
         get("EIO=4&transport=websocket"), 400, 0),
    http("query-not-utf8", "a percent-escape of invalid UTF-8 in the query",
         get("EIO=4&transport=polling&x=%ff"), 200),
    http("sid-unknown-get", "a GET with a sid no session has", get(
        "EIO=4&transport=polling&sid=nope"), 400, 1),
    http("sid-unknown-post", "a POST with a sid no session has",
         request("POST", "EIO=4&transport=polling&sid=nope", b"40"), 400, 1),
    http("sid-huge", "a 6 KB sid", get("EIO=4&transport=polling&sid=" + "a" * 6000), 400, 1),
    http("post-without-sid", "a POST handshake", request("POST", "EIO=4&transport=polling",
         b"40"), 400, 2),
    # methods
    http("put-handshake", "PUT without a sid", request("PUT", "EIO=4&transport=polling"), 400, 2),
    http("delete-session", "DELETE with the session's sid (refused, the session lives)",
         request("DELETE", "EIO=4&transport=polling&sid=SID"), 400, 3, session=True),
    http("patch-session", "PATCH with a body", request(
        "PATCH", "EIO=4&transport=polling&sid=SID", b"40"), 400, 3, session=True),
    http("head-handshake", "HEAD without a sid (400, no body)",
         request("HEAD", "EIO=4&transport=polling"), 400),
    # CORS
    http("options-allowed", "an OPTIONS preflight from an allowed origin", request(
        "OPTIONS", "EIO=4&transport=polling", b"", f"Origin: {GOOD}",
        "Access-Control-Request-Method: POST"), 204,
         access_control_allow_origin=GOOD.encode(),
         access_control_allow_methods=b"GET, POST, OPTIONS", access_control_allow_headers=None),
    http("options-headers", "a preflight asking for headers (socket.io-client's "
         "extraHeaders): allowed as asked", request(
             "OPTIONS", "EIO=4&transport=polling", b"", f"Origin: {GOOD}",
             "Access-Control-Request-Method: POST",
             "Access-Control-Request-Headers: authorization,x-token"), 204,
         access_control_allow_headers=b"authorization,x-token",
         vary=(b"Access-Control-Request-Headers", b"Origin")),
    http("options-headers-two-lines", "Access-Control-Request-Headers twice (joined)", request(
        "OPTIONS", "EIO=4&transport=polling", b"", f"Origin: {GOOD}",
        "Access-Control-Request-Headers: x-a", "Access-Control-Request-Headers: x-b"), 204,
         access_control_allow_headers=b"x-a, x-b"),
    http("options-headers-not-names", "Access-Control-Request-Headers that are not header "
         "names (not reflected)", request(
             "OPTIONS", "EIO=4&transport=polling", b"", f"Origin: {GOOD}",
             "Access-Control-Request-Headers: x-a, <script>, x b"), 204,
         access_control_allow_headers=None, access_control_allow_origin=GOOD.encode()),
    http("options-headers-not-ascii", "Access-Control-Request-Headers not ASCII (not "
         "reflected)", request(
             "OPTIONS", "EIO=4&transport=polling", b"", f"Origin: {GOOD}",
             "Access-Control-Request-Headers: x-\u00e9"), 204,
         access_control_allow_headers=None),
    http("options-headers-huge", "Access-Control-Request-Headers of 600 names, 3 KB (not "
         "reflected)", request(
             "OPTIONS", "EIO=4&transport=polling", b"", f"Origin: {GOOD}",
             "Access-Control-Request-Headers: " + ",".join(f"x-{n}" for n in range(600))),
         204, access_control_allow_headers=None),
    http("options-headers-no-origin", "a preflight without Origin (no browser's: nothing "
         "reflected)", request(
             "OPTIONS", "EIO=4&transport=polling", b"",
             "Access-Control-Request-Headers: x-token"), 204,
         access_control_allow_headers=None, access_control_allow_origin=None),
    http("options-forbidden", "an OPTIONS preflight from another origin", request(
        "OPTIONS", "EIO=4&transport=polling", b"", f"Origin: {EVIL}",
        "Access-Control-Request-Method: POST"), 403, 4),
    http("get-forbidden", "a handshake GET from another origin",
         get("EIO=4&transport=polling", f"Origin: {EVIL}"), 403, 4),
    http("post-forbidden", "a POST to the session from another origin (the session lives)",
         post(b"40", f"Origin: {EVIL}"), 403, 4, session=True),
    http("origin-null", "Origin: null (a sandboxed page)",
         get("EIO=4&transport=polling", "Origin: null"), 403, 4),
    # GETs
    http("get-while-get-waits", "a second GET while one waits (the session closes)", get(),
         400, 3, session=False, waiting_get=True),
    # POST bodies
    http("post-ok", "a CONNECT (taken)", post(b"40"), 200, body=b"ok", session=True),
    http("post-two-packets", "two packets, record-separated", post(b"40\x1e42[\"echo\"]"),
         200, body=b"ok", session=True),
    http("post-empty", "an empty body (an empty packet)", post(b""), 400, 3, session=False),
    http("post-double-separator", "an empty packet between two", post(b"40\x1e\x1e2"), 400, 3,
         session=False),
    http("post-trailing-separator", "a separator at the end", post(b"40\x1e"), 400, 3,
         session=False),
    http("post-leading-separator", "a separator first", post(b"\x1e40"), 400, 3,
         session=False),
    http("post-v3-framing", "Engine.IO v3's length-prefixed framing b'2:40'", post(b"2:40"),
         400, 3, session=False),
    http("post-not-utf8", "a body that is not UTF-8", post(b"42[\"\xff\"]"), 400, 3,
         session=False),
    http("post-gzip", "a gzip body (Content-Encoding: gzip) of 1 MB of zeros: never inflated",
         post(gzip.compress(b"\0" * 1_000_000), "Content-Encoding: gzip"), 400, 3,
         session=False),
    http("post-b-garbage", "b!!! (not base64)", post(b"b!!!"), 400, 3, session=False),
    http("post-b-padding", "b with bad padding", post(b"bAAA"), 400, 3, session=False),
    http("post-b-empty", "an empty binary packet with no packet awaiting attachments",
         post(b"b"), 400, 3, session=False),
    http("post-b-unexpected", "a binary packet with no packet awaiting attachments",
         post(b"b" + base64.b64encode(b"\x00\x01")), 400, 3, session=False),
    http("post-eio-type-9", "an Engine.IO type 9", post(b"9"), 400, 3, session=False),
    http("post-eio-open", "an Engine.IO open packet from the client", post(b"0"), 400, 3,
         session=False),
    http("post-upgrade", "an upgrade packet over polling", post(b"5"), 400, 3, session=False),
    http("post-sio-garbage", "a Socket.IO packet that is not one (b'4x')", post(b"4x"), 400, 3,
         session=False),
    http("post-ping", "a ping (answered with a pong on the next GET)", post(b"2"), 200,
         body=b"ok", session=True),
    http("post-noop", "a noop", post(b"6"), 200, body=b"ok", session=True),
    http("post-close", "Engine.IO's close packet (the session ends)", post(b"1"), 200,
         body=b"ok", session=False),
    http("post-over-maxpayload", "a 65 KB body (over maxPayload)",
         post(b"4" + b"2" * (MAX_PAYLOAD + 1000)), 413, 3, session=False),
    http("post-over-body-limit", "Content-Length: 20 MB (over --http-body-limit; refused "
         "before the body)", post(b"", length=20 * 1024 * 1024), 413, session=True),
    http("post-length-short", "Content-Length 2 for a 4-byte body (the rest: a bad request "
         "line)", post(b"4040", length=2), 200, body=b"ok", session=True),
    http("post-chunked", "a chunked body", post(
        b"2\r\n40\r\n0\r\n\r\n", "Transfer-Encoding: chunked", length=-1), 200, body=b"ok",
         session=True),
    http("post-chunked-bad-size", "a chunk size that is not hex", post(
        b"zz\r\n40\r\n0\r\n\r\n", "Transfer-Encoding: chunked", length=-1), 400,
         session=True),
    PollRow("post-length-long", "Content-Length 100 for a 2-byte body (never completes)",
            post(b"40", length=100), "dropped", session=True),
]


# -- after the WebSocket handshake ---------------------------------------------------------------
@dataclass(frozen=True)
class WsRow:
    id: str
    input: str
    send: bytes
    answer: str
    code: int | None = None
    #: The messages answered: a text one matches its regex, a binary (msgpack) one its map.
    replies: tuple[Any, ...] = ()
    #: Before the row: no CONNECT to "/" (the CONNECT rows).
    connected: bool = True


def T(text: str) -> bytes:
    return client_frame(0x1, text.encode("utf-8", "surrogatepass"))


def B(data: bytes) -> bytes:
    return client_frame(0x2, data)


def closes(id: str, input: str, send: bytes, code: int, connected: bool = True) -> WsRow:
    return WsRow(id, input, send, f"close {code}", code=code, connected=connected)


def answers(id: str, input: str, send: bytes, *replies: Any, connected: bool = True) -> WsRow:
    return WsRow(id, input, send, "frames" if replies else "nothing", replies=replies,
                 connected=connected)


def placeholder(num: Any) -> str:
    return json.dumps({"_placeholder": True, "num": num})


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


WS_TABLE: list[WsRow] = [
    # Engine.IO packets
    closes("eio-empty", "an empty text message", T(""), 1002),
    closes("eio-type-7", "Engine.IO type 7", T("7"), 1002),
    closes("eio-type-letter", "b'x' (no type digit)", T("x"), 1002),
    closes("eio-open", "an open packet from the client", T("0"), 1002),
    closes("eio-open-json", "an open packet with a handshake", T('0{"sid":"x"}'), 1002),
    closes("eio-close-payload", "a close packet with a payload", T("1x"), 1002),
    closes("eio-ping-payload", "a ping with a payload", T("2x"), 1002),
    closes("eio-probe-plain", "b'2probe' on a WebSocket that upgrades nothing", T("2probe"), 1002),
    closes("eio-pong-payload", "a pong with a payload", T("3x"), 1002),
    closes("eio-upgrade", "an upgrade packet on a plain WebSocket", T("5"), 1002),
    closes("eio-noop-payload", "a noop with a payload", T("6x"), 1002),
    closes("eio-close", "Engine.IO's close packet", T("1"), 1000),
    answers("eio-ping", "a ping from the client (answered)", T("2"), "3"),
    answers("eio-pong-unasked", "a pong nobody asked for (ignored)", T("3")),
    answers("eio-noop", "a noop (ignored)", T("6")),
    closes("binary-unexpected", "a binary frame with no packet awaiting attachments",
           B(b"\x00"), 1003),
    closes("text-over-maxpayload", "a 65 KB text message (over maxPayload)",
           T('42["echo","' + "x" * MAX_PAYLOAD + '"]'), 1009),
    closes("text-over-maxpayload-utf8", "23,000 three-byte characters (under maxPayload in "
           "characters, over it in UTF-8 bytes)", T('42["echo","' + "\u20ac" * 23_000 + '"]'),
           1009),
    # Socket.IO packet types
    closes("sio-empty", "b'4' (an empty Socket.IO packet)", T("4"), 1002),
    closes("sio-type-7", "Socket.IO type 7", T("47"), 1002),
    closes("sio-type-letter", "b'4x'", T("4x"), 1002),
    closes("sio-type-fullwidth", "a fullwidth digit as the type", T("4\uff12"), 1002),
    closes("sio-connect-error", "CONNECT_ERROR from the client", T('44{"message":"x"}'), 1002),
    # namespaces
    answers("ns-unknown", "CONNECT to a namespace the server does not serve",
            T("40/nope,"), re.escape('44/nope,{"message":"Invalid namespace"}')),
    closes("ns-without-comma", "an EVENT whose namespace has no comma (b'42/chat[\"a\"]')",
           T('42/chat["a"]'), 1002),
    answers("ns-event-not-connected", "an EVENT to a namespace not connected (ignored)",
            T('42/other,["echo"]')),
    answers("ns-query", "CONNECT to '/nope?x=1' (the query dropped)", T("40/nope?x=1,"),
            re.escape('44/nope,{"message":"Invalid namespace"}')),
    answers("ns-connect-twice", "a second CONNECT to '/' (ignored)", T("40")),
    closes("connect-data-array", "CONNECT with an array as auth", T("40[1]"), 1002),
    closes("connect-data-string", "CONNECT with a string as auth", T('40"token"'), 1002),
    closes("connect-ack-id", "CONNECT with an ack id", T("401{}"), 1002),
    closes("disconnect-data", "DISCONNECT with data", T("41{}"), 1002),
    # ack ids
    answers("ack-id-15-digits", "an ack id of 15 digits (the largest)",
            T('42999999999999999["echo",1]'), re.escape("43999999999999999[1]")),
    closes("ack-id-16-digits", "an ack id of 16 digits", T('429999999999999999["echo"]'), 1002),
    closes("ack-id-60k-digits", "an ack id of 60,000 digits",
           T("42" + "9" * 60_000 + '["echo"]'), 1002),
    answers("ack-id-leading-zeros", "ack id b'007' (answered as 7)", T('42007["echo"]'),
            re.escape("437[]")),
    answers("ack-id-zero", "ack id 0", T('420["echo",1]'), re.escape("430[1]")),
    closes("ack-id-16-digits-zeros", "an ack id of 16 digits, leading zeros (still too long)",
           T('420000000000000001["echo"]'), 1002),
    closes("ack-id-arabic-digit", "a non-ASCII digit as the ack id", T('42\u0663["echo"]'),
           1002),
    answers("ack-id-then-space", "whitespace between the ack id and the data (JSON's: taken)",
            T('421 ["echo",1]'), re.escape("431[1]")),
    answers("event-trailing-newline", "a newline after the data (JSON's whitespace: taken)",
            T('421["echo",1]\n'), re.escape("431[1]")),
    closes("event-bom", "a byte-order mark before the data", T('421\ufeff["echo",1]'), 1002),
    answers("ack-unknown", "an ACK for an id the server never asked (ignored)", T("4312[1]")),
    closes("ack-without-id", "an ACK without an id", T("43[1]"), 1002),
    closes("ack-not-array", "an ACK whose data is not an array", T('431{"a":1}'), 1002),
    # the EVENT's data
    closes("event-object", "an EVENT whose data is an object", T('42{"a":1}'), 1002),
    closes("event-string", "an EVENT whose data is a string", T('42"echo"'), 1002),
    closes("event-empty-array", "an EVENT with an empty array", T("42[]"), 1002),
    closes("event-name-number", "an event name that is a number", T("42[1]"), 1002),
    closes("event-name-null", "an event name that is null", T("42[null]"), 1002),
    closes("event-name-array", "an event name that is an array", T('42[["echo"]]'), 1002),
    closes("event-reserved", "the reserved event 'connect'", T('42["connect"]'), 1002),
    closes("event-reserved-disconnect", "the reserved event 'disconnect'",
           T('42["disconnect"]'), 1002),
    closes("json-invalid", "invalid JSON", T('42["echo",'), 1002),
    closes("json-trailing", "JSON with trailing garbage", T('42["echo"]x'), 1002),
    closes("json-deep-100k", "an array nested 100,000 deep", T('42["echo",' + nested(30_000)
                                                              + "]"), 1002),
    answers("json-deep-400", "an array nested 400 deep (echoed)",
            T('421["echo",' + nested(400) + "]"), re.escape("431[" + nested(400) + "]")),
    closes("json-nan", "NaN (Python's json takes it, JavaScript's JSON.parse does not: "
           "relayed, it would break every browser it reaches)", T('421["echo",NaN]'), 1002),
    closes("json-infinity", "-Infinity (the same)", T('421["echo",-Infinity]'), 1002),
    answers("json-lone-surrogate", "a lone surrogate escaped in JSON (echoed escaped)",
            T('421["echo","\\ud800"]'), re.escape('431["\\ud800"]')),
    answers("json-unicode-name", "a non-ASCII event name (no handler: ignored)",
            T('42["\u00e9cho"]')),
    answers("json-big-int", "a 4,000-digit integer (Python's limit: 4,300 digits)",
            T('421["echo",' + "9" * 4000 + "]"), re.escape("431[" + "9" * 4000 + "]")),
    closes("json-huge-int", "a 5,000-digit integer (over Python's int parsing limit)",
           T('421["echo",' + "9" * 5000 + "]"), 1002),
    answers("json-duplicate-keys", "an object with the same key twice (the last wins)",
            T('421["echo",{"a":1,"a":2}]'), re.escape('431[{"a":2}]')),
    # binary attachments
    answers("bin-one", "BINARY_EVENT with its one attachment (echoed, as BINARY_ACK)",
            T(f'451-1["echo",{placeholder(0)}]') + B(b"\x01\x02"),
            re.escape(f"461-1[{placeholder(0)}]".replace(" ", "")), b"\x01\x02"),
    closes("bin-text-while-awaited", "a text message while an attachment is awaited",
           T(f'451-["echo",{placeholder(0)}]') + T("2"), 1002),
    closes("bin-one-more-frame", "one binary frame more than announced",
           T(f'451-["echo",{placeholder(0)}]') + B(b"a") + B(b"b"), 1003),
    closes("bin-fewer-frames", "fewer binary frames than announced, then a text message",
           T(f'452-["echo",{placeholder(0)}]') + B(b"a") + T("2"), 1002),
    closes("bin-count-negative", "an attachment count of -1", T(f'45-1-["echo",{placeholder(0)}]'),
           1002),
    closes("bin-count-zero", "an attachment count of 0", T(f'450-["echo",{placeholder(0)}]'),
           1002),
    closes("bin-count-101", "101 attachments (MAX_ATTACHMENTS: 100)",
           T(f'45101-["echo",{placeholder(0)}]'), 1002),
    closes("bin-count-huge", "an attachment count of 10^100", T("45" + "1" * 100 + '-["echo"]'),
           1002),
    closes("bin-count-missing", "b'45-' (no count)", T(f'45-["echo",{placeholder(0)}]'), 1002),
    closes("bin-no-dash", "b'451[...' (no dash)", T(f'451["echo",{placeholder(0)}]'), 1002),
    closes("bin-placeholder-out-of-range", "placeholder num 1 with one attachment",
           T(f'451-["echo",{placeholder(1)}]') + B(b"a"), 1002),
    closes("bin-placeholder-negative", "placeholder num -1",
           T(f'451-["echo",{placeholder(-1)}]') + B(b"a"), 1002),
    closes("bin-placeholder-string", "placeholder num '0'",
           T(f'451-["echo",{placeholder("0")}]') + B(b"a"), 1002),
    closes("bin-placeholder-bool", "placeholder num true",
           T(f'451-["echo",{placeholder(True)}]') + B(b"a"), 1002),
    closes("bin-placeholder-float", "placeholder num 0.0",
           T(f'451-["echo",{placeholder(0.0)}]') + B(b"a"), 1002),
    closes("bin-placeholder-deep", "a placeholder nested 2,000 deep",
           T('451-["echo",' + nested(2000, placeholder(0)) + "]") + B(b"a"), 1002),
    answers("bin-no-placeholder", "an attachment no placeholder names (taken; echoed "
            "without it)", T('451-1["echo",2]') + B(b"a"), re.escape("431[2]")),
    closes("bin-over-maxpayload", "attachments together over maxPayload",
           T(f'452-["echo",{placeholder(0)},{placeholder(1)}]') + B(b"a" * 40_000)
           + B(b"b" * 40_000), 1009),
    closes("bin-ack-without-id", "BINARY_ACK without an id", T(f"461-[{placeholder(0)}]"),
           1002),
]


# -- msgpack (serializer="msgpack") ------------------------------------------------------------
def mp(fields: Any) -> bytes:
    return B(msgpack.packb(fields))


def mp_echo(ack: int, *args: Any) -> dict[str, Any]:
    return {"type": rsio.ACK, "data": list(args), "nsp": "/", "id": ack}


MSGPACK_TABLE: list[WsRow] = [
    closes("mp-not-msgpack", "b'\\xc1' (never used in msgpack)", B(b"\xc1"), 1002),
    closes("mp-truncated", "a truncated map", B(msgpack.packb({"type": 2})[:-1]), 1002),
    closes("mp-extra-data", "a map and trailing bytes", B(msgpack.packb({"type": 6}) + b"\x00"),
           1002),
    closes("mp-array", "an array, not a map", mp([2, ["echo"]]), 1002),
    closes("mp-empty", "an empty binary message", B(b""), 1002),
    closes("mp-no-type", "a map without type", mp({"data": ["echo"], "nsp": "/"}), 1002),
    closes("mp-type-string", "type '2'", mp({"type": "2", "data": ["echo"], "nsp": "/"}), 1002),
    closes("mp-type-bool", "type true", mp({"type": True, "data": ["echo"], "nsp": "/"}), 1002),
    closes("mp-type-7", "type 7", mp({"type": 7, "data": ["echo"], "nsp": "/"}), 1002),
    closes("mp-binary-event", "BINARY_EVENT (none with msgpack)",
           mp({"type": 5, "data": ["echo"], "nsp": "/"}), 1002),
    closes("mp-nsp-number", "nsp 5", mp({"type": 2, "data": ["echo"], "nsp": 5}), 1002),
    closes("mp-nsp-no-slash", "nsp 'chat'", mp({"type": 2, "data": ["echo"], "nsp": "chat"}),
           1002),
    closes("mp-id-negative", "id -1", mp({"type": 2, "data": ["echo"], "nsp": "/", "id": -1}),
           1002),
    closes("mp-id-uint64", "id 2^64-1", mp({"type": 2, "data": ["echo"], "nsp": "/",
                                           "id": 2**64 - 1}), 1002),
    closes("mp-id-float", "id 1.0", mp({"type": 2, "data": ["echo"], "nsp": "/", "id": 1.0}),
           1002),
    closes("mp-id-bool", "id true", mp({"type": 2, "data": ["echo"], "nsp": "/", "id": True}),
           1002),
    closes("mp-event-name-bytes", "an event name as bin", mp({"type": 2, "data": [b"echo"],
                                                             "nsp": "/"}), 1002),
    closes("mp-event-map", "EVENT data a map", mp({"type": 2, "data": {"a": 1}, "nsp": "/"}),
           1002),
    closes("mp-deep", "an array nested 60,000 deep (msgpack's stack limit)",
           B(b"\x82\xa4type\x02\xa4data" + b"\x91" * 60_000 + b"\x01"), 1002),
    closes("mp-text-packet", "a JSON text packet on the msgpack server", T('42["echo"]'), 1002),
    closes("mp-str-not-utf8", "a str that is not UTF-8", B(
        b"\x83\xa4type\x02\xa4data\x92\xa4echo\xa2\xff\xfe\xa3nsp\xa1/"), 1002),
    answers("mp-ping", "an Engine.IO ping (text, answered)", T("2"), "3"),
    answers("mp-ext", "an ext type in the data (echoed as is)",
            mp({"type": 2, "data": ["echo", msgpack.ExtType(5, b"x")], "nsp": "/", "id": 1}),
            mp_echo(1, msgpack.ExtType(5, b"x"))),
    closes("mp-int-keys", "a map with integer keys in the data (msgpack's strict_map_key, "
           "as python-socketio)", mp({"type": 2, "data": ["echo", {1: 2}], "nsp": "/", "id": 2}),
           1002),
    answers("mp-unknown-ns", "CONNECT to an unknown namespace",
            mp({"type": 0, "nsp": "/nope"}),
            {"type": 4, "data": {"message": "Invalid namespace"}, "nsp": "/nope"}),
]


# -- connection state recovery: forged pid/offset in CONNECT auth --------------------------------
def forged(auth: Any) -> str:
    return "40" + json.dumps(auth)


RECOVERY_TABLE: list[WsRow] = [
    *(answers(f"recovery-{name}", f"CONNECT auth {{pid, offset}} with {what} (a new socket)",
              T(forged(auth)), r'40\{"sid":"[^"]+","pid":"[^"]+"\}', connected=False)
      for name, what, auth in [
          ("numbers", "numbers", {"pid": 5, "offset": 7}),
          ("objects", "objects", {"pid": {"a": 1}, "offset": {"b": [1]}}),
          ("arrays", "arrays", {"pid": [], "offset": []}),
          ("nulls", "nulls", {"pid": None, "offset": None}),
          ("bools", "booleans", {"pid": True, "offset": False}),
          ("huge-strings", "60 KB strings", {"pid": "p" * 30_000, "offset": "o" * 30_000}),
          ("unknown-pid", "an unknown pid", {"pid": "x" * 22, "offset": "0-1"}),
          ("offset-only", "an offset alone", {"offset": "abc"}),
      ]),
]


# -- the upgrade of a polling session --------------------------------------------------------------
@dataclass(frozen=True)
class ProbeRow:
    id: str
    input: str
    send: bytes
    answer: str
    code: int | None = None
    replies: tuple[str, ...] = ()
    #: Whether polling goes on after (a GET of the session is answered, not 400).
    polling: bool = True


PROBE_TABLE: list[ProbeRow] = [
    ProbeRow("probe-twice", "b'2probe' twice", T("2probe") + T("2probe"), "close 1002", 1002,
             ("3probe",)),
    ProbeRow("upgrade-without-probe", "b'5' before a probe", T("5"), "close 1002", 1002),
    ProbeRow("probe-ping", "a plain ping instead of the probe", T("2"), "close 1002", 1002),
    ProbeRow("probe-message", "a Socket.IO packet before the upgrade", T('42["echo"]'),
             "close 1002", 1002),
    ProbeRow("probe-binary", "a binary frame before the upgrade", B(b"2probe"), "close 1002",
             1002),
    ProbeRow("probe-then-garbage", "the probe, then b'9'", T("2probe") + T("9"), "close 1002",
             1002, ("3probe",)),
    ProbeRow("probe-upgrade-twice", "the probe, the upgrade, the upgrade again (a packet of "
             "the session now: not Engine.IO's there)", T("2probe") + T("5") + T("5"),
             "close 1002", 1002, ("3probe",), polling=False),
    ProbeRow("probe-and-upgrade", "the probe and the upgrade (a GET now is 400)",
             T("2probe") + T("5") + T('421["echo",1]'), "frames", None,
             ("3probe", re.escape("431[1]")), polling=False),
]


# -- helpers -------------------------------------------------------------------------------------
_RSS_BEFORE: list[int] = []


@pytest.fixture(autouse=True)
def _rss_baseline() -> None:
    if not _RSS_BEFORE:
        gc.collect()
        _RSS_BEFORE.append(rss_kb())


async def exchange(port: int, data: bytes, timeout: float = 5.0,
                   head: bool = False) -> tuple[Any, Any]:
    """Send ``data`` on a new connection: (the connection, its first response or None);
    ``head``: the response to a HEAD (no body)."""
    conn = await raw_connect(port)
    conn.write(data)
    if head:
        got = await conn.wait_for(lambda d: b"\r\n\r\n" in d, timeout)
        status, headers, _ = parse_response(got)
        return conn, (status, headers, b"")
    got = await conn.wait_for(lambda d: split_response(d) is not None, timeout)
    return conn, split_response(got)


async def open_session(port: int) -> str:
    """A polling session's sid (its handshake GET answered)."""
    conn, response = await exchange(port, get("EIO=4&transport=polling"))
    conn.abort()
    assert response is not None and response[0] == 200, response
    body = response[2]
    assert body.startswith(b"0{"), body
    sid: str = json.loads(body[1:])["sid"]
    return sid


def texts(frames: list[tuple[int, bytes]]) -> list[Any]:
    """The messages of the frames: text as str, binary as bytes (no control frames)."""
    return [payload.decode() if op == 0x1 else payload for op, payload in frames
            if op in (0x1, 0x2)]


async def ws_open(port: int, query: str = WS_PATH, connect: str | bytes | None = "40") -> Any:
    """A raw WebSocket on ``query`` after Engine.IO's open packet (and the CONNECT's
    answer, unless ``connect`` is None)."""
    conn = await raw_connect(port)
    conn.write(handshake(query))
    await conn.wait_for(lambda d: b"\r\n\r\n" in d, 5)
    assert conn.data.startswith(b"HTTP/1.1 101 "), conn.data[:300]
    if "sid=" not in query:
        frames = await conn.wait_frames(1)
        assert texts(frames)[0].startswith("0{"), frames
    if connect is not None:
        conn.write(T(connect) if isinstance(connect, str) else B(connect))
        frames = await conn.wait_frames(2)
        answer = frames[1][1]
        assert answer.startswith(b"40") or b"\xa3sid" in answer, frames
    return conn


def matches(got: Any, want: Any) -> bool:
    if isinstance(want, str):
        return isinstance(got, str) and re.fullmatch(want, got) is not None
    if isinstance(want, bytes):
        return got == want
    return isinstance(got, bytes) and msgpack.unpackb(got) == want


def test_the_tables_have_distinct_ids_and_enough_rows():
    tables = [POLL_TABLE, WS_TABLE, MSGPACK_TABLE, RECOVERY_TABLE, PROBE_TABLE]
    ids = [row.id for table in tables for row in table]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 100


# -- the tables, row by row ----------------------------------------------------------------------
@pytest.mark.parametrize("row", POLL_TABLE, ids=[r.id for r in POLL_TABLE])
@pytest_twisted.ensureDeferred
async def test_polling(live, row: PollRow):
    server = await start(live)
    polling = server.sio._polling
    sid = await open_session(server.port) if needs(row.send) else None
    waiting = None
    if row.waiting_get:
        waiting = await raw_connect(server.port)
        waiting.write(get().replace(b"SID", sid.encode()))
        assert await until(lambda: polling[sid]._waiter is not None)
    with captured_log() as events:
        send = row.send if sid is None else row.send.replace(b"SID", sid.encode())
        if row.answer == "dropped":
            conn = await raw_connect(server.port)
            conn.write(send)
            assert await closed_by_server(conn, CONNECT_TIMEOUT + 2)
            assert conn.data == b"", conn.data[:300]
        else:
            conn, response = await exchange(server.port, send, head=send.startswith(b"HEAD"))
            assert response is not None, conn.data[:300]
            status, headers, body = response
            assert status == row.status, conn.data[:400]
            if row.code is not None:
                assert headers.get(b"content-type") == [b"application/json"], headers
                assert json.loads(body)["code"] == row.code, body
            if row.body is not None:
                assert body == row.body
            for name, value in row.headers:
                want = (None if value is None else sorted(value) if isinstance(value, tuple)
                        else [value])
                got = sorted(headers[name]) if name in headers else None
                assert got == want, (name, headers)
            assert b"Traceback" not in body
            conn.abort()
    if row.session is not None:
        assert (sid in polling) is row.session
    if waiting is not None:  # the waiting GET had the close packet (or a noop)
        answered = await waiting.wait_for(lambda d: split_response(d) is not None, 5)
        assert split_response(answered) is not None
        waiting.abort()
    assert failures(events) == []
    # The server still serves: a fresh session opens.
    await open_session(server.port)


async def run_ws_row(server: Any, row: WsRow, msgpack_server: bool = False) -> None:
    connect: str | bytes | None = None
    if row.connected:
        connect = msgpack.packb({"type": 0, "nsp": "/"}) if msgpack_server else "40"
    conn = await ws_open(server.port, connect=connect)
    before = len(conn.frames())
    with captured_log() as events:
        conn.write(row.send)
        if row.code is not None:
            code = await wait_close_handshake(conn)
            assert code == row.code, (code, conn.frames()[before:][-3:])
            assert [op for op, _ in conn.frames()[before:]] == [0x8], conn.frames()[before:]
            assert await closed_by_server(conn, 2)
        else:
            want = len(row.replies)
            frames = await conn.wait_frames(before + want, timeout=5)
            got = texts(frames[before:])
            assert len(got) == want, got
            assert all(matches(g, w) for g, w in zip(got, row.replies, strict=True)), (
                [g[:200] for g in got], row.replies)
            # Nothing more, and the connection still echoes.
            if msgpack_server:
                conn.write(mp({"type": 2, "data": ["echo", "still"], "nsp": "/", "id": 77}))
                last = mp_echo(77, "still")
            else:
                conn.write(T('4277["echo","still"]'))
                last = re.escape('4377["still"]')
            frames = await conn.wait_frames(before + want + 1, timeout=5)
            assert len(frames) == before + want + 1, texts(frames[before:])
            assert matches(texts(frames)[-1], last), frames[before:]
            conn.send_close(1000)
            assert await wait_close_handshake(conn) == 1000
            assert await closed_by_server(conn, 2)
    assert failures(events) == []
    assert await until(lambda: not server.site.connections)


@pytest.mark.parametrize("row", WS_TABLE, ids=[r.id for r in WS_TABLE])
@pytest_twisted.ensureDeferred
async def test_websocket(live, row: WsRow):
    await run_ws_row(await start(live), row)


@pytest.mark.parametrize("row", MSGPACK_TABLE, ids=[r.id for r in MSGPACK_TABLE])
@pytest_twisted.ensureDeferred
async def test_msgpack(live, row: WsRow):
    await run_ws_row(await start(live, make_server(serializer="msgpack")), row,
                     msgpack_server=True)


@pytest.mark.parametrize("row", RECOVERY_TABLE, ids=[r.id for r in RECOVERY_TABLE])
@pytest_twisted.ensureDeferred
async def test_recovery_auth(live, row: WsRow):
    sio = make_server(connection_state_recovery=True)
    restored: list[bool] = []

    @sio.event
    async def connect(sid: str, environ: Any, auth: Any) -> None:
        restored.append(sio.recovered(sid))

    await run_ws_row(await start(live, sio), row)
    assert restored == [False]


@pytest.mark.parametrize("row", PROBE_TABLE, ids=[r.id for r in PROBE_TABLE])
@pytest_twisted.ensureDeferred
async def test_probe(live, row: ProbeRow):
    server = await start(live)
    sid = await open_session(server.port)
    # The CONNECT, by POST; its answer waits for a GET.
    conn, response = await exchange(server.port, post(b"40").replace(b"SID", sid.encode()))
    conn.abort()
    assert response is not None and response[0] == 200
    conn, response = await exchange(server.port, get().replace(b"SID", sid.encode()))
    conn.abort()
    assert response is not None and response[2].startswith(b"40{"), response
    with captured_log() as events:
        ws = await ws_open(server.port, WS_PATH + "&sid=" + sid, connect=None)
        ws.write(row.send)
        if row.code is not None:
            assert await wait_close_handshake(ws) == row.code
        frames = await ws.wait_frames(len(row.replies), timeout=5)
        got = texts(frames)
        assert len(got) == len(row.replies), got
        assert all(matches(g, w) for g, w in zip(got, row.replies, strict=True)), got
        if row.code is None:
            ws.send_close(1000)
            assert await wait_close_handshake(ws) == 1000
        assert await closed_by_server(ws, 2)
        # Polling goes on (the probe failed), or it is over (upgraded, then closed).
        if row.polling:
            conn, response = await exchange(
                server.port, post(b'421["echo",1]').replace(b"SID", sid.encode()))
            conn.abort()
            assert response is not None and response[0] == 200, response
            conn, response = await exchange(server.port, get().replace(b"SID", sid.encode()))
            conn.abort()
            assert response is not None and response[2] == b"431[1]", response
            assert sid in server.sio._polling
        else:
            conn, response = await exchange(server.port, get().replace(b"SID", sid.encode()))
            conn.abort()
            assert response is not None
            assert response[0] == 400, response
            assert json.loads(response[2])["code"] in (1, 3)
    assert failures(events) == []


# -- floods and slow clients ---------------------------------------------------------------------
async def echo_over_websocket(port: int) -> None:
    """A fresh WebSocket client connects, gets an ack, and closes."""
    conn = await ws_open(port)
    conn.write(T('421["echo","fresh"]'))
    frames = await conn.wait_frames(3)
    assert texts(frames)[2] == '431["fresh"]', frames
    conn.send_close(1000)
    assert await wait_close_handshake(conn) == 1000
    assert await closed_by_server(conn, 2)


async def polled_sid(port: int, sid: str) -> str:
    """CONNECT "/" over polling: the socket's sid."""
    conn, response = await exchange(port, post(b"40").replace(b"SID", sid.encode()))
    conn.abort()
    assert response is not None and response[0] == 200, response
    conn, response = await exchange(port, get().replace(b"SID", sid.encode()))
    conn.abort()
    assert response is not None and response[2].startswith(b"40{"), response
    socket_sid: str = json.loads(response[2][2:])["sid"]
    return socket_sid


@pytest_twisted.ensureDeferred
async def test_polling_sessions_from_one_ip_past_the_per_ip_limit_are_429(live):
    server = await start(live, max_connections_per_ip=5)
    sids = [await open_session(server.port) for _ in range(5)]
    conn, response = await exchange(server.port, get("EIO=4&transport=polling"))
    conn.abort()
    assert response is not None and response[0] == 429, response
    assert json.loads(response[2]) == {"code": 3, "message": "Too many connections"}
    assert len(server.sio._polling) == 5
    # A session that ends gives its place back.
    conn, response = await exchange(server.port, post(b"1").replace(b"SID", sids[0].encode()))
    conn.abort()
    assert response is not None and response[0] == 200
    assert sids[0] not in server.sio._polling
    await open_session(server.port)


@pytest_twisted.ensureDeferred
async def test_a_poller_that_never_polls_is_closed_at_the_queue_bound(live):
    """Packets for a session no GET takes queue up to ``MAX_QUEUED_PACKETS``; past it the
    session closes (the default ``--slow-consumer close``) and its memory goes."""
    server = await start(live)
    sid = await open_session(server.port)
    socket_sid = await polled_sid(server.port, sid)
    session = server.sio._polling[sid]
    most = 0
    for i in range(rsio.MAX_QUEUED_PACKETS + 10):
        await server.sio.emit("tick", i, to=socket_sid)
        most = max(most, len(session._queue))
        if session.closed:
            break
    assert session.closed and sid not in server.sio._polling
    assert most <= rsio.MAX_QUEUED_PACKETS
    assert session._queue == []
    conn, response = await exchange(server.port, get().replace(b"SID", sid.encode()))
    conn.abort()
    assert response is not None and response[0] == 400
    assert json.loads(response[2])["code"] == 1
    await echo_over_websocket(server.port)


@pytest_twisted.ensureDeferred
async def test_ten_thousand_tiny_packets_in_one_write_run_at_most_max_inflight_handlers(live):
    server = await start(live, max_inflight=16)
    held = server.sio.held
    conn = await ws_open(server.port)
    count = 10_000
    conn.write(T('42["hold"]') * count)
    assert await until(lambda: len(held) == 16)
    most = len(held)
    released = 0
    while released < count:
        assert await until(lambda: held, 5), released
        most = max(most, len(held))
        while held:
            held.pop().callback(None)
            released += 1
    assert most <= 16
    (socket,) = server.sio._sockets.values()
    assert not socket.consumer._tasks
    conn.write(T('421["echo","after"]'))
    frames = await conn.wait_frames(3)
    assert texts(frames)[2] == '431["after"]'
    conn.send_close(1000)
    assert await wait_close_handshake(conn) == 1000
    await echo_over_websocket(server.port)


@pytest_twisted.ensureDeferred
async def test_acks_that_never_come_leave_nothing_behind(live):
    """``call()``s to a client that never answers time out and forget their ack ids; and
    ``emit(callback=)``s past ``MAX_PENDING_ACKS`` forget the oldest: a socket's pending
    acks stay bounded."""
    from twisted.internet.defer import gatherResults

    server = await start(live)
    conn = await ws_open(server.port)
    (socket,) = server.sio._sockets.values()

    async def unanswered(i: int) -> str:
        try:
            await server.sio.call("ask", i, to=socket.sid, timeout=0.1)
        except rsio.CallTimeoutError as exc:
            return str(exc)
        return "answered?"

    got = await gatherResults([Deferred.fromCoroutine(unanswered(i)) for i in range(2000)])
    assert set(got) == {"no ack for 'ask' in 0.1 s"}
    assert socket.acks == {}
    for i in range(rsio.MAX_PENDING_ACKS + 100):
        await server.sio.emit("ask", i, to=socket.sid, callback=lambda *args: None)
    assert len(socket.acks) == rsio.MAX_PENDING_ACKS
    # A call() past the bound: its ack id is forgotten in time, it fails and says why.
    late = Deferred.fromCoroutine(server.sio.call("ask", to=socket.sid, timeout=None))
    for i in range(rsio.MAX_PENDING_ACKS):
        await server.sio.emit("ask", i, to=socket.sid, callback=lambda *args: None)
    with pytest.raises(rsio.CallTimeoutError, match="MAX_PENDING_ACKS"):
        await late
    conn.abort()
    assert await until(lambda: not server.site.connections)
    await echo_over_websocket(server.port)


@pytest_twisted.ensureDeferred
async def test_slowloris_200_polling_posts_are_dropped_at_the_connect_deadline(live):
    """200 POSTs to a session dribble their body (a byte every 50 ms): each is dropped at
    the 0.5 s connect deadline without an answer and no byte of them reaches the session,
    while a fresh client still works; the session lives on."""

    server = await start(live)
    sid = await open_session(server.port)
    body = b'42["echo","slow"]'
    head = post(b"", length=len(body)).replace(b"SID", sid.encode())
    clients = [await raw_connect(server.port) for _ in range(200)]
    for client in clients:
        client.write(head)
    loop = dribbling(clients, body)
    try:
        await echo_over_websocket(server.port)
        assert await until(lambda: all(c.is_closed for c in clients), 4)
    finally:
        loop.stop()
    assert all(c.data == b"" for c in clients)
    assert sid in server.sio._polling
    assert not server.site.open_channels


# -- last: the server is still fine ------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_zz_after_everything_a_fresh_client_works_and_rss_grew_under_50_mb(live):
    server = await start(live)
    await echo_over_websocket(server.port)
    sid = await open_session(server.port)
    await polled_sid(server.port, sid)
    gc.collect()
    grown_mb = (rss_kb() - _RSS_BEFORE[0]) / 1024
    assert grown_mb < 50, f"RSS grew by {grown_mb:.1f} MB over the hostile Socket.IO suite"
