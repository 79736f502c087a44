"""centrifuge-js (the npm package ``centrifuge``, Centrifugo's browser SDK) in a real browser
against ``realtime.pubsub``.

``tests/run.sh`` installs the package, pinned, into ``tests/.node`` (never vendored); without
it these tests skip, except under ``CI=true`` where that is a failure. The same headless
Chromium as tests/e2e/test_browser_chat.py (its ``browser`` fixture) loads the page of
``tests/e2e/pubsub_page_app.py`` from a ``twistd realtime`` subprocess on 127.0.0.1 run with
``--jwt-key`` and a ``chat`` namespace with history, recovery, presence and join/leave. The
page's ``Centrifuge`` clients record their events; every wait is on a JS condition with a
bound.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from tests.e2e import test_browser_chat
from tests.e2e.pubsub_page_app import BUNDLE, PACKAGE
from tests.e2e.support import REPO, Server, ServerFailed, free_port, start, twistd
from tests.e2e.test_browser_chat import TIMEOUT_MS

pytestmark = pytest.mark.slow

APP = "tests.e2e.pubsub_page_app:application"
#: The version tests/run.sh installs (CENTRIFUGE_JS there).
VERSION = "5.7.4"
JWT_SECRET = "p" * 40
NAMESPACE = ("chat:allow_subscribe_for_client,allow_publish_for_subscriber,presence,"
             "join_leave,force_push_join_leave,history_size=50,history_ttl=300s,"
             "force_recovery,allow_history_for_subscriber,allow_presence_for_subscriber")


#: Loaded before the page's scripts: every WebSocket the page opens, in ``window.sockets``.
RECORD_SOCKETS = """
window.sockets = [];
window.WebSocket = class extends window.WebSocket {
  constructor(...args) { super(...args); window.sockets.push(this); }
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


#: test_browser_chat's fixture: one headless Chromium for the module (skipped without it,
#: failed under CI=true).
browser = test_browser_chat.browser


def _server(port: int) -> Server:
    return start(twistd("--app", APP, "--port", f"tcp:{port}:interface=127.0.0.1",
                        "--jwt-key", JWT_SECRET, "--namespace", NAMESPACE),
                 env={"PYTHONPATH": str(REPO)}, cwd=REPO)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    for _attempt in range(2):  # the free port may be taken before twistd binds it
        try:
            running = _server(free_port())
            break
        except ServerFailed:
            continue
    else:
        running = _server(free_port())
    with running:
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


def test_the_protobuf_build_is_told_3506_and_stops(centrifuge_js, browser, server):
    """centrifuge-js's protobuf build (``centrifuge.protobuf.js``) offers the
    ``centrifuge-protobuf`` subprotocol, which realtime does not speak: the handshake is
    accepted and closed with 3506 (inappropriate protocol), so the SDK stops with that
    code instead of retrying a refused handshake forever."""
    page = _page(browser, server, "/protobuf")
    try:
        _client(page, "proto", json.dumps({"token": _token("ada")}))
        _wait(page, "window.clients.proto.seen.disconnected.length === 1")
        seen = _seen(page, "proto")
        assert seen["disconnected"] == [{"code": 3506, "reason": "inappropriate protocol"}]
        assert seen["connected"] == [] and seen["states"] == ["connecting", "disconnected"]
        assert page.evaluate("window.sockets.map((s) => s.protocol)") == ["centrifuge-protobuf"]
        assert page.page_errors == []
    finally:
        page.context.close()
