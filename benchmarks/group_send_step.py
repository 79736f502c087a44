"""What one ``group_send`` costs the server per member when every member's handler sends
the message on (a Channels app's room: ``room_message`` -> ``self.send``): the layer's
delivery, the handler, the frame and the ``send()``. One process, real loopback sockets.

    python benchmarks/group_send_step.py [--members 2000] [--turns 60] [--passes 5]

Serves ``benchmarks/peers/channels_port_app.py`` (Daphne's benchmark consumers, ported by
changing imports) in this process; a reader process on the other core opens the members'
WebSockets and drains them, so each write pays the receiver's wake-up as in a real
fan-out. Each turn is one ``group_send`` inside one read (``hold()``/``release()``), as a
publisher's message makes it. Printed: the reactor thread's CPU (user + system,
``thread_time``) per delivery, the median over the passes, beside the same members'
``broadcast()`` of the same frame (one prepared frame written per member) in the same
run. A/B a change by running it before and after: it measures the one step, not the
server (``run.py`` does that).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time

from inprocess import drain, start_reader
from inprocess import main as step_main

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, "peers"))

HANDSHAKE = (b"GET /room/bench HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             b"Sec-WebSocket-Version: 13\r\n\r\n")


def reader(port: int, members: int) -> None:
    """Open ``members`` WebSockets, then read and drop everything until stdin closes."""
    socks = []
    for _ in range(members):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(HANDSHAKE)
        socks.append(s)
    for s in socks:
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        if not head.startswith(b"HTTP/1.1 101"):
            raise SystemExit(f"handshake refused: {head[:40]!r}")
        if head.partition(b"\r\n\r\n")[2]:
            raise SystemExit("a frame came before the measuring started")
        s.setblocking(False)
    print("ready", flush=True)
    drain(socks)


async def measure(opts: argparse.Namespace) -> None:
    import channels_port_app
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    from realtime.config import ServerConfig
    from realtime.layers import base
    from realtime.layers.memory import InMemoryChannelLayer
    from realtime.testing import serve

    layer = InMemoryChannelLayer()
    # No keepalive pings: the reader counts bytes, and every one must be a frame sent.
    server = await serve(channels_port_app.application, ServerConfig(ping_interval=86400),
                         layer=layer)
    child = await start_reader(__file__, server.port, opts.members, opts.pin,
                               "the reader did not open its members")
    try:
        deadline = time.monotonic() + 120
        while len(layer._groups.get("room.bench", ())) < opts.members:
            if time.monotonic() > deadline or child.poll() is not None:
                raise SystemExit("the members did not all join")
            await deferLater(reactor, 0.05, lambda: None)
        text = "x" * 64
        rows: dict[str, list[float]] = {"group_send": [], "broadcast": []}
        for _ in range(opts.passes):
            for kind in rows:
                spent = 0.0
                for _ in range(opts.turns):
                    t0 = time.thread_time()
                    base.hold()
                    if kind == "group_send":
                        await layer.group_send("room.bench", {"type": "room.message",
                                                              "text": text, "bytes": None})
                    else:
                        layer.broadcast("room.bench", text)
                    base.release()
                    await deferLater(reactor, 0, lambda: None)  # the end of the turn
                    spent += time.thread_time() - t0
                    await deferLater(reactor, 0.02, lambda: None)  # the reader drains
                rows[kind].append(1e6 * spent / (opts.turns * opts.members))
        for kind, values in rows.items():
            print(f"{kind:>10}: {statistics.median(values):6.2f} µs per delivery "
                  f"(passes: {', '.join(f'{v:.2f}' for v in values)})")
        ratio = statistics.median(rows["group_send"]) / statistics.median(rows["broadcast"])
        print(f"     ratio: {ratio:.2f}x group_send / broadcast")
    finally:
        out, _ = child.communicate(timeout=60)  # closes stdin: the reader counts, ends
        await server.stop()
    frames = 2 * opts.passes * opts.turns * opts.members
    received = int(out.split()[-1])
    if received != frames * (2 + len(text)):
        raise SystemExit(f"the members got {received} bytes, not {frames} frames' worth")
    print(f"every member got every frame ({frames} frames)")


def main() -> None:
    step_main(__doc__ or "", reader, measure)


if __name__ == "__main__":
    main()
