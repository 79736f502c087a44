"""centrifuge-js (the npm package ``centrifuge``, Centrifugo's browser SDK) in a real browser
against ``realtime.pubsub``.

``tests/run.sh`` installs the package, pinned, into ``tests/.node`` (never vendored); without
it these tests skip, except under ``CI=true`` where that is a failure. The same headless
Chromium as tests/e2e/test_browser_chat.py (its ``browser`` fixture) loads the page of
``tests/e2e/pubsub_page_app.py`` from a ``twistd realtime`` subprocess on 127.0.0.1 run with
``--jwt-key``, a ``chat`` namespace with history, recovery, presence and join/leave, and a
``live`` namespace without history (its publications are ``broadcast()`` frames, which
Protobuf sockets get translated). The page's ``Centrifuge`` clients record their events;
every wait is on a JS condition with a bound. ``/protobuf`` is the same page on the
package's Protobuf build (``centrifuge-protobuf``): its data is ``Uint8Array`` both ways.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from tests.e2e.pubsub_page_app import BUNDLE, PACKAGE
from tests.e2e.support import REPO, Server, on_a_free_port, start, twistd
from tests.e2e.test_browser_chat import TIMEOUT_MS

pytestmark = pytest.mark.slow

APP = "tests.e2e.pubsub_page_app:application"
#: The version tests/run.sh installs (CENTRIFUGE_JS there).
VERSION = "5.7.4"
JWT_SECRET = "p" * 40
NAMESPACE = ("chat:allow_subscribe_for_client,allow_publish_for_subscriber,presence,"
             "join_leave,force_push_join_leave,history_size=50,history_ttl=300s,"
             "force_recovery,allow_history_for_subscriber,allow_presence_for_subscriber")
#: No history: publications go out as ``broadcast()`` frames (``_binary_broadcast``
#: translates them for Protobuf sockets).
LIVE_NAMESPACE = "live:allow_subscribe_for_client,allow_publish_for_subscriber"
#: Delta compression on every publication (subscribers that ask: ``delta: "fossil"``).
DELTA_NAMESPACE = ("delta:allow_subscribe_for_client,allow_publish_for_subscriber,"
                   "history_size=10,history_ttl=300s,force_recovery,"
                   "allowed_delta_types=fossil,delta_publish")
#: Publications filtered by their tags (``tagsFilter``); no history.
TAGS_NAMESPACE = "tags:allow_subscribe_for_client,allow_tags_filter"
#: The server API's key (publications with tags come from it).
API_KEY = "b" * 24


#: Loaded before the page's scripts: every WebSocket the page opens, in ``window.sockets``,
#: each with the text frames it received in ``texts`` (the JSON protocol's raw replies).
RECORD_SOCKETS = """
window.sockets = [];
window.WebSocket = class extends window.WebSocket {
  constructor(...args) {
    super(...args);
    this.texts = [];
    this.addEventListener("message", (e) => {
      if (typeof e.data === "string") this.texts.push(e.data);
    });
    window.sockets.push(this);
  }
};
"""


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def centrifuge_js() -> None:
    """The installed package, at the pinned version (skipped without it, failed under
    CI=true)."""
    try:
        version = json.loads((PACKAGE / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        version = None
    if version != VERSION or not BUNDLE.is_file():
        _missing(f"centrifuge@{VERSION} is not installed in {PACKAGE.parents[1]} (found "
                 f"{version}; tests/run.sh installs it with npm)")




def _server(port: int) -> Server:
    return start(twistd("--app", APP, "--port", f"tcp:{port}:interface=127.0.0.1",
                        "--jwt-key", JWT_SECRET, "--namespace", NAMESPACE,
                        "--namespace", LIVE_NAMESPACE, "--namespace", DELTA_NAMESPACE,
                        "--namespace", TAGS_NAMESPACE, "--api-key", API_KEY),
                 env={"PYTHONPATH": str(REPO)}, cwd=REPO)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with on_a_free_port(_server) as running:
        yield running


def _token(user: str, ttl: float = 300, key: str = JWT_SECRET) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time() + ttl)}, key, algorithm="HS256")


def _page(browser: Any, server: Server, path: str = "/") -> Any:
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(RECORD_SOCKETS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"http://127.0.0.1:{server.port}{path}")
    page.wait_for_function("window.ready === true")
    page.page_errors = errors  # uncaught exceptions in the page: none expected
    return page


def _wait(page: Any, condition: str, timeout: int = TIMEOUT_MS) -> None:
    page.wait_for_function(condition, timeout=timeout)


def _client(page: Any, name: str, options: str) -> None:
    """``make(name, options)`` then ``connect()``; ``options`` is a JS expression."""
    page.evaluate(f"window.make({json.dumps(name)}, {options}).connect()")


def _subscribe(page: Any, name: str, channel: str) -> None:
    page.evaluate(f"window.sub({json.dumps(name)}, {json.dumps(channel)}).subscribe()")


def _record(page: Any, name: str, channel: str) -> dict[str, Any]:
    return page.evaluate(
        f"window.clients[{json.dumps(name)}].subs[{json.dumps(channel)}].record")


def _seen(page: Any, name: str) -> dict[str, Any]:
    return page.evaluate(f"window.clients[{json.dumps(name)}].seen")


def _js(name: str, channel: str | None = None) -> str:
    """The JS expression of a client (or of its subscription to ``channel``)."""
    if channel is None:
        return f"window.clients[{json.dumps(name)}].client"
    return f"window.clients[{json.dumps(name)}].subs[{json.dumps(channel)}].sub"


def _rec(name: str, channel: str) -> str:
    return f"window.clients[{json.dumps(name)}].subs[{json.dumps(channel)}].record"


def test_publish_join_leave_presence_and_history(centrifuge_js, browser, server):
    """Two pages, two users: both connect (a token; a getToken), subscribe to chat:room;
    each sees the other join; what one publishes reaches the other intact with increasing
    offsets (and its own publications come back to it); presenceStats, presence and history
    from the browser; the other's leave when it unsubscribes."""
    channel = "chat:room"
    ada, bob = _page(browser, server), _page(browser, server)
    try:
        _client(ada, "ada", json.dumps({"token": _token("ada")}))
        bob.evaluate(f"window.tokens.bob = [{json.dumps(_token('bob'))}]")
        _client(bob, "bob", "{getToken: true}")
        _subscribe(ada, "ada", channel)
        _wait(ada, f"{_rec('ada', channel)}.subscribed.length === 1")
        _subscribe(bob, "bob", channel)
        _wait(bob, f"{_rec('bob', channel)}.subscribed.length === 1")
        _wait(ada, f"{_rec('ada', channel)}.joins.some((j) => j.user === 'bob')")
        assert _seen(bob, "bob")["tokenCalls"] == 1

        data = [{"text": "héllo 👋 \"quoted\"\nline", "n": 1, "nested": {"a": [1, 2.5, None]}},
                "a plain string", 3]
        for item in data:
            ada.evaluate(f"{_js('ada', channel)}.publish({json.dumps(item)})")
        _wait(bob, f"{_rec('bob', channel)}.pubs.length === 3")
        _wait(ada, f"{_rec('ada', channel)}.pubs.length === 3")
        pubs = _record(bob, "bob", channel)["pubs"]
        assert [p["data"] for p in pubs] == data
        assert [p["user"] for p in pubs] == ["ada"] * 3
        offsets = [p["offset"] for p in pubs]
        assert offsets == sorted(offsets) and len(set(offsets)) == 3 and offsets[0] >= 1
        assert _record(ada, "ada", channel)["pubs"] == pubs

        stats = bob.evaluate(f"{_js('bob', channel)}.presenceStats()")
        assert stats == {"numClients": 2, "numUsers": 2}
        presence = ada.evaluate(f"{_js('ada', channel)}.presence()")["clients"]
        assert sorted(info["user"] for info in presence.values()) == ["ada", "bob"]
        assert all(client == info["client"] for client, info in presence.items())

        history = bob.evaluate(f"{_js('bob', channel)}.history({{limit: 10}})")
        assert [p["data"] for p in history["publications"]] == data
        assert [p["offset"] for p in history["publications"]] == offsets
        assert history["offset"] == offsets[-1] and history["epoch"]
        latest = bob.evaluate(f"{_js('bob', channel)}.history({{limit: 1, reverse: true}})")
        assert [p["data"] for p in latest["publications"]] == [3]

        bob.evaluate(f"{_js('bob', channel)}.unsubscribe()")
        _wait(ada, f"{_rec('ada', channel)}.leaves.some((j) => j.user === 'bob')")
        assert ada.evaluate(f"{_js('ada', channel)}.presenceStats()") == {
            "numClients": 1, "numUsers": 1}
        for page in (ada, bob):
            assert page.page_errors == []
    finally:
        ada.context.close()
        bob.context.close()


def test_a_bad_token_is_refused_and_the_page_survives(centrifuge_js, browser, server):
    """A token signed with another key: the server closes with 3500 (invalid token), the
    SDK reports ``disconnected`` with that code and does not reconnect; the page goes on,
    and a client with a good token connects from it."""
    page = _page(browser, server)
    try:
        _client(page, "bad", json.dumps({"token": _token("eve", key="x" * 40)}))
        _wait(page, "window.clients.bad.seen.disconnected.length === 1")
        seen = _seen(page, "bad")
        assert seen["disconnected"][0]["code"] == 3500
        assert seen["connected"] == []
        assert page.evaluate("window.clients.bad.client.state") == "disconnected"
        _client(page, "good", json.dumps({"token": _token("ada")}))
        _wait(page, "window.clients.good.seen.connected.length === 1")
        # Still no second attempt by the refused one (a 35xx close is final).
        assert _seen(page, "bad")["states"] == ["connecting", "disconnected"]
        assert page.page_errors == []
    finally:
        page.context.close()


def test_missed_publications_are_recovered_after_a_reconnect(centrifuge_js, browser, server):
    """A subscriber's transport goes away while another client publishes: after
    ``disconnect()`` and ``connect()``, and again after its WebSocket is closed under it (the
    SDK reconnects by itself), it resubscribes from its position and gets what it missed,
    in order, with ``wasRecovering`` and ``recovered`` in the ``subscribed`` context; later
    publications follow live; the publisher sees it leave and join again."""
    channel = "chat:recovery"
    ada, bob = _page(browser, server), _page(browser, server)
    try:
        _client(ada, "ada", json.dumps({"token": _token("ada")}))
        # Bob reconnects by himself after 0.5-0.6 s: time for Ada to publish meanwhile.
        _client(bob, "bob", json.dumps({"token": _token("bob"), "minReconnectDelay": 500,
                                        "maxReconnectDelay": 600}))
        _subscribe(ada, "ada", channel)
        _wait(ada, f"{_rec('ada', channel)}.subscribed.length === 1")
        _subscribe(bob, "bob", channel)
        _wait(bob, f"{_rec('bob', channel)}.subscribed.length === 1")
        first = _record(bob, "bob", channel)["subscribed"][0]
        assert first["recoverable"] and not first["wasRecovering"]

        ada.evaluate(f"{_js('ada', channel)}.publish({{n: 1}})")
        _wait(bob, f"{_rec('bob', channel)}.pubs.length === 1")
        bob.evaluate(f"{_js('bob')}.disconnect()")
        _wait(ada, f"{_rec('ada', channel)}.leaves.length === 1")
        for n in (2, 3, 4):
            ada.evaluate(f"{_js('ada', channel)}.publish({{n: {n}}})")
        _wait(ada, f"{_rec('ada', channel)}.pubs.length === 4")
        bob.evaluate(f"{_js('bob')}.connect()")
        _wait(bob, f"{_rec('bob', channel)}.subscribed.length === 2 && "
                   f"{_rec('bob', channel)}.pubs.length >= 4")
        record = _record(bob, "bob", channel)
        again = record["subscribed"][1]
        assert again["wasRecovering"] is True and again["recovered"] is True
        assert [p["data"] for p in record["pubs"]] == [{"n": n} for n in (1, 2, 3, 4)]
        offsets = [p["offset"] for p in record["pubs"]]
        assert offsets == list(range(offsets[0], offsets[0] + 4))
        assert offsets == [p["offset"] for p in _record(ada, "ada", channel)["pubs"]]
        _wait(ada, f"{_rec('ada', channel)}.joins.filter((j) => j.user === 'bob').length === 2")

        ada.evaluate(f"{_js('ada', channel)}.publish({{n: 5}})")
        _wait(bob, f"{_rec('bob', channel)}.pubs.length === 5")
        assert _record(bob, "bob", channel)["pubs"][-1] == {
            "data": {"n": 5}, "offset": offsets[-1] + 1, "user": "ada"}

        # The WebSocket closed under the SDK (as a network drop would): it reconnects by
        # itself and recovers from its newest position, not the first one.
        bob.evaluate("window.sockets.at(-1).close()")
        _wait(ada, f"{_rec('ada', channel)}.leaves.length === 2")
        ada.evaluate(f"{_js('ada', channel)}.publish({{n: 6}})")
        _wait(bob, f"{_rec('bob', channel)}.subscribed.length === 3 && "
                   f"{_rec('bob', channel)}.pubs.length >= 6")
        record = _record(bob, "bob", channel)
        assert [p["data"]["n"] for p in record["pubs"]] == [1, 2, 3, 4, 5, 6]
        assert [p["offset"] for p in record["pubs"]] == list(range(offsets[0], offsets[0] + 6))
        assert record["subscribed"][2]["wasRecovering"] is True
        assert record["subscribed"][2]["recovered"] is True
        assert [d["code"] for d in _seen(bob, "bob")["connecting"]][-1] == 1  # transport closed
        assert _seen(bob, "bob")["disconnected"] == [{"code": 0, "reason": "disconnect called"}]
        for page in (ada, bob):
            assert page.page_errors == []
    finally:
        ada.context.close()
        bob.context.close()


def test_the_connection_token_is_refreshed_before_it_expires(centrifuge_js, browser, server):
    """A connection token that expires in 3 s and a ``getToken`` with a fresh one: the SDK
    sends ``refresh`` before the exp, and the connection (and its subscription) outlives
    the first token."""
    channel = "chat:refresh"
    page = _page(browser, server)
    try:
        short = _token("ada", ttl=3)
        expires_ms = jwt.decode(short, options={"verify_signature": False})["exp"] * 1000
        page.evaluate(f"window.tokens.ada = [{json.dumps(_token('ada'))}]")
        _client(page, "ada", json.dumps({"token": short})[:-1] + ", getToken: true}")
        _client(page, "bob", json.dumps({"token": _token("bob")}))
        _subscribe(page, "ada", channel)
        _subscribe(page, "bob", channel)
        _wait(page, f"{_rec('ada', channel)}.subscribed.length === 1 && "
                    f"{_rec('bob', channel)}.subscribed.length === 1")
        _wait(page, "window.clients.ada.seen.tokenCalls === 1", timeout=6_000)
        # Past the first token's exp (plus a margin for the server's timer): still up.
        _wait(page, f"Date.now() > {expires_ms + 1500}", timeout=8_000)
        page.evaluate(f"{_js('bob', channel)}.publish('after the first exp')")
        _wait(page, f"{_rec('ada', channel)}.pubs.length === 1")
        seen = _seen(page, "ada")
        assert seen["disconnected"] == []
        assert seen["connecting"] == [{"code": 0, "reason": "connect called"}]  # the first
        assert len(seen["connected"]) == 1 and seen["errors"] == []
        assert page.evaluate(f"{_js('ada')}.state") == "connected"
        assert _record(page, "ada", channel)["pubs"][0]["data"] == "after the first exp"
        assert page.page_errors == []
    finally:
        page.context.close()


def test_an_expired_refresh_token_expires_the_connection_and_the_sdk_comes_back(
        centrifuge_js, browser, server):
    """``getToken`` hands out a token that has already expired: the server closes with 3005
    (connection expired; Centrifugo does the same) rather than answering 109, which
    centrifuge-js takes as final. The SDK reconnects, its connect is told 109, it asks
    ``getToken`` again, and it is connected (and subscribed) with the fresh token."""
    channel = "chat:expired-refresh"
    page = _page(browser, server)
    try:
        page.evaluate(f"window.tokens.ada = {json.dumps([_token('ada', ttl=-10), _token('ada')])}")
        _client(page, "ada", json.dumps({"token": _token("ada", ttl=2)})[:-1] + ", getToken: true}")
        _subscribe(page, "ada", channel)
        _wait(page, "window.clients.ada.seen.connected.length === 2 && "
                    f"{_rec('ada', channel)}.subscribed.length === 2", timeout=10_000)
        seen = _seen(page, "ada")
        assert seen["tokenCalls"] == 2
        assert seen["disconnected"] == []
        assert [c["code"] for c in seen["connecting"]] == [0, 3005]
        # The refresh call cut short by the close (11: connection closed), then the
        # reconnect's connect told its token expired.
        assert [(e["type"], e["error"]["code"]) for e in seen["errors"]] == [
            ("refresh", 11), ("connect", 109)]
        assert page.evaluate(f"{_js('ada')}.state") == "connected"
        assert page.page_errors == []
    finally:
        page.context.close()


# -- the Protobuf build ------------------------------------------------------------------------

PROTOBUF = "/protobuf"
#: Bytes that are not UTF-8 (0x80 and up alone), every value once.
ALL_BYTES = list(range(256))
#: UTF-8 text that is not JSON: carried byte for byte, not as a JSON string.
NOT_JSON = "héllo, not JSON 👋".encode()
#: JSON text with spaces: carried as that JSON value, so it reaches others compact.
SPACED_JSON = b'{"a": 1, "b": [true, null]}'
COMPACT_JSON = b'{"a":1,"b":[true,null]}'


def _u8(data: bytes | list[int]) -> str:
    """The JS expression of a ``Uint8Array`` of ``data``."""
    return f"new Uint8Array({json.dumps(list(data))})"


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _received_bytes(page: Any, name: str, channel: str) -> list[list[int] | None]:
    """The data of each publication ``name`` received in ``channel``, as lists of numbers
    (None when it is no ``Uint8Array``)."""
    return page.evaluate(f"{_rec(name, channel)}.pubs.map((p) => "
                         "p.data instanceof Uint8Array ? Array.from(p.data) : null)")


def _uint64(value: Any) -> int | None:
    """An offset from the Protobuf build: protobufjs decodes ``uint64`` fields as ``Long``
    objects (``{low, high, unsigned}`` once serialized), not numbers; None when absent."""
    if isinstance(value, dict):
        return (value["high"] & 0xFFFFFFFF) << 32 | (value["low"] & 0xFFFFFFFF)
    return value


def _offsets(pubs: list[dict[str, Any]]) -> list[int | None]:
    return [_uint64(p["offset"]) for p in pubs]


def _protocols(page: Any) -> list[str]:
    return page.evaluate("window.sockets.map((s) => s.protocol)")


@pytest.mark.parametrize("channel", ["chat:bytes", "live:bytes"])
def test_the_protobuf_build_publishes_and_receives_bytes(centrifuge_js, browser, server,
                                                          channel):
    """Two pages on the Protobuf build connect over ``centrifuge-protobuf`` and subscribe
    (in a channel with history, and in one without, whose publications are broadcast
    frames translated for Protobuf sockets). What one publishes reaches both as a
    ``Uint8Array``: bytes that are not UTF-8, and UTF-8 text that is not JSON, byte for
    byte; JSON text as its compact form. The publisher's user comes along; in the channel
    with history, increasing offsets."""
    ada, bob = _page(browser, server, PROTOBUF), _page(browser, server, PROTOBUF)
    try:
        _client(ada, "ada", json.dumps({"token": _token("ada")}))
        _client(bob, "bob", json.dumps({"token": _token("bob")}))
        # Ada first (so that she sees Bob join), then Bob.
        for page, name in ((ada, "ada"), (bob, "bob")):
            _subscribe(page, name, channel)
            _wait(page, f"{_rec(name, channel)}.subscribed.length === 1")
            assert _protocols(page) == ["centrifuge-protobuf"]
            assert page.evaluate("window.sockets[0].binaryType") == "arraybuffer"
        if channel.startswith("chat:"):
            _wait(ada, f"{_rec('ada', channel)}.joins.some((j) => j.user === 'bob')")

        sent = [ALL_BYTES, list(NOT_JSON), list(reversed(ALL_BYTES)), list(SPACED_JSON)]
        for data in sent:
            ada.evaluate(f"{_js('ada', channel)}.publish({_u8(data)})")
        _wait(bob, f"{_rec('bob', channel)}.pubs.length === 4")
        _wait(ada, f"{_rec('ada', channel)}.pubs.length === 4")
        expected = [*sent[:3], list(COMPACT_JSON)]
        assert _received_bytes(bob, "bob", channel) == expected
        assert _received_bytes(ada, "ada", channel) == expected
        pubs = _record(bob, "bob", channel)["pubs"]
        assert [p["user"] for p in pubs] == ["ada"] * 4
        offsets = _offsets(pubs)
        assert offsets == _offsets(_record(ada, "ada", channel)["pubs"])
        if channel.startswith("chat:"):
            assert offsets == list(range(offsets[0], offsets[0] + 4)) and offsets[0] >= 1
        else:  # no history, no positions
            assert set(offsets) <= {None, 0}
        for page, name in ((ada, "ada"), (bob, "bob")):
            seen = _seen(page, name)
            assert seen["errors"] == [] and seen["disconnected"] == []
            assert page.page_errors == []
    finally:
        ada.context.close()
        bob.context.close()


def _raw_pubs(page: Any, channel: str) -> list[Any]:
    """The publications in ``channel`` among the JSON page's raw frames (replies are
    newline separated), as the server wrote them."""
    pubs = []
    for text in page.evaluate("window.sockets.flatMap((s) => s.texts)"):
        for line in text.splitlines():
            push = json.loads(line).get("push") if line.strip() else None
            if push and push.get("channel") == channel and "pub" in push:
                pubs.append(push["pub"])
    return pubs


@pytest.mark.parametrize("channel", ["chat:mixed", "live:mixed"])
def test_json_and_protobuf_builds_share_a_channel(centrifuge_js, browser, server, channel):
    """A JSON-build page and a Protobuf-build page in one channel: the JSON page's object
    reaches the Protobuf page as the UTF-8 bytes of its compact JSON text; the Protobuf
    page's JSON text (``TextEncoder``) reaches the JSON page as the object; its bytes that
    are not UTF-8 reach the JSON page's socket as ``"data": null`` and ``b64data`` (which
    centrifuge-js's JSON build hands on as ``null``)."""
    jay, pro = _page(browser, server), _page(browser, server, PROTOBUF)
    try:
        _client(jay, "jay", json.dumps({"token": _token("jay")}))
        _client(pro, "pro", json.dumps({"token": _token("pro")}))
        _subscribe(jay, "jay", channel)
        _subscribe(pro, "pro", channel)
        _wait(jay, f"{_rec('jay', channel)}.subscribed.length === 1")
        _wait(pro, f"{_rec('pro', channel)}.subscribed.length === 1")
        assert _protocols(jay) == [""] and _protocols(pro) == ["centrifuge-protobuf"]

        from_json = {"text": "héllo 👋 \"quoted\"\nline", "n": [1, 2.5, None], "ok": True}
        jay.evaluate(f"{_js('jay', channel)}.publish({json.dumps(from_json)})")
        _wait(pro, f"{_rec('pro', channel)}.pubs.length === 1")
        assert _received_bytes(pro, "pro", channel) == [list(_compact(from_json))]
        decoded = pro.evaluate(f"(() => {{ const text = new TextDecoder('utf-8', "
                               f"{{fatal: true}}).decode({_rec('pro', channel)}.pubs[0].data);"
                               " return {text, value: JSON.parse(text)}; })()")
        assert decoded == {"text": _compact(from_json).decode(), "value": from_json}
        assert _record(pro, "pro", channel)["pubs"][0]["user"] == "jay"

        from_protobuf = {"from": "protobuf", "list": [1, {"x": "ü"}], "none": None}
        pro.evaluate(f"{_js('pro', channel)}.publish(new TextEncoder().encode("
                     f"JSON.stringify({json.dumps(from_protobuf)})))")
        _wait(jay, f"{_rec('jay', channel)}.pubs.length === 2")
        pubs = _record(jay, "jay", channel)["pubs"]
        assert [p["data"] for p in pubs] == [from_json, from_protobuf]
        assert [p["user"] for p in pubs] == ["jay", "pro"]

        pro.evaluate(f"{_js('pro', channel)}.publish({_u8(ALL_BYTES)})")
        _wait(jay, f"{_rec('jay', channel)}.pubs.length === 3")
        assert _record(jay, "jay", channel)["pubs"][2]["data"] is None
        raw = _raw_pubs(jay, channel)
        assert [p["data"] for p in raw] == [from_json, from_protobuf, None]
        assert "b64data" not in raw[0] and "b64data" not in raw[1]
        assert base64.b64decode(raw[2]["b64data"]) == bytes(ALL_BYTES)
        # The Protobuf page got all three as bytes (its own two as it sent them, compact).
        _wait(pro, f"{_rec('pro', channel)}.pubs.length === 3")
        assert _received_bytes(pro, "pro", channel) == [
            list(_compact(from_json)), list(_compact(from_protobuf)), ALL_BYTES]
        for page, name in ((jay, "jay"), (pro, "pro")):
            assert _seen(page, name)["errors"] == []
            assert page.page_errors == []
    finally:
        jay.context.close()
        pro.context.close()


def _history(page: Any, name: str, channel: str, options: str) -> dict[str, Any]:
    """``sub.history(options)`` with each publication's data as a list of numbers."""
    return page.evaluate(
        f"{_js(name, channel)}.history({options}).then((r) => ({{epoch: r.epoch, "
        "offset: r.offset, publications: r.publications.map((p) => ({data: "
        "p.data instanceof Uint8Array ? Array.from(p.data) : null, offset: p.offset, "
        "user: p.info ? p.info.user : null}))}))")


def test_the_protobuf_build_reads_history_and_presence_and_recovers(
        centrifuge_js, browser, server):
    """Through the Protobuf build in the channel with history: joins, presence and
    presenceStats; ``history({limit: -1})`` gives every publication's bytes (binary, and
    JSON text compact) with their offsets, ``{limit: 1, reverse: true}`` the newest; after
    a ``disconnect()`` the resubscription recovers what was published meanwhile (the
    subscribe reply's nested publications), bytes intact, and live ones follow."""
    channel = "chat:proto-state"
    ada, bob = _page(browser, server, PROTOBUF), _page(browser, server, PROTOBUF)
    try:
        _client(ada, "ada", json.dumps({"token": _token("ada")}))
        _client(bob, "bob", json.dumps({"token": _token("bob")}))
        _subscribe(ada, "ada", channel)
        _wait(ada, f"{_rec('ada', channel)}.subscribed.length === 1")
        _subscribe(bob, "bob", channel)
        _wait(bob, f"{_rec('bob', channel)}.subscribed.length === 1")
        first = _record(bob, "bob", channel)["subscribed"][0]
        assert first["recoverable"] and not first["wasRecovering"]
        _wait(ada, f"{_rec('ada', channel)}.joins.some((j) => j.user === 'bob')")

        stats = bob.evaluate(f"{_js('bob', channel)}.presenceStats()")
        assert stats == {"numClients": 2, "numUsers": 2}
        presence = ada.evaluate(f"{_js('ada', channel)}.presence()")["clients"]
        assert sorted(info["user"] for info in presence.values()) == ["ada", "bob"]
        assert all(client == info["client"] for client, info in presence.items())
        assert _seen(ada, "ada")["connected"][0]["client"] in presence
        assert _seen(bob, "bob")["connected"][0]["client"] in presence

        sent = [ALL_BYTES, list(SPACED_JSON), [0xFF, 0x00, 0x80]]
        for data in sent:
            ada.evaluate(f"{_js('ada', channel)}.publish({_u8(data)})")
        _wait(bob, f"{_rec('bob', channel)}.pubs.length === 3")
        live = _offsets(_record(bob, "bob", channel)["pubs"])
        assert live == list(range(live[0], live[0] + 3)) and live[0] >= 1
        expected = [ALL_BYTES, list(COMPACT_JSON), [0xFF, 0x00, 0x80]]

        history = _history(bob, "bob", channel, "{limit: -1}")
        assert [p["data"] for p in history["publications"]] == expected
        assert _offsets(history["publications"]) == live
        assert [p["user"] for p in history["publications"]] == ["ada"] * 3
        assert _uint64(history["offset"]) == live[-1] and history["epoch"]
        latest = _history(ada, "ada", channel, "{limit: 1, reverse: true}")
        assert [p["data"] for p in latest["publications"]] == [[0xFF, 0x00, 0x80]]
        assert latest["epoch"] == history["epoch"]

        bob.evaluate(f"{_js('bob')}.disconnect()")
        _wait(ada, f"{_rec('ada', channel)}.leaves.some((j) => j.user === 'bob')")
        missed = [list(range(255, -1, -3)), list(NOT_JSON)]
        for data in missed:
            ada.evaluate(f"{_js('ada', channel)}.publish({_u8(data)})")
        _wait(ada, f"{_rec('ada', channel)}.pubs.length === 5")
        bob.evaluate(f"{_js('bob')}.connect()")
        _wait(bob, f"{_rec('bob', channel)}.subscribed.length === 2 && "
                   f"{_rec('bob', channel)}.pubs.length >= 5")
        record = _record(bob, "bob", channel)
        again = record["subscribed"][1]
        assert again["wasRecovering"] is True and again["recovered"] is True
        assert _received_bytes(bob, "bob", channel) == [*expected, *missed]
        offsets = _offsets(record["pubs"])
        assert offsets == list(range(live[0], live[0] + 5))
        assert again["streamPosition"]["epoch"] == history["epoch"]

        ada.evaluate(f"{_js('ada', channel)}.publish({_u8([1, 2, 3])})")
        _wait(bob, f"{_rec('bob', channel)}.pubs.length === 6")
        assert _received_bytes(bob, "bob", channel)[-1] == [1, 2, 3]
        assert _offsets(_record(bob, "bob", channel)["pubs"])[-1] == offsets[-1] + 1
        assert _seen(bob, "bob")["disconnected"] == [{"code": 0, "reason": "disconnect called"}]
        assert _protocols(bob) == ["centrifuge-protobuf"] * 2
        for page, name in ((ada, "ada"), (bob, "bob")):
            assert _seen(page, name)["errors"] == []
            assert page.page_errors == []
    finally:
        ada.context.close()
        bob.context.close()


@pytest.mark.parametrize("build", ["json", "protobuf"])
def test_centrifuge_js_applies_fossil_deltas(centrifuge_js, browser, server, build):
    """centrifuge-js's ``delta: "fossil"``: Ada's subscription negotiates it; Bob (no
    delta) publishes a scoreboard four times, a few scores changing each time. Ada's
    publications are the scoreboards Bob published (the SDK applied the deltas and checked
    their checksums), the first whole and the others as deltas far smaller than the
    document (its own ``deltaStats()``); Bob's are whole."""
    from tests.test_pubsub_delta import board

    channel = f"delta:{build}"
    path = PROTOBUF if build == "protobuf" else "/"
    ada, bob = _page(browser, server, path), _page(browser, server, path)
    try:
        _client(ada, "ada", json.dumps({"token": _token("ada")}))
        _client(bob, "bob", json.dumps({"token": _token("bob")}))
        ada.evaluate(f"window.sub('ada', {json.dumps(channel)}, "
                     "{delta: 'fossil'}).subscribe()")
        _wait(ada, f"{_rec('ada', channel)}.subscribed.length === 1")
        _subscribe(bob, "bob", channel)
        _wait(bob, f"{_rec('bob', channel)}.subscribed.length === 1")
        boards = [board(n, changed=3) for n in range(1, 5)]
        encode = (lambda b: _u8(_compact(b))) if build == "protobuf" else json.dumps
        for sent in boards:
            bob.evaluate(f"{_js('bob', channel)}.publish({encode(sent)})")
        _wait(ada, f"{_rec('ada', channel)}.pubs.length === 4")
        _wait(bob, f"{_rec('bob', channel)}.pubs.length === 4")
        if build == "protobuf":
            got = [bytes(b) for b in _received_bytes(ada, "ada", channel)]
            assert got == [_compact(b) for b in boards]
        else:
            assert [p["data"] for p in _record(ada, "ada", channel)["pubs"]] == boards
            assert [p["data"] for p in _record(bob, "bob", channel)["pubs"]] == boards
        stats = ada.evaluate(f"{_js('ada', channel)}.deltaStats()")
        assert (stats["numFullPayloads"], stats["numDeltaPayloads"]) == (1, 3), stats
        assert stats["bytesReceived"] < len(_compact(boards[0])) * 1.2, stats
        assert bob.evaluate(f"{_js('bob', channel)}.deltaStats()")["numDeltaPayloads"] == 0
        for page, name in ((ada, "ada"), (bob, "bob")):
            assert _seen(page, name)["errors"] == [] and page.page_errors == []
    finally:
        ada.context.close()
        bob.context.close()


def test_centrifuge_js_tags_filter_gets_only_matching_publications(centrifuge_js, browser,
                                                                   server):
    """centrifuge-js's ``tagsFilter`` (the documented AND of an equality and a set): of
    four publications with tags from the server API, Ada's subscription gets the one that
    matches; Bob's, without a filter, gets all four, in order."""
    from tests.clients import http_get

    channel = "tags:stocks"
    ada, bob = _page(browser, server), _page(browser, server)
    try:
        _client(ada, "ada", json.dumps({"token": _token("ada")}))
        _client(bob, "bob", json.dumps({"token": _token("bob")}))
        tags_filter = {"op": "and", "nodes": [
            {"key": "ticker", "cmp": "eq", "val": "AAPL"},
            {"key": "source", "cmp": "in", "vals": ["NASDAQ", "NYSE"]}]}
        ada.evaluate(f"window.sub('ada', {json.dumps(channel)}, "
                     f"{{tagsFilter: {json.dumps(tags_filter)}}}).subscribe()")
        _wait(ada, f"{_rec('ada', channel)}.subscribed.length === 1")
        _subscribe(bob, "bob", channel)
        _wait(bob, f"{_rec('bob', channel)}.subscribed.length === 1")
        sent = [({"ticker": "MSFT", "source": "NASDAQ"}, 1),
                ({"ticker": "AAPL", "source": "LSE"}, 2),
                ({"ticker": "AAPL", "source": "NYSE"}, 3), ({}, 4)]
        for tags, n in sent:
            status, _, _ = http_get(
                f"http://127.0.0.1:{server.port}/api/publish", method="POST",
                data=json.dumps({"channel": channel, "data": {"n": n}, "tags": tags}).encode(),
                headers={"X-API-Key": API_KEY})
            assert status == 200
        _wait(bob, f"{_rec('bob', channel)}.pubs.length === 4")
        _wait(ada, f"{_rec('ada', channel)}.pubs.length >= 1")
        assert [p["data"] for p in _record(bob, "bob", channel)["pubs"]] == [
            {"n": n} for n in (1, 2, 3, 4)]
        assert [p["data"] for p in _record(ada, "ada", channel)["pubs"]] == [{"n": 3}]
        for page, name in ((ada, "ada"), (bob, "bob")):
            assert _seen(page, name)["errors"] == [] and page.page_errors == []
    finally:
        ada.context.close()
        bob.context.close()
