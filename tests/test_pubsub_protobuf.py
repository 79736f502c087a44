"""``realtime.pubsub`` in Centrifugo's Protobuf format (``realtime.pubsub_proto``): the
schema against the one centrifuge-python generates from Centrifugo's client.proto,
centrifuge-python's Protobuf mode (``use_protobuf=True``: what Centrifugo's mobile SDKs
speak) beside JSON clients in the same channels, binary data end to end, and hostile
binary frames. Real servers on the in-memory layer."""

from __future__ import annotations

import asyncio
import base64
import json
from contextlib import ExitStack
from typing import Any

import pytest
import pytest_twisted
from websockets.sync.client import connect

from realtime import pubsub, pubsub_proto
from realtime.pubsub import PubSubConsumer
from realtime.routing import URLRouter, path
from tests.clients import in_thread
from tests.test_pubsub import (  # noqa: F401  (fixtures)
    PATH,
    WAIT,
    Raw,
    _settings,
    pubsub_server,
    run,
    sdk_client,
    subscribed,
    token,
)

OPEN = "open:allow_subscribe_for_client,allow_publish_for_client,presence,join_leave," \
       "force_push_join_leave,allow_presence_for_client"
FEED = "feed:history_size=10,history_ttl=60s,force_recovery,allow_subscribe_for_client," \
       "allow_publish_for_client,allow_history_for_client"
BINARY = bytes(range(256))  # not UTF-8, not JSON: reaches Protobuf clients as it is


def pb_client(server: Any, tok: str = "", **options: Any) -> tuple[Any, Any]:
    return sdk_client(server, tok, use_protobuf=True, **options)


async def pb_and_json(server: Any) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """A Protobuf SDK client (user "pb") and a JSON one ("js"), both connected."""
    pairs = (pb_client(server, token("pb")), sdk_client(server, token("js")))
    for client, events in pairs:
        await client.connect()
        await events.next("connected")
    return pairs


# -- the schema ------------------------------------------------------------------------------------

def _fields(descriptor: Any) -> dict[str, tuple[Any, ...]]:
    """A message's fields: number, type, repeated, and for a message or map the name of
    what it holds (the map entry's value type)."""
    out = {}
    for field in descriptor.fields:
        kind = field.message_type
        held = None
        if kind is not None:
            held = (("map", kind.fields_by_name["value"].type,
                     getattr(kind.fields_by_name["value"].message_type, "name", None))
                    if kind.GetOptions().map_entry else kind.name)
        out[field.name] = (field.number, field.type, pubsub_proto._repeated(field), held)
    return out


def test_the_schema_is_the_one_centrifugos_sdks_are_built_from():
    """Every message here has the fields, numbers and types of centrifuge-python's code,
    generated from Centrifugo's client.proto (its own copy, not this one)."""
    from centrifuge.protocol import client_pb2

    ours = pubsub_proto.schema()
    theirs = client_pb2.DESCRIPTOR.message_types_by_name
    assert len(ours) >= 38
    for name, cls in ours.items():
        assert name in theirs, name
        assert _fields(cls.DESCRIPTOR) == _fields(theirs[name]), name


def test_decode_and_encode_against_the_sdks_messages():
    from centrifuge.protocol import client_pb2
    from google.protobuf.json_format import MessageToDict, ParseDict

    commands = [{"id": 1, "connect": {"token": "t", "subs": {"a:b": {"recover": True,
                                                                     "offset": "7",
                                                                     "epoch": "e"}}}},
                {}, {"id": 2, "publish": {"channel": "a:b", "data": base64.b64encode(
                    BINARY).decode()}},
                {"id": 3, "history": {"channel": "a:b", "limit": -1,
                                      "since": {"offset": "3", "epoch": "e"}}}]
    frame = b"".join(pubsub_proto.varint(len(body)) + body for body in (
        ParseDict(c, client_pb2.Command()).SerializeToString() for c in commands))
    assert pubsub_proto.decode(frame, 10) == [
        {"id": 1, "connect": {"token": "t", "subs": {"a:b": {"recover": True, "offset": 7,
                                                              "epoch": "e"}}}},
        {}, {"id": 2, "publish": {"channel": "a:b", "data": BINARY}},
        {"id": 3, "history": {"channel": "a:b", "limit": -1,
                              "since": {"offset": 3, "epoch": "e"}}}]
    with pytest.raises(pubsub_proto.DecodeError):
        pubsub_proto.decode(frame, 3)  # more commands than allowed

    def reply(document: dict[str, Any]) -> dict[str, Any]:
        encoded = pubsub_proto.encode(document)
        message = client_pb2.Reply()
        size, start = encoded[0], 1
        if size & 0x80:
            size, start = (size & 0x7F) | (encoded[1] << 7), 2
        assert len(encoded) == start + size
        message.ParseFromString(encoded[start:])
        return MessageToDict(message, preserving_proto_field_name=True)

    b64 = base64.b64encode
    assert reply({}) == {} and pubsub_proto.encode({}) == b"\x00"  # a ping
    assert reply({"id": 5, "publish": {}}) == {"id": 5, "publish": {}}
    assert reply({"push": {"channel": "c", "pub": {
        "data": {"x": "é"}, "offset": 4, "tags": {"k": "v"},
        "info": {"user": "u", "client": "c1", "conn_info": [1]}}}}) == {
        "push": {"channel": "c", "pub": {
            "data": b64('{"x":"é"}'.encode()).decode(), "offset": "4", "tags": {"k": "v"},
            "info": {"user": "u", "client": "c1", "conn_info": b64(b"[1]").decode()}}}}
    assert reply({"push": {"channel": "c", "pub": {"data": None, "b64data": b64(
        BINARY).decode()}}}) == {"push": {"channel": "c", "pub": {
            "data": b64(BINARY).decode()}}}
    assert reply({"id": 6, "presence": {"presence": {"c1": {"user": "u", "client": "c1"}}}}
                 ) == {"id": 6, "presence": {"presence": {"c1": {"user": "u", "client": "c1"}}}}
    assert reply({"id": 7, "error": {"code": 103, "message": "permission denied"}}) == {
        "id": 7, "error": {"code": 103, "message": "permission denied"}}
    with pytest.raises(TypeError):
        pubsub_proto.encode({"id": 1, "rpc": {"data": float("nan")}})
    with pytest.raises(TypeError):
        pubsub_proto.encode({"id": 1, "rpc": {"nope": 1}})


def test_from_bytes_takes_json_text_as_json():
    assert pubsub.from_bytes(b'{"a": [1, 2.5]}') == {"a": [1, 2.5]}
    assert pubsub.from_bytes(b'"text"') == "text"
    assert pubsub.from_bytes(b"plain words") == b"plain words"
    assert pubsub.from_bytes(BINARY) == BINARY
    assert pubsub.from_bytes(b"NaN") == b"NaN"  # not JSON (Python would read it)
    # JSON text the server could not carry stays bytes: too deep for the parser, a number
    # JSON clients cannot read back (inf), an integer msgpack (Redis) cannot carry
    assert pubsub.from_bytes(b"[" * 5000) == b"[" * 5000
    assert pubsub.from_bytes(b"1e400") == b"1e400"
    assert pubsub.from_bytes(b"[18446744073709551616]") == b"[18446744073709551616]"
    assert pubsub.from_bytes(b"[18446744073709551615, -9223372036854775808]") == [
        2**64 - 1, -(2**63)]


# -- Protobuf and JSON clients in one channel -----------------------------------------------------

async def json_subscriber(server: Any, channel: str) -> Any:
    """A raw JSON-protocol client (websockets' asyncio client), connected and subscribed:
    it shows the frames a JSON client gets, ``b64data`` included."""
    from websockets.asyncio.client import connect as connect_async

    ws = await connect_async(server.ws_url(PATH), open_timeout=WAIT)
    await ws.send(json.dumps({"id": 1, "connect": {"token": token("raw")}}))
    await ws.send(json.dumps({"id": 2, "subscribe": {"channel": channel}}))
    replies = [json.loads(await asyncio.wait_for(ws.recv(), WAIT)) for _ in range(2)]
    assert [r.get("id") for r in replies] == [1, 2] and "error" not in replies[1], replies
    return ws


async def json_pushes(ws: Any, count: int) -> list[dict[str, Any]]:
    pubs = []
    while len(pubs) < count:
        message = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        if "pub" in message.get("push", {}):
            pubs.append(message["push"]["pub"])
    return pubs


@pytest.mark.parametrize("namespace", [OPEN, FEED], ids=["broadcast", "history"])
@pytest_twisted.ensureDeferred
async def test_protobuf_and_json_clients_share_a_channel(pubsub_server, namespace):  # noqa: F811
    """Publications without history go out as one JSON frame per channel (translated
    once for the Protobuf members), with history as a push encoded once per format: either
    way a Protobuf client's binary data reaches Protobuf clients byte for byte, and JSON
    crosses between the two formats as JSON."""
    server = await pubsub_server(namespace)
    channel = namespace.split(":")[0] + ":room"

    async def scenario() -> Any:
        ada, ada_events = pb_client(server, token("ada", info={"name": "Ada"}))
        bob, bob_events = pb_client(server, token("bob"))
        carl, carl_events = sdk_client(server, token("carl"))  # JSON
        for client, events in ((ada, ada_events), (bob, bob_events), (carl, carl_events)):
            await client.connect()
            await events.next("connected")
        _, at_bob = await subscribed(bob, channel)
        _, at_carl = await subscribed(carl, channel)
        raw = await json_subscriber(server, channel)
        await ada.publish(channel, BINARY)
        await ada.publish(channel, b'{"text": "hi", "n": [1, 2]}')
        await carl.publish(channel, {"text": "é"})
        got_bob = [(await at_bob.next("publication")).pub for _ in range(3)]
        got_carl = [(await at_carl.next("publication")).pub for _ in range(3)]
        got_raw = await json_pushes(raw, 3)
        await raw.close()
        for client in (ada, bob, carl):
            await client.disconnect()
        return got_bob, got_carl, got_raw

    got_bob, got_carl, got_raw = await run(scenario)
    assert [p.data for p in got_bob] == [BINARY, b'{"text":"hi","n":[1,2]}',
                                         '{"text":"é"}'.encode()]
    assert (got_bob[0].info.user, got_bob[0].info.conn_info) == ("ada", b'{"name":"Ada"}')
    assert got_bob[2].info.user == "carl"
    assert [p.data for p in got_carl] == [None, {"text": "hi", "n": [1, 2]}, {"text": "é"}]
    assert got_raw[0]["data"] is None
    assert base64.b64decode(got_raw[0]["b64data"]) == BINARY
    assert [p.get("b64data") for p in got_raw[1:]] == [None, None]
    if namespace == FEED:
        assert [p.offset for p in got_bob] == [1, 2, 3] == [p["offset"] for p in got_raw]


@pytest_twisted.ensureDeferred
async def test_a_protobuf_client_recovers_history_and_sees_who_is_there(pubsub_server):  # noqa: F811
    from realtime.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    server = await pubsub_server(FEED, OPEN, layer=layer)

    async def scenario() -> Any:
        ada, _ = pb_client(server, token("ada", info={"n": 1}))
        await ada.connect()
        _, feed = await subscribed(ada, "feed:x")
        _, room = await subscribed(ada, "open:x")
        first = await feed.next("subscribed")
        await ada.disconnect()
        for data in (BINARY, {"n": 2}):
            from_thread_publish(layer, "feed:x", data)
        await ada.connect()
        again = await feed.next("subscribed")
        missed = [(await feed.next("publication")).pub for _ in range(2)]
        history = await ada.history("feed:x", limit=-1)
        bob, _ = pb_client(server, token("bob", info={"n": 2}))
        await bob.connect()
        await subscribed(bob, "open:x")
        joined = await room.next("join")
        while joined.info.user == "ada":  # her own, at the resubscribe
            joined = await room.next("join")
        presence = await ada.presence("open:x")
        stats = await ada.presence_stats("open:x")
        await bob.disconnect()
        left = await room.next("leave")
        await ada.disconnect()
        return first, again, missed, history, joined, presence, stats, left

    first, again, missed, history, joined, presence, stats, left = await run(scenario)
    assert (first.recoverable, again.was_recovering, again.recovered) == (True, True, True)
    assert [(p.data, p.offset) for p in missed] == [(BINARY, 1), (b'{"n":2}', 2)]
    assert [(p.data, p.offset) for p in history.publications] == [(BINARY, 1),
                                                                   (b'{"n":2}', 2)]
    assert (joined.info.user, joined.info.conn_info) == ("bob", b'{"n":2}')
    assert sorted(info.user for info in presence.clients.values()) == ["ada", "bob"]
    assert (stats.num_clients, stats.num_users) == (2, 2)
    assert left.info.user == "bob"


def from_thread_publish(layer: Any, channel: str, data: Any) -> Any:
    from tests.test_pubsub import from_thread

    return from_thread(pubsub.publish, channel, data, layer=layer)


class Hooks(PubSubConsumer):
    """Hooks see a Protobuf client's data as ``from_bytes`` gives it, and may answer it
    with bytes (as they are) or any JSON value (its JSON text)."""

    seen: list[Any] = []

    async def can_subscribe(self, channel: str, data: Any) -> bool:
        self.seen.append(("subscribe", data))
        return data == {"let": "me"}

    async def rpc(self, method: str, data: Any) -> Any:
        self.seen.append((method, data))
        return data[::-1] if isinstance(data, bytes) else {"echo": data}

    async def on_message(self, data: Any) -> None:
        self.seen.append(("message", data))


class RawPb(Raw):
    """``Raw`` in the Protobuf format, its messages built with centrifuge-python's
    generated classes (Centrifugo's schema, not ours); a frame may carry several."""

    @staticmethod
    def frame(*commands: dict[str, Any]) -> bytes:
        from centrifuge.protocol import client_pb2
        from google.protobuf.json_format import ParseDict

        bodies = [ParseDict(c, client_pb2.Command()).SerializeToString() for c in commands]
        return b"".join(pubsub_proto.varint(len(body)) + body for body in bodies)

    def send(self, method: str, params: Any = None) -> int:
        self.ids += 1
        self.ws.send(self.frame({"id": self.ids, method: params or {}}))
        return self.ids

    def recv_all(self) -> list[dict[str, Any]]:
        """The replies of the next frame."""
        from centrifuge.codecs import _ProtobufCodec

        data = self.ws.recv(timeout=WAIT)
        assert isinstance(data, bytes), data
        replies: list[dict[str, Any]] = _ProtobufCodec.decode_replies(data)
        return replies

    def recv(self) -> dict[str, Any]:
        if not getattr(self, "_unread", None):
            self._unread = self.recv_all()
        return self._unread.pop(0)


def raw_pb(server: Any, flow: Any) -> Any:
    """Run ``flow(RawPb)`` in a worker thread."""
    def go() -> Any:
        with connect(server.ws_url(PATH), open_timeout=WAIT,
                     subprotocols=[pubsub.PROTOBUF_SUBPROTOCOL]) as ws:
            assert ws.subprotocol == pubsub.PROTOBUF_SUBPROTOCOL
            return flow(RawPb(ws))

    return in_thread(go)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest_twisted.ensureDeferred
async def test_hooks_take_and_give_bytes(pubsub_server):  # noqa: F811
    Hooks.seen = []
    app = URLRouter([path("connection/websocket", Hooks.as_asgi())])
    server = await pubsub_server("hooked:", app=app)

    async def scenario() -> Any:
        ada, events = pb_client(server, token("ada"))
        await ada.connect()
        await events.next("connected")
        binary = await ada.rpc("flip", b"\x00\x01\xff")
        json_data = await ada.rpc("json", b'[1, "two"]')
        await subscribed(ada, "hooked:x", data=b'{"let": "me"}')
        await ada.disconnect()
        return binary, json_data

    def by_hand(client: RawPb) -> Any:
        client.connect(token("bob"))
        client.ws.send(client.frame({"send": {"data": b64(b"\x80hello")}}))
        return client.error("subscribe", {"channel": "hooked:y", "data": b64(b"\x01")})

    binary, json_data = await run(scenario)
    assert binary.data == b"\xff\x01\x00"
    assert json_data.data == b'{"echo":[1,"two"]}'
    assert await raw_pb(server, by_hand) == 103
    assert Hooks.seen == [("flip", b"\x00\x01\xff"), ("json", [1, "two"]),
                          ("subscribe", {"let": "me"}), ("message", b"\x80hello"),
                          ("subscribe", b"\x01")]


# -- pings and hostile frames ----------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_protobuf_pings_are_answered_by_the_sdk_and_missed_pongs_close_3012(
        pubsub_server, monkeypatch):  # noqa: F811
    """The server's ping is an empty Reply (one zero byte); the SDK's pong an empty
    Command. A client that never answers is closed with 3012."""
    monkeypatch.setattr(pubsub, "PING_INTERVAL", 0.3)
    server = await pubsub_server(OPEN)

    async def scenario() -> Any:
        ada, events = pb_client(server, token("ada"))
        await ada.connect()
        await events.next("connected")
        await asyncio.sleep(1.2)  # four pings, each answered
        await events.none("disconnected", 0.1)
        result = await ada.presence_stats("open:x")
        await ada.disconnect()
        return result

    def silent(client: RawPb) -> Any:
        connected = client.connect(token("bob"))
        ping = client.ws.recv(timeout=WAIT)
        return connected, ping, client.closed()

    assert (await run(scenario)).num_clients == 0
    connected, ping, code = await raw_pb(server, silent)
    assert (connected["ping"], connected["pong"]) == (1, True)
    assert ping == b"\x00" and code == 3012


def hostile_frames() -> list[tuple[str, Any, Any]]:
    """(name, what a fresh connected client sends, the close code or (error code, None))."""
    def nested(depth: int) -> dict[str, Any]:
        node: dict[str, Any] = {"op": "eq", "key": "k", "val": "v"}
        for _ in range(depth):
            node = {"op": "and", "nodes": [node]}
        return node

    return [
        ("not a length", b"\xff\xff\xff\xff\xff\xff", 3501),
        ("a length past the frame", b"\x05\x08\x01", 3501),
        ("a corrupt message", b"\x03\xff\xff\xff", 3501),
        ("a text frame", '{"id":1,"ping":{}}', 3501),
        ("an empty frame", b"", 3501),
        ("no id", RawPb.frame({"subscribe": {"channel": "open:x"}}), 3501),
        ("1001 commands in a frame", RawPb.frame(
            *({"id": n + 10, "ping": {}} for n in range(1001))), 3501),
        ("a filter nested 40 deep", RawPb.frame(
            {"id": 9, "subscribe": {"channel": "open:y", "tf": nested(40)}}), 3501),
        ("a second connect", RawPb.frame({"id": 9, "connect": {}}), 3501),
        ("an id and no method", RawPb.frame({"id": 9}), (104, None)),
        ("a publish without data", RawPb.frame({"id": 9, "publish": {"channel": "open:x"}}),
         (107, None)),
    ]


@pytest_twisted.ensureDeferred
async def test_hostile_protobuf_frames_close_or_refuse_that_client_only(pubsub_server):  # noqa: F811
    server = await pubsub_server(OPEN)
    cases = hostile_frames()

    def flow() -> Any:
        def fresh() -> Any:
            return connect(server.ws_url(PATH), open_timeout=WAIT,
                           subprotocols=[pubsub.PROTOBUF_SUBPROTOCOL])

        with fresh() as ws:
            witness = RawPb(ws)
            witness.connect(token("bob"))
            witness.result("subscribe", {"channel": "open:x"})
            got = {}
            for name, data, expected in cases:
                with fresh() as other:
                    client = RawPb(other)
                    client.connect(token("eve"))
                    other.send(data)
                    if isinstance(expected, tuple):
                        reply = next(m for m in client.recv_all() if m.get("id") == 9)
                        got[name] = (reply["error"]["code"], None)
                    else:
                        got[name] = client.closed()
            # 1000 commands in one frame are fine
            with fresh() as other:
                batch = RawPb(other)
                batch.connect()
                other.send(RawPb.frame(*({"id": n + 10, "ping": {}} for n in range(1000))))
                ids: list[int] = []
                while len(ids) < 1000:
                    ids += [m["id"] for m in batch.recv_all()]
            witness.result("publish", {"channel": "open:x", "data": b64(b"still here")})
            pushes = witness.pushes or witness.recv_all()
            return got, ids, pushes

    got, ids, pushes = await in_thread(flow)
    assert got == {name: expected for name, _, expected in cases}
    assert ids == list(range(10, 1010))
    (push,) = [p for p in pushes if "pub" in p.get("push", {})]
    assert base64.b64decode(push["push"]["pub"]["data"]) == b"still here"


@pytest.mark.parametrize("compression", [False, True], ids=["plain", "deflate"])
@pytest_twisted.ensureDeferred
async def test_held_broadcasts_reach_protobuf_and_unidirectional_sockets_translated(
        pubsub_server, compression):  # noqa: F811
    """``--broadcast-delay`` holds a channel's publications and writes them joined, one
    ``send()`` per member: a Protobuf socket gets each translated (``_TranslatingSend``
    splits the joined frames), with permessage-deflate too, in order, beside a JSON one."""
    from realtime.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    server = await pubsub_server(OPEN, layer=layer, broadcast_delay=0.2,
                                 compression=compression)

    async def scenario() -> Any:
        from tests.test_pubsub import from_thread

        (pb, _), (js, _) = await pb_and_json(server)
        _, at_pb = await subscribed(pb, "open:held")
        _, at_js = await subscribed(js, "open:held")
        # One first: its delivery finds each socket clean and puts it on the fast path,
        # where the next ones, held, go out joined (one send() per member).
        from_thread(pubsub.publish, "open:held", "first", layer=layer)
        assert (await at_pb.next("publication")).pub.data == b'"first"'
        assert (await at_js.next("publication")).pub.data == "first"
        for n in range(5):  # within one delay: held, then joined
            from_thread(pubsub.publish, "open:held", BINARY if n == 2 else {"n": n},
                        layer=layer)
        got_pb = [(await at_pb.next("publication")).pub.data for _ in range(5)]
        got_js = [(await at_js.next("publication")).pub.data for _ in range(5)]
        for client in (pb, js):
            await client.disconnect()
        return got_pb, got_js

    got_pb, got_js = await run(scenario)
    assert got_pb == [b'{"n":0}', b'{"n":1}', BINARY, b'{"n":3}', b'{"n":4}']
    assert got_js == [{"n": 0}, {"n": 1}, None, {"n": 3}, {"n": 4}]


# -- what the Protobuf format cannot carry as given ----------------------------------------------

@pytest.mark.parametrize("namespace", [OPEN, FEED], ids=["broadcast", "history"])
@pytest_twisted.ensureDeferred
async def test_what_protobuf_cannot_carry_as_given_still_reaches_its_clients(
        pubsub_server, namespace):  # noqa: F811
    """A lone surrogate in a tag (JSON allows it), an ``info`` with keys of the app's, and
    bytes that look like JSON nobody can carry: the Protobuf client gets each publication
    (U+FFFD for the surrogate, ClientInfo's fields of the info, the bytes as they were),
    and stays connected; the JSON client beside it gets them too."""
    from realtime.layers import InMemoryChannelLayer
    from tests.test_pubsub import from_thread

    layer = InMemoryChannelLayer()
    server = await pubsub_server(namespace, layer=layer)
    channel = namespace.split(":")[0] + ":odd"
    deep = b"[" * 5000

    async def scenario() -> Any:
        (pb, pb_events), (js, _) = await pb_and_json(server)
        _, at_pb = await subscribed(pb, channel)
        _, at_js = await subscribed(js, channel)
        from_thread(pubsub.publish, channel, 1, tags={"k": "a\ud800b"}, layer=layer)
        from_thread(pubsub.publish, channel, 2, info={"user": "backend", "name": "B"},
                    layer=layer)
        await pb.publish(channel, deep)
        got_pb = [(await at_pb.next("publication")).pub for _ in range(3)]
        got_js = [(await at_js.next("publication")).pub for _ in range(3)]
        await pb_events.none("disconnected", 0.2)
        await pb_events.none("connecting", 0.01)
        for client in (pb, js):
            await client.disconnect()
        return got_pb, got_js

    got_pb, got_js = await run(scenario)
    assert [p.data for p in got_pb] == [b"1", b"2", deep]
    assert got_pb[0].tags == {"k": "a\ufffdb"} and got_pb[1].info.user == "backend"
    assert [p.data for p in got_js] == [1, 2, None]
    assert got_js[0].tags == {"k": "a\ud800b"}


@pytest_twisted.ensureDeferred
async def test_the_commands_before_a_bad_one_run(pubsub_server):  # noqa: F811
    """As a JSON frame's lines (and Centrifugo): the commands of a Protobuf frame before
    one that does not parse run, then the connection closes with 3501."""
    server = await pubsub_server(OPEN)

    def flow(witness: RawPb) -> Any:
        witness.connect(token("bob"))
        witness.result("subscribe", {"channel": "open:x"})
        with connect(server.ws_url(PATH), open_timeout=WAIT,
                     subprotocols=[pubsub.PROTOBUF_SUBPROTOCOL]) as ws:
            other = RawPb(ws)
            other.connect(token("eve"))
            ws.send(RawPb.frame({"id": 5, "publish": {"channel": "open:x", "data": b64(
                b'"before"')}}) + b"\x03\xff\xff\xff")
            code = other.closed()
        while "pub" not in (push := witness.recv()).get("push", {}):
            pass  # join pushes (OPEN forces them)
        return code, push

    code, push = await raw_pb(server, flow)
    assert code == 3501
    assert base64.b64decode(push["push"]["pub"]["data"]) == b'"before"'


@pytest_twisted.ensureDeferred
async def test_a_held_burst_is_translated_once_per_frame(pubsub_server, monkeypatch):  # noqa: F811
    """``--broadcast-delay`` holds 40 publications; six Protobuf members get all 40, and
    each frame is translated once in the process, not once per member."""
    from realtime.layers import InMemoryChannelLayer

    calls: list[bytes] = []
    real = pubsub._translated

    def counted(frame: bytes, form: Any) -> Any:
        calls.append(frame)
        return real(frame, form)

    monkeypatch.setattr(pubsub, "_translated", counted)
    layer = InMemoryChannelLayer()
    server = await pubsub_server(OPEN, layer=layer, broadcast_delay=0.1)

    def burst() -> None:
        for n in range(40):
            pubsub.publish("open:burst", {"n": n}, layer=layer)

    def flow() -> Any:
        from tests.test_pubsub import from_thread

        with ExitStack() as stack:
            clients = [RawPb(stack.enter_context(connect(
                server.ws_url(PATH), open_timeout=WAIT,
                subprotocols=[pubsub.PROTOBUF_SUBPROTOCOL]))) for _ in range(6)]
            for client in clients:
                client.connect(token("ada"))
                client.result("subscribe", {"channel": "open:burst"})
            from_thread(burst)
            got = []
            for client in clients:
                datas = []
                while len(datas) < 40:
                    message = client.recv()
                    if "pub" in message.get("push", {}):
                        datas.append(json.loads(base64.b64decode(
                            message["push"]["pub"]["data"])))
                got.append(datas)
            return got

    got = await in_thread(flow)
    assert got == [[{"n": n} for n in range(40)]] * 6
    assert len(calls) == len(set(calls)) == 40
