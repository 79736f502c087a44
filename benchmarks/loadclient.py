"""The load client: asyncio + picows (uvloop when installed), one scenario per run.

    python benchmarks/loadclient.py echo   --url ws://127.0.0.1:PORT/echo --conns 100 ...
    python benchmarks/loadclient.py fanout --url ws://127.0.0.1:PORT/room/bench --members 1000 ...
    python benchmarks/loadclient.py idle   --url ws://127.0.0.1:PORT/echo --conns 5000 ...

Prints one JSON object (the result row) on stdout. With ``--server-pid`` it reads the
server's CPU time (utime + stime in /proc/PID/stat) over the measurement window and its RSS
(VmRSS in /proc/PID/status). It reports its own CPU share (process CPU time / wall time over
the same window) so a reader can see it is not the bottleneck. Every phase has a time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import struct
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

from picows import WSCloseCode, WSError, WSListener, WSMsgType, WSTransport, ws_connect

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (
    ProcStat,
    Window,
    client_arguments,
    client_main,
    error_text,
    latency_summary,
    make_text,
    rated,
    within_time_limit,
)

TEXT = WSMsgType.TEXT
BINARY = WSMsgType.BINARY
CONTINUATION = WSMsgType.CONTINUATION
CLOSE = WSMsgType.CLOSE
_now_ns = time.perf_counter_ns


def describe_error(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if response is not None and getattr(response, "status", None) is not None:
        return f"handshake refused: HTTP {int(response.status)}"
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "handshake timed out"
    return f"{type(exc).__name__}: {exc}"[:200]


async def connect_many(
    url: str,
    n: int,
    factory: Callable[[int], WSListener],
    *,
    concurrency: int = 100,
    handshake_timeout: float = 10.0,
    time_limit: float = 60.0,
) -> tuple[list[tuple[WSTransport, Any]], Counter[str]]:
    """Open ``n`` connections, at most ``concurrency`` handshakes at a time.

    Returns the connections made (in order) and a count of failures by description. Stops
    trying after ``time_limit`` seconds.
    """
    sem = asyncio.Semaphore(concurrency)
    made: list[tuple[WSTransport, Any] | None] = [None] * n
    errors: Counter[str] = Counter()

    async def one(i: int) -> None:
        async with sem:
            try:
                made[i] = await ws_connect(lambda: factory(i), url,
                                           websocket_handshake_timeout=handshake_timeout)
            except (TimeoutError, WSError, OSError) as exc:
                errors[describe_error(exc)] += 1

    tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
    _done, pending = await asyncio.wait(tasks, timeout=time_limit)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)
        errors["connect phase time limit"] += len(pending)
    return [m for m in made if m is not None], errors


async def close_all(conns: list[tuple[WSTransport, Any]], time_limit: float = 5.0) -> None:
    """Close politely (CLOSE frame, wait for the server), then drop what is left."""
    for tr, _ in conns:
        try:
            tr.send_close(WSCloseCode.OK)
        except Exception:
            pass
    waits = [asyncio.ensure_future(tr.wait_disconnected()) for tr, _ in conns]
    if waits:
        _done, pending = await asyncio.wait(waits, timeout=time_limit)
        for tr, _ in conns:
            tr.disconnect(graceful=False) if not tr.is_disconnected else None
        for t in pending:
            t.cancel()
        await asyncio.wait(waits, timeout=2)
        for t in waits:
            if t.done() and not t.cancelled():
                t.exception()


class State:
    """What every connection of one run shares (sioclient.py's add the Socket.IO handshake's
    counts: its states subclass these, cooperatively)."""

    def __init__(self) -> None:
        super().__init__()
        self.closed_by_server = 0
        self.closing = False


# -- echo ----------------------------------------------------------------------------------------


class EchoState(State):
    def __init__(self, payload: bytes, msg_type: WSMsgType, inflight: int,
                 count: int | None) -> None:
        super().__init__()
        self.payload = payload
        self.size = len(payload)
        self.msg_type = msg_type
        self.inflight = inflight
        self.count = count
        self.received = 0
        self.mismatched = 0
        self.measuring = False
        self.sending = True
        self.lat: list[int] = []
        self.active = 0
        self.idle = asyncio.Event()


class EchoConn(WSListener):
    def __init__(self, st: EchoState) -> None:
        self.st = st
        self.sent: deque[int] = deque()
        self.budget = st.count
        self.partial = 0
        self.running = False
        self.tr: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.tr = transport

    def start(self) -> None:
        st = self.st
        n = st.inflight if self.budget is None else min(st.inflight, self.budget)
        if n <= 0:
            return
        st.active += 1
        self.running = True
        assert self.tr is not None
        for _ in range(n):
            self.sent.append(_now_ns())
            self.tr.send(st.msg_type, st.payload)
        if self.budget is not None:
            self.budget -= n

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        t = frame.msg_type
        if t is not TEXT and t is not BINARY and t is not CONTINUATION:
            if t is CLOSE:
                if not self.st.closing:
                    self.st.closed_by_server += 1
                self._finish()
            return
        self.partial += frame.payload_size
        if not frame.fin:
            return
        now = _now_ns()
        st = self.st
        if self.partial != st.size:
            st.mismatched += 1
        self.partial = 0
        if not self.sent:
            return
        t0 = self.sent.popleft()
        st.received += 1
        if st.measuring:
            st.lat.append(now - t0)
        if st.sending and (self.budget is None or self.budget > 0):
            transport.send(st.msg_type, st.payload)
            self.sent.append(now)
            if self.budget is not None:
                self.budget -= 1
        elif not self.sent:
            self._finish()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._finish()

    def _finish(self) -> None:
        if self.running:
            self.running = False
            self.sent.clear()
            self.st.active -= 1
            if self.st.active <= 0:
                self.st.idle.set()


async def run_echo(url: str, *, conns: int, inflight: int, size: int, binary: bool = False,
                   count: int | None = None, duration: float = 5.0, warmup: float = 1.0,
                   server_pid: int | None = None, scenario: str = "echo",
                   time_limit: float = 60.0, framing: Framing | None = None) -> dict[str, Any]:
    fr = framing or WEBSOCKET
    payload = fr.payload(size, binary)
    st = fr.EchoState(payload, BINARY if binary else TEXT, inflight, count)
    row: dict[str, Any] = {"scenario": scenario, "kind": "echo", "conns": conns,
                           "inflight": inflight, "size": size, **fr.head("echo", binary=binary)}
    made, errors = await fr.connect(url, conns, st, lambda _i: fr.EchoConn(st),
                                    concurrency=100, time_limit=min(30, time_limit / 2))
    ready = fr.ready(made)
    row["connected"] = len(ready)
    if not ready:
        return _failed(row, errors or Counter({"no connection": 1}))
    window = Window(fr.stat(server_pid))
    for conn in ready:
        conn.start()
    late = False
    if count is None:
        await asyncio.sleep(warmup)
        gc.disable()
        st.measuring = True
        r0 = st.received
        window.start()
        await asyncio.sleep(duration)
        window.stop()
        r1 = st.received
        st.measuring = False
        gc.enable()
        st.sending = False
        try:
            await asyncio.wait_for(st.idle.wait(), 5)
        except TimeoutError:
            late = True
    else:
        st.measuring = True
        r0 = 0
        window.start()
        try:
            await asyncio.wait_for(st.idle.wait(), max(1.0, time_limit - 10))
        except TimeoutError:
            errors["echo replies time limit"] += 1
        window.stop()
        r1 = st.received
    st.closing = True
    await close_all(made)
    messages = r1 - r0
    row.update(window.fields())
    row.update(latency_summary(st.lat))
    row.update({
        "messages": messages,
        "msgs_per_s": round(messages / window.wall, 1) if window.wall else None,
        "server_cpu_us_per_msg": window.server_us_per(messages),
        "mismatched": st.mismatched,
        "closed_by_server": st.closed_by_server,
    })
    if count is not None and st.received < count * len(ready):
        errors[f"only {st.received} of {count * len(ready)} echoes"] += 1
    ok = fr.echo_done(st, row, errors, late)
    return _finish_row(row, errors, ok=ok and messages > 0 and st.mismatched == 0)


def _failed(row: dict[str, Any], errors: Counter[str]) -> dict[str, Any]:
    row.update({"ok": False, "error": error_text(errors), "wall_s": None,
                "client_cpu_share": None, "server_cpu_share": None})
    return row


def _finish_row(row: dict[str, Any], errors: Counter[str], ok: bool) -> dict[str, Any]:
    row["ok"] = ok
    row["error"] = error_text(errors) if errors else None
    if not ok and not row["error"]:
        row["error"] = "no messages"
    return row


# -- fan-out ---------------------------------------------------------------------------------------

# A fan-out message: "SSSSSSSSSS TTTTTTTTTTTTTTTTTTT " + padding (ASCII; seq, send time ns).
_HEAD = 31


class FanoutState(State):
    def __init__(self) -> None:
        super().__init__()
        self.counts: list[int] = []
        self.total = 0
        self.m0 = 1 << 62
        self.m1 = 1 << 62
        self.measured = 0
        self.lat: list[int] = []
        self.ready = 0  # members that have had a message
        self.ready_at_probe = 0
        self.bad = 0
        self.all_in = asyncio.Event()
        self.expected = -1


class RoomConn(WSListener):
    def __init__(self, st: FanoutState) -> None:
        self.st = st
        self.got = 0
        self.buf: bytes | None = None
        self.tr: WSTransport | None = None
        self.open = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.tr = transport
        self.open = True

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        t = frame.msg_type
        if t is TEXT or t is CONTINUATION:
            data = frame.get_payload_as_bytes()
            if not frame.fin:
                self.buf = data if self.buf is None else self.buf + data
                return
            if self.buf is not None:
                data = self.buf + data
                self.buf = None
            now = _now_ns()
            st = self.st
            try:
                seq = int(data[:10])
                ts = int(data[11:30])
            except ValueError:
                st.bad += 1
                return
            st.total += 1
            if self.got == 0:
                st.ready += 1
            self.got += 1
            if seq < len(st.counts):
                st.counts[seq] += 1
            if st.m0 <= seq < st.m1:
                st.lat.append(now - ts)
                st.measured += 1
                if st.measured == st.expected:
                    st.all_in.set()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.open:
            self.open = False
            self.st.closed_by_server += 1


async def run_fanout(url: str, *, members: int, rate: float, size: int = 64,
                     count: int | None = None, duration: float = 8.0, warmup: float = 2.0,
                     drain: float = 5.0, probe_timeout: float = 15.0,
                     server_pid: int | None = None, scenario: str = "fanout",
                     concurrency: int = 100, time_limit: float = 150.0,
                     server_pids: Sequence[int] = (),
                     aux_pids: dict[str, int] | None = None,
                     burst: int = 1, publishers: int = 1,
                     framing: Framing | None = None) -> dict[str, Any]:
    """One room of ``members``; member 0 also sends ``rate`` messages/s to it.

    ``burst`` > 1: the messages go in bursts of that many, written in one write (so they
    reach the server in one read), ``rate / burst`` bursts per second.

    ``publishers`` > 1: members 0 to ``publishers - 1`` each send one message at every tick,
    back to back, each on its own socket (several people in one room speaking at once:
    reads on different connections), ``rate / publishers`` ticks per second.

    Every message is stamped with a sequence number and its send time; each member records
    the latency of each message it gets. Messages sent in the measurement window that have
    not reached every member ``drain`` seconds after the window are lost.
    """
    fr = framing or WEBSOCKET
    if size < _HEAD:
        raise ValueError(f"fan-out messages need at least {_HEAD} bytes")
    st = fr.FanoutState()
    # The message, with its sequence number and send time still to put in.
    template = fr.template(make_text(size - _HEAD, ascii_only=True).encode())
    if burst < 1 or publishers < 1:
        raise ValueError("burst and publishers must be at least 1")
    if burst > 1 and publishers > 1:
        raise ValueError("burst and publishers do not combine")
    row: dict[str, Any] = {"scenario": scenario, "kind": "fanout", "members": members,
                           "rate": rate, "size": size,
                           **fr.head("fanout", burst=burst, publishers=publishers),
                           "offered_per_s": members * rate}
    deadline = time.monotonic() + time_limit - 5
    made, errors = await fr.connect(url, members, st, lambda _i: fr.RoomConn(st),
                                    concurrency=concurrency,
                                    time_limit=min(60.0, time_limit / 3))
    joined = fr.ready(made)
    row["connected"] = len(joined)
    if not joined:
        return _failed(row, errors or Counter({"no connection": 1}))
    sender = joined[0].tr
    n = len(joined)
    if publishers > n:
        return _failed(row, Counter({f"only {n} members for {publishers} publishers": 1}))
    voices = [c.tr for c in joined[:publishers]]

    def send(via: Any = sender) -> int:
        seq = len(st.counts)
        st.counts.append(0)
        via.send(TEXT, template % (seq, _now_ns()))
        return seq

    def send_burst() -> None:
        """``burst`` messages as masked text frames (mask key 0) in one transport write."""
        frames = []
        now = _now_ns()
        for _ in range(burst):
            seq = len(st.counts)
            st.counts.append(0)
            payload = template % (seq, now)
            n = len(payload)
            head = bytes((0x81, 0x80 | n)) if n < 126 else struct.pack("!BBH", 0x81, 0xFE, n)
            frames.append(head + b"\0\0\0\0" + payload)
        sender.underlying_transport.write(b"".join(frames))

    loop = asyncio.get_running_loop()

    # Probe: until every member has had a message (the server has them all in the room).
    t_probe = last = loop.time()
    send()
    while st.ready < n - st.closed_by_server and loop.time() - t_probe < probe_timeout:
        await asyncio.sleep(0.02)
        if loop.time() - last >= 0.5:
            send()
            last = loop.time()
    row["ready"] = st.ready >= n - st.closed_by_server
    st.ready_at_probe = st.ready
    row["ready_s"] = round(loop.time() - t_probe, 3)

    interval = max(burst, publishers) / rate

    async def paced(seconds: float | None, messages: int | None) -> None:
        start = loop.time()
        next_t = start
        sent = 0
        while True:
            if messages is not None and sent >= messages:
                return
            if seconds is not None and loop.time() - start >= seconds:
                return
            if time.monotonic() > deadline or any(tr.is_disconnected for tr in voices):
                return
            if burst > 1:
                send_burst()
            elif publishers > 1:
                for via in voices:
                    send(via)
            else:
                send()
            sent += max(burst, publishers)
            next_t += interval
            delay = next_t - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

    if count is None:
        await paced(warmup, None)
    window = Window(fr.stat(server_pid, server_pids),
                    {name: fr.stat(pid) for name, pid in (aux_pids or {}).items()})
    members_at_start = n - st.closed_by_server
    gc.disable()
    st.m0 = len(st.counts)
    tot0 = st.total
    window.start()
    await paced(duration if count is None else None, count)
    st.m1 = len(st.counts)
    sent = st.m1 - st.m0
    st.expected = sent * members_at_start
    if count is None:
        window.stop()
        tot1 = st.total
    if st.measured < st.expected:
        try:
            await asyncio.wait_for(st.all_in.wait(),
                                   max(0.1, min(drain, deadline - time.monotonic())))
        except TimeoutError:
            pass
    if count is not None:
        window.stop()
        tot1 = st.total
    gc.enable()
    delivered = st.measured
    lost = max(0, st.expected - delivered)
    window_deliveries = rated(tot1 - tot0, timed=count is None)
    dropped = st.closed_by_server
    st.closing = True
    for _, conn in made:
        conn.open = False
    await close_all(made)
    row.update(window.fields())
    row.update(latency_summary(st.lat))
    row.update({
        "sent": sent,
        "expected": st.expected,
        "delivered": delivered,
        "lost": lost,
        "lost_pct": round(100.0 * lost / st.expected, 3) if st.expected > 0 else None,
        **fr.fanout_fields(st, joined, sent, window),
        "delivered_per_s": round(window_deliveries / window.wall, 1) if window.wall else None,
        "server_cpu_us_per_delivery": window.server_us_per(window_deliveries),
        **window.aux_us_per(window_deliveries, "delivery"),
        "dropped_members": dropped,
        "malformed": st.bad,
    })
    if not row["ready"]:
        errors[f"only {st.ready_at_probe} of {n} members got the probe"] += 1
    # Delivering nothing is a result (lost 100 %), not a failure of the run.
    return _finish_row(row, errors, ok=sent > 0)


# -- idle --------------------------------------------------------------------------------------


class IdleConn(WSListener):
    def __init__(self, st: State) -> None:
        self.frames = 0

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        self.frames += 1


async def run_idle(url: str, *, conns: int, concurrency: int = 100, settle: float = 1.0,
                   server_pid: int | None = None, scenario: str = "idle",
                   time_limit: float = 150.0, framing: Framing | None = None) -> dict[str, Any]:
    fr = framing or WEBSOCKET
    proc = fr.stat(server_pid)
    row: dict[str, Any] = {"scenario": scenario, "kind": "idle", "conns": conns,
                           "concurrency": concurrency}
    # Warm the server up (lazy imports, first-connection caches) before the baseline.
    wst = fr.IdleState()
    warm, werr = await fr.connect(url, min(10, conns), wst, lambda _i: fr.IdleConn(wst),
                                  concurrency=concurrency, time_limit=20)
    warmed = len(fr.ready(warm))
    wst.closing = True
    await close_all(warm)
    if not warmed:
        return _failed(row, werr or Counter({"no connection": 1}))
    await asyncio.sleep(0.5)
    rss0 = proc.rss_kb()
    st = fr.IdleState()
    window = Window(proc)
    window.start()
    made, errors = await fr.connect(url, conns, st, lambda _i: fr.IdleConn(st),
                                    concurrency=concurrency,
                                    time_limit=max(10.0, time_limit - 30))
    window.stop()
    await asyncio.sleep(settle)
    rss1 = proc.rss_kb()
    still_open = sum(1 for tr, conn in made if fr.is_open(tr, conn))
    connected = len(fr.ready(made))
    st.closing = True
    await close_all(made, time_limit=10)
    row.update(window.fields())
    row.update({
        "connected": connected,
        "failed": conns - connected,
        "still_open": still_open,
        "handshakes_per_s": round(connected / window.wall, 1) if window.wall else None,
        "server_cpu_us_per_handshake": window.server_us_per(connected),
        "rss_before_kb": rss0,
        "rss_after_kb": rss1,
        "kb_per_conn": (round((rss1 - rss0) / connected, 2)
                        if rss0 is not None and rss1 is not None and connected else None),
    })
    return _finish_row(row, errors, ok=connected > 0 and fr.idle_ok(still_open, made))


# -- the protocol ----------------------------------------------------------------------------------


class Framing:
    """What the runners above need to know of a protocol: the bench protocol over plain
    WebSockets here (``WEBSOCKET``); sioclient.py's subclass supplies Engine.IO/Socket.IO's.

    The runners ask it once per run, or once per connection; never per frame: each frame
    goes to its connection class's own ``on_ws_frame`` (the hot loop, written per protocol),
    so sharing the runners puts no indirection on the plain-WebSocket path.
    """

    EchoState: Callable[[bytes, WSMsgType, int, int | None], Any] = EchoState
    EchoConn: Callable[[Any], Any] = EchoConn
    FanoutState: Callable[[], Any] = FanoutState
    RoomConn: Callable[[Any], Any] = RoomConn
    IdleState: Callable[[], Any] = State
    IdleConn: Callable[[Any], Any] = IdleConn
    #: Reads the server's CPU time and RSS.
    stat: Callable[..., ProcStat] = ProcStat

    async def connect(self, url: str, n: int, st: Any, factory: Callable[[int], WSListener],
                      *, concurrency: int, time_limit: float
                      ) -> tuple[list[tuple[WSTransport, Any]], Counter[str]]:
        """``n`` connections, ready for the scenario (here: the WebSocket is open)."""
        return await connect_many(url, n, factory, concurrency=concurrency,
                                  time_limit=time_limit)

    def ready(self, made: list[tuple[WSTransport, Any]]) -> list[Any]:
        """The connections of ``made`` the scenario runs on."""
        return [conn for _, conn in made]

    def is_open(self, transport: WSTransport, conn: Any) -> bool:
        return not transport.is_disconnected

    def payload(self, size: int, binary: bool) -> bytes:
        """An echo message of ``size`` bytes."""
        return make_text(size).encode("utf-8") if not binary else os.urandom(size)

    def template(self, padding: bytes) -> bytes:
        """A fan-out message, ``%`` formatted with its sequence number and send time (ns):
        ``SSSSSSSSSS TTTTTTTTTTTTTTTTTTT `` and the padding."""
        return b"%010d %019d " + padding.replace(b"%", b"%%")

    def head(self, kind: str, **options: Any) -> dict[str, Any]:
        """The row's fields for the options only this protocol's client has."""
        return options

    def echo_done(self, st: Any, row: dict[str, Any], errors: Counter[str],
                  late: bool) -> bool:
        """The protocol's own fields and checks of an echo run (``late``: replies still
        missing 5 s after the window); False fails the run."""
        return True

    def fanout_fields(self, st: Any, joined: list[Any], sent: int,
                      window: Window) -> dict[str, Any]:
        return {"ready_members": st.ready_at_probe,
                "server_processes": len(window.server.pids)}

    def idle_ok(self, still_open: int, made: list[tuple[WSTransport, Any]]) -> bool:
        return True


WEBSOCKET = Framing()


# -- command line ------------------------------------------------------------------------------


def scenario_parser(description: str, common: argparse.ArgumentParser, *, conns: int,
                    rate: float, fanout_warmup: float, idle_conns: int
                    ) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser,
                               argparse.ArgumentParser, argparse.ArgumentParser]:
    """The command line both load clients share: the parser and its ``echo``, ``fanout``
    and ``idle`` subcommands (each client adds its own options), with the options these do
    not have at what they mean without them."""
    p = argparse.ArgumentParser(description=description)
    p.set_defaults(binary=False, count=None, probe_timeout=15.0, burst=1, publishers=1,
                   aux_pid=[])
    sub = p.add_subparsers(dest="kind", required=True)
    e = sub.add_parser("echo", parents=[common])
    e.add_argument("--conns", type=int, default=conns)
    e.add_argument("--inflight", type=int, default=1)
    e.add_argument("--size", type=int, default=64)
    e.add_argument("--duration", type=float, default=5.0)
    e.add_argument("--warmup", type=float, default=1.0)
    f = sub.add_parser("fanout", parents=[common])
    f.add_argument("--members", type=int, default=1000)
    f.add_argument("--rate", type=float, default=rate)
    f.add_argument("--size", type=int, default=64)
    f.add_argument("--duration", type=float, default=8.0)
    f.add_argument("--warmup", type=float, default=fanout_warmup)
    f.add_argument("--drain", type=float, default=5.0)
    i = sub.add_parser("idle", parents=[common])
    i.add_argument("--conns", type=int, default=idle_conns)
    i.add_argument("--concurrency", type=int, default=100)
    i.add_argument("--settle", type=float, default=1.0)
    return p, e, f, i


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    common = client_arguments()
    common.add_argument("--server-pid", help="the server's PID; for fan-out also several, "
                        "comma-separated (the workers of --workers N), whose CPU is summed")
    common.add_argument("--aux-pid", action="append", default=[], metavar="NAME:PID",
                        help="fan-out: a process the server needs (redis:PID), measured apart")
    p, e, f, _ = scenario_parser(__doc__.split("\n\n")[0], common, conns=100, rate=50.0,
                                 fanout_warmup=2.0, idle_conns=5000)
    e.add_argument("--binary", action="store_true")
    e.add_argument("--count", type=int, help="messages per connection (instead of a duration)")
    f.add_argument("--count", type=int, help="messages to send (instead of a duration)")
    f.add_argument("--probe-timeout", type=float, default=15.0)
    f.add_argument("--burst", type=int, default=1,
                   help="messages per burst, written at once (rate/burst bursts per second)")
    f.add_argument("--publishers", type=int, default=1,
                   help="members that each send one message per tick, on their own sockets "
                        "(rate/publishers ticks per second)")
    return p.parse_args(argv)


async def amain(a: argparse.Namespace, framing: Framing | None = None) -> dict[str, Any]:
    Window.server_core = a.server_core
    Window.client_core = a.client_core
    pids = [int(p) for p in str(a.server_pid).split(",")] if a.server_pid else []
    kw: dict[str, Any] = {"server_pid": pids[0] if pids else None,
                          "scenario": a.scenario or a.kind, "time_limit": a.time_limit,
                          "framing": framing}
    if a.kind == "echo":
        coro = run_echo(a.url, conns=a.conns, inflight=a.inflight, size=a.size,
                        binary=a.binary, count=a.count, duration=a.duration,
                        warmup=a.warmup, **kw)
    elif a.kind == "fanout":
        coro = run_fanout(a.url, members=a.members, rate=a.rate, size=a.size, count=a.count,
                          duration=a.duration, warmup=a.warmup, drain=a.drain,
                          probe_timeout=a.probe_timeout, server_pids=pids, burst=a.burst,
                          publishers=a.publishers,
                          aux_pids=dict((n, int(p)) for n, _, p in
                                        (x.partition(":") for x in a.aux_pid)), **kw)
    else:
        coro = run_idle(a.url, conns=a.conns, concurrency=a.concurrency, settle=a.settle, **kw)
    return await within_time_limit(coro, a, kw["scenario"])


def main(argv: list[str] | None = None) -> int:
    return client_main(amain, parse_args(argv), "picows")


if __name__ == "__main__":
    sys.exit(main())
