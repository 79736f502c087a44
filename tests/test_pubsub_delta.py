"""Delta compression in ``realtime.pubsub`` (Centrifugo's ``delta: "fossil"``): the Fossil
codec (``realtime.fossil``) against centrifuge-python's own decoder, the negotiation, what
goes on the wire (a raw client), and Centrifugo's Python SDK (JSON and Protobuf) applying
the deltas as it does against Centrifugo: the data it hands the app is the publication's."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import pytest_twisted
from centrifuge.client import DeltaType
from centrifuge.fossil import apply_delta as sdk_apply
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from realtime import fossil, pubsub
from realtime.layers import InMemoryChannelLayer
from tests.test_pubsub import (  # noqa: F401
    PATH,
    WAIT,
    Raw,
    _settings,
    from_thread,
    pubsub_server,
    raw,
    run,
    sdk_client,
    subscribed,
    token,
)
from tests.test_pubsub_protobuf import RawPb

#: A namespace with delta compression on every publication, recovering subscribers.
SCORES = ("scores:allow_subscribe_for_client,history_size=10,history_ttl=60s,"
          "force_recovery,allowed_delta_types=fossil,delta_publish")
#: Delta allowed, publications marked by their publisher only; positioning on request.
DOCS = ("docs:allow_subscribe_for_client,history_size=10,history_ttl=60s,allow_positioning,"
        "allow_recovery,allowed_delta_types=fossil")
#: History and recovery, no delta.
PLAIN = "plain:allow_subscribe_for_client,history_size=10,history_ttl=60s,force_recovery"


def board(round_: int, changed: int = 0) -> dict[str, Any]:
    """A scoreboard of 100 players (about 6 KB of JSON, some of it not ASCII); ``changed``
    players' scores move each round."""
    return {"round": round_, "players": [
        {"name": f"joueur-{i}", "city": "Zürich" if i % 3 else "東京",
         "score": i * 10 + (round_ if i < changed else 0)} for i in range(100)]}


# -- the codec -----------------------------------------------------------------------------------

def edited(rnd: random.Random, source: bytes) -> bytes:
    target = bytearray(source)
    for _ in range(rnd.randrange(0, 6)):
        at = rnd.randrange(len(target) + 1)
        kind = rnd.randrange(3)
        if kind == 0:
            target[at:at] = rnd.randbytes(rnd.randrange(1, 50))
        elif kind == 1:
            del target[at:at + rnd.randrange(1, 50)]
        else:
            target[at:at + 4] = target[:4]
    return bytes(target)


@given(st.binary(max_size=600), st.integers(0, 2**32))
@settings(max_examples=300, deadline=None)
def test_a_delta_turns_the_source_into_the_target_for_us_and_for_the_sdk(source, seed):
    target = edited(random.Random(seed), source)
    delta = fossil.create(source, target)
    assert fossil.apply(source, delta) == target
    assert bytes(sdk_apply(source, delta)) == target


@given(st.text(max_size=300), st.integers(0, 2**32))
@settings(max_examples=300, deadline=None)
def test_a_text_delta_is_text(text, seed):
    """Copies start and end on characters: the delta of UTF-8 is UTF-8 (a JSON string)."""
    rnd = random.Random(seed)
    source = (text * 3).encode()
    words = list(text * 3)
    for _ in range(rnd.randrange(1, 5)):
        at = rnd.randrange(len(words) + 1)
        words[at:at + rnd.randrange(0, 3)] = rnd.choice(["é", "東京", "x", "🙂", ""])
    target = "".join(words).encode()
    delta = fossil.create(source, target, text=True)
    assert fossil.apply(source, delta.decode("utf-8").encode()) == target


def test_similar_documents_make_small_deltas():
    source = json.dumps(board(1, changed=2), ensure_ascii=False).encode()
    target = json.dumps(board(2, changed=2), ensure_ascii=False).encode()
    delta = fossil.create(source, target, text=True)
    assert len(delta) < len(target) // 20, (len(delta), len(target))
    assert fossil.apply(source, delta) == target
    # Nothing in common: the target itself, and a few bytes of header and checksum.
    unrelated = bytes(range(256)) * 4
    assert len(fossil.create(b"", unrelated)) < len(unrelated) + 16


@pytest.mark.parametrize("mangle, error", [
    (lambda d: d[:-1], "without its checksum"),
    (lambda d: d.replace(b";", b"1;"), "checksum"),
    (lambda d: b"Z" + d, "the delta says"),
    (lambda d: d.split(b"\n", 1)[0] + b"\n1000@0,0;", "past the end of the source"),
    (lambda d: d.split(b"\n", 1)[0] + b"\n99:ab0;", "past the end of the delta"),
    (lambda d: d.split(b"\n", 1)[0] + b"\n3!abc", "unknown operator"),
])
def test_a_delta_that_does_not_fit_is_refused(mangle, error):
    source = b"the quick brown fox jumps over the lazy dog " * 4
    target = source.replace(b"lazy", b"sleepy")
    with pytest.raises(fossil.DeltaError, match=error):
        fossil.apply(source, mangle(fossil.create(source, target)))


# -- the namespace options -------------------------------------------------------------------------

def test_the_namespace_options_and_their_errors():
    ns = pubsub.parse_namespace(SCORES)
    assert (ns.allowed_delta_types, ns.delta_publish) == (("fossil",), True)
    with pytest.raises(ValueError, match="delta types are fossil"):
        pubsub.parse_namespace("x:history_size=1,history_ttl=1s,allowed_delta_types=xdelta")
    with pytest.raises(ValueError, match="delta compression needs history"):
        pubsub.parse_namespace("x:allowed_delta_types=fossil")
    with pytest.raises(ValueError, match="delta types are fossil"):  # no value: a slip
        pubsub.parse_namespace("x:history_size=1,history_ttl=1s,allowed_delta_types")


def test_a_toml_namespace_lists_its_delta_types(tmp_path):
    from realtime.tap import Options

    config = tmp_path / "realtime.toml"
    config.write_text('[[namespaces]]\nname = "scores"\nhistory_size = 5\n'
                      'history_ttl = "60s"\nforce_positioning = true\n'
                      'allowed_delta_types = ["fossil"]\n')
    options = Options()
    options.parseOptions(["--config", str(config), "--app", "realtime.pubsub:application"])
    [spec] = options["namespace"]
    assert pubsub.parse_namespace(spec).allowed_delta_types == ("fossil",)


# -- on the wire ---------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_the_wire_whole_first_then_deltas_of_the_one_before(pubsub_server):  # noqa: F811
    layer = InMemoryChannelLayer()
    server = await pubsub_server(SCORES, PLAIN, layer=layer)

    def flow(c: Any) -> Any:
        c.connect()
        reply = c.result("subscribe", {"channel": "scores:final", "delta": "fossil"})
        plain = c.result("subscribe", {"channel": "plain:x", "delta": "fossil"})
        pushes = []
        for n in range(1, 4):
            from_thread(pubsub.publish, "scores:final", board(n, changed=3), layer=layer)
            pushes.append(c.push()["push"]["pub"])
        from_thread(pubsub.publish, "plain:x", {"n": 1}, layer=layer)
        pushes.append(c.push()["push"]["pub"])
        return reply, plain, pushes

    reply, plain, pushes = await raw(server, flow)
    assert reply["delta"] is True and "delta" not in plain  # no delta type in "plain"
    first, second, third, other = pushes
    # The first whole, as JSON text in a string (centrifuge-js parses it); then deltas.
    assert "delta" not in first and json.loads(first["data"]) == board(1, changed=3)
    base = first["data"].encode()
    for pub, n in ((second, 2), (third, 3)):
        assert pub["delta"] is True and pub["offset"] == n
        assert len(pub["data"]) < len(first["data"]) // 10
        base = fossil.apply(base, pub["data"].encode())
        assert json.loads(base) == board(n, changed=3)
    assert other == {"data": {"n": 1}, "offset": 1}  # not negotiated: as ever


@pytest_twisted.ensureDeferred
async def test_only_marked_publications_are_deltas_and_negotiation_needs_a_position(
        pubsub_server):  # noqa: F811
    layer = InMemoryChannelLayer()
    server = await pubsub_server(DOCS, layer=layer, api_keys=("k" * 20,))

    def flow(c: Any) -> Any:
        c.connect()
        plain = c.result("subscribe", {"channel": "docs:a", "delta": "fossil"})
        unknown = c.result("subscribe", {"channel": "docs:b", "delta": "xdelta",
                                         "positioned": True})
        reply = c.result("subscribe", {"channel": "docs:c", "delta": "fossil",
                                       "positioned": True})
        pubs = []
        for n, marked in ((1, False), (2, False), (3, True), (4, None)):
            from_thread(pubsub.publish, "docs:c", board(n, changed=1), layer=layer,
                        delta=marked)
            pubs.append(c.push()["push"]["pub"])
        from_thread(api_publish, server, {"channel": "docs:c", "data": board(5, changed=1),
                                          "delta": True})
        pubs.append(c.push()["push"]["pub"])
        return plain, unknown, reply, pubs

    plain, unknown, reply, pubs = await raw(server, flow)
    # Neither recovery nor positioning asked for: not negotiated; nor an unknown type.
    assert "delta" not in plain and "delta" not in unknown
    assert reply["delta"] is True
    # Unmarked: whole (still text); marked: a delta, from the API's "delta" too.
    assert [pub.get("delta", False) for pub in pubs] == [False, False, True, False, True]
    assert all(isinstance(pub["data"], str) for pub in pubs)
    base = b""
    for n, pub in enumerate(pubs, 1):
        base = fossil.apply(base, pub["data"].encode()) if pub.get("delta") \
            else pub["data"].encode()
        assert json.loads(base) == board(n, changed=1)


def api_publish(server: Any, body: dict[str, Any]) -> Any:
    from twisted.internet.threads import deferToThread

    from tests.clients import http_get

    def post() -> Any:
        status, _, answer = http_get(server.http_url("/api/publish"),
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"X-API-Key": "k" * 20})
        assert status == 200 and "error" not in json.loads(answer), answer
    return deferToThread(post)


# -- Centrifugo's SDK ------------------------------------------------------------------------------

@pytest.mark.parametrize("use_protobuf", [False, True], ids=["json", "protobuf"])
@pytest_twisted.ensureDeferred
async def test_the_sdk_applies_the_deltas_and_recovers_after_a_reconnect(
        pubsub_server, use_protobuf):  # noqa: F811
    layer = InMemoryChannelLayer()
    server = await pubsub_server(SCORES, layer=layer)
    published = []

    def publish(n: int) -> None:
        published.append(board(n, changed=5))
        from_thread(pubsub.publish, "scores:cup", published[-1], layer=layer)

    async def scenario() -> Any:
        client, _ = sdk_client(server, token("ada"), use_protobuf=use_protobuf)
        watcher, _ = sdk_client(server, token("bob"), use_protobuf=use_protobuf)
        await client.connect()
        await watcher.connect()
        sub, events = await subscribed(client, "scores:cup", delta=DeltaType.FOSSIL)
        _, plain = await subscribed(watcher, "scores:cup")  # no delta: whole data
        got, seen = [], []
        for n in range(1, 4):
            publish(n)
            got.append((await events.next("publication")).pub)
            seen.append((await plain.next("publication")).pub)
        await client.disconnect()
        for n in range(4, 6):
            publish(n)
        await client.connect()
        again = await events.next("subscribed")
        for _ in range(2):
            got.append((await events.next("publication")).pub)
        publish(6)
        got.append((await events.next("publication")).pub)
        stats = sub._delta_negotiated
        await client.disconnect()
        await watcher.disconnect()
        return got, seen, again, stats

    got, seen, again, negotiated = await run(scenario)
    decode = (lambda data: json.loads(data)) if use_protobuf else (lambda data: data)
    assert negotiated is True
    assert [(decode(pub.data), pub.offset) for pub in got] == [
        (published[n - 1], n) for n in range(1, 7)]
    assert [decode(pub.data) for pub in seen] == published[:3]
    assert (again.was_recovering, again.recovered) == (True, True)
    assert [pub.delta for pub in got] == [False, True, True, False, True, True]


@pytest_twisted.ensureDeferred
async def test_a_delta_no_smaller_than_the_publication_goes_whole(pubsub_server):  # noqa: F811
    """As Centrifugo (5.4.1 and later): nothing in common, the publication itself."""
    layer = InMemoryChannelLayer()
    server = await pubsub_server(SCORES, layer=layer)

    def flow(c: Any) -> Any:
        c.connect()
        c.result("subscribe", {"channel": "scores:y", "delta": "fossil"})
        pubs = []
        for data in ({"a": "x" * 60}, {"b": "y" * 60}, {"b": "y" * 60, "c": 1}):
            from_thread(pubsub.publish, "scores:y", data, layer=layer)
            pubs.append(c.push()["push"]["pub"])
        return pubs

    first, unrelated, similar = await raw(server, flow)
    assert "delta" not in unrelated and json.loads(unrelated["data"]) == {"b": "y" * 60}
    assert similar["delta"] is True
    assert json.loads(fossil.apply(unrelated["data"].encode(), similar["data"].encode())) \
        == {"b": "y" * 60, "c": 1}
    assert "delta" not in first


@pytest_twisted.ensureDeferred
async def test_a_client_that_missed_the_one_before_gets_the_next_whole(pubsub_server):  # noqa: F811
    """A member whose last publication was skipped (unencodable for its format) must not
    get a delta against what it never had."""
    layer = InMemoryChannelLayer()
    server = await pubsub_server(SCORES, layer=layer)

    def flow(c: Any) -> Any:
        c.connect()
        c.result("subscribe", {"channel": "scores:x", "delta": "fossil"})
        from_thread(pubsub.publish, "scores:x", {"n": 1, "pad": "x" * 200}, layer=layer)
        first = c.push()["push"]["pub"]
        from_thread(pubsub.publish, "scores:x", b"\xff\xfe not JSON", layer=layer)
        binary = c.push()["push"]["pub"]  # a JSON client cannot have it as text
        from_thread(pubsub.publish, "scores:x", {"n": 3, "pad": "x" * 200}, layer=layer)
        third = c.push()["push"]["pub"]
        return first, binary, third

    first, binary, third = await raw(server, flow)
    assert "delta" not in first
    assert binary["data"] is None and "b64data" in binary and "delta" not in binary
    assert "delta" not in third and json.loads(third["data"]) == {"n": 3, "pad": "x" * 200}


@pytest_twisted.ensureDeferred
async def test_deltas_are_made_once_per_publication_for_every_subscriber(
        pubsub_server, monkeypatch):  # noqa: F811
    layer = InMemoryChannelLayer()
    server = await pubsub_server(SCORES, layer=layer)
    made = []
    create = fossil.create

    def counted(source: bytes, target: bytes, text: bool = False) -> bytes:
        made.append(len(target))
        return create(source, target, text)

    monkeypatch.setattr(fossil, "create", counted)

    async def scenario() -> Any:
        clients = [sdk_client(server, token(f"u{i}"))[0] for i in range(5)]
        subs = []
        for client in clients:
            await client.connect()
            subs.append((await subscribed(client, "scores:many", delta=DeltaType.FOSSIL))[1])
        datas = []
        for n in range(1, 4):
            from_thread(pubsub.publish, "scores:many", board(n, changed=2), layer=layer)
            datas.append([(await events.next("publication")).pub.data for events in subs])
        for client in clients:
            await client.disconnect()
        return datas

    datas = await run(scenario)
    assert datas == [[board(n, changed=2)] * 5 for n in range(1, 4)]
    assert len(made) == 2  # the second and the third publication, once each



# -- review 1's reproductions (each failed before its fix) -------------------------------------

def accent(letter: str) -> dict[str, Any]:
    """A document whose next version differs in one accented letter's second byte (é is
    C3 A9, è is C3 A8): a byte-wise delta's copy ends inside that character."""
    return {"text": "x" * 40 + letter + "y" * 40}


@pytest_twisted.ensureDeferred
async def test_a_json_delta_subscriber_gets_text_deltas_when_a_protobuf_one_came_first(
        pubsub_server):  # noqa: F811
    """A Protobuf and a JSON delta subscriber of one channel in one process: the delta is
    made once per publication (``_Chain.deltas``), and the first member to need it decides
    whether it is made as text. Made for the Protobuf client first (bytes: a copy may end
    inside a UTF-8 character), the JSON client's ``body.decode("utf-8")`` raises in its
    handler. Correct: the JSON client gets a delta (valid UTF-8, in a JSON string) that
    turns its previous publication into the new one, and stays connected."""
    layer = InMemoryChannelLayer()
    server = await pubsub_server(SCORES, layer=layer)

    def flow(j: Raw) -> Any:
        with connect(server.ws_url(PATH), open_timeout=WAIT,
                     subprotocols=[pubsub.PROTOBUF_SUBPROTOCOL]) as ws:
            pb = RawPb(ws)
            pb.connect(token("pb"))
            # The Protobuf client joins the group first: it is handed each publication first.
            pb.result("subscribe", {"channel": "scores:acc", "delta": "fossil"})
            j.connect(token("js"))
            j.result("subscribe", {"channel": "scores:acc", "delta": "fossil"})
            from_thread(pubsub.publish, "scores:acc", accent("é"), layer=layer)
            pb_first = pb.push()["push"]["pub"]
            js_first = j.push()["push"]["pub"]
            from_thread(pubsub.publish, "scores:acc", accent("è"), layer=layer)
            pb_second = pb.push()["push"]["pub"]
            try:
                js_second = j.push()
            except Exception as exc:  # the connection closed, or nothing came
                js_second = repr(exc)
            return pb_first, pb_second, js_first, js_second

    _, pb_second, js_first, js_second = await raw(server, flow)
    assert pb_second.get("delta") is True  # the Protobuf client got its (byte) delta
    assert isinstance(js_second, dict) and "push" in js_second, js_second
    pub = js_second["push"]["pub"]
    base = js_first["data"].encode()
    got = fossil.apply(base, pub["data"].encode()) if pub.get("delta") else pub["data"]
    assert json.loads(got) == accent("è")


#: Delta allowed, publications marked by their publisher; positioning on request.
DOCS = ("docs:allow_subscribe_for_client,history_size=100,history_ttl=60s,"
        "allow_positioning,allowed_delta_types=fossil")


def messages(frames: list[tuple[int, bytes]]) -> list[dict[str, Any]]:
    out = []
    for opcode, payload in frames:
        if opcode == 0x1:
            out += [json.loads(line) for line in payload.decode().split("\n") if line]
    return out


@pytest_twisted.ensureDeferred
async def test_a_publication_the_slow_consumer_policy_dropped_is_no_delta_base(
        pubsub_server):  # noqa: F811
    """``--slow-consumer drop`` skips frames for a client that does not keep up, after
    ``pubsub_pub`` set ``sub.base`` to that publication's offset: the next marked
    publication goes as a delta of one the client never got (centrifuge-js's and
    centrifuge-python's ``applyDelta`` fail on it: bad checksum). Correct: a publication
    whose frame was dropped is not a base; the next one goes whole."""
    import random
    import socket

    from tests.clients import client_frame, later, until, ws_open

    layer = InMemoryChannelLayer()
    server = await pubsub_server(DOCS, layer=layer, slow_consumer="drop",
                                 max_send_buffer=64 * 1024)
    conn = await ws_open(server.port, PATH)
    assert conn.response()[0] == 101
    conn.write(client_frame(0x1, json.dumps({"id": 1, "connect": {"token": token()}}).encode()))
    conn.write(client_frame(0x1, json.dumps({"id": 2, "subscribe": {
        "channel": "docs:big", "delta": "fossil", "positioned": True}}).encode()))
    replies = messages(await conn.wait_frames(
        lambda fs: len(messages(fs)) >= 2, timeout=WAIT))
    assert replies[1]["subscribe"]["delta"] is True, replies
    port = conn.proto.transport.getHost().port
    (server_conn,) = [c for c in server.site.connections
                      if c.transport.getPeer().port == port]
    server_conn.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    conn.stop_reading()

    rnd = random.Random(7)
    docs: list[Any] = []
    for _ in range(300):  # unmarked, unlike one another: whole and large
        docs.append({"n": len(docs) + 1, "body": rnd.randbytes(24000).hex()})
        await pubsub.publish("docs:big", docs[-1], layer=layer, delta=False)
        await later(0.002)
        if server.site.dropped_messages:
            break
    assert server.site.dropped_messages, "nothing was dropped"
    # The client reads again and takes everything queued; then one marked publication,
    # a small edit of the last one (dropped: it came while the queue was full).
    conn.resume_reading()
    assert await until(lambda: not server_conn._outq_bytes, timeout=10)
    await later(0.2)
    docs.append({**docs[-1], "n": len(docs) + 1})
    await pubsub.publish("docs:big", docs[-1], layer=layer, delta=True)
    last = len(docs)
    got = messages(await conn.wait_frames(
        lambda fs: any(m.get("push", {}).get("pub", {}).get("offset") == last
                       for m in messages(fs)), timeout=10))
    conn.abort()
    pubs = [m["push"]["pub"] for m in got if "pub" in m.get("push", {})]
    assert pubs[-1]["offset"] == last
    # What a client does with them (centrifuge-js: applyDelta to the one it has).
    had, base = None, b""
    for pub in pubs:
        if pub.get("delta"):
            assert had == pub["offset"] - 1, (
                f"publication {pub['offset']} is a delta of {pub['offset'] - 1}, "
                f"the client has {had} (the slow-consumer policy dropped the ones between)")
            base = fossil.apply(base, pub["data"].encode())
        else:
            base = pub["data"].encode()
        had = pub["offset"]
    assert json.loads(base) == docs[-1]


def chains_memory() -> int:
    """The bytes ``pubsub._CHAINS`` holds: the mapping, its keys, every chain and its
    dicts, their data."""
    import sys

    total = sys.getsizeof(pubsub._CHAINS)
    for key, chain in pubsub._CHAINS.items():
        total += sys.getsizeof(key) + sum(sys.getsizeof(part) for part in key)
        total += sys.getsizeof(chain) + sys.getsizeof(chain.__dict__)
        for table in (chain.targets, chain.deltas):
            total += sys.getsizeof(table)
            total += sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in table.items())
    return total


@pytest_twisted.ensureDeferred
async def test_the_chains_are_bounded_in_memory_not_only_in_data(
        pubsub_server, monkeypatch):  # noqa: F811
    """``CHAINS_BYTES`` bounds the data the chains keep (``_Chain.total``), not the chains:
    one per (channel, epoch) a delta subscriber ever had a publication in, kept until that
    data passes the bound. With small publications (a counter, a status) each chain costs
    far more than its data (a ``_Chain``, two dicts, its key: several hundred bytes for a
    few bytes counted), so the process keeps hundreds of times ``CHAINS_BYTES`` (32 MiB by
    default: gigabytes) before it drops any, channels long left among them. Correct: what
    the chains keep stays within a small multiple of ``CHAINS_BYTES`` (count each chain's
    overhead, or bound their number)."""
    monkeypatch.setattr(pubsub, "CHAINS_BYTES", 64 * 1024)
    monkeypatch.setattr(pubsub, "_CHAINS", type(pubsub._CHAINS)())
    monkeypatch.setattr(pubsub._Chain, "total", 0)
    layer = InMemoryChannelLayer()
    layer.max_groups_per_connection = 100_000
    server = await pubsub_server(DOCS, layer=layer)
    count = 2000

    def flow(c: Raw) -> Any:
        c.connect()
        for i in range(count):
            c.send("subscribe", {"channel": f"docs:{i}", "delta": "fossil", "positioned": True})
        replies = [c.recv() for _ in range(count)]
        assert all("subscribe" in r for r in replies), replies[:3]
        for i in range(count):
            from_thread(pubsub.publish, f"docs:{i}", {"on": True}, layer=layer)
        pushes = [c.push() for _ in range(count)]
        return pushes

    pushes = await raw(server, flow)
    assert len(pushes) == count
    held = chains_memory()
    assert pubsub._Chain.total <= pubsub.CHAINS_BYTES  # the bound it keeps: the data
    assert held <= 2 * pubsub.CHAINS_BYTES, (
        f"{len(pubsub._CHAINS)} chains hold {held} bytes for {pubsub._Chain.total} bytes "
        f"of data counted against CHAINS_BYTES={pubsub.CHAINS_BYTES}")
