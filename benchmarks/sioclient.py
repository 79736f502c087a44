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
import os
import sys
import time
from collections import Counter
from typing import Any

from picows import WSListener, WSMsgType, WSTransport

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loadclient
from benchlib import ProcStat, Window, client_arguments, client_main, make_text
from loadclient import Framing, amain, connect_many, scenario_parser

TEXT = WSMsgType.TEXT
CONTINUATION = WSMsgType.CONTINUATION
CLOSE = WSMsgType.CLOSE
_now_ns = time.perf_counter_ns
ROOM = "bench"
#: ``42["said","`` before a fan-out message's text.
_SAID = b'42["said","'


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


class State(loadclient.State):
    """What every connection of one run shares: loadclient's, and the Socket.IO handshakes'
    counts (each run's state is its loadclient state and this, cooperatively)."""

    def __init__(self) -> None:
        super().__init__()
        self.connected = 0  # Socket.IO "/" connected (and joined, for fan-out)
        self.all_connected = asyncio.Event()
        self.want = 0
        self.refused = 0
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


class EchoState(loadclient.EchoState, State):
    def __init__(self, payload: bytes, msg_type: WSMsgType, inflight: int,
                 count: int | None) -> None:
        super().__init__(payload, msg_type, inflight, count)
        #: The ack's tail after its id: ``["<payload>"]``.
        self.tail = b'["' + payload + b'"]'


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


# -- fan-out ---------------------------------------------------------------------------------------


class FanoutState(loadclient.FanoutState, State):
    pass


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
            st.ready += 1
        self.got += 1
        if seq < len(st.counts):
            st.counts[seq] += 1
        if st.m0 <= seq < st.m1:
            self.got_window += 1
            st.lat.append(now - ts)
            st.measured += 1
            if st.measured == st.expected:
                st.all_in.set()


# -- the protocol ----------------------------------------------------------------------------------


class SocketIOFraming(Framing):
    """loadclient's runners on Engine.IO/Socket.IO: connections are ready once connected to
    "/" (and in the room, for fan-out), echoes are acks, fan-out messages ``say`` events."""

    EchoState = EchoState
    EchoConn = EchoConn
    FanoutState = FanoutState
    RoomConn = RoomConn
    IdleState = State
    IdleConn = SioConn
    stat = SchedStat

    async def connect(self, url: str, n: int, st: Any, factory: Any, *, concurrency: int,
                      time_limit: float) -> tuple[list[tuple[WSTransport, Any]],
                                                  Counter[str]]:
        return await connect_all(url, n, st, factory, concurrency=concurrency,
                                 time_limit=time_limit)

    def ready(self, made: list[tuple[WSTransport, Any]]) -> list[Any]:
        return [conn for _, conn in made if conn.ready]

    def is_open(self, transport: WSTransport, conn: Any) -> bool:
        return bool(conn.open)

    def payload(self, size: int, binary: bool) -> bytes:
        return make_text(size, ascii_only=True).encode()

    def template(self, padding: bytes) -> bytes:
        return (b'42["say","%s","' % ROOM.encode() + super().template(padding) + b'"]')

    def head(self, kind: str, **options: Any) -> dict[str, Any]:
        return {}

    def echo_done(self, st: Any, row: dict[str, Any], errors: Counter[str],
                  late: bool) -> bool:
        row["unexpected_packets"] = st.bad
        if late:
            errors["acks still missing 5 s after the window"] += 1
        if st.closed_by_server:
            errors[f"{st.closed_by_server} connections closed by the server"] += 1
        return not st.closed_by_server

    def fanout_fields(self, st: Any, joined: list[Any], sent: int,
                      window: Window) -> dict[str, Any]:
        # What each client counted of the window's messages: all of them, or who missed some.
        per_member = [c.got_window for c in joined]
        return {"members_short": sum(1 for g in per_member if g < sent),
                "member_min": min(per_member), "member_max": max(per_member)}

    def idle_ok(self, still_open: int, made: list[tuple[WSTransport, Any]]) -> bool:
        return still_open == len(made)


SOCKETIO = SocketIOFraming()


# -- command line ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    common = client_arguments("ws://HOST:PORT/socket.io/?EIO=4&transport=websocket")
    common.add_argument("--server-pid", type=int)
    p, *_ = scenario_parser(__doc__.split("\n\n")[0], common, conns=10, rate=10.0,
                            fanout_warmup=1.0, idle_conns=2000)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return client_main(lambda a: amain(a, SOCKETIO), parse_args(argv), "picows")


if __name__ == "__main__":
    sys.exit(main())
