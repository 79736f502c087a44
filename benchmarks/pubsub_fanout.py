"""What one ``realtime.pubsub.publish`` costs the server per subscriber (Centrifugo's
protocol): in a namespace without history (one prepared push frame, ``broadcast``) and in
one with history (a positioned ``group_send``: each member's handler writes the push,
encoded once per process), beside a plain ``broadcast()`` of a frame of the same size to
the same sockets. One process, real loopback sockets.

    python benchmarks/pubsub_fanout.py [--members 2000] [--turns 60] [--passes 5]

Serves ``realtime.pubsub.application`` in this process (anonymous connections, no
application pings); a reader process on the other core opens the subscribers'
WebSockets, sends each ``connect`` and ``subscribe`` as centrifuge-js would, and drains
them, so each write pays the receiver's wake-up as in a real fan-out. Each turn is one
publish inside one read (``hold()``/``release()``), as a publisher's message makes it.
Printed: the reactor thread's CPU (user + system, ``thread_time``) per delivery, medians
over the passes, and the ratios to ``broadcast()``; then a check that every subscriber got
every push (bytes counted).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time

from inprocess import drain, start_reader
from inprocess import main as step_main

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

HANDSHAKE = (b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             b"Sec-WebSocket-Version: 13\r\n\r\n")
NAMESPACES = ["plain:allow_subscribe_for_client,allow_subscribe_for_anonymous",
              "kept:allow_subscribe_for_client,allow_subscribe_for_anonymous,"
              "history_size=100,history_ttl=300"]
CHANNELS = ("plain:bench", "kept:bench")


def client_frame(text: str) -> bytes:
    """One masked text frame (the mask is zeros: the payload goes as it is)."""
    payload = text.encode()
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def reader(port: int, members: int) -> None:
    """Open ``members`` subscribers of both channels, then read and drop everything until
    stdin closes; print the bytes read after the subscribe replies."""
    socks = []
    for _ in range(members):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(HANDSHAKE + client_frame('{"id":1,"connect":{}}')
                  + b"".join(client_frame(json.dumps(
                      {"id": n, "subscribe": {"channel": c}}, separators=(",", ":")))
                      for n, c in enumerate(CHANNELS, 2)))
        socks.append(s)
    for s in socks:
        got = b""
        while got.count(b'"id":') < 1 + len(CHANNELS):  # connect, then each subscribe
            got += s.recv(65536)
        if not got.startswith(b"HTTP/1.1 101") or b'"error"' in got:
            raise SystemExit(f"refused: {got[:200]!r}")
        s.setblocking(False)
    print("ready", flush=True)
    drain(socks)


def frame_size(text: str) -> int:
    n = len(text.encode())
    return n + (2 if n < 126 else 4)


async def measure(opts: argparse.Namespace) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    from realtime import pubsub
    from realtime.config import ServerConfig
    from realtime.layers import base
    from realtime.layers.memory import InMemoryChannelLayer
    from realtime.testing import serve

    layer = InMemoryChannelLayer()
    pubsub.PING_INTERVAL = 0  # the reader counts bytes: every one must be a push
    pubsub.configure(NAMESPACES, anonymous=True, layer=layer)
    server = await serve(pubsub.application, ServerConfig(ping_interval=86400), layer=layer)
    child = await start_reader(__file__, server.port, opts.members, opts.pin,
                               "the reader did not subscribe its members")
    expected = 0
    try:
        deadline = time.monotonic() + 120
        groups = [pubsub.channel_group(c) for c in CHANNELS]
        while any(len(layer._groups.get(g, ())) < opts.members for g in groups):
            if time.monotonic() > deadline or child.poll() is not None:
                raise SystemExit("the members did not all subscribe")
            await deferLater(reactor, 0.05, lambda: None)
        data = {"text": "x" * 48}
        same_size = json.dumps({"push": {"channel": "plain:bench", "pub": {"data": data}}},
                               separators=(",", ":"))
        rows: dict[str, list[float]] = {"broadcast()": [], "publish, no history": [],
                                        "publish, history": []}
        for _ in range(opts.passes):
            for kind in rows:
                spent = 0.0
                for _ in range(opts.turns):
                    t0 = time.thread_time()
                    base.hold()
                    if kind == "broadcast()":
                        layer.broadcast(groups[0], same_size)
                        expected += frame_size(same_size)
                    elif kind == "publish, no history":
                        await pubsub.publish("plain:bench", data, layer=layer)
                        expected += frame_size(same_size)
                    else:
                        where = await pubsub.publish("kept:bench", data, layer=layer)
                        assert where is not None
                        expected += frame_size(json.dumps({"push": {
                            "channel": "kept:bench",
                            "pub": {"data": data, "offset": where["offset"]}}},
                            separators=(",", ":")))
                    base.release()
                    await deferLater(reactor, 0, lambda: None)  # the end of the turn
                    spent += time.thread_time() - t0
                    await deferLater(reactor, 0.02, lambda: None)  # the reader drains
                rows[kind].append(1e6 * spent / (opts.turns * opts.members))
        base_line = statistics.median(rows["broadcast()"])
        for kind, values in rows.items():
            median = statistics.median(values)
            print(f"{kind:>20}: {median:6.2f} µs per delivery, {median / base_line:4.2f}x "
                  f"broadcast() (passes: {', '.join(f'{v:.2f}' for v in values)})")
    finally:
        out, _ = child.communicate(timeout=60)  # closes stdin: the reader counts, ends
        await server.stop()
    received = int(out.split()[-1])
    if received != expected * opts.members:
        raise SystemExit(f"the subscribers got {received} bytes, not the "
                         f"{expected * opts.members} of every push")
    print(f"every subscriber got every push ({received} bytes)")


def main() -> None:
    step_main(__doc__ or "", reader, measure)


if __name__ == "__main__":
    main()
