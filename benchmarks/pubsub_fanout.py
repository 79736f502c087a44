"""What one ``realtime.pubsub.publish`` costs the server per subscriber (Centrifugo's
protocol): in a namespace without history (one prepared push frame, ``broadcast``) and in
one with history (a positioned ``group_send``: each member's handler writes the push,
encoded once per process), to JSON subscribers and to as many Protobuf ones, beside a
plain ``broadcast()`` of a frame of the same size to the JSON subscribers. One process,
real loopback sockets.

    python benchmarks/pubsub_fanout.py [--members 2000] [--turns 60] [--passes 5]
                                       [--no-protobuf]

Serves ``realtime.pubsub.application`` in this process (anonymous connections, no
application pings); a reader process on the other core opens the subscribers'
WebSockets, sends each ``connect`` and ``subscribe`` as centrifuge-js would, and drains
them, so each write pays the receiver's wake-up as in a real fan-out. Then as many
Protobuf subscribers (not with ``--no-protobuf``): they offer the ``centrifuge-protobuf``
subprotocol and send those commands in Protobuf, each a binary frame (centrifuge-python's
generated classes, each command length-prefixed with a varint, as its Protobuf codec
does), to channels of their own in the same two namespaces: a Protobuf row is the same
publish to the same number of subscribers, all Protobuf clients (without history: the
JSON frame translated once per publication for them,
``WebSocketConnection.translate_broadcasts``; with history: the push encoded once per
publication in Protobuf). Each turn is one publish inside one read
(``hold()``/``release()``), as a publisher's message makes it. Printed: the reactor
thread's CPU (user + system, ``thread_time``) per delivery, medians over the passes (the
kinds interleaved in every pass), and the ratios to ``broadcast()``; then a check that
every subscriber got every push (JSON: bytes counted; Protobuf: each binary frame's
varint-length-prefixed ``Reply`` messages parsed, the publications counted by channel,
their data and offsets checked).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from inprocess import drain, run_measure, start_reader

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

HANDSHAKE = (b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             b"Sec-WebSocket-Version: 13\r\n\r\n")
PROTOBUF_HANDSHAKE = HANDSHAKE[:-2] + b"Sec-WebSocket-Protocol: centrifuge-protobuf\r\n\r\n"
NAMESPACES = ["plain:allow_subscribe_for_client,allow_subscribe_for_anonymous",
              "kept:allow_subscribe_for_client,allow_subscribe_for_anonymous,"
              "history_size=100,history_ttl=300"]
CHANNELS = ("plain:bench", "kept:bench")
#: The Protobuf subscribers' channels (the same namespaces: one without history, one with).
PROTOBUF_CHANNELS = ("plain:protobuf", "kept:protobuf")
DATA = {"text": "x" * 48}
#: Set for the reader process: open the Protobuf subscribers too (not ``--no-protobuf``).
PROTOBUF_ENV = "PUBSUB_FANOUT_PROTOBUF"
#: Subscribers connecting at once (below Twisted's listen backlog of 50).
BATCH = 32

JSON_ROWS = ("broadcast()", "publish, no history", "publish, history")
PROTOBUF_ROWS = ("publish, no history, Protobuf", "publish, history, Protobuf")


def client_frame(payload: str | bytes) -> bytes:
    """One masked frame, text for ``str``, binary for ``bytes`` (the mask is zeros: the
    payload goes as it is)."""
    opcode = 0x81 if isinstance(payload, str) else 0x82
    data = payload.encode() if isinstance(payload, str) else payload
    assert len(data) < 126
    return bytes([opcode, 0x80 | len(data)]) + b"\0\0\0\0" + data


def protobuf_command(command: dict[str, Any]) -> bytes:
    """One Protobuf ``Command``, varint-length-prefixed, as centrifuge-python's Protobuf
    codec (``centrifuge.codecs._ProtobufCodec``) encodes it."""
    from centrifuge.protocol import client_pb2
    from google.protobuf.json_format import ParseDict

    from realtime.pubsub_proto import varint

    body = ParseDict(command, client_pb2.Command()).SerializeToString()
    return varint(len(body)) + body


def server_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The whole (unmasked, unfragmented) frames at the start of ``data`` as (opcode,
    payload), and what is left of it."""
    frames: list[tuple[int, bytes]] = []
    position = 0
    while len(data) - position >= 2:
        first, size = data[position], data[position + 1]
        assert first & 0x80 and not size & 0x80, "a fragmented or masked server frame"
        size &= 0x7F
        head = 2
        if size == 126:
            head = 4
            size = int.from_bytes(data[position + 2:position + 4], "big")
        elif size == 127:
            head = 10
            size = int.from_bytes(data[position + 2:position + 10], "big")
        if len(data) < position + head + size:
            break
        frames.append((first & 0x0F, data[position + head:position + head + size]))
        position += head + size
    return frames, data[position:]


def replies(payload: bytes) -> list[Any]:
    """The ``Reply`` messages of one binary frame (several, each varint-length-prefixed)."""
    from centrifuge.protocol import client_pb2

    from realtime.pubsub_proto import read_varint

    out = []
    position = 0
    while position < len(payload):
        size, position = read_varint(payload, position)
        out.append(client_pb2.Reply.FromString(payload[position:position + size]))
        position += size
    assert position == len(payload), "a Reply cut short"
    return out


class Recording:
    """A Protobuf subscriber's socket as ``drain`` reads it: what it reads is kept, its
    publications counted once the run is over (the reader does no more per read for it
    than for a JSON subscriber)."""

    def __init__(self, sock: socket.socket, rest: bytes) -> None:
        self.sock = sock
        self.chunks = [rest]

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, size: int) -> bytes:
        data = self.sock.recv(size)
        self.chunks.append(data)
        return data

    def tally(self, counts: dict[str, list[int]]) -> tuple[int, int]:
        """Count its publications into ``counts`` (by channel); (bytes read, bad ones: a
        frame or reply that is no publication, wrong data, an offset not after the last)."""
        expected = json.dumps(DATA, separators=(",", ":")).encode()
        frames, rest = server_frames(b"".join(self.chunks))
        got = dict.fromkeys(PROTOBUF_CHANNELS, 0)
        bad = len(rest)
        last_offset = 0
        for opcode, payload in frames:
            if opcode != 0x2:
                bad += 1
                continue
            for reply in replies(payload):
                pub = reply.push.pub
                if (reply.id or not reply.HasField("push") or not reply.push.HasField("pub")
                        or reply.push.channel not in got or pub.data != expected):
                    bad += 1
                    continue
                got[reply.push.channel] += 1
                if reply.push.channel == PROTOBUF_CHANNELS[1]:  # the channel with history
                    bad += pub.offset <= last_offset
                    last_offset = pub.offset
        for channel, n in got.items():
            counts[channel].append(n)
        return sum(len(c) for c in self.chunks[1:]), bad


def open_json(port: int) -> socket.socket:
    """A JSON subscriber's socket: the handshake, ``connect`` and a ``subscribe`` to each
    of ``CHANNELS`` sent, as centrifuge-js sends them."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(HANDSHAKE + client_frame('{"id":1,"connect":{}}')
              + b"".join(client_frame(json.dumps(
                  {"id": n, "subscribe": {"channel": c}}, separators=(",", ":")))
                  for n, c in enumerate(CHANNELS, 2)))
    return s


def json_subscribed(s: socket.socket) -> socket.socket:
    """``s`` once its replies (connect, then each subscribe) are in, non-blocking."""
    got = b""
    while got.count(b'"id":') < 1 + len(CHANNELS):
        got += s.recv(65536)
    if not got.startswith(b"HTTP/1.1 101") or b'"error"' in got:
        raise SystemExit(f"refused: {got[:200]!r}")
    s.setblocking(False)
    return s


def open_protobuf(port: int) -> socket.socket:
    """A Protobuf subscriber's socket: the handshake offering ``centrifuge-protobuf``,
    then ``connect`` and a ``subscribe`` to each of ``PROTOBUF_CHANNELS``, each command a
    binary frame, as centrifuge-python sends them in its Protobuf mode."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(PROTOBUF_HANDSHAKE + client_frame(protobuf_command({"id": 1, "connect": {}}))
              + b"".join(client_frame(protobuf_command({"id": n, "subscribe": {"channel": c}}))
                         for n, c in enumerate(PROTOBUF_CHANNELS, 2)))
    return s


def protobuf_subscribed(s: socket.socket) -> Recording:
    """``s`` once its replies are in (the subprotocol accepted, no error), non-blocking,
    recording what it reads from then on."""
    got = b""
    while b"\r\n\r\n" not in got:
        got += s.recv(65536)
    head, _, rest = got.partition(b"\r\n\r\n")
    if (not head.startswith(b"HTTP/1.1 101")
            or b"sec-websocket-protocol: centrifuge-protobuf" not in head.lower()):
        raise SystemExit(f"refused: {head[:300]!r}")
    answered = 0
    while answered < 1 + len(PROTOBUF_CHANNELS):  # connect, then each subscribe
        frames, rest = server_frames(rest)
        for opcode, payload in frames:
            for reply in replies(payload) if opcode == 0x2 else ():
                if reply.HasField("error") or not reply.id:
                    raise SystemExit(f"refused: {reply}")
                answered += 1
        if answered < 1 + len(PROTOBUF_CHANNELS):
            rest += s.recv(65536)
    s.setblocking(False)
    return Recording(s, rest)


def reader(port: int, members: int) -> None:
    """Open ``members`` subscribers of both channels (and as many Protobuf subscribers of
    their two channels when ``PROTOBUF_ENV`` is set), then read and drop everything until
    stdin closes; print the bytes read after the subscribe replies, then (a JSON line) the
    Protobuf subscribers' bytes, their publications by channel (min and max over them)
    and the frames or replies that were no expected publication.

    The subscribers connect ``BATCH`` at a time, each batch once the last one's replies
    are in: with more connections than the server's listen backlog waiting, the kernel
    drops SYNs and each of those connections waits a second to try again."""
    kinds: list[tuple[Callable[[int], socket.socket], Callable[[socket.socket], Any]]] = [
        (open_json, json_subscribed)]
    if os.environ.get(PROTOBUF_ENV) == "1":
        kinds.append((open_protobuf, protobuf_subscribed))
    opened: list[Any] = []
    for opener, subscribed in kinds:
        for start in range(0, members, BATCH):
            batch = [opener(port) for _ in range(min(BATCH, members - start))]
            opened += [subscribed(s) for s in batch]
    print("ready", flush=True)
    drain(opened)  # a Recording reads as a socket
    recording = [r for r in opened if isinstance(r, Recording)]
    counts: dict[str, list[int]] = {c: [] for c in PROTOBUF_CHANNELS}
    binary_bytes = bad = 0
    for r in recording:
        n, wrong = r.tally(counts)
        binary_bytes += n
        bad += wrong
    print(json.dumps({"bytes": binary_bytes, "bad": bad, "publications": {
        c: [min(v, default=0), max(v, default=0)] for c, v in counts.items()}}), flush=True)


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
    os.environ[PROTOBUF_ENV] = "1" if opts.protobuf else ""  # the reader inherits it
    child = await start_reader(__file__, server.port, opts.members, opts.pin,
                               "the reader did not subscribe its members")
    expected = 0
    published = dict.fromkeys(PROTOBUF_CHANNELS, 0)
    try:
        deadline = time.monotonic() + 120
        channels = CHANNELS + (PROTOBUF_CHANNELS if opts.protobuf else ())
        groups = [pubsub.channel_group(c) for c in channels]
        while any(len(layer._groups.get(g, ())) < opts.members for g in groups):
            if time.monotonic() > deadline or child.poll() is not None:
                raise SystemExit("the members did not all subscribe")
            await deferLater(reactor, 0.05, lambda: None)
        data = DATA
        same_size = json.dumps({"push": {"channel": "plain:bench", "pub": {"data": data}}},
                               separators=(",", ":"))
        rows: dict[str, list[float]] = {kind: [] for kind in JSON_ROWS + (
            PROTOBUF_ROWS if opts.protobuf else ())}
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
                    elif kind == "publish, history":
                        where = await pubsub.publish("kept:bench", data, layer=layer)
                        assert where is not None
                        expected += frame_size(json.dumps({"push": {
                            "channel": "kept:bench",
                            "pub": {"data": data, "offset": where["offset"]}}},
                            separators=(",", ":")))
                    else:  # the Protobuf subscribers' channel without or with history
                        channel = PROTOBUF_CHANNELS[kind == PROTOBUF_ROWS[1]]
                        await pubsub.publish(channel, data, layer=layer)
                        published[channel] += 1
                    base.release()
                    await deferLater(reactor, 0, lambda: None)  # the end of the turn
                    spent += time.thread_time() - t0
                    await deferLater(reactor, 0.02, lambda: None)  # the reader drains
                rows[kind].append(1e6 * spent / (opts.turns * opts.members))
        base_line = statistics.median(rows["broadcast()"])
        width = max(map(len, rows))
        for kind, values in rows.items():
            median = statistics.median(values)
            print(f"{kind:>{width}}: {median:6.2f} µs per delivery, {median / base_line:4.2f}x "
                  f"broadcast() (passes: {', '.join(f'{v:.2f}' for v in values)})")
    finally:
        out, _ = child.communicate(timeout=120)  # closes stdin: the reader counts, ends
        await server.stop()
    lines = out.split("\n")[-3:-1]  # the bytes read, then the Protobuf tally
    if len(lines) != 2 or child.returncode:
        raise SystemExit(f"the reader failed ({child.returncode}): {out[-300:]!r}")
    total, tally = lines
    binary = json.loads(tally)
    received = int(total) - binary["bytes"]
    if received != expected * opts.members:
        raise SystemExit(f"the subscribers got {received} bytes, not the "
                         f"{expected * opts.members} of every push")
    if opts.protobuf:
        wanted = {c: [n, n] for c, n in published.items()}
        if binary["publications"] != wanted or binary["bad"]:
            raise SystemExit(f"the Protobuf subscribers got {binary['publications']} "
                             f"publications (min, max over them) with {binary['bad']} "
                             f"bad frames or replies, not {wanted}")
        print(f"every Protobuf subscriber got every publication "
              f"({sum(published.values())} each, {binary['bytes']} bytes in all)")
    print(f"every subscriber got every push ({received} bytes)")


def main() -> None:
    """``inprocess.main``'s command line (``--reader PORT MEMBERS``, ``--members``,
    ``--turns``, ``--passes``, ``--no-pin``) and ``--no-protobuf``."""
    if len(sys.argv) > 1 and sys.argv[1] == "--reader":
        reader(int(sys.argv[2]), int(sys.argv[3]))
        return
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--members", type=int, default=2000)
    p.add_argument("--turns", type=int, default=60)
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--no-pin", dest="pin", action="store_false")
    p.add_argument("--no-protobuf", dest="protobuf", action="store_false",
                   help="no Protobuf subscribers (the JSON rows only)")
    run_measure(measure, p.parse_args())


if __name__ == "__main__":
    main()
