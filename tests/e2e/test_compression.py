"""permessage-deflate (``--compression``, ``realtime.deflate``): the negotiation, the shared
compressor, and real clients (``websockets``, frames written by hand) against a live server:
compressed echo and broadcast, members with and without compression in one room, and
hostile compressed input (a "zip bomb", corrupt data, misplaced RSV1 bits)."""

from __future__ import annotations

import json
import os
import random
import socket
import zlib
from typing import Any

import pytest
import pytest_twisted
from websockets.sync.client import connect

from realtime.deflate import Deflater, choose, parse_offers
from realtime.examples.bench import application as bench_app
from realtime.websocket import encode_frame
from tests.clients import (
    after_headers,
    client_frame,
    closed_by_server,
    in_thread,
    parse_frames_rsv,
    ws_open,
)

ANSWER = b"permessage-deflate; server_no_context_takeover; client_no_context_takeover"
OFFER = [(b"Sec-WebSocket-Extensions", b"permessage-deflate; client_max_window_bits")]
#: A chat-like JSON message, compressible, well over the default minimum size.
MESSAGE = json.dumps([{"user": f"user{i}", "text": "hello, how is everyone today?"}
                      for i in range(20)])


def deflate(payload: bytes, bits: int = 15) -> bytes:
    """A client's compressed message: a fresh compressor (no context takeover), the sync
    flush's four-byte tail left off (RFC 7692 7.2.1)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -bits)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def inflate(payload: bytes, bits: int = 15) -> bytes:
    """What a client that keeps no context does with a server's compressed message. The
    output is taken 64 bytes at a time, so back-references are resolved from a window of
    ``bits`` (in one call zlib resolves them from its output, however far back)."""
    decompressor = zlib.decompressobj(-bits)
    out = b""
    data = payload + b"\x00\x00\xff\xff"
    while data:
        out += decompressor.decompress(data, 64)
        data = decompressor.unconsumed_tail
    return out


# -- negotiation ----------------------------------------------------------------------------

NEGOTIATION = [
    # What browsers offer (Chromium, Firefox): accepted, the server's window 15 bits.
    (b"permessage-deflate; client_max_window_bits", ANSWER, 15),
    (b"permessage-deflate", ANSWER, 15),
    (b"Permessage-Deflate; Client_No_Context_Takeover", ANSWER, 15),
    (b"permessage-deflate; server_no_context_takeover; client_no_context_takeover", ANSWER, 15),
    # A limit on the server's window is kept to, and said back.
    (b"permessage-deflate; server_max_window_bits=10", ANSWER + b"; server_max_window_bits=10",
     10),
    (b'permessage-deflate; server_max_window_bits="12"; client_max_window_bits=9',
     ANSWER + b"; server_max_window_bits=12", 12),
    # zlib cannot write an 8-bit window: that offer is declined, the next one taken.
    (b"permessage-deflate; server_max_window_bits=8", None, 0),
    (b"permessage-deflate; server_max_window_bits=8, permessage-deflate", ANSWER, 15),
    (b"x-webkit-deflate-frame, permessage-deflate; client_max_window_bits", ANSWER, 15),
    # Malformed offers are declined (RFC 7692 5: unknown, repeated, bad values).
    (b"permessage-deflate; server_max_window_bits", None, 0),
    (b"permessage-deflate; server_max_window_bits=16", None, 0),
    (b"permessage-deflate; server_max_window_bits=010", None, 0),
    (b"permessage-deflate; client_max_window_bits=7", None, 0),
    (b"permessage-deflate; server_no_context_takeover=1", None, 0),
    (b"permessage-deflate; client_no_context_takeover; client_no_context_takeover", None, 0),
    (b"permessage-deflate; mystery", None, 0),
    (b'permessage-deflate; client_max_window_bits="1 5"', None, 0),
    (b"permessage-deflate; =15", None, 0),
    (b"x-webkit-deflate-frame", None, 0),
    (b";;, ,,;", None, 0),
    (b"\xff\xfe", None, 0),
]


@pytest.mark.parametrize(("offer", "answer", "bits"), NEGOTIATION,
                         ids=[o.decode("latin-1") for o, _, _ in NEGOTIATION])
def test_negotiation(offer, answer, bits):
    chosen = choose(parse_offers([offer]))
    if answer is None:
        assert chosen is None
    else:
        assert chosen == (answer, bits)


def test_offers_over_several_header_lines_keep_their_order():
    assert choose(parse_offers([b"x-mystery", b"permessage-deflate; mystery",
                                b"permessage-deflate; server_max_window_bits=11"])) == (
        ANSWER + b"; server_max_window_bits=11", 11)


# -- the shared compressor -----------------------------------------------------------------


def test_each_message_stands_alone():
    """One compressor serves every socket: each message must inflate on its own, as a
    client that keeps no context (server_no_context_takeover) inflates it."""
    deflater = Deflater(level=6, min_size=1)
    payload = MESSAGE.encode()
    frames = [deflater.message(0x1, payload, 15) for _ in range(3)]
    for frame in frames:
        assert frame is not None and frame[0] == 0xC1  # FIN, RSV1, text
        (rsv, opcode, data), = parse_frames_rsv(frame)
        assert (rsv, opcode) == (4, 0x1)
        assert inflate(data) == payload
    assert deflater.messages == 3
    assert deflater.saved == 3 * (len(encode_frame(0x1, payload)) - len(frames[0]))


def test_a_smaller_window_is_kept_to():
    """With server_max_window_bits=10 no back-reference may reach past 1 KiB: a decoder
    with a 1 KiB window must take the message (zlib refuses a distance too far back)."""
    rng = random.Random(1)
    block = bytes(rng.choice(b"acgt") for _ in range(3000))  # compressible
    payload = block + block  # the repeat is 3000 bytes back
    deflater = Deflater(level=9, min_size=1)
    small = deflater.frame(encode_frame(0x2, payload), 10)
    assert small[0] & 0x40
    assert inflate(parse_frames_rsv(small)[0][2], bits=10) == payload
    # The same message with the full window does reach back (so the check above can fail).
    full = parse_frames_rsv(deflater.frame(encode_frame(0x2, payload), 15))[0][2]
    with pytest.raises(zlib.error):
        inflate(full, bits=10)


def test_small_or_incompressible_messages_go_uncompressed():
    deflater = Deflater(level=1, min_size=128)
    assert deflater.message(0x1, b"x" * 127, 15) is None
    assert deflater.message(0x2, os.urandom(4096), 15) is None
    assert deflater.message(0x1, b"x" * 128, 15) is not None
    assert deflater.messages == 1


def test_a_broadcast_frame_is_compressed_once_for_every_member():
    deflater = Deflater()
    frame = encode_frame(0x1, MESSAGE.encode())
    first = deflater.frame(frame, 15)
    assert deflater.frame(frame, 15) is first  # the next member: the same bytes object
    assert deflater.messages == 2 and deflater.saved == 2 * (len(frame) - len(first))
    other = encode_frame(0x1, MESSAGE.encode())  # equal bytes, a new broadcast: known
    assert deflater.frame(other, 15) is first and deflater.frame(other, 15) is first
    short = encode_frame(0x1, b"hi")
    assert deflater.frame(short, 15) is short
    assert deflater.messages == 4


def test_held_frames_joined_are_compressed_one_by_one():
    """Held broadcasts reach a member joined in one write: each frame in it is compressed
    on its own (or left as it is when that does not pay), in order, once for all members."""
    deflater = Deflater()
    big = [f"{i}:{MESSAGE}".encode() for i in range(3)]
    joined = b"".join([encode_frame(0x1, big[0]), encode_frame(0x2, b"small"),
                       encode_frame(0x1, big[1]), encode_frame(0x1, big[2] * 60)])
    out = deflater.frame(joined, 15)
    frames = parse_frames_rsv(out)
    assert [(rsv, opcode) for rsv, opcode, _ in frames] == [(4, 1), (0, 2), (4, 1), (4, 1)]
    assert [inflate(p) if rsv else p for rsv, _, p in frames] == [
        big[0], b"small", big[1], big[2] * 60]
    assert len(out) < len(joined) and deflater.messages == 3
    assert deflater.frame(joined, 15) is out and deflater.messages == 6


class CountingDeflater(Deflater):
    """The real deflater, counting its zlib calls."""

    calls = 0

    def _deflate(self, payload: bytes, bits: int) -> bytes:
        self.calls += 1
        return super()._deflate(payload, bits)


def test_a_burst_is_compressed_once_whether_members_take_it_joined_or_one_by_one():
    """Members that can take a held burst in one write ask for the joined bytes; a paused
    member gets the frames one by one, in between: each frame is still compressed once."""
    deflater = CountingDeflater()
    frames = [encode_frame(0x1, f"{i}:{MESSAGE}".encode()) for i in range(3)]
    joined = b"".join(frames)
    first = deflater.frame(joined, 15)
    singles = [deflater.frame(frame, 15) for frame in frames]
    assert deflater.frame(joined, 15) == first and deflater.frame(frames[0], 15) == singles[0]
    assert b"".join(singles) == first
    assert deflater.calls == 3
    assert deflater.messages == 3 + 3 + 3 + 1


# -- real clients against a live server -------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_websockets_client_echo_compressed(live):
    server = await live(bench_app, compression=True)
    plain_server = await live(bench_app)

    def client() -> list[Any]:
        out = []
        with connect(server.ws_url("/echo"), max_size=None) as ws:
            out.append(ws.response.headers.get("Sec-WebSocket-Extensions"))
            for message in (MESSAGE, MESSAGE.encode(), "short", MESSAGE * 200):
                ws.send(message)
                out.append(ws.recv(timeout=5) == message)
        with connect(server.ws_url("/echo"), compression=None) as ws:  # offers nothing
            out.append(ws.response.headers.get("Sec-WebSocket-Extensions"))
            ws.send(MESSAGE)
            out.append(ws.recv(timeout=5) == MESSAGE)
        with connect(plain_server.ws_url("/echo")) as ws:  # offers; the default says no
            out.append(ws.response.headers.get("Sec-WebSocket-Extensions"))
        return out

    out = await in_thread(client)
    assert out == [ANSWER.decode(), True, True, True, True, None, True, None]
    deflater = server.site.deflater
    assert deflater.messages == 3  # MESSAGE as text and bytes, MESSAGE * 200; not "short"
    assert deflater.saved > len(MESSAGE) * 200 // 2
    assert plain_server.site.deflater is None


@pytest_twisted.ensureDeferred
async def test_raw_compressed_frames_both_ways(live):
    server = await live(bench_app, compression=True)
    conn = await ws_open(server.port, "/echo", extra=OFFER)
    status, headers, _ = conn.response()
    assert status == 101 and headers[b"sec-websocket-extensions"] == [ANSWER]
    text = MESSAGE.encode()
    conn.write(client_frame(0x1, deflate(text), rsv=4))  # compressed text
    conn.write(client_frame(0x2, b"tiny"))  # uncompressed: allowed on a compressing socket
    half = len(deflate(text)) // 2  # a compressed message in two frames
    conn.write(client_frame(0x2, deflate(text)[:half], rsv=4, fin=False)
               + client_frame(0x0, deflate(text)[half:]))
    await conn.wait_for(lambda d: len(parse_frames_rsv(after_headers(d))) >= 3)
    frames = parse_frames_rsv(after_headers(conn.data))
    assert [(rsv, opcode) for rsv, opcode, _ in frames] == [(4, 0x1), (0, 0x2), (4, 0x2)]
    assert inflate(frames[0][2]) == text and frames[1][2] == b"tiny"
    assert inflate(frames[2][2]) == text
    (socket,) = [c for c in server.site.connections if not c.in_handshake]
    # No zlib state stays with the socket between messages (idle memory).
    assert socket._perMessageCompress._decompressor is None
    conn.abort()


async def _room(server: Any, count: int, offer: bool) -> list[Any]:
    conns = [await ws_open(server.port, "/room/r", extra=OFFER if offer else None)
             for _ in range(count)]
    for conn in conns:
        assert conn.response()[0] == 101
    return conns


@pytest_twisted.ensureDeferred
async def test_broadcast_to_members_with_and_without_compression(live):
    server = await live(bench_app, compression=True)
    squeezed = await _room(server, 3, offer=True)
    plain = await _room(server, 2, offer=False)
    # A burst of five in one write (one read: held and joined for plain members), then one.
    burst = [f"{i}:{MESSAGE}".encode() for i in range(5)]
    plain[0].write(b"".join(client_frame(0x1, message) for message in burst))
    squeezed[0].write(client_frame(0x1, deflate(b"last:" + MESSAGE.encode()), rsv=4))
    expected = [*burst, b"last:" + MESSAGE.encode()]
    for conn in squeezed + plain:
        await conn.wait_for(lambda d: len(parse_frames_rsv(after_headers(d))) >= 6)
    wire = {}
    for conn in squeezed:
        frames = parse_frames_rsv(after_headers(conn.data))
        assert [rsv for rsv, _, _ in frames] == [4] * 6
        assert [inflate(payload) for _, _, payload in frames] == expected
        wire[id(conn)] = after_headers(conn.data)
    assert len(set(wire.values())) == 1  # the same bytes for every compressing member
    for conn in plain:
        frames = parse_frames_rsv(after_headers(conn.data))
        assert [(rsv, payload) for rsv, _, payload in frames] == [(0, m) for m in expected]
    assert server.site.deflater.messages == 3 * 6
    for conn in squeezed + plain:
        conn.abort()


async def _stalled_member(server: Any) -> tuple[Any, Any, Any]:
    """A compressing member that stopped reading (the server's side of its socket with a
    small send buffer, so sends are taken in part soon), a plain publisher in its room,
    and the member's server-side connection."""
    slow = (await _room(server, 1, offer=True))[0]
    publisher = (await _room(server, 1, offer=False))[0]
    (member,) = [c for c in server.site.connections
                 if not c.in_handshake and c._deflater is not None]
    member.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    slow.stop_reading()
    return slow, publisher, member


@pytest_twisted.ensureDeferred
async def test_a_member_that_falls_behind_gets_every_compressed_frame_intact(live):
    """Sends the kernel takes only in part (a small send buffer, a client that stops
    reading) finish through Twisted's buffer and our queue: once the client reads again,
    every frame arrives whole, compressed, in order."""
    server = await live(bench_app, compression=True, max_send_buffer=16 * 1024 * 1024)
    slow, publisher, member = await _stalled_member(server)
    rng = random.Random(2)
    texts = [bytes(rng.choice(b"acgt") for _ in range(20_000)) for _ in range(40)]
    for text in texts:
        publisher.write(client_frame(0x1, text))
    await publisher.wait_for(lambda d: len(parse_frames_rsv(after_headers(d))) >= 40)
    assert member._outq or member.transport.dataBuffer or member.transport._tempDataLen
    slow.resume_reading()
    await slow.wait_for(lambda d: len(parse_frames_rsv(after_headers(d))) >= 40, timeout=20)
    frames = parse_frames_rsv(after_headers(slow.data))
    assert [rsv for rsv, _, _ in frames] == [4] * 40
    assert [inflate(payload) for _, _, payload in frames] == texts
    for conn in (slow, publisher):
        conn.abort()


@pytest_twisted.ensureDeferred
async def test_drop_policy_compresses_nothing_it_drops(live):
    """A compressing member that does not read, under ``--slow-consumer drop``: what is
    dropped for it is not compressed first (no CPU spent on it, nothing counted)."""
    server = await live(bench_app, compression=True, slow_consumer="drop",
                        max_send_buffer=64 * 1024)
    slow, publisher, _ = await _stalled_member(server)
    rng = random.Random(3)
    count = 120
    for _ in range(count):
        publisher.write(client_frame(0x1, bytes(rng.choice(b"acgt") for _ in range(8000))))
    await publisher.wait_for(lambda d: len(parse_frames_rsv(after_headers(d))) >= count)
    site = server.site
    assert site.dropped_messages > 0
    assert site.deflater.messages + site.dropped_messages == count
    for conn in (slow, publisher):
        conn.abort()


@pytest_twisted.ensureDeferred
async def test_inflation_that_stops_inside_a_back_reference_is_still_over_the_limit(live):
    """zlib, capped at the message's budget, can stop inside a back-reference with all the
    input read and no error: the message must close 1009, not reach the consumer cut."""
    server = await live(bench_app, compression=True, max_message_size=3696)
    conn = await ws_open(server.port, "/echo", extra=OFFER)
    compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
    data = (compressor.compress(b"a" * 3768) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    conn.write(client_frame(0x2, data, rsv=4))
    got = await conn.wait_close_frame()
    assert got is not None and got[0] == 1009, got
    assert [op for _, op, _ in parse_frames_rsv(after_headers(conn.data))] == [0x8]
    conn.abort()
    # Exactly at the limit is a message (in one read: Autobahn counts a frame's compressed
    # bytes still to come against the limit, so near it a split read can be refused).
    conn = await ws_open(server.port, "/echo", extra=OFFER)
    conn.write(client_frame(0x2, deflate(b"a" * 3696), rsv=4))
    await conn.wait_frames(1)
    ((rsv, opcode, payload),) = parse_frames_rsv(after_headers(conn.data))
    assert (rsv, opcode) == (4, 0x2) and inflate(payload) == b"a" * 3696
    conn.abort()


# -- hostile compressed input ----------------------------------------------------------------

HOSTILE = [
    # 20 MiB of zeros in about 20 KiB: inflated only up to --max-message-size, then 1009.
    ("zip bomb", lambda: client_frame(0x2, deflate(bytes(20 * 1024 * 1024)), rsv=4), 1009),
    ("bomb over several frames",
     lambda: client_frame(0x2, deflate(bytes(8 * 1024 * 1024))[:5000], rsv=4, fin=False)
     + client_frame(0x0, deflate(bytes(8 * 1024 * 1024))[5000:]), 1009),
    ("corrupt deflate data", lambda: client_frame(0x1, b"\xff" * 64, rsv=4), 1007),
    # A client that ignores client_no_context_takeover: its second message refers back.
    ("context taken over", lambda: _context_taken_over(), 1007),
    ("RSV1 on a continuation", lambda: client_frame(0x1, deflate(b"a" * 300)[:10], rsv=4,
                                                    fin=False)
     + client_frame(0x0, b"x", rsv=4), 1002),
    ("RSV1 on a ping", lambda: client_frame(0x9, b"", rsv=4), 1002),
    ("RSV2", lambda: client_frame(0x1, b"hello", rsv=2), 1002),
]


def _context_taken_over() -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    text = MESSAGE.encode()
    one = (compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    two = (compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    return client_frame(0x1, one, rsv=4) + client_frame(0x1, two, rsv=4)


@pytest.mark.parametrize(("name", "frames", "code"), HOSTILE, ids=[h[0] for h in HOSTILE])
@pytest_twisted.ensureDeferred
async def test_hostile_compressed_input(live, name, frames, code):
    # (a 1009 or 1007 failure reads no close reply: the close deadline drops the client)
    server = await live(bench_app, compression=True, close_timeout=0.2)
    bystander = await ws_open(server.port, "/echo", extra=OFFER)
    conn = await ws_open(server.port, "/echo", extra=OFFER)
    assert conn.response()[1][b"sec-websocket-extensions"] == [ANSWER]
    conn.write(frames())
    got = await conn.wait_close_frame()
    assert got is not None and got[0] == code, (name, got)
    conn.write(client_frame(0x8, got[0].to_bytes(2, "big")))  # the closing handshake
    assert await closed_by_server(conn, 5)
    # The server goes on, and the other client still gets compressed answers.
    bystander.write(client_frame(0x1, deflate(MESSAGE.encode()), rsv=4))
    await bystander.wait_for(lambda d: len(parse_frames_rsv(after_headers(d))) >= 1)
    ((rsv, _, payload),) = parse_frames_rsv(after_headers(bystander.data))
    assert rsv == 4 and inflate(payload) == MESSAGE.encode()
    bystander.abort()


@pytest_twisted.ensureDeferred
async def test_without_compression_an_rsv1_frame_is_a_protocol_error(live):
    server = await live(bench_app)  # compression off: the offer is ignored
    conn = await ws_open(server.port, "/echo", extra=OFFER)
    assert b"sec-websocket-extensions" not in conn.response()[1]
    conn.write(client_frame(0x1, deflate(MESSAGE.encode()), rsv=4))
    got = await conn.wait_close_frame()
    assert got is not None and got[0] == 1002
    conn.abort()
