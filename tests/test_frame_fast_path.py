"""``WebSocketConnection._parse_frames``: whole small text/binary frames skip Autobahn's
parser. The same bytes, in the same random chunks, must get the same answer (echoes, pongs,
close frames and codes, the TCP close) with the short cut as with Autobahn parsing every
frame: random streams of good, fragmented, control and broken frames, at the size limits.
In memory (a ``StringTransport``, a ``Clock``); the e2e suites drive it on real sockets."""

from __future__ import annotations

import base64
import os
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from realtime import AsyncWebsocketConsumer, ProtocolTypeRouter, URLRouter, WebsocketConsumer, path
from realtime.config import ServerConfig
from realtime.examples.bench import application
from realtime.exceptions import StopConsumer
from realtime.layers import InMemoryChannelLayer
from realtime.site import RealtimeSite
from realtime.websocket import FAST_FRAME_LIMIT
from tests.clients import (
    after_headers,
    captured_log,
    client_frame,
    close_code,
    handshake,
    parse_frames,
)

CLIENT = IPv4Address("TCP", "10.0.0.1", 5555)
SERVER = IPv4Address("TCP", "127.0.0.1", 8000)
KEY = base64.b64encode(b"0123456789abcdef")
SMALL_LIMITS = {"max_frame_size": 1000, "max_message_size": 1500}


def _open(fast: bool, app: Any = application, route: str = "echo",
          **options: Any) -> tuple[RealtimeSite, Any, StringTransport]:
    site = RealtimeSite(app, ServerConfig(**options), Clock(), layer=InMemoryChannelLayer())
    if not fast:
        site.connection_class = type("AutobahnOnly", (site.connection_class,),
                                     {"_fast_limit": -1})
    channel = site.buildProtocol(CLIENT)
    transport = StringTransport(peerAddress=CLIENT, hostAddress=SERVER)
    channel.makeConnection(transport)
    channel.dataReceived(handshake("/" + route, key=KEY))
    assert transport.value().startswith(b"HTTP/1.1 101 "), transport.value()[:80]
    (conn,) = site.connections
    return site, conn, transport


def _feed(fast: bool, data: bytes | list[bytes], chunks: list[int],
          **options: Any) -> tuple[Any, ...]:
    """Feed ``data`` in reads of ``chunks`` bytes (cycled), or a list of reads as given;
    what was written, and the state, after each read (an answer must not come a read
    later either), and at the end."""
    site, conn, transport = _open(fast, **options)
    if isinstance(data, bytes):
        reads = [data[i : i + size] for i, size in _cuts(len(data), chunks)]
    else:
        reads = data
    trace = []
    with captured_log() as events:
        for read in reads:
            if transport.disconnecting:
                break
            conn.dataReceived(read)
            trace.append((len(transport.value()), conn.state, site.stats.messages_in))
    failures = [e for e in events if e.get("log_failure") is not None]
    assert not failures, failures[0]["log_failure"].getTraceback()
    result = (transport.value(), transport.disconnecting, conn.state, conn.wasClean,
              site.stats.messages_in, trace)
    conn.connectionLost(Failure(ConnectionDone()))
    for call in site.clock.getDelayedCalls():
        call.cancel()
    return result


def _non_minimal(payload: bytes) -> bytes:
    """A text frame whose 16-bit length says what 7 bits could have (Autobahn: 1002)."""
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BBH", 0x81, 0x80 | 126, len(payload)) + key + masked


def _fragmented(parts: list[bytes], opcode: int) -> list[bytes]:
    return [client_frame(opcode if i == 0 else 0, part, fin=i == len(parts) - 1)
            for i, part in enumerate(parts)]


BOUNDARIES = [0, 1, 125, 126, 127, 999, 1000, 1001, 1499, 1500, 1501, FAST_FRAME_LIMIT - 1,
              FAST_FRAME_LIMIT, FAST_FRAME_LIMIT + 1, 65535, 65536]
texts = st.text(max_size=200).map(lambda t: [client_frame(1, t.encode())])
binaries = st.binary(max_size=200).map(lambda b: [client_frame(2, b)])
at_limits = st.builds(lambda n, op: [client_frame(op, b"a" * n)], st.sampled_from(BOUNDARIES),
                      st.sampled_from([1, 2]))
controls = st.one_of(
    st.binary(max_size=125).map(lambda b: [client_frame(9, b)]),
    st.binary(max_size=125).map(lambda b: [client_frame(10, b)]),
    st.sampled_from([[client_frame(8, struct.pack("!H", 1000) + b"bye")], [client_frame(8)]]),
)
fragments = st.builds(_fragmented, st.lists(st.binary(max_size=60), min_size=2, max_size=3),
                      st.sampled_from([1, 2]))
BROKEN = [
    [client_frame(1, b"unmasked", mask=False)],
    [client_frame(2, b"rsv", rsv=1)],
    [client_frame(3, b"reserved opcode")],
    [client_frame(0, b"continuation outside a message")],
    [client_frame(1, b"\xff\xfe not UTF-8")],
    [client_frame(1, "é".encode()[:1])],
    [client_frame(9, b"x" * 126)],
    [client_frame(9, b"fragmented ping", fin=False)],
    [client_frame(8, b"\x03")],
    [_non_minimal(b"n" * 100)],
    [client_frame(1, b"hello", fin=False), client_frame(1, b"a new message inside it")],
]
broken = st.sampled_from(BROKEN)
frames = st.one_of(texts, binaries, texts, binaries, at_limits, controls, fragments, broken)
chunkings = st.lists(st.integers(1, 5000), min_size=1, max_size=6)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.lists(frames, min_size=1, max_size=12), chunkings, st.booleans(), st.booleans())
@example([[client_frame(1, b"a")], [client_frame(9, b"p")], [client_frame(2, b"b")]], [5000],
         False, False)
@example([[client_frame(1, b"x" * FAST_FRAME_LIMIT)]] * 3, [7, 5000], True, False)
def test_the_short_cut_answers_every_stream_as_autobahn_does(groups, chunks, small_limits,
                                                             frame_per_read):
    parts = [frame for group in groups for frame in group]
    data = parts if frame_per_read else b"".join(parts)
    options = SMALL_LIMITS if small_limits else {}
    fast = _feed(True, data, chunks, **options)
    slow = _feed(False, data, chunks, **options)
    assert fast == slow


def test_every_broken_frame_after_a_good_one_in_one_read_or_in_reads_of_their_own():
    for broken_frames in BROKEN:
        parts = [client_frame(1, b"good"), *broken_frames, client_frame(2, b"after")]
        for data in (b"".join(parts), parts):
            assert _feed(True, data, [5000]) == _feed(False, data, [5000]), broken_frames


def test_small_whole_frames_skip_autobahn_and_are_echoed_in_order():
    messages = [("text", "héllo wörld ✓ " * n) for n in (0, 1, 5, 60)] + [
        ("bytes", os.urandom(n)) for n in (0, 1, 125, 126, FAST_FRAME_LIMIT)]
    data = b"".join(client_frame(1, m.encode()) if kind == "text" else client_frame(2, m)
                    for kind, m in messages)
    for fast in (True, False):
        site, conn, transport = _open(fast)
        conn.dataReceived(data)
        echoed = parse_frames(after_headers(transport.value()))
        expected = [(1, m.encode()) if kind == "text" else (2, m) for kind, m in messages]
        assert echoed == expected
        # Autobahn counts the frames it parsed; the short cut leaves them uncounted.
        parsed = conn.trafficStats.incomingWebSocketFrames
        assert parsed == (0 if fast else len(messages))
        assert site.stats.messages_in == len(messages)


def test_frames_past_the_limit_go_to_autobahn_and_cut_ones_wait_for_the_next_read():
    site, conn, transport = _open(True)
    big = client_frame(2, b"b" * (FAST_FRAME_LIMIT + 1))
    small = client_frame(1, b"small")
    conn.dataReceived(small + big + small)  # one short cut, then Autobahn for the rest
    assert conn.trafficStats.incomingWebSocketFrames == 2
    for cut in (1, 3, 7, len(small) - 1):  # a frame the read cut: kept, unparsed
        conn.dataReceived(small[:cut])
        assert conn.data == small[:cut] and conn.current_frame is None
        conn.dataReceived(small[cut:] + small)  # ... and the next read starts with it
        assert conn.data == b""
    medium = client_frame(2, b"m" * 300)  # a 16-bit length: cut inside it, then after it
    conn.dataReceived(medium[:3])
    conn.dataReceived(medium[3:5])
    conn.dataReceived(medium[5:])
    assert conn.trafficStats.incomingWebSocketFrames == 2  # none of those went to Autobahn
    ping = client_frame(9, b"p")
    conn.dataReceived(ping[:3])  # a control frame the read cut: Autobahn's, as before
    conn.dataReceived(ping[3:] + small)
    echoed = parse_frames(after_headers(transport.value()))
    assert [op for op, _ in echoed] == [1, 2, 1] + [1, 1] * 4 + [2, 0xA, 1]
    assert site.stats.messages_in == 3 + 8 + 2


@pytest.mark.parametrize(("bad", "options", "code"), [
    (client_frame(2, b"z" * 1001), SMALL_LIMITS, 1009),  # over --max-frame-size
    (client_frame(1, b"\xc3\x28"), {}, 1007),  # not UTF-8: the decode in onMessage
], ids=["over-max-frame-size", "not-utf-8"])
def test_a_bad_frame_after_a_good_one_closes_with_its_code_and_nothing_after(bad, options,
                                                                             code):
    _site, conn, transport = _open(True, **options)
    conn.dataReceived(client_frame(1, b"ok") + bad + client_frame(1, b"never echoed"))
    out = parse_frames(after_headers(transport.value()))
    assert out[0] == (1, b"ok")
    assert out[1][0] == 8 and close_code(out[1][1]) == code
    assert len(out) == 2



@pytest.mark.parametrize(("header", "options", "code"), [
    (struct.pack("!BBH", 0x82, 0x80 | 126, 1001) + b"mask", SMALL_LIMITS, 1009),
    (struct.pack("!BB", 0x82, 0x80 | 50) + b"mask", {"max_frame_size": 10}, 1009),
    (struct.pack("!BBH", 0x81, 0x80 | 126, 100) + b"mask", {}, 1002),  # not minimal
    (struct.pack("!BBQ", 0x82, 0x80 | 127, 100) + b"mask", {}, 1002),  # nor in 64 bits
    (struct.pack("!BB", 0x81, 5), {}, 1002),  # unmasked
])
def test_a_header_autobahn_refuses_is_answered_before_its_payload_comes(header, options,
                                                                        code):
    _site, conn, transport = _open(True, **options)
    conn.dataReceived(client_frame(1, b"ok") + header)
    out = parse_frames(after_headers(transport.value()))
    assert out[0] == (1, b"ok")
    assert out[1][0] == 8 and close_code(out[1][1]) == code

def test_two_frames_cut_at_every_byte_between_two_reads():
    data = client_frame(1, "ü".encode() * 70) + client_frame(2, b"\x00" * 9)
    for cut in range(1, len(data)):
        reads = [data[:cut], data[cut:]]
        fast = _feed(True, reads, [])
        assert fast == _feed(False, reads, []), cut
        assert parse_frames(after_headers(fast[0])) == [(1, "ü".encode() * 70), (2, b"\x00" * 9)]


# -- consumers that close, raise, stop, wait and broadcast, under limits ---------------------
LOG: list[Any] = []
WAITING: list[Deferred[None]] = []


def _act(consumer: Any, text: str | None, data: bytes | None) -> Any:
    """What a message asks its consumer to do: its first word is the command. Returns what
    the call returned (an async consumer awaits it)."""
    LOG.append(("receive", text, data, consumer._conn.state))
    command = text if text is not None else (data or b"").decode("latin-1")
    if command.startswith("close"):
        return consumer.close(4000 + len(command))
    if command.startswith("raise"):
        raise ValueError("a handler bug: 1011")
    if command.startswith("stop"):
        raise StopConsumer()
    if command.startswith("bye"):
        return consumer.send(text_data="bye", close=4002)
    if command.startswith("broadcast"):
        return consumer.channel_layer.broadcast("g", text="b:" + command)
    if text is not None:
        return consumer.send(text_data=text)
    return consumer.send(bytes_data=data)


class Acting(WebsocketConsumer):
    groups = ["g"]

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        _act(self, text_data, bytes_data)

    def disconnect(self, code: int) -> None:
        LOG.append(("disconnect", code))


class Waiting(AsyncWebsocketConsumer):
    """``wait...`` messages wait for the test to fire them: later messages queue up (and
    past ``max_inflight``, the socket stops reading)."""

    groups = ["g"]

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None):
        command = text_data if text_data is not None else (bytes_data or b"").decode("latin-1")
        if command.startswith("wait"):
            waiting: Deferred[None] = Deferred()
            WAITING.append(waiting)
            await waiting
        await _act(self, text_data, bytes_data)

    async def disconnect(self, code: int) -> None:
        LOG.append(("disconnect", code))


ACTING = ProtocolTypeRouter({"websocket": URLRouter([
    path("acting", Acting.as_app()), path("waiting", Waiting.as_app())])})


def _feed_acting(fast: bool, reads: list[bytes], route: str, options: dict[str, Any],
                 advances: list[float]) -> tuple[Any, ...]:
    LOG.clear()
    WAITING.clear()
    site, conn, transport = _open(fast, app=ACTING, route=route, **options)
    trace = []
    with captured_log() as events:
        for i, read in enumerate(reads):
            if transport.disconnecting:
                break
            site.clock.advance(advances[i % len(advances)])  # the rate limit's bucket fills
            conn.dataReceived(read)
            trace.append((len(transport.value()), transport.producerState, conn.state))
        for _ in range(200):
            if not WAITING:
                break
            WAITING.pop(0).callback(None)
            trace.append((len(transport.value()), transport.producerState, conn.state))
    failures = [e["log_failure"].getErrorMessage() for e in events if e.get("log_failure")]
    result = (transport.value(), transport.disconnecting, conn.state, conn.wasClean,
              site.stats.messages_in, list(LOG), trace, failures, conn._closed_code)
    conn.connectionLost(Failure(ConnectionDone()))
    for call in site.clock.getDelayedCalls():
        call.cancel()
    return (*result, list(LOG))


WORDS = ["hi", "close", "raise", "stop", "bye", "broadcast1", "wait", "wait2", "x" * 125,
         "y" * 126, "é", ""]
acting_frames = st.lists(st.one_of(
    st.builds(lambda word, op, pad: client_frame(op, (word + pad).encode()),
              st.sampled_from(WORDS), st.sampled_from([1, 2]),
              st.sampled_from(["", "z" * 130, "q" * 2000])),
    st.sampled_from([
        client_frame(9, b"ping"), client_frame(10, b"pong"),
        client_frame(8, struct.pack("!H", 1000)), client_frame(8), client_frame(1, b"\xff"),
        client_frame(1, b"frag", fin=False), client_frame(0, b"ment"), client_frame(0, b"end"),
        client_frame(2, b"r" * 3000), client_frame(1, b"u", mask=False),
        client_frame(2, b"rsv", rsv=2), client_frame(1, b"close-fragmented", fin=False),
    ]),
), min_size=1, max_size=12)
LIMITS = [{}, {"rate_limit": 2.0, "rate_burst": 3}, {"max_inflight": 2},
          {"max_frame_size": 130, "max_message_size": 200},
          {"max_frame_size": 1, "max_message_size": 5000},
          {"rate_limit": 1.0, "max_inflight": 1}]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(acting_frames, chunkings, st.sampled_from(["acting", "waiting"]),
       st.sampled_from(LIMITS), st.lists(st.sampled_from([0.0, 0.3, 1.0]), min_size=1,
                                         max_size=3))
def test_consumers_that_close_raise_wait_and_broadcast_see_the_same(parts, chunks, route,
                                                                    options, advances):
    """What each consumer was given (and in which state), what it wrote, when the socket
    stopped reading, the close codes and the disconnect: the same both ways, under rate
    limits, ``max_inflight`` and size limits."""
    data = b"".join(parts)
    reads = [data[i : i + size] for i, size in _cuts(len(data), chunks)]
    fast = _feed_acting(True, reads, route, options, advances)
    assert fast == _feed_acting(False, reads, route, options, advances)


def _cuts(length: int, chunks: list[int]) -> list[tuple[int, int]]:
    cuts, pos, i = [], 0, 0
    while pos < length:
        cuts.append((pos, chunks[i % len(chunks)]))
        pos += chunks[i % len(chunks)]
        i += 1
    return cuts


def test_with_the_short_cut_off_nothing_is_kept_back_from_autobahn():
    """The oracle of the differential tests is Autobahn alone: with ``_fast_limit`` -1 no
    cut start of a frame is kept back (so a bug in keeping them back cannot hide in both)."""
    cut_starts = [bytes([first]) for first in range(256)] + [
        bytes([first, second]) + extra
        for first in (0x81, 0x82) for second in (0x85, 0xFE, 0xFF) for extra in (b"", b"\x01")]
    for start in cut_starts:
        _site, conn, _transport = _open(False)
        conn.dataReceived(start)
        # Autobahn had every byte (it counts what it is given), none was kept back.
        assert conn.trafficStats.incomingOctetsWireLevel == len(start), start
    _site, conn, _transport = _open(False)
    conn.dataReceived(b"\x82\xfe\x01")
    assert conn.data == b"\x82\xfe\x01"  # Autobahn's own buffer, Autobahn's own parse
    assert conn.trafficStats.incomingOctetsWireLevel == 3
