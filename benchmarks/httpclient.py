"""The HTTP load client of benchmarks/django_http.py: asyncio (on uvloop when installed).

    python benchmarks/httpclient.py --url http://127.0.0.1:PORT/sync --conns 50 --duration 5

``--conns`` keep-alive HTTP/1.1 connections, each with one GET in flight (send, read the
whole response, send again: no pipelining, as browsers and most HTTP clients do). Responses
are framed by Content-Length or chunked encoding (Django sets no Content-Length; what the
server sends is its choice, reported as ``framing``). Prints one JSON row on stdout, like
loadclient.py: requests/s and latency over the measured window, the server's CPU per
request (/proc/PID/stat), this client's own CPU share, and every error by kind (a status
other than 200, a response it cannot parse, a connection broken or closed mid-request):
errors are counted over the whole run, never dropped. Every phase has a time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from collections import Counter
from typing import Any, cast
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (
    ProcStat,
    Window,
    client_arguments,
    client_main,
    error_text,
    latency_summary,
)

_now_ns = time.perf_counter_ns
#: A response head larger than this is an error, not something to wait for.
MAX_HEAD = 64 * 1024


class BadResponse(Exception):
    """The bytes are not an HTTP/1.1 response this client understands."""


def parse_response(buf: bytes) -> tuple[int, int, int, str, bool] | None:
    """One response at the start of ``buf``: (bytes it takes, status, body bytes, framing,
    whether the server closes the connection after it); ``None`` while incomplete.

    Framing: Content-Length, or chunked (with trailers); a response with neither is read
    to the end of the connection by HTTP, which a keep-alive benchmark cannot use, so it is
    a BadResponse.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise BadResponse("response head too large")
        return None
    lines = buf[:end].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise BadResponse(f"status line {lines[0][:40]!r}")
    try:
        status = int(parts[1])
    except ValueError:
        raise BadResponse(f"status line {lines[0][:40]!r}") from None
    length: int | None = None
    chunked = False
    connection = b""
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise BadResponse(f"header line {line[:40]!r}")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise BadResponse(f"Content-Length {value[:20]!r}") from None
        elif name == b"transfer-encoding":
            chunked = value.endswith(b"chunked")
        elif name == b"connection":
            connection = value
    close = b"close" in connection or (
        parts[0] == b"HTTP/1.0" and b"keep-alive" not in connection)
    start = end + 4
    if chunked:  # RFC 9112: it wins over Content-Length
        return _parse_chunked(buf, start, status, close)
    if length is None:
        raise BadResponse("neither Content-Length nor chunked")
    if len(buf) < start + length:
        return None
    return start + length, status, length, "content-length", close


def _parse_chunked(buf: bytes, pos: int, status: int,
                   close: bool) -> tuple[int, int, int, str, bool] | None:
    body = 0
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(buf[pos:eol].split(b";", 1)[0], 16)
        except ValueError:
            raise BadResponse(f"chunk size {buf[pos:eol][:20]!r}") from None
        pos = eol + 2
        if size == 0:
            break
        if len(buf) < pos + size + 2:
            return None
        if buf[pos + size:pos + size + 2] != b"\r\n":
            raise BadResponse("chunk not followed by CRLF")
        body += size
        pos += size + 2
    while True:  # trailers, then the empty line
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        if eol == pos:
            return pos + 2, status, body, "chunked", close
        pos = eol + 2


class State:
    """What the connections share: the switches, the counts and the latency samples."""

    def __init__(self) -> None:
        self.sending = True
        self.measuring = False
        self.requests = 0
        self.lat: list[int] = []
        self.errors: Counter[str] = Counter()
        self.framing: Counter[str] = Counter()
        self.body_bytes: int | None = None
        self.connections = 0


class HttpConn(asyncio.Protocol):
    """One keep-alive connection: a GET, its whole response, the next GET."""

    def __init__(self, st: State, request: bytes) -> None:
        self.st = st
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.t0 = 0
        self.in_flight = False
        #: Resolved when this connection is of no more use: True if it may be reused by
        #: nobody (closed, broken), False when it stopped cleanly (sending switched off).
        self.done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.st.connections += 1
        self._send()

    def _send(self) -> None:
        if not self.st.sending:
            self._finish(False)
            return
        assert self.transport is not None
        self.in_flight = True
        self.t0 = _now_ns()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.in_flight:
            self._error("bytes with no request in flight")
            return
        try:
            parsed = parse_response(self.buf)
        except BadResponse as exc:
            self._error(f"bad response: {exc}")
            return
        if parsed is None:
            return
        took, status, body, framing, close = parsed
        st = self.st
        self.in_flight = False
        if took != len(self.buf):
            self._error("bytes after the response")
            return
        self.buf = b""
        if status != 200:
            st.errors[f"HTTP {status}"] += 1
        elif st.measuring:
            st.requests += 1
            st.lat.append(_now_ns() - self.t0)
        st.framing[framing] += 1
        st.body_bytes = body
        if close:  # not an error, but no keep-alive: counted as reconnects
            self._finish(True)
            return
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.in_flight:
            self.st.errors["connection broken mid-request"
                           + (f" ({type(exc).__name__})" if exc else "")] += 1
            self.in_flight = False
        elif not self.done.done() and self.st.sending:
            self.st.errors["connection closed by the server"] += 1
        self._finish(True)

    def _error(self, what: str) -> None:
        self.st.errors[what] += 1
        self.in_flight = False
        self._finish(True)

    def _finish(self, closed: bool) -> None:
        if closed and self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(closed)


async def run_http(url: str, *, conns: int, duration: float, warmup: float,
                   server_pid: int | None, scenario: str) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = (f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
               "User-Agent: realtime-bench\r\nAccept: */*\r\n\r\n").encode("ascii")
    st = State()
    loop = asyncio.get_running_loop()
    open_conns: list[HttpConn] = []

    async def slot() -> None:
        """One connection in flight at a time; a new one when the server closed it."""
        while st.sending:
            conn = HttpConn(st, request)
            try:
                await asyncio.wait_for(
                    loop.create_connection(lambda c=conn: c, host, port), 5)
            except (OSError, TimeoutError) as exc:
                st.errors[f"connect: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.1)
                continue
            open_conns.append(conn)
            if not await conn.done:
                return

    window = Window(ProcStat(server_pid))
    tasks = [asyncio.ensure_future(slot()) for _ in range(conns)]
    await asyncio.sleep(warmup)
    gc.disable()
    st.measuring = True
    window.start()
    await asyncio.sleep(duration)
    window.stop()
    st.measuring = False
    gc.enable()
    st.sending = False
    _done, pending = await asyncio.wait(tasks, timeout=5)
    for t in pending:
        t.cancel()
    if pending:
        st.errors["requests unanswered 5 s after the window"] += len(pending)
        await asyncio.wait(pending, timeout=1)
    for conn in open_conns:
        if conn.transport is not None:
            conn.transport.close()
    row: dict[str, Any] = {"scenario": scenario, "kind": "http", "conns": conns,
                           "path": target, "connected": min(conns, st.connections),
                           "reconnects": max(0, st.connections - conns)}
    row.update(window.fields())
    row.update(latency_summary(st.lat))
    row.update({
        "requests": st.requests,
        "requests_per_s": round(st.requests / window.wall, 1) if window.wall else None,
        "server_cpu_us_per_request": window.server_us_per(st.requests),
        "http_errors": sum(st.errors.values()),
        "error_kinds": dict(st.errors),
        "body_bytes": st.body_bytes,
        "framing": ",".join(sorted(st.framing)) or None,
    })
    # Errors do not fail the row (its figures stand, and the report lists them); no
    # request answered does.
    row["ok"] = st.requests > 0
    row["error"] = error_text(st.errors) if st.errors else (
        None if row["ok"] else "no request answered")
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                parents=[client_arguments("http://127.0.0.1:PORT/path")])
    p.add_argument("--conns", type=int, default=50)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--server-pid", type=int)
    p.set_defaults(scenario="http", time_limit=60.0)
    return p.parse_args(argv)


async def amain(a: argparse.Namespace) -> dict[str, Any]:
    Window.server_core = a.server_core
    Window.client_core = a.client_core
    coro = run_http(a.url, conns=a.conns, duration=a.duration, warmup=a.warmup,
                    server_pid=a.server_pid, scenario=a.scenario)
    try:
        return await asyncio.wait_for(coro, a.time_limit)
    except TimeoutError:
        return {"scenario": a.scenario, "kind": "http", "ok": False,
                "error": f"client time limit {a.time_limit:g} s"}


def main(argv: list[str] | None = None) -> int:
    return client_main(amain, parse_args(argv), "asyncio")


if __name__ == "__main__":
    sys.exit(main())
