"""The Socket.IO load client: raw Engine.IO v4 / Socket.IO v5 frames over picows (uvloop).

    URL='ws://127.0.0.1:PORT/socket.io/?EIO=4&transport=websocket'
    python benchmarks/sioclient.py echo   --url $URL --conns 10 --inflight 16
    python benchmarks/sioclient.py fanout --url $URL --members 1000 --rate 10
    python benchmarks/sioclient.py idle   --url $URL --conns 2000

benchmarks/socket_io.py runs it, in its own process (pinned to its own core), so the
server's CPU is the server's alone. Not python-socketio's client, which would be the
bottleneck: each connection reads Engine.IO's open packet (``0{...}``), sends ``40``
(connect the "/" namespace), reads ``40{"sid":...}``; answers every ping (``2``) with a
pong (``3``); then

- echo: ``42<id>["echo","<64 B>"]``, ``--inflight`` of them in flight per connection
  (each answer sends the next); the answer is the ack ``43<id>["<64 B>"]``, matched to its
  send by the ack id (latency) and checked byte for byte;
- fanout: each member sends ``420["join","bench"]`` and waits for its ack; member 0 sends
  ``42["say","bench","<seq> <send time ns> <padding>"]`` ``--rate`` times a second, and
  every member (member 0 included: ``emit(room=)`` skips nobody) counts each
  ``42["said","..."]`` it gets, per message and per member;
- idle: ``--conns`` connections opened (100 at a time) and connected to "/", then left.

One JSON row on stdout, with the field names of loadclient.py's rows (so benchlib's table
reads both). The server's CPU is its threads' run time from /proc/PID/task/*/schedstat over
the measurement window (ns; /proc/PID/stat's utime + stime are 10 ms ticks); its RSS is
VmRSS from /proc/PID/status. Every phase has a time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from collections import Counter
from typing import Any

from picows import WSListener, WSMsgType, WSTransport

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (
    ProcStat,
    Window,
    client_arguments,
    client_main,
    latency_summary,
    make_text,
    within_time_limit,
)
from loadclient import _failed, _finish_row, close_all, connect_many

TEXT = WSMsgType.TEXT
CONTINUATION = WSMsgType.CONTINUATION
CLOSE = WSMsgType.CLOSE
_now_ns = time.perf_counter_ns
ROOM = "bench"
#: ``42["said","`` before a fan-out message's text.
_SAID = b'42["said","'
#: The text's head: ``SSSSSSSSSS TTTTTTTTTTTTTTTTTTT `` (sequence number, send time in ns).
_HEAD = 31


class SchedStat(ProcStat):
    """``ProcStat`` with the CPU time in ns: each thread's run time from
    /proc/PID/task/*/schedstat (what utime + stime count, in 10 ms ticks: too coarse for a
    server at a few % of a core), else utime + stime."""

    def cpu_s(self) -> float | None:
        if not self.pid:
            return None
        try:
            return sum(int(open(f"/proc/{self.pid}/task/{task}/schedstat").read().split()[0])
                       for task in os.listdir(f"/proc/{self.pid}/task")) / 1e9
        except (OSError, ValueError, IndexError):
            return super().cpu_s()


class State:
    """What every connection of one run shares."""

    def __init__(self) -> None:
        self.connected = 0  # Socket.IO "/" connected (and joined, for fan-out)
        self.all_connected = asyncio.Event()
        self.want = 0
        self.refused = 0
        self.closed_by_server = 0
        self.closing = False
        self.bad = 0

    def one_connected(self) -> None:
        self.connected += 1
        if self.connected >= self.want:
            self.all_connected.set()


class SioConn(WSListener):
    """One Engine.IO connection on the WebSocket transport, connected to "/"."""

    join = False

    def __init__(self, st: State) -> None:
        self.st = st
        self.tr: WSTransport | None = None
        self.ready = False
        self.buf: bytes | None = None
        self.open = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.tr = transport
        self.open = True

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        t = frame.msg_type
        if t is not TEXT and t is not CONTINUATION:
            if t is CLOSE:
                self._closed()
            return
        data = frame.get_payload_as_bytes()
        if not frame.fin:
            self.buf = data if self.buf is None else self.buf + data
            return
        if self.buf is not None:
            data, self.buf = self.buf + data, None
        if data[:1] == b"4":
            self.message(transport, data)
        elif data == b"2":
            transport.send(TEXT, b"3")
        elif data[:1] == b"0":
            transport.send(TEXT, b"40")
        elif data[:1] == b"1":
            self._closed()

    def message(self, transport: WSTransport, data: bytes) -> None:
        """A Socket.IO packet (``4`` and the packet)."""
        kind = data[1:2]
        if kind == b"0" and not self.ready:
            if self.join:
                transport.send(TEXT, b'420["join","%s"]' % ROOM.encode())
            else:
                self._ready()
        elif kind == b"3" and not self.ready and data.startswith(b"430"):
            self._ready()  # the join's ack
        elif kind == b"4":
            self.st.refused += 1
        else:
            self.st.bad += 1

    def _ready(self) -> None:
        self.ready = True
        self.st.one_connected()

    def _closed(self) -> None:
        if self.open:
            self.open = False
            if not self.st.closing:
                self.st.closed_by_server += 1

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._closed()


async def connect_all(url: str, n: int, st: State, factory: Any, *, concurrency: int,
                      time_limit: float) -> tuple[list[tuple[WSTransport, Any]],
                                                  Counter[str]]:
    """``n`` WebSockets (``concurrency`` handshakes at a time), then until each is connected
    to "/" (and in the room, for fan-out) or the time runs out."""
    st.want = n
    t0 = time.monotonic()
    made, errors = await connect_many(url, n, factory, concurrency=concurrency,
                                      time_limit=time_limit)
    st.want = len(made)
    if st.connected >= st.want:
        st.all_connected.set()
    left = max(1.0, time_limit - (time.monotonic() - t0))
    try:
        await asyncio.wait_for(st.all_connected.wait(), left)
    except TimeoutError:
        errors[f"only {st.connected} of {len(made)} connected to the namespace"] += 1
    if st.refused:
        errors[f"CONNECT_ERROR x{st.refused}"] += 1
    return made, errors


# -- echo ----------------------------------------------------------------------------------------


class EchoState(State):
    def __init__(self, payload: bytes, inflight: int) -> None:
        super().__init__()
        self.payload = payload
        #: The ack's tail after its id: ``["<payload>"]``.
        self.tail = b'["' + payload + b'"]'
        self.inflight = inflight
        self.received = 0
        self.mismatched = 0
        self.measuring = False
        self.sending = True
        self.lat: list[int] = []
        self.active = 0
        self.idle = asyncio.Event()


class EchoConn(SioConn):
    def __init__(self, st: EchoState) -> None:
        super().__init__(st)
        self.est = st
        self.sent: dict[int, int] = {}
        self.next_id = 0
        self.running = False

    def _send_one(self, transport: WSTransport, now: int) -> None:
        ack_id = self.next_id
        self.next_id = ack_id + 1
        self.sent[ack_id] = now
        transport.send(TEXT, b'42%d["echo","%s"]' % (ack_id, self.est.payload))

    def start(self) -> None:
        st = self.est
        if not self.ready or self.tr is None:
            return
        st.active += 1
        self.running = True
        now = _now_ns()
        for _ in range(st.inflight):
            self._send_one(self.tr, now)

    def message(self, transport: WSTransport, data: bytes) -> None:
        if data[1:2] != b"3" or not self.running:
            super().message(transport, data)
            return
        now = _now_ns()
        st = self.est
        tail = st.tail
        if not data.endswith(tail):
            st.mismatched += 1
            return
        try:
            t0 = self.sent.pop(int(data[2:len(data) - len(tail)]))
        except (ValueError, KeyError):
            st.mismatched += 1
            return
        st.received += 1
        if st.measuring:
            st.lat.append(now - t0)
        if st.sending:
            self._send_one(transport, now)
        elif not self.sent:
            self._finish()

    def _closed(self) -> None:
        super()._closed()
        self._finish()

    def _finish(self) -> None:
        if self.running:
            self.running = False
            self.sent.clear()
            self.est.active -= 1
            if self.est.active <= 0:
                self.est.idle.set()


async def run_echo(url: str, *, conns: int, inflight: int, size: int, duration: float,
                   warmup: float, server_pid: int | None, scenario: str,
                   time_limit: float) -> dict[str, Any]:
    payload = make_text(size, ascii_only=True).encode()
    st = EchoState(payload, inflight)
    row: dict[str, Any] = {"scenario": scenario, "kind": "echo", "conns": conns,
                           "inflight": inflight, "size": size}
    made, errors = await connect_all(url, conns, st, lambda _i: EchoConn(st), concurrency=100,
                                     time_limit=min(30.0, time_limit / 2))
    row["connected"] = st.connected
    if not st.connected:
        return _failed(row, errors or Counter({"no connection": 1}))
    window = Window(SchedStat(server_pid))
    for _, conn in made:
        conn.start()
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
        errors["acks still missing 5 s after the window"] += 1
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
        "unexpected_packets": st.bad,
    })
    if st.closed_by_server:
        errors[f"{st.closed_by_server} connections closed by the server"] += 1
    return _finish_row(row, errors, ok=messages > 0 and st.mismatched == 0
                       and not st.closed_by_server)


# -- fan-out ---------------------------------------------------------------------------------------


class FanoutState(State):
    def __init__(self) -> None:
        super().__init__()
        self.counts: list[int] = []  # deliveries per message (by sequence number)
        self.total = 0
        self.m0 = 1 << 62
        self.m1 = 1 << 62
        self.measured = 0
        self.lat: list[int] = []
        self.probed = 0
        self.all_in = asyncio.Event()
        self.expected = -1


class RoomConn(SioConn):
    join = True

    def __init__(self, st: FanoutState) -> None:
        super().__init__(st)
        self.fst = st
        self.got = 0  # this member's deliveries
        self.got_window = 0  # of the measured messages

    def message(self, transport: WSTransport, data: bytes) -> None:
        if not data.startswith(_SAID):
            super().message(transport, data)
            return
        now = _now_ns()
        st = self.fst
        try:
            seq = int(data[11:21])
            ts = int(data[22:41])
        except ValueError:
            st.bad += 1
            return
        st.total += 1
        if self.got == 0:
            st.probed += 1
        self.got += 1
        if seq < len(st.counts):
            st.counts[seq] += 1
        if st.m0 <= seq < st.m1:
            self.got_window += 1
            st.lat.append(now - ts)
            st.measured += 1
            if st.measured == st.expected:
                st.all_in.set()


async def run_fanout(url: str, *, members: int, rate: float, size: int, duration: float,
                     warmup: float, drain: float, server_pid: int | None, scenario: str,
                     time_limit: float) -> dict[str, Any]:
    if size < _HEAD:
        raise ValueError(f"fan-out messages need at least {_HEAD} bytes")
    st = FanoutState()
    padding = make_text(size - _HEAD, ascii_only=True).encode()
    row: dict[str, Any] = {"scenario": scenario, "kind": "fanout", "members": members,
                           "rate": rate, "size": size, "offered_per_s": members * rate}
    deadline = time.monotonic() + time_limit - 5
    conns: list[RoomConn] = []

    def factory(_i: int) -> RoomConn:
        conn = RoomConn(st)
        conns.append(conn)
        return conn

    made, errors = await connect_all(url, members, st, factory, concurrency=100,
                                     time_limit=min(60.0, time_limit / 3))
    row["connected"] = st.connected
    joined = [c for _, c in made if c.ready]
    if not joined:
        return _failed(row, errors or Counter({"no connection": 1}))
    sender = joined[0].tr
    assert sender is not None
    n = len(joined)
    head = b'42["say","%s","' % ROOM.encode()

    def send() -> None:
        seq = len(st.counts)
        st.counts.append(0)
        sender.send(TEXT, head + b"%010d %019d " % (seq, _now_ns()) + padding + b'"]')

    loop = asyncio.get_running_loop()
    # Probe: until every member has had a message (each is in the room).
    t_probe = last = loop.time()
    send()
    while st.probed < n and loop.time() - t_probe < 15:
        await asyncio.sleep(0.02)
        if loop.time() - last >= 0.5:
            send()
            last = loop.time()
    row["ready"] = st.probed >= n
    row["ready_s"] = round(loop.time() - t_probe, 3)
    if not row["ready"]:
        errors[f"only {st.probed} of {n} members got the probe"] += 1

    async def paced(seconds: float) -> None:
        start = next_t = loop.time()
        while loop.time() - start < seconds and time.monotonic() < deadline:
            if sender.is_disconnected:
                return
            send()
            next_t += 1 / rate
            delay = next_t - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

    await paced(warmup)
    window = Window(SchedStat(server_pid))
    gc.disable()
    st.m0 = len(st.counts)
    tot0 = st.total
    window.start()
    await paced(duration)
    st.m1 = len(st.counts)
    sent = st.m1 - st.m0
    st.expected = sent * n
    window.stop()
    tot1 = st.total
    if st.measured < st.expected:
        try:
            await asyncio.wait_for(st.all_in.wait(),
                                   max(0.1, min(drain, deadline - time.monotonic())))
        except TimeoutError:
            pass
    gc.enable()
    delivered = st.measured
    lost = max(0, st.expected - delivered)
    per_member = [c.got_window for c in joined]
    short = sum(1 for g in per_member if g < sent)
    st.closing = True
    await close_all(made)
    window_deliveries = tot1 - tot0
    row.update(window.fields())
    row.update(latency_summary(st.lat))
    row.update({
        "sent": sent,
        "expected": st.expected,
        "delivered": delivered,
        "lost": lost,
        "lost_pct": round(100.0 * lost / st.expected, 3) if st.expected > 0 else None,
        # What each client counted of the window's messages: all of them, or who missed some.
        "members_short": short,
        "member_min": min(per_member),
        "member_max": max(per_member),
        "delivered_per_s": round(window_deliveries / window.wall, 1) if window.wall else None,
        "server_cpu_us_per_delivery": window.server_us_per(window_deliveries),
        "dropped_members": st.closed_by_server,
        "malformed": st.bad,
    })
    return _finish_row(row, errors, ok=sent > 0)


# -- idle --------------------------------------------------------------------------------------


async def run_idle(url: str, *, conns: int, concurrency: int, settle: float,
                   server_pid: int | None, scenario: str, time_limit: float) -> dict[str, Any]:
    proc = SchedStat(server_pid)
    row: dict[str, Any] = {"scenario": scenario, "kind": "idle", "conns": conns,
                           "concurrency": concurrency}
    # Warm the server up (lazy imports, first-connection caches) before the baseline.
    wst = State()
    warm, werr = await connect_all(url, min(10, conns), wst, lambda _i: SioConn(wst),
                                   concurrency=concurrency, time_limit=20)
    wst.closing = True
    await close_all(warm)
    if not wst.connected:
        return _failed(row, werr or Counter({"no connection": 1}))
    await asyncio.sleep(0.5)
    rss0 = proc.rss_kb()
    st = State()
    window = Window(proc)
    window.start()
    made, errors = await connect_all(url, conns, st, lambda _i: SioConn(st),
                                     concurrency=concurrency,
                                     time_limit=max(10.0, time_limit - 30))
    window.stop()
    await asyncio.sleep(settle)
    rss1 = proc.rss_kb()
    still_open = sum(1 for _, c in made if c.open)
    st.closing = True
    await close_all(made, time_limit=10)
    connected = st.connected
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
    return _finish_row(row, errors, ok=connected > 0 and still_open == len(made))


# -- command line ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="kind", required=True)
    common = client_arguments("ws://HOST:PORT/socket.io/?EIO=4&transport=websocket")
    common.add_argument("--server-pid", type=int)
    e = sub.add_parser("echo", parents=[common])
    e.add_argument("--conns", type=int, default=10)
    e.add_argument("--inflight", type=int, default=1)
    e.add_argument("--size", type=int, default=64)
    e.add_argument("--duration", type=float, default=5.0)
    e.add_argument("--warmup", type=float, default=1.0)
    f = sub.add_parser("fanout", parents=[common])
    f.add_argument("--members", type=int, default=1000)
    f.add_argument("--rate", type=float, default=10.0)
    f.add_argument("--size", type=int, default=64)
    f.add_argument("--duration", type=float, default=8.0)
    f.add_argument("--warmup", type=float, default=1.0)
    f.add_argument("--drain", type=float, default=5.0)
    i = sub.add_parser("idle", parents=[common])
    i.add_argument("--conns", type=int, default=2000)
    i.add_argument("--concurrency", type=int, default=100)
    i.add_argument("--settle", type=float, default=1.0)
    return p.parse_args(argv)


async def amain(a: argparse.Namespace) -> dict[str, Any]:
    Window.server_core = a.server_core
    Window.client_core = a.client_core
    kw: dict[str, Any] = {"server_pid": a.server_pid, "scenario": a.scenario or a.kind,
                          "time_limit": a.time_limit}
    if a.kind == "echo":
        coro = run_echo(a.url, conns=a.conns, inflight=a.inflight, size=a.size,
                        duration=a.duration, warmup=a.warmup, **kw)
    elif a.kind == "fanout":
        coro = run_fanout(a.url, members=a.members, rate=a.rate, size=a.size,
                          duration=a.duration, warmup=a.warmup, drain=a.drain, **kw)
    else:
        coro = run_idle(a.url, conns=a.conns, concurrency=a.concurrency, settle=a.settle,
                        **kw)
    return await within_time_limit(coro, a, kw["scenario"])


def main(argv: list[str] | None = None) -> int:
    return client_main(amain, parse_args(argv), "picows")


if __name__ == "__main__":
    sys.exit(main())
