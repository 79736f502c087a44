"""Differential: the same raw HTTP/1.x requests to realtime and to Daphne, each serving
the same ASGI app (``tests/e2e/httpdiff_app.py``: a pure ASGI app that says what it saw,
and Django's views through Django's ``ASGIHandler``), answers compared.

``TABLE`` below IS the record of how realtime's HTTP serving differs from Daphne's. Both
servers run once for the module as real processes on 127.0.0.1 (realtime under
``--reactor=asyncio``, as Django needs; Daphne as ``python -m daphne``), both with
``-t 1`` (``--http-timeout``). Each row writes raw bytes over TCP (several steps for
Expect, keep-alive, aborts) and reads what comes back; ``Answer`` holds the responses (status,
headers but ``Server`` and ``Date``, body, whether the framing completed), the 1xx
interim responses, whether the server closed the connection, and what the app saw
(``/seen/ROW``: its scope, its ``receive()`` messages with the body chunks merged, how it
ended). A row's ``daphne`` column says what is compared:

- ``SAME``: every part of the answer is equal (the scope's server port and realtime's
  lifespan ``state`` key aside), and realtime's answer is also checked on its own.
- ``STATUS``: the statuses and the connection's end are equal; the bodies differ as
  noise (Daphne's HTML error pages against realtime's short plain text).
- anything else: the words say what Daphne does; Daphne is not asked. Either realtime
  is deliberately stricter (README "Differences from Daphne") or Daphne misbehaves (a
  body on a HEAD response, a timeout checker that dies for good after one bad
  response), and the row checks realtime's correct answer alone.

The request-body chunking differs by design and is not compared: Daphne gives the app
8 KiB ``http.request`` messages, realtime 64 KiB (the body joined is compared).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.e2e.diffsupport import SAME, STATUS, beside, both, daphne, require
from tests.e2e.support import REPO, twistd

APP = "tests.e2e.httpdiff_app:application"
ENV = {"PYTHONPATH": str(REPO)}
#: How long a read waits for the next byte; how long an open connection is watched for a close.
READ_TIMEOUT = 8.0
OPEN_WAIT = 0.3
MiB = 1024 * 1024

require("daphne")


# -- the servers -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ports() -> Any:
    """``{"realtime": PORT, "daphne": PORT}``: both servers, started side by side."""
    with beside(twistd("--app", APP, "--port", "0", "-t", "1", reactor="asyncio"), ENV,
                daphne(APP, "-t", "1", env=ENV)) as (ours, theirs):
        yield {"realtime": ours.port, "daphne": theirs.port}


# -- a raw client ------------------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    #: The body ended as its framing said (no truncated chunked body or Content-Length).
    complete: bool

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


@dataclass
class Answer:
    replies: list[Reply] = field(default_factory=list)
    #: The server closed the connection after the replies (None: not watched).
    closed: bool | None = None
    #: Bytes after the replies that belong to none (a response longer than it said).
    extra: bytes = b""
    #: What the app saw (``/seen/ROW``, normalised), or None when the app never ran.
    seen: dict[str, Any] | None = None

    @property
    def statuses(self) -> list[int]:
        return [reply.status for reply in self.replies]


class _Reader:
    """Reads HTTP/1.x responses off a socket, keeping what follows them."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.eof = False

    def more(self) -> bool:
        if self.eof:
            return False
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    def line(self) -> bytes | None:
        while b"\r\n" not in self.buffer:
            if not self.more():
                return None
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def take(self, size: int) -> bytes:
        while len(self.buffer) < size and self.more():
            pass
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def until(self, marker: bytes) -> None:
        while marker not in self.buffer and self.more():
            pass

    def reply(self, method: str) -> Reply | None:
        line = self.line()
        if not line:
            return None
        status = int(line.split(b" ")[1])
        headers = []
        while (header := self.line()):
            name, _, value = header.partition(b":")
            headers.append((name.strip().lower().decode("latin-1"),
                            value.strip().decode("latin-1")))
        reply = Reply(status, [h for h in headers if h[0] not in ("server", "date")], b"", True)
        if method == "HEAD" or status in (204, 304) or status < 200:
            return reply
        if "chunked" in ",".join(reply.header("transfer-encoding")).lower():
            body = b""
            while True:
                size_line = self.line()
                if size_line is None:
                    reply.complete = False
                    break
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while self.line():  # trailers, up to the blank line
                        pass
                    break
                chunk = self.take(size + 2)
                body += chunk[:size]
                if len(chunk) < size + 2:
                    reply.complete = False
                    break
            reply.body = body
        elif reply.header("content-length"):
            size = int(reply.header("content-length")[0])
            reply.body = self.take(size)
            reply.complete = len(reply.body) == size
        else:  # delimited by the close
            while self.more():
                pass
            reply.body, self.buffer = self.buffer, b""
        return reply


#: A step: bytes to write, then what to read: the methods of the responses to parse, or
#: bytes to wait for, or nothing; "abort" closes the connection at once.
Step = tuple[bytes, "list[str] | bytes | None"]


def exchange(port: int, steps: tuple[Step, ...], end: str | None) -> Answer:
    answer = Answer()
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT) as sock:
        reader = _Reader(sock)
        for data, then in steps:
            if data:
                sock.sendall(data)
            if isinstance(then, bytes):
                reader.until(then)
            elif then:
                for method in then:
                    reply = reader.reply(method)
                    if reply is None:
                        break
                    answer.replies.append(reply)
        if end == "abort":  # a plain close: what was sent is read first
            return answer
        if end == "watch":
            sock.settimeout(OPEN_WAIT)
            try:
                answer.closed = not sock.recv(65536)
            except TimeoutError:
                answer.closed = False
        elif end == "closed":
            if not reader.eof:
                reader.more()
            answer.closed = reader.eof
        answer.extra = reader.buffer
    return answer


def _get(port: int, target: str) -> tuple[int, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        reply = _Reader(sock).reply("GET")
    assert reply is not None
    return reply.status, json.loads(reply.body)


#: How an app's record ends (``httpdiff_app``); "waiting" and None are not ends.
FINAL = ("answered", "returned", "raised", "told http.disconnect",
         "disconnected while reading the body")


def seen(port: int, row: str, absent: bool) -> dict[str, Any] | None:
    """What the app saw for ``row`` once it ended (bounded wait); None if it never ran."""
    deadline = time.monotonic() + (0.5 if absent else 6.0)
    record = None
    while time.monotonic() < deadline:
        _, record = _get(port, f"/seen/{row}")
        if record is not None and record["end"] in FINAL:
            break
        time.sleep(0.05)
    if record is None:
        return None
    scope = record["scope"]
    scope["server"] = [scope["server"][0], scope["server"][1] == port]
    # realtime's lifespan state (ASGI's lifespan state extension); Daphne sends no lifespan
    scope["keys"] = [key for key in scope["keys"] if key != "state"]
    events: list[dict[str, Any]] = []
    for event in record["events"]:  # the body's chunks joined: their sizes differ by design
        if (events and event["type"] == "http.request"
                and events[-1]["type"] == "http.request" and events[-1]["more_body"]):
            events[-1] = {**event, "size": events[-1]["size"] + event["size"]}
        else:
            events.append(event)
    record["events"] = events
    return record


# -- the table ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    id: str
    what: str
    steps: tuple[Step, ...]
    #: Realtime's answer, checked in every row.
    check: Callable[[Answer], None]
    #: SAME, STATUS, or what Daphne does (then not asked).
    daphne: str = SAME
    #: After the steps: "closed" (read until the server closes), "watch" (is it open a
    #: moment later?), "abort" (the client goes at once), None.
    end: str | None = "closed"
    #: Fetch what the app saw (a request of the row carries ``X-Row: NAME``): "yes";
    #: "absent" (the app must not run: a short wait); "" (not fetched).
    seen: str = ""


def req(method: str, target: str, *headers: str, body: bytes = b"", version: str = "HTTP/1.1",
        host: bool = True, close: bool = True, row: str = "") -> bytes:
    lines = [f"{method} {target} {version}"]
    if host:
        lines.append("Host: 127.0.0.1")
    lines.extend(headers)
    if row:
        lines.append(f"X-Row: {row}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def raw(*lines: bytes, body: bytes = b"") -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def expect(*statuses: int, closed: bool | None = None, body: bytes | None = None,
           headers: dict[str, list[str]] | None = None, complete: bool = True,
           scope: dict[str, Any] | None = None, got: bytes | None = None,
           end: str | None = None, absent: bool = False, extra: bytes = b"",
           ) -> Callable[[Answer], None]:
    """A check of realtime's answer: the statuses in order, and whichever of the rest is given
    (``headers``: those names' values, ``[]`` for absent; ``scope``: keys of what the app saw;
    ``got``: the body the app received; ``end``: how the app ended)."""

    def check(answer: Answer) -> None:
        assert answer.statuses == list(statuses), answer
        last = answer.replies[-1] if answer.replies else None
        if closed is not None:
            assert answer.closed is closed, answer
        if body is not None:
            assert last is not None and last.body == body, answer
        if last is not None and statuses and statuses[-1] >= 200:
            assert last.complete is complete, answer
        for name, values in (headers or {}).items():
            assert last is not None and last.header(name) == values, (name, answer)
        assert answer.extra == extra, answer
        if absent:
            assert answer.seen is None, answer
        if scope is not None or got is not None or end is not None:
            assert answer.seen is not None, answer
            for key, value in (scope or {}).items():
                assert answer.seen["scope"][key] == value, (key, answer.seen)
            if got is not None:
                assert answer.seen.get("body", "").encode("latin-1") == got, answer.seen
            if end is not None:
                assert answer.seen["end"] == end, answer.seen

    return check


def one(data: bytes, method: str = "GET") -> tuple[Step, ...]:
    return ((data, [method]),)


H = b"Host: 127.0.0.1"
C = b"Connection: close"
UPLOAD = bytes(range(256)) * 1200  # 300 KiB: several chunks for either server
STRICT = "serves it"  # Daphne's answer to much malformed input (realtime: RFC 9112's refusal)

TABLE: list[Row] = [
    # -- the basics: what the app sees ----------------------------------------------------------
    Row("get", "GET with a query (+ and %20), duplicate headers, mixed case, padding, an empty "
        "value, a name with '_' (left out: CVE-2015-0219)",
        one(req("GET", "/echo/a?x=1+2&y=%20", "X-Dup: 1", "x-dup: 2", "X-MiXeD: v",
                "X-Pad:   a b  ", "X-Empty:", "X_Dropped: 1", row="get")),
        expect(200, closed=True, end="answered", scope={
            "method": "GET", "path": "/echo/a", "raw_path": "/echo/a",
            "query_string": "x=1+2&y=%20", "root_path": "", "http_version": "1.1",
            "scheme": "http", "client": "127.0.0.1", "server": ["127.0.0.1", True],
            "headers": [["host", "127.0.0.1"], ["x-dup", "1"], ["x-dup", "2"],
                        ["x-mixed", "v"], ["x-pad", "a b"], ["x-empty", ""],
                        ["x-row", "get"], ["connection", "close"]]}),
        seen="yes"),
    Row("head", "HEAD to an app that sends a body: the head only, the GET's Content-Length",
        one(req("HEAD", "/status/200", row="head"), "HEAD"),
        expect(200, closed=True, body=b"", headers={"content-length": ["5"]},
               scope={"method": "HEAD"}, end="answered"),
        seen="yes"),
    Row("post-content-length", "POST with Content-Length",
        one(req("POST", "/echo", "Content-Length: 5", body=b"hello", row="post")),
        expect(200, closed=True, got=b"hello"), seen="yes"),
    Row("post-upload", "a 300 KiB POST (Daphne's app gets 8 KiB messages, ours 64 KiB)",
        one(req("POST", "/echo", f"Content-Length: {len(UPLOAD)}", body=UPLOAD, row="upload")),
        expect(200, closed=True, got=UPLOAD), seen="yes"),
    Row("chunked-body", "a chunked body with chunk extensions and trailers",
        one(req("POST", "/echo", "Transfer-Encoding: chunked", row="chunked",
                body=b"5;ext=1\r\nhello\r\n6;a=\"b\"\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")),
        expect(200, closed=True, got=b"hello world"), seen="yes"),
    Row("expect-100-continue", "Expect: 100-continue: the interim 100, then the body",
        ((req("POST", "/echo", "Content-Length: 5", "Expect: 100-continue", row="expect"),
          ["POST"]), (b"hello", ["POST"])),
        expect(100, 200, closed=True, got=b"hello"), seen="yes"),
    Row("pipelined", "four requests in one write: each answered in order, then the close",
        ((req("GET", "/nolength", close=False) + req("GET", "/cookies", close=False)
          + req("POST", "/echo", "Content-Length: 3", body=b"abc", close=False, row="pipe")
          + req("GET", "/status/204"), ["GET", "GET", "POST", "GET"]),),
        expect(200, 200, 200, 204, closed=True, got=b"abc"), seen="yes"),
    Row("keep-alive", "HTTP/1.1 without Connection: the connection stays for a second request",
        ((req("GET", "/nolength", close=False), ["GET"]),
         (req("GET", "/status/200"), ["GET"])),
        expect(200, 200, closed=True, body=b"hello", headers={"connection": ["close"]})),
    Row("keep-alive-open", "HTTP/1.1 without Connection: still open after the response",
        one(req("GET", "/status/200", close=False)),
        expect(200, closed=False, headers={"connection": []}), end="watch"),
    Row("http10", "HTTP/1.0, no Host: a response without length ends with the close",
        one(req("GET", "/nolength", version="HTTP/1.0", host=False, close=False)),
        expect(200, closed=True, body=b"no length", headers={"transfer-encoding": []})),
    Row("http10-keep-alive", "HTTP/1.0 with Connection: keep-alive (twisted.web closes)",
        one(req("GET", "/status/200", "Connection: keep-alive", version="HTTP/1.0",
                host=False, close=False)),
        expect(200, closed=True, body=b"hello")),
    Row("http10-post", "HTTP/1.0 POST with a body",
        one(req("POST", "/echo", "Content-Length: 5", body=b"hello", version="HTTP/1.0",
                host=False, close=False, row="post10")),
        expect(200, closed=True, got=b"hello", scope={"http_version": "1.0"}), seen="yes"),
    Row("lower-case-method", "a method in lower case reaches the app as sent (RFC 9110 9.1)",
        one(req("get", "/echo", row="lower")),
        expect(200, closed=True, scope={"method": "get"}), seen="yes"),
    Row("extension-method", "an extension method",
        one(req("PURGE", "/echo", row="purge")),
        expect(200, closed=True, scope={"method": "PURGE"}), seen="yes"),
    Row("pct-2f", "%2F in the path: decoded in path, kept in raw_path",
        one(req("GET", "/echo/a%2Fb", row="p2f")),
        expect(200, scope={"path": "/echo/a/b", "raw_path": "/echo/a%2Fb"}), seen="yes"),
    Row("pct-25", "%25 in the path", one(req("GET", "/echo/%25x", row="p25")),
        expect(200, scope={"path": "/echo/%x", "raw_path": "/echo/%25x"}), seen="yes"),
    Row("pct-utf8", "percent-encoded UTF-8 in the path", one(req("GET", "/echo/%C3%A9", row="pe")),
        expect(200, scope={"path": "/echo/\u00e9", "raw_path": "/echo/%C3%A9"}), seen="yes"),
    Row("dot-segments", "dot segments and empty segments are the app's",
        one(req("GET", "/echo/a/../b//c", row="dots")),
        expect(200, scope={"path": "/echo/a/../b//c"}), seen="yes"),
    Row("query-raw", "the query string as sent (invalid UTF-8 escapes too)",
        one(req("GET", "/echo?q=%FF&a=b+c&&x", row="query")),
        expect(200, scope={"query_string": "q=%FF&a=b+c&&x"}), seen="yes"),
    Row("options-star", "OPTIONS * reaches the app", one(req("OPTIONS", "*")),
        expect(404, closed=True)),
    Row("pct-invalid-utf8", "%FF in the path (not UTF-8 once decoded)",
        one(req("GET", "/echo/%FF", row="pff")),
        expect(400, closed=True, absent=True),
        daphne="serves it, with U+FFFD in path", seen="absent"),
    Row("pct-malformed", "a malformed percent escape (%zz)", one(req("GET", "/echo/%zz")),
        expect(400, closed=True), daphne="serves it, '%zz' in path"),
    Row("raw-utf8-path", "raw UTF-8 bytes in the path (not ASCII)",
        one(raw(b"GET /echo/\xc3\xa9 HTTP/1.1", H, C)), expect(400, closed=True),
        daphne=STATUS),
    Row("fragment", "a '#' in the request-target", one(req("GET", "/echo#x")),
        expect(400, closed=True), daphne="serves it, '#x' in path"),
    Row("absolute-form", "a target in absolute form: its path, its host as the Host",
        one(req("GET", "http://example.com:81/echo/abs?x=1", host=False, row="abs")),
        expect(200, scope={"path": "/echo/abs", "query_string": "x=1",
                           "headers": [["x-row", "abs"], ["connection", "close"],
                                       ["host", "example.com:81"]]}),
        daphne="misroutes it: path 'http://example.com:81/echo/abs'", seen="yes"),
    # -- the head: limits and malformed input ---------------------------------------------------
    Row("no-host-http11", "HTTP/1.1 without Host (RFC 9112 3.2: 400)",
        one(req("GET", "/echo", host=False)), expect(400, closed=True), daphne=STRICT),
    Row("two-hosts", "two Host headers (RFC 9112 3.2: 400)",
        one(req("GET", "/echo", "Host: 127.0.0.1")), expect(400, closed=True), daphne=STRICT),
    Row("te-and-cl", "Transfer-Encoding: chunked and Content-Length (request smuggling)",
        one(raw(b"POST /echo HTTP/1.1", H, b"Content-Length: 3", b"Transfer-Encoding: chunked",
                body=b"5\r\nhello\r\n0\r\n\r\n")), expect(400, closed=True), daphne=STATUS),
    Row("cl-and-te", "Content-Length, then Transfer-Encoding: chunked",
        one(raw(b"POST /echo HTTP/1.1", H, b"Transfer-Encoding: chunked", b"Content-Length: 3",
                body=b"5\r\nhello\r\n0\r\n\r\n")), expect(400, closed=True), daphne=STATUS),
    Row("te-identity-and-cl", "Transfer-Encoding: identity (no coding since RFC 7230) and "
        "Content-Length", one(raw(b"POST /echo HTTP/1.1", H, b"Transfer-Encoding: identity",
                                  b"Content-Length: 3", C, body=b"abc")),
        expect(501, closed=True), daphne="serves it, reading the Content-Length"),
    Row("te-identity-chunked", "Transfer-Encoding: identity, chunked",
        one(raw(b"POST /echo HTTP/1.1", H, b"Transfer-Encoding: identity, chunked",
                body=b"0\r\n\r\n")), expect(501, closed=True), daphne="400, no body"),
    Row("te-chunked-twice", "Transfer-Encoding: chunked in two header lines",
        one(raw(b"POST /echo HTTP/1.1", H, b"Transfer-Encoding: chunked",
                b"Transfer-Encoding: chunked", body=b"0\r\n\r\n")),
        expect(400, closed=True), daphne=STATUS),
    Row("te-chunked-case", "Transfer-Encoding: Chunked (codings are case-insensitive)",
        one(req("POST", "/echo", "Transfer-Encoding: Chunked", row="tecase",
                body=b"3\r\nabc\r\n0\r\n\r\n")),
        expect(200, closed=True, got=b"abc"), seen="yes"),
    Row("http10-chunked", "HTTP/1.0 with a chunked body: read, answered, then the close "
        "(RFC 9112 6.1: the framing is suspect)",
        one(req("POST", "/echo", "Transfer-Encoding: chunked", "Connection: keep-alive",
                version="HTTP/1.0", host=False, close=False, row="chunked10",
                body=b"3\r\nabc\r\n0\r\n\r\n")),
        expect(200, closed=True, got=b"abc"), seen="yes"),
    Row("te-gzip-chunked", "an unknown transfer coding",
        one(raw(b"POST /echo HTTP/1.1", H, b"Transfer-Encoding: gzip, chunked",
                body=b"0\r\n\r\n")), expect(501, closed=True), daphne="400, no body"),
    Row("two-content-lengths", "two Content-Length headers",
        one(raw(b"POST /echo HTTP/1.1", H, b"Content-Length: 5", b"Content-Length: 5",
                body=b"hello")), expect(400, closed=True), daphne=STATUS),
    Row("bad-chunk-size", "a chunk size that is not hex",
        one(raw(b"POST /echo HTTP/1.1", H, b"Transfer-Encoding: chunked",
                body=b"zz\r\nabc\r\n0\r\n\r\n")), expect(400, closed=True), daphne=STATUS),
    Row("obs-fold", "obsolete line folding (RFC 9112 5.2: 400)",
        one(raw(b"GET /echo HTTP/1.1", H, b"X-A: one", b" two", C)),
        expect(400, closed=True), daphne="folds it: 'one two'"),
    Row("bare-lf", "bare LF line endings (RFC 9112 2.2)",
        one(b"GET /echo HTTP/1.1\nHost: 127.0.0.1\nConnection: close\n\n"),
        expect(400, closed=True), daphne="no answer: it waits for more"),
    Row("bare-lf-header", "one header line ended by a bare LF",
        one(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\nConnection: close\r\n\r\n"),
        expect(400, closed=True), daphne=STATUS),
    Row("vt-in-value", "a vertical tab in a header value", one(raw(b"GET /echo HTTP/1.1", H,
                                                                  b"X-A: a\x0bb", C)),
        expect(400, closed=True), daphne=STATUS),
    Row("nel-in-value", "NEL (0x85) in a header value: a line break to str.splitlines()",
        one(raw(b"GET /echo HTTP/1.1", H, b"X-A: a\x85b", C)),
        expect(400, closed=True), daphne=STATUS),
    Row("space-before-colon", "whitespace between a header name and its colon",
        one(raw(b"GET /echo HTTP/1.1", b"Host : 127.0.0.1", C)), expect(400, closed=True),
        daphne=STATUS),
    Row("http-1.2", "HTTP/1.2 (RFC 9110 15.6.6: 505)",
        one(raw(b"GET /echo HTTP/1.2", H)), expect(505, closed=True), daphne="400, no body"),
    Row("header-16000", "a 16,000-byte header: within both servers' 16 KiB head",
        one(req("GET", "/status/200", "X-Long: " + "a" * 16000)), expect(200, closed=True)),
    Row("header-16400", "a 16,400-byte header: over the 16 KiB head (431)",
        one(req("GET", "/status/200", "X-Long: " + "a" * 16400)), expect(431, closed=True),
        daphne="closes without a word"),
    Row("headers-499", "499 header fields: within both servers' 500",
        one(req("GET", "/status/200", *(f"X-{i}: v" for i in range(497)))),
        expect(200, closed=True)),
    Row("headers-600", "600 header fields (431)",
        one(req("GET", "/status/200", *(f"X-{i}: v" for i in range(600)))),
        expect(431, closed=True), daphne="400, no body"),
    Row("target-9000", "a 9,000-byte request-target: over realtime's 8 KiB (414)",
        one(req("GET", "/echo/" + "a" * 9000)), expect(414, closed=True),
        daphne="serves targets up to its 16 KiB line"),
    Row("body-over-limit", "Content-Length over --http-body-limit (10 MiB): 413 at once",
        one(req("POST", "/echo", f"Content-Length: {11 * MiB}", row="huge")),
        expect(413, closed=True, absent=True), daphne="reads and spools any size",
        seen="absent"),
    Row("expect-over-limit", "Expect: 100-continue with a body over the limit: 413, no 100",
        one(req("POST", "/echo", f"Content-Length: {11 * MiB}", "Expect: 100-continue")),
        expect(413, closed=True), daphne="100 Continue, then reads it all"),
    Row("daphne-root-path", "a Daphne-Root-Path header: an ordinary header here (no "
        "--root-path-header; from a trusted proxy: tests/e2e/test_ws_vs_daphne.py)",
        one(req("GET", "/echo", "Daphne-Root-Path: /app", row="rootpath")),
        expect(200, scope={"root_path": ""}), seen="yes",
        daphne="takes root_path from it, from any client"),
    # -- the app's response ---------------------------------------------------------------------
    Row("stream", "more_body chunks, empty ones among them: chunked, empty chunks skipped",
        one(req("GET", "/stream")),
        expect(200, closed=True, body=b"a" * 10 + b"b" * 20,
               headers={"transfer-encoding": ["chunked"], "content-length": []})),
    Row("no-content-length", "one body without Content-Length: chunked on HTTP/1.1",
        one(req("GET", "/nolength")),
        expect(200, body=b"no length", headers={"transfer-encoding": ["chunked"]})),
    Row("sse-head-at-once", "an empty first body sends the head at once (event streams)",
        ((req("GET", "/sse", row="sse"), ["HEAD"]),),
        expect(200, headers={"transfer-encoding": ["chunked"]}, end="told http.disconnect"),
        end="abort", seen="yes"),
    Row("cookies", "two Set-Cookie headers, in order; no Content-Type added to none",
        one(req("GET", "/cookies")),
        expect(200, headers={"set-cookie": ["a=1; Path=/", "b=2; Path=/"],
                             "content-type": []})),
    Row("204-with-body", "204 with a body from the app: no body goes out",
        one(req("GET", "/status/204")), expect(204, closed=True, body=b"")),
    Row("304-with-body", "304 with a body from the app: no body goes out",
        one(req("GET", "/status/304")), expect(304, closed=True, body=b"")),
    Row("head-stream", "HEAD to a streamed response: no body, no chunked framing",
        ((req("HEAD", "/stream", close=False) + req("GET", "/status/200"), ["HEAD", "GET"]),),
        expect(200, 200, closed=True, body=b"hello"),
        daphne="writes the stream's bytes after the head: the next response is garbled"),
    Row("raise-before-start", "the app raises before http.response.start: 500",
        one(req("GET", "/raise-before")), expect(500, closed=True), daphne=STATUS),
    Row("raise-after-start", "the app raises after a first chunk: the connection closes "
        "before the last chunk (a truncated response)",
        one(req("GET", "/raise-after")), expect(200, closed=True, complete=False),
        daphne="leaves it open, then its -t ends it as if complete; its application "
        "checker dies on it (no 500 for any app after)"),
    Row("return-without-response", "the app returns without a response: 500 at once",
        one(req("GET", "/return", row="return")), expect(500, closed=True, end="returned"),
        daphne="nothing until -t (503), or for ever without it", seen="yes"),
    Row("str-header", "a response header given as str (500)",
        one(req("GET", "/header/str")), expect(500, closed=True), daphne=STATUS),
    Row("crlf-in-header", "CR LF in a response header value from the app (500)",
        one(req("GET", "/header/crlf")), expect(500, closed=True),
        daphne="sends it with the CR LF made a space"),
    Row("nul-in-header", "NUL in a response header value from the app (500)",
        one(req("GET", "/header/nul")), expect(500, closed=True),
        daphne="sends it with the NUL made a space"),
    Row("space-in-header-name", "a response header name with a space (500)",
        one(req("GET", "/header/space-name")), expect(500, closed=True),
        daphne="never answers; its -t checker stops for good on it (no 503 for any "
        "request after)"),
    Row("http-timeout", "an app that never answers: 503 at -t",
        one(req("GET", "/never", row="never")),
        expect(503, closed=True, end="told http.disconnect"), daphne=STATUS, seen="yes"),
    Row("http-timeout-streaming", "-t passes while the response streams: cut, not ended",
        one(req("GET", "/slow")), expect(200, closed=True, complete=False),
        daphne="ends it with the last chunk, as if complete"),
    # -- the client goes away -------------------------------------------------------------------
    Row("abort-before-response", "the client goes while the app waits: http.disconnect",
        ((req("GET", "/never", row="gone"), None),),
        expect(end="told http.disconnect"), end="abort", seen="yes"),
    Row("abort-after-body", "a POST, then the client closes at once: the body, then "
        "http.disconnect",
        ((req("POST", "/never", "Content-Length: 5", body=b"hello", row="postgone"), None),),
        expect(got=b"hello", end="told http.disconnect"), end="abort", seen="yes"),
    Row("abort-before-read", "a POST, then the client closes before the app reads: the "
        "body, then http.disconnect",
        ((req("POST", "/late", "Content-Length: 5", body=b"hello", row="late"), None),),
        expect(got=b"hello", end="told http.disconnect"), end="abort", seen="yes"),
    Row("abort-mid-response", "the client goes mid-response: http.disconnect",
        ((req("GET", "/slow", row="mid"), ["HEAD"]), (b"", b"started")),
        expect(200, end="told http.disconnect"), end="abort", seen="yes"),
    Row("abort-mid-upload", "the client goes mid-upload: the app never runs",
        ((req("POST", "/echo", "Content-Length: 100", body=b"half", row="upgone"), None),),
        expect(absent=True), end="abort", seen="absent"),
    # -- Django's views through Django's ASGIHandler ---------------------------------------------
    Row("django-post", "a Django view: form POST, query, cookies",
        one(req("POST", "/django/echo/?a=1&a=2&b=x+y",
                "Content-Type: application/x-www-form-urlencoded", "X-Forwarded-For: 1.2.3.4",
                "X_Forwarded_For: 6.6.6.6", "Content-Length: 5", body=b"hello")),
        expect(200, closed=True, headers={"set-cookie": ["a=1; Path=/", "b=2; Path=/"]})),
    Row("django-head", "HEAD to a Django view", one(req("HEAD", "/django/echo/"), "HEAD"),
        expect(200, closed=True, body=b"")),
    Row("django-stream", "a StreamingHttpResponse", one(req("GET", "/django/stream/")),
        expect(200, closed=True, body=b"one,two,three",
               headers={"transfer-encoding": ["chunked"]})),
    Row("django-404", "Django's own 404", one(req("GET", "/django/nope/")),
        expect(404, closed=True)),
]

def answer_of(port: int, row: Row) -> Answer:
    answer = exchange(port, row.steps, row.end)
    if row.seen:
        answer.seen = seen(port, _row_name(row), absent=row.seen == "absent")
    return answer


def _row_name(row: Row) -> str:
    for data, _ in row.steps:
        marker = data.find(b"X-Row: ")
        if marker >= 0:
            return data[marker + 7:data.index(b"\r\n", marker)].decode()
    raise AssertionError(f"row {row.id} fetches what the app saw but sends no X-Row")


def _compared(answer: Answer, how: str) -> Any:
    if how == STATUS:
        return answer.statuses, answer.closed
    return answer


@pytest.mark.parametrize("row", TABLE, ids=[row.id for row in TABLE])
def test_row(ports: dict[str, int], row: Row) -> None:
    if row.daphne in (SAME, STATUS):
        ours, theirs = both(lambda: answer_of(ports["realtime"], row),  # the -t rows wait once
                            lambda: answer_of(ports["daphne"], row))
        assert _compared(ours, row.daphne) == _compared(theirs, row.daphne), row.what
    else:
        ours = answer_of(ports["realtime"], row)
    row.check(ours)


def test_the_table_names_each_row_and_each_app_record_once() -> None:
    names = [row.id for row in TABLE]
    assert len(names) == len(set(names))
    records = [_row_name(row) for row in TABLE if row.seen]
    assert len(records) == len(set(records))  # a shared one would be read stale
