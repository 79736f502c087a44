"""Hostile input against a real listening server: every malformed handshake and frame gets
its specific answer (RFC 9110/9112 for the request, RFC 6455 after the upgrade).

``HEAD_TABLE`` and ``FRAME_TABLE`` below ARE the documentation: each row is one input, sent
as raw bytes over TCP to ``realtime.examples.bench`` (``/echo``), and the answer the server
gives to it. The server runs with its defaults (1 MiB message and frame limits, 16 KiB of
request head, 500 header fields, 8 KiB request-target) except a short connect deadline
(``connect_timeout=0.5``), so that the rows that are dropped at the deadline run fast.

Answers, in short:

- ``HTTP n``: a complete response with status ``n`` (a ``Content-Length`` body). A refusal of
  malformed input also says ``Connection: close`` and the server closes the connection
  (after the answer; it reads and discards what the client still sends for up to 2 s, so a
  client still writing a 200 KB header reads the 431 instead of a reset).
- ``dropped``: the server closes without a byte at the connect deadline (the request never
  completed).
- ``close n``: after ``101 Switching Protocols`` the server sends a close frame with code
  ``n`` (1002 protocol error, 1007 invalid UTF-8, 1009 too big); when the client answers
  the close, or at the close deadline if it does not, the server closes the TCP connection.
- ``frames``: the frames the server sends back (an echo, a pong).

After the tables: a ping flood (answered, pong for ping), a ping flood from a client that
does not read (the slow-consumer policy closes it with 4008; the server's queue stays
bounded), 200 slowloris clients (all dropped at the connect deadline while a fresh client
still echoes), a dribbled second request on a keep-alive connection (dropped too), and last
a fresh client that still echoes while the server's RSS has grown by less than 50 MB over
the whole module. ``tests/test_hostile_parsing.py`` feeds random input to the same checks.
"""

from __future__ import annotations

import base64
import gc
import os
import socket
import struct
import time
from dataclasses import dataclass, field

import pytest
import pytest_twisted

from realtime.examples.bench import application
from tests.clients import (
    after_headers,
    client_frame,
    closed_by_server,
    dribbling,
    handshake,
    parse_frames,
    raw_connect,
    rss_kb,
    split_response,
    wait_close_handshake,
)

CONNECT_TIMEOUT = 0.5
CLOSE_TIMEOUT = 0.5
MiB = 1024 * 1024
KEY = base64.b64encode(b"0123456789abcdef")


def head(request_line: bytes = b"GET /echo HTTP/1.1", *headers: bytes, end: bool = True) -> bytes:
    """A request head from its lines."""
    return b"\r\n".join((request_line, *headers)) + (b"\r\n\r\n" if end else b"\r\n")


WS = (
    b"Host: 127.0.0.1",
    b"Upgrade: websocket",
    b"Connection: Upgrade",
    b"Sec-WebSocket-Key: " + KEY,
    b"Sec-WebSocket-Version: 13",
)


def ws(*replace: bytes, drop: tuple[bytes, ...] = (), add: tuple[bytes, ...] = (),
       line: bytes = b"GET /echo HTTP/1.1") -> bytes:
    """A handshake with some header lines dropped (by name) or added."""
    names = {d.lower() for d in drop}
    lines = [h for h in WS if h.split(b":")[0].lower() not in names]
    return head(line, *lines, *replace, *add)


@dataclass(frozen=True)
class Row:
    id: str
    input: str
    send: bytes
    answer: str
    status: int | None = None
    headers: dict[bytes, bytes] = field(default_factory=dict)
    closes: bool = True


def http(id: str, input: str, send: bytes, status: int, closes: bool = True,
         **headers: bytes) -> Row:
    hdrs = {k.replace("_", "-").encode(): v for k, v in headers.items()}
    return Row(id, input, send, f"HTTP {status}", status, hdrs, closes)


def dropped(id: str, input: str, send: bytes) -> Row:
    return Row(id, input, send, "dropped")


# -- the request head: RFC 9110/9112 and RFC 6455 4.2.1 -----------------------------------------
HEAD_TABLE: list[Row] = [
    # truncated input: never a complete head
    dropped("truncated-request-line", "b'GET /echo HTT' and silence", b"GET /echo HTT"),
    dropped("truncated-headers", "a handshake without its final CRLF",
            ws()[:-2]),
    # too large
    http("path-100k", "a 100 KB path (the line passes 16 KiB unfinished)",
         b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    http("path-10k", "a 10 KB path in a complete line (over the 8 KiB target limit)",
         ws(line=b"GET /" + b"a" * 10_000 + b" HTTP/1.1"), 414),
    http("line-junk-20k", "20 KB without a space or CRLF (no method)", b"A" * 20_000, 400),
    http("header-200k", "one 200 KB header value", ws(add=(b"X-Big: " + b"a" * 200_000,)), 431),
    http("headers-10000", "10,000 header fields",
         ws(add=tuple(b"X-%d: a" % i for i in range(10_000))), 431),
    http("headers-501", "501 small header fields (limit 500)",
         ws(add=tuple(b"X: a" for _ in range(496))), 431),
    http("head-17k", "17 lines of 1 KB (the whole head over 16 KiB)",
         ws(add=tuple(b"X-%d: " % i + b"a" * 1000 for i in range(17))), 431),
    http("subprotocols-1000-lines", "1,000 Sec-WebSocket-Protocol header lines",
         ws(add=tuple(b"Sec-WebSocket-Protocol: p%d" % i for i in range(1000))), 431),
    # the request line
    http("line-double-space", "b'GET  /echo HTTP/1.1' (two spaces)",
         ws(line=b"GET  /echo HTTP/1.1"), 400),
    http("line-http09", "b'GET /echo' (HTTP/0.9, no version)", b"GET /echo\r\n\r\n", 400),
    http("line-http2", "b'GET /echo HTTP/2.0'", ws(line=b"GET /echo HTTP/2.0"), 505),
    http("line-lowercase-version", "b'GET /echo http/1.1'", ws(line=b"GET /echo http/1.1"), 400),
    http("line-bad-method", "b'G(T /echo HTTP/1.1' (method not a token)",
         ws(line=b"G(T /echo HTTP/1.1"), 400),
    http("line-empty-lines", "two empty lines before the request line (one is tolerated)",
         b"\r\n\r\n" + ws(), 400),
    http("tls-on-plain-port", "a TLS ClientHello on the plain port (refused at its first byte)",
         bytes.fromhex("1603010200010001fc0303") + os.urandom(200), 400),
    http("ssh-on-http-port", "an SSH banner", b"SSH-2.0-OpenSSH_9.6\r\n", 400),
    # the request-target
    http("path-raw-utf8", "a raw UTF-8 path b'/\\xc3\\xa9'",
         ws(line=b"GET /\xc3\xa9 HTTP/1.1"), 400),
    http("path-raw-0x80", "a raw byte 0x80 in the path (twisted.web lets 0x7F-0xB0 through)",
         ws(line=b"GET /\x80 HTTP/1.1"), 400),
    http("path-bad-percent", "b'/echo%zz' (a malformed percent escape)",
         ws(line=b"GET /echo%zz HTTP/1.1"), 400),
    http("path-percent-truncated", "b'/echo%4' (a truncated percent escape)",
         ws(line=b"GET /echo%4 HTTP/1.1"), 400),
    http("path-percent-not-utf8", "b'/%ff' (percent-decodes to invalid UTF-8)",
         ws(line=b"GET /%ff HTTP/1.1"), 400),
    http("path-percent-nul", "b'/echo%00' (valid URI, decodes to a NUL: no route)",
         ws(line=b"GET /echo%00 HTTP/1.1"), 404),
    http("path-fragment", "b'/echo#x' (a fragment is not part of a request-target)",
         ws(line=b"GET /echo#x HTTP/1.1"), 400),
    http("path-not-origin-form", "b'echo' (no leading slash)", ws(line=b"GET echo HTTP/1.1"), 400),
    # header field lines
    http("header-nul-value", "a NUL in a header value", ws(add=(b"X-A: a\x00b",)), 400),
    http("header-cr-value", "a bare CR in a header value", ws(add=(b"X-A: a\rb",)), 400),
    http("header-ctl-value", "a control character (0x01) in a header value",
         ws(add=(b"X-A: a\x01b",)), 400),
    http("header-nel-value", "NEL (0x85) in a header value (a line break to str.splitlines)",
         ws(add=(b"X-A: a\x85b",)), 400),
    http("header-nul-name", "a NUL in a header name", ws(add=(b"X-\x00A: b",)), 400),
    http("bare-lf", "lines ended by a bare LF", ws().replace(b"\r\n", b"\n"), 400),
    http("obs-fold", "an obs-fold continuation line", ws(add=(b"X-A: a", b" folded")), 400),
    http("space-before-colon", "b'Host : x' (whitespace before the colon)",
         ws(add=(b"X-A : x",)), 400),
    http("header-no-colon", "a header line without a colon", ws(add=(b"X-A",)), 400),
    http("header-empty-name", "b': x' (an empty name)", ws(add=(b": x",)), 400),
    # message framing
    http("content-length-twice", "two Content-Length fields",
         ws(add=(b"Content-Length: 1", b"Content-Length: 2")), 400),
    http("content-length-junk", "b'Content-Length: 1x'", ws(add=(b"Content-Length: 1x",)), 400),
    http("content-length-and-chunked", "Content-Length and Transfer-Encoding: chunked",
         ws(add=(b"Transfer-Encoding: chunked", b"Content-Length: 3")), 400),
    http("transfer-encoding-gzip", "Transfer-Encoding: gzip (not implemented)",
         ws(add=(b"Transfer-Encoding: gzip",)), 501),
    http("transfer-encoding-identity", "Transfer-Encoding: identity and Content-Length "
         "(identity is no transfer coding since RFC 7230)",
         ws(add=(b"Transfer-Encoding: identity", b"Content-Length: 0")), 501),
    # Host
    http("host-missing", "an HTTP/1.1 handshake without Host", ws(drop=(b"Host",)), 400),
    http("host-twice", "two Host fields", ws(add=(b"Host: evil.example",)), 400),
    http("host-invalid", "b'Host: a/b' (not host[:port])", ws(b"Host: a/b", drop=(b"Host",)), 400),
    http("host-missing-plain", "GET /healthz HTTP/1.1 without Host",
         b"GET /healthz HTTP/1.1\r\n\r\n", 400),
    http("host-missing-http10", "GET /healthz HTTP/1.0 without Host (allowed in 1.0)",
         b"GET /healthz HTTP/1.0\r\n\r\n", 200, closes=False),
    # the WebSocket handshake (RFC 6455 4.2.1)
    http("ws-post", "POST with Upgrade: websocket", ws(line=b"POST /echo HTTP/1.1"), 405,
         allow=b"GET"),
    http("ws-http10", "an upgrade over HTTP/1.0", ws(line=b"GET /echo HTTP/1.0"), 400),
    http("ws-version-8", "Sec-WebSocket-Version: 8", ws(b"Sec-WebSocket-Version: 8",
         drop=(b"Sec-WebSocket-Version",)), 426, sec_websocket_version=b"13"),
    http("ws-version-missing", "no Sec-WebSocket-Version", ws(drop=(b"Sec-WebSocket-Version",)),
         426, sec_websocket_version=b"13"),
    http("ws-version-twice", "two Sec-WebSocket-Version fields",
         ws(add=(b"Sec-WebSocket-Version: 13",)), 400),
    http("ws-key-missing", "no Sec-WebSocket-Key", ws(drop=(b"Sec-WebSocket-Key",)), 400),
    http("ws-key-twice", "two Sec-WebSocket-Key fields",
         ws(add=(b"Sec-WebSocket-Key: " + KEY,)), 400),
    http("ws-key-not-base64", "b'Sec-WebSocket-Key: !!!notbase64!!!'",
         ws(b"Sec-WebSocket-Key: !!!notbase64!!!", drop=(b"Sec-WebSocket-Key",)), 400),
    http("ws-key-15-bytes", "a key that decodes to 15 bytes",
         ws(b"Sec-WebSocket-Key: " + base64.b64encode(b"x" * 15), drop=(b"Sec-WebSocket-Key",)),
         400),
    http("ws-upgrade-twice", "two Upgrade fields", ws(add=(b"Upgrade: websocket",)), 400),
    http("ws-connection-missing", "no Connection: upgrade", ws(drop=(b"Connection",)), 400),
    http("ws-upgrade-missing", "no Upgrade (a plain GET on a WebSocket route)",
         ws(drop=(b"Upgrade",)), 426, closes=False, upgrade=b"websocket"),
    http("ws-unknown-path", "an upgrade on a path with no route", ws(line=b"GET /nope HTTP/1.1"),
         404),
    Row("ws-subprotocols-1000", "1,000 subprotocols offered in one field (none chosen)",
        ws(add=(b"Sec-WebSocket-Protocol: " + b", ".join(b"p%d" % i for i in range(1000)),)),
        "HTTP 101", 101, closes=False),
    Row("ws-handshake-and-frame", "the handshake and a text frame in one write (echoed)",
        ws() + client_frame(0x1, b"early"), "HTTP 101", 101, closes=False),
]


# -- after the upgrade: RFC 6455 5 and 7.4 ---------------------------------------------------
@dataclass(frozen=True)
class FrameRow:
    id: str
    input: str
    send: bytes
    answer: str
    code: int | None = None
    frames: tuple[tuple[int, bytes], ...] = ()


def close(id: str, input: str, send: bytes, code: int) -> FrameRow:
    return FrameRow(id, input, send, f"close {code}", code=code)


def reply(id: str, input: str, send: bytes, *frames: tuple[int, bytes]) -> FrameRow:
    return FrameRow(id, input, send, "frames", frames=frames)


F = client_frame


def _unmasked_zero_key(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked frame with the all-zero key (the payload unchanged): quick to build."""
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        return struct.pack("!BB", first, 0x80 | n) + b"\0\0\0\0" + payload
    if n < 65536:
        return struct.pack("!BBH", first, 0x80 | 126, n) + b"\0\0\0\0" + payload
    return struct.pack("!BBQ", first, 0x80 | 127, n) + b"\0\0\0\0" + payload


def fragments(count: int, size: int, last: int) -> bytes:
    """A binary message in ``count`` fragments: ``count - 1`` of ``size`` bytes, then ``last``."""
    chunk = b"x" * size
    parts = [_unmasked_zero_key(0x2, chunk, fin=False)]
    parts += [_unmasked_zero_key(0x0, chunk, fin=False)] * (count - 2)
    parts.append(_unmasked_zero_key(0x0, b"x" * last))
    return b"".join(parts)


def nonminimal_length(payload: bytes) -> bytes:
    return struct.pack("!BBQ", 0x81, 0x80 | 127, len(payload)) + b"\0\0\0\0" + payload


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return F(0x8, struct.pack("!H", code) + reason)


FRAME_TABLE: list[FrameRow] = [
    close("unmasked", "an unmasked client frame", F(0x1, b"hi", mask=False), 1002),
    close("opcode-3", "reserved data opcode 3", F(0x3, b"x"), 1002),
    close("opcode-7", "reserved data opcode 7", F(0x7, b"x"), 1002),
    close("opcode-11", "reserved control opcode 0xB", F(0xB, b"x"), 1002),
    close("opcode-15", "reserved control opcode 0xF", F(0xF, b"x"), 1002),
    close("rsv1", "RSV1 set without an extension", F(0x1, b"x", rsv=4), 1002),
    close("rsv2", "RSV2 set", F(0x1, b"x", rsv=2), 1002),
    close("rsv3", "RSV3 set", F(0x1, b"x", rsv=1), 1002),
    close("ping-fragmented", "a ping with FIN clear (fragmented control frame)",
          F(0x9, b"x", fin=False), 1002),
    close("close-fragmented", "a close with FIN clear", F(0x8, b"\x03\xe8", fin=False), 1002),
    close("ping-126", "a ping with a 126-byte payload (control frames: 125 at most)",
          F(0x9, b"x" * 126), 1002),
    close("length-2^63", "a 64-bit length with the top bit set (2^63)",
          F(0x2, b"", length=2**63), 1002),
    close("length-2^63-1", "a length of 2^63-1 (over the 1 MiB limit)",
          F(0x2, b"", length=2**63 - 1), 1009),
    close("length-1MiB+1", "one frame declaring 1 MiB + 1 bytes", F(0x2, b"", length=MiB + 1),
          1009),
    close("length-not-minimal", "a 2-byte payload with a 64-bit length field",
          nonminimal_length(b"hi"), 1002),
    close("continuation-first", "a continuation frame without a message to continue",
          F(0x0, b"x"), 1002),
    close("text-inside-binary", "a text frame inside a fragmented binary message",
          F(0x2, b"a", fin=False) + F(0x1, b"b"), 1002),
    close("utf8-invalid", "invalid UTF-8 in a text frame", F(0x1, b"\xff"), 1007),
    close("utf8-invalid-split", "invalid UTF-8 split across fragments (F0 9F | 98 28)",
          F(0x1, b"a\xf0\x9f", fin=False) + F(0x0, b"\x98\x28"), 1007),
    close("utf8-overlong", "an overlong UTF-8 encoding (C0 AF)", F(0x1, b"\xc0\xaf"), 1007),
    close("utf8-surrogate", "a UTF-16 surrogate encoded in UTF-8 (ED A0 80)",
          F(0x1, b"\xed\xa0\x80"), 1007),
    close("fragments-1025-over", "1 MiB + 1 byte in 1,025 fragments (limit 1 MiB)",
          fragments(1025, 1024, 1), 1009),
    *(close(f"close-code-{c}", f"a close with the invalid code {c}", close_frame(c), 1002)
      for c in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)),
    close("close-1-byte", "a close with a 1-byte payload", F(0x8, b"\x03"), 1002),
    close("close-reason-not-utf8", "a close whose reason is not UTF-8",
          close_frame(1000, b"\xff"), 1007),
    close("close-126", "a close with a 126-byte payload", close_frame(1000, b"r" * 124), 1002),
    close("close-1000", "a normal close (echoed)", close_frame(1000, b"bye"), 1000),
    close("close-4000", "a close with an application code (answered 1000)", close_frame(4000),
          1000),
    close("close-empty", "a close without a code (answered 1000)", F(0x8, b""), 1000),
    reply("fragments-1024-at-limit", "exactly 1 MiB in 1,024 fragments (echoed)",
          fragments(1024, 1024, 1024), (0x2, b"x" * MiB)),
    reply("utf8-valid-split", "valid UTF-8 split inside a character across fragments (echoed)",
          F(0x1, b"a\xf0\x9f", fin=False) + F(0x0, b"\x98\x80"), (0x1, "a\U0001f600".encode())),
    reply("ping-inside-message", "a ping between two fragments (pong, then the echo)",
          F(0x2, b"a", fin=False) + F(0x9, b"p") + F(0x0, b"b"), (0xA, b"p"), (0x2, b"ab")),
    reply("ping-125", "a ping with a 125-byte payload (pong with the same payload)",
          F(0x9, b"p" * 125), (0xA, b"p" * 125)),
    reply("pong-unsolicited", "an unsolicited pong (ignored)", F(0xA, b"x") + F(0x1, b"ok"),
          (0x1, b"ok")),
    reply("empty-text", "an empty text frame (echoed)", F(0x1, b""), (0x1, b"")),
]


# -- helpers -------------------------------------------------------------------------------------
_RSS_BEFORE: list[int] = []


@pytest.fixture(autouse=True)
def _rss_baseline() -> None:
    """The test process's RSS when this module's first test starts."""
    if not _RSS_BEFORE:
        gc.collect()
        _RSS_BEFORE.append(rss_kb())


async def start(live, **config):
    config.setdefault("connect_timeout", CONNECT_TIMEOUT)
    config.setdefault("close_timeout", CLOSE_TIMEOUT)
    return await live(application, **config)


def test_the_table_has_at_least_30_cases():
    assert len(HEAD_TABLE) + len(FRAME_TABLE) >= 30
    ids = [r.id for r in HEAD_TABLE] + [r.id for r in FRAME_TABLE]
    assert len(ids) == len(set(ids))


# -- the table, row by row -----------------------------------------------------------------------
@pytest.mark.parametrize("row", HEAD_TABLE, ids=[r.id for r in HEAD_TABLE])
@pytest_twisted.ensureDeferred
async def test_head(live, row: Row):
    server = await start(live)
    conn = await raw_connect(server.port)
    started = time.monotonic()
    conn.write(row.send)
    if row.answer == "dropped":
        assert await closed_by_server(conn, CONNECT_TIMEOUT + 2)
        assert conn.data == b"", conn.data[:200]
        assert time.monotonic() - started >= CONNECT_TIMEOUT - 0.1  # at the deadline
        return
    data = await conn.wait_for(lambda d: split_response(d) is not None, 5)
    response = split_response(data)
    assert response is not None, f"no complete response: {data[:300]!r}"
    status, headers, body = response
    assert status == row.status, data[:300]
    for name, value in row.headers.items():
        assert headers.get(name) == [value], headers
    if status == 101:
        frames = parse_frames(after_headers(data))
        if row.id == "ws-handshake-and-frame":
            frames = await conn.wait_frames(1)
            assert frames == [(0x1, b"early")]
        else:
            assert b"sec-websocket-protocol" not in headers
            conn.send_text("still echoing")
            assert await conn.wait_frames(1) == [(0x1, b"still echoing")]
        conn.send_close(1000)
        assert await wait_close_handshake(conn) == 1000
        assert await closed_by_server(conn, 2)
        return
    assert body, "a refusal carries a short body"
    assert b"Traceback" not in body
    if row.closes:
        assert headers.get(b"connection") == [b"close"], headers
        assert await closed_by_server(conn, 3), "the server must close after the refusal"
        # Nothing after the one answer.
        assert conn.data.count(b"HTTP/1.") == 1
    else:
        conn.abort()
        await conn.closed(1)


@pytest.mark.parametrize("row", FRAME_TABLE, ids=[r.id for r in FRAME_TABLE])
@pytest_twisted.ensureDeferred
async def test_frame(live, row: FrameRow):
    server = await start(live)
    conn = await raw_connect(server.port)
    conn.write(handshake("/echo"))
    await conn.wait_for(lambda d: b"\r\n\r\n" in d, 5)
    assert conn.data.startswith(b"HTTP/1.1 101 "), conn.data[:200]
    conn.write(row.send)
    if row.answer == "frames":
        want = len(row.frames)
        frames = await conn.wait_frames(want, timeout=10)
        assert frames[:want] == list(row.frames)
        conn.send_close(1000)
        assert await wait_close_handshake(conn) == 1000
    else:
        code = await wait_close_handshake(conn)
        assert code == row.code, (code, conn.frames()[-1:])
        # Nothing but the close frame (and no echo of the bad input).
        assert [op for op, _ in conn.frames()] == [0x8]
    assert await closed_by_server(conn, 2), "the server must close the TCP connection"
    assert not server.site.connections


@pytest_twisted.ensureDeferred
async def test_close_deadline_drops_a_peer_that_never_answers_the_close(live):
    """After a protocol error the server's close frame waits ``close_timeout`` for the
    client's reply, then the TCP connection is dropped (Autobahn alone would wait forever:
    its close-handshake timer is off)."""
    server = await start(live)
    conn = await raw_connect(server.port)
    conn.write(handshake("/echo") + F(0x1, b"hi", mask=False))
    assert await conn.wait_close_frame(timeout=5) is not None
    assert await closed_by_server(conn, CLOSE_TIMEOUT + 2)


# -- floods and slow clients ---------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_ping_flood_gets_a_pong_per_ping_and_echo_still_works(live):
    server = await start(live)
    conn = await raw_connect(server.port)
    conn.write(handshake("/echo"))
    await conn.wait_for(lambda d: b"\r\n\r\n" in d, 5)
    count = 10_000
    conn.write(_unmasked_zero_key(0x9, b"p" * 16) * count + F(0x1, b"after the flood"))
    frames = await conn.wait_frames(count + 1, timeout=20)
    assert [op for op, _ in frames[:count]] == [0xA] * count
    assert frames[count] == (0x1, b"after the flood")
    conn.send_close(1000)
    assert await wait_close_handshake(conn) == 1000
    assert await closed_by_server(conn, 2)


@pytest_twisted.ensureDeferred
async def test_ping_flood_from_a_client_that_does_not_read_meets_the_slow_consumer_policy(live):
    """Pongs go through the outbound queue: a client that floods pings and never reads is
    closed with 4008 (the default ``--slow-consumer close``) and the server's queue never
    holds more than ``max_send_buffer`` plus one pong."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    limit = 64 * 1024
    server = await start(live, max_send_buffer=limit)
    conn = await raw_connect(server.port)
    conn.proto.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn.write(handshake("/echo"))
    await conn.wait_for(lambda d: b"\r\n\r\n" in d, 5)
    (ws_conn,) = server.site.connections
    ws_conn.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    conn.proto.transport.pauseProducing()  # stop reading: the pongs back up
    burst = _unmasked_zero_key(0x9, b"p" * 125) * 2000  # 262 KB of pings, 254 KB of pongs
    most = 0
    for _ in range(200):
        if server.site.slow_consumer_closes or ws_conn.finished:
            break
        conn.write(burst)
        await deferLater(reactor, 0.01, lambda: None)
        most = max(most, ws_conn._outq_bytes)
    assert server.site.slow_consumer_closes == 1
    assert most <= limit + 127
    # The client never reads: the close deadline drops it.
    for _ in range(300):
        if ws_conn.finished:
            break
        await deferLater(reactor, 0.01, lambda: None)
    assert ws_conn.finished and ws_conn.disconnect_code == 4008
    conn.abort()
    await conn.closed(1)


@pytest_twisted.ensureDeferred
async def test_slowloris_200_clients_all_dropped_at_the_connect_deadline(live):
    """200 clients each dribble a handshake (one byte every 50 ms); every one is dropped at
    the 0.5 s connect deadline, without an answer, while a fresh client still echoes."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    server = await start(live)
    request = handshake("/echo")
    clients = [await raw_connect(server.port) for _ in range(200)]
    loop = dribbling(clients, request)
    try:
        # Meanwhile, a fresh client connects and echoes.
        fresh = await raw_connect(server.port)
        fresh.write(handshake("/echo"))
        await fresh.wait_for(lambda d: b"\r\n\r\n" in d, 5)
        assert fresh.data.startswith(b"HTTP/1.1 101 ")
        fresh.send_text("not starved")
        assert await fresh.wait_frames(1) == [(0x1, b"not starved")]
        for _ in range(400):
            if all(c.is_closed for c in clients):
                break
            await deferLater(reactor, 0.01, lambda: None)
    finally:
        loop.stop()
    assert all(c.is_closed for c in clients), sum(not c.is_closed for c in clients)
    assert all(c.data == b"" for c in clients)
    assert not server.site.open_channels  # the 200 are gone; the fresh one is a WebSocket
    # The fresh WebSocket outlived the deadline (it completed its handshake in time).
    fresh.send_text("still here")
    assert (await fresh.wait_frames(2))[1] == (0x1, b"still here")
    fresh.send_close(1000)
    assert await wait_close_handshake(fresh) == 1000
    assert await closed_by_server(fresh, 2)


@pytest_twisted.ensureDeferred
async def test_dribbled_second_request_on_a_keep_alive_connection_is_dropped(live):
    """The connect deadline also covers each later request on a keep-alive connection
    (twisted.web's idle timeout restarts on every byte)."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    server = await start(live)
    conn = await raw_connect(server.port)
    conn.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    await conn.wait_for(lambda d: split_response(d) is not None, 5)
    assert conn.data.startswith(b"HTTP/1.1 200 ")
    await deferLater(reactor, CONNECT_TIMEOUT + 0.2, lambda: None)  # idle: no deadline
    assert not conn.is_closed
    second = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    for i in range(len(second) - 1):
        if conn.is_closed:
            break
        conn.write(second[i : i + 1])
        await deferLater(reactor, 0.05, lambda: None)
    assert await closed_by_server(conn, CONNECT_TIMEOUT + 2)
    assert conn.data.count(b"HTTP/1.1 ") == 1


@pytest_twisted.ensureDeferred
async def test_absolute_form_targets_route_and_name_the_host(live):
    """RFC 9112 3.2.2: ``GET http://host:port/path HTTP/1.1`` (what a client sends to a
    proxy, and a server must accept): built-in paths and the application's routes answer
    as for ``/path``, WebSocket upgrades too, and the target's authority is the Host (a
    malformed Host header beside it is ignored); one with an empty authority is 400."""
    server = await start(live)
    authority = f"127.0.0.1:{server.port}".encode()

    async def status(request: bytes) -> int:
        conn = await raw_connect(server.port)
        conn.write(request)
        await conn.wait_for(lambda d: split_response(d) is not None, 5)
        parsed = split_response(conn.data)
        conn.abort()
        assert parsed is not None
        return parsed[0]

    assert await status(b"GET http://" + authority + b"/healthz HTTP/1.1\r\nHost: a/b\r\n\r\n") \
        == 200
    assert await status(b"GET http:///healthz HTTP/1.1\r\nHost: x\r\n\r\n") == 400
    conn = await raw_connect(server.port)
    conn.write(handshake("/echo").replace(b"GET /echo", b"GET http://" + authority + b"/echo"))
    await conn.wait_for(lambda d: b"\r\n\r\n" in d, 5)
    assert conn.data.startswith(b"HTTP/1.1 101 ")
    conn.send_text("absolute")
    assert await conn.wait_frames(1) == [(0x1, b"absolute")]
    conn.abort()


# -- last: the server is still fine ------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_zz_after_everything_a_fresh_client_echoes_and_rss_grew_under_50_mb(live):
    server = await start(live)
    conn = await raw_connect(server.port)
    conn.write(handshake("/echo"))
    await conn.wait_for(lambda d: b"\r\n\r\n" in d, 5)
    assert conn.data.startswith(b"HTTP/1.1 101 ")
    conn.send_text("hello after the hostile suite")
    assert await conn.wait_frames(1) == [(0x1, b"hello after the hostile suite")]
    conn.send_close(1000)
    assert await wait_close_handshake(conn) == 1000
    assert await closed_by_server(conn, 2)
    gc.collect()
    grown_mb = (rss_kb() - _RSS_BEFORE[0]) / 1024
    assert grown_mb < 50, f"RSS grew by {grown_mb:.1f} MB over the hostile suite"

