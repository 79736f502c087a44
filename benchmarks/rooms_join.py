"""Members of several rooms: one write per member per turn, or one per room? An A/B in one
process, on real loopback TCP sockets.

    python benchmarks/rooms_join.py [--members 2000] [--rooms 3] [--turns 40] [--passes 5]
                                    [--disjoint]

Every member is in every room; each turn broadcasts one 64-byte message to each room inside
one read (``hold()``/``release()``), as a handler that posts to several rooms, or a Redis
subscriber's read of several rooms' messages, does. "joined" is the layer as it is (a member
that several held entries reach gets them in one write, ``_join_members``); "per room"
switches that step off (one write per member per room, the layer before it). With
``--disjoint`` each member is in one room only: nobody is reached twice, and the step's
cost is finding that out (it should be lost in the noise). A reader
process on the other core drains the sockets, so each write pays the receiver's wake-up as
in a real fan-out. Printed: the server thread's CPU (user + system, ``thread_time``) per
delivered frame, writes per member per turn, medians over the passes, and the ratio. The
members' writes are the ones ``WebSocketConnection.deliver_frame`` makes on a clean socket
(one ``send()``); the rest of a real server (reads, the reactor) is not here: this measures
the one step, not the server (``run.py`` does that).
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from realtime.layers import InMemoryChannelLayer, base


class SocketReceiver:
    """A member: its writes go straight to its socket, as a clean connection's do."""

    _held_seq = -1
    _held_count = 0

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def deliver(self, event: dict[str, Any]) -> None:
        raise AssertionError("broadcasts only")

    def deliver_frame(self, frame: bytes) -> bool:
        sent = self.sock.send(frame)
        if sent != len(frame):
            raise RuntimeError("a reader fell behind: its socket buffer is full")
        return True

    deliver_joined = deliver_frame


def reader(port: int, members: int) -> None:
    """Connect ``members`` sockets, then drain them until stdin closes."""
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(members)]
    ep = select.epoll()
    by_fd = {}
    for conn in conns:
        conn.setblocking(False)
        ep.register(conn.fileno(), select.EPOLLIN)
        by_fd[conn.fileno()] = conn
    ep.register(sys.stdin.fileno(), select.EPOLLIN)
    print("ready", flush=True)
    while True:
        for fd, _ in ep.poll():
            if fd == sys.stdin.fileno():
                return
            by_fd[fd].recv(65536)


def pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and core < os.cpu_count():
        os.sched_setaffinity(0, {core})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--rooms", type=int, default=3)
    parser.add_argument("--turns", type=int, default=40, help="turns per pass and mode")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--gap", type=float, default=0.02,
                        help="seconds between turns (the readers go back to waiting)")
    parser.add_argument("--disjoint", action="store_true",
                        help="each member in one room (members spread over the rooms)")
    parser.add_argument("--reader", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reader is not None:
        pin(1)
        reader(args.reader, args.members)
        return

    pin(0)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    port = listener.getsockname()[1]
    child = subprocess.Popen(
        [sys.executable, __file__, "--reader", str(port), "--members", str(args.members)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        socks = []
        for _ in range(args.members):
            sock, _addr = listener.accept()
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(sock)
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        layer = InMemoryChannelLayer()
        rooms = [f"room{i}" for i in range(args.rooms)]
        for i, sock in enumerate(socks):
            channel = layer.attach(SocketReceiver(sock))
            for room in [rooms[i % len(rooms)]] if args.disjoint else rooms:
                layer._add_local(room, channel)
        per_turn = args.members * (1 if args.disjoint else args.rooms)
        message = "x" * 64
        joining = base._join_members
        results: dict[str, list[tuple[float, float]]] = {"joined": [], "per room": []}

        def one_pass(mode: str) -> tuple[float, float]:
            base._join_members = joining if mode == "joined" else (lambda: None)
            stats = layer.stats
            frames0, writes0 = stats.broadcast_frames, stats.broadcast_writes
            cpu = 0.0
            for _ in range(args.turns):
                time.sleep(args.gap)
                start = time.thread_time()
                base.hold()
                for room in rooms:
                    layer.broadcast(room, text=message)
                base.release()
                cpu += time.thread_time() - start
            frames = stats.broadcast_frames - frames0
            writes = stats.broadcast_writes - writes0
            assert frames == args.turns * per_turn, frames
            return cpu / frames * 1e6, writes / (args.turns * args.members)

        one_pass("joined")  # warm-up
        for n in range(args.passes):
            order = ("joined", "per room") if n % 2 == 0 else ("per room", "joined")
            for mode in order:
                results[mode].append(one_pass(mode))
        base._join_members = joining
        where = f"one of {args.rooms} rooms" if args.disjoint else f"{args.rooms} rooms"
        print(f"{args.members} members, each in {where}; {args.turns} turns of one message "
              f"per room; {args.passes} passes, medians")
        med = {}
        for mode, rows in results.items():
            us = statistics.median(r[0] for r in rows)
            writes = statistics.median(r[1] for r in rows)
            med[mode] = us
            spread = ", ".join(f"{r[0]:.1f}" for r in rows)
            print(f"  {mode:9s} {us:6.2f} µs CPU per delivered frame ({spread}); "
                  f"{writes:.2f} writes per member per turn")
        print(f"  per room / joined: {med['per room'] / med['joined']:.2f}x")
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()


if __name__ == "__main__":
    main()
