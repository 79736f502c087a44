"""``realtime.pubsub``'s unidirectional transports in a real browser, through the browser's
own APIs and no SDK: an ``EventSource`` on ``/connection/uni_sse``, a ``WebSocket`` on
``/connection/uni_websocket``, ``fetch`` and a ``ReadableStream`` on
``/connection/uni_http_stream``.

The server runs in this process (``tests/test_pubsub.py``'s ``pubsub_server``, on
``tests/e2e/pubsub_uni_page_app.py``: the page and the transports on one origin), so the
tests publish with ``realtime.pubsub.publish`` in the reactor. Debian's Chromium (as
tests/e2e/test_browser_chat.py drives it, skipped without it except under ``CI=true``) runs
on a thread of its own: Playwright's sync API stays on the thread that started it, and each
test's browser side runs there while the reactor serves. The page records each transport's
pushes in ``window.recs[name]``; every wait is on a JS condition with a bound.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import pytest_twisted

from realtime import pubsub
from tests.clients import http_get, in_thread
from tests.e2e import test_browser_chat
from tests.e2e.pubsub_uni_page_app import application as APP
from tests.e2e.test_browser_chat import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS
from tests.test_pubsub import (  # noqa: F401  (fixtures)
    _settings,
    from_thread,
    pubsub_server,
    token,
)

pytestmark = pytest.mark.slow

FEED = "feed:history_size=10,history_ttl=60s,force_recovery"
#: No history: its publications are ``broadcast()`` frames, translated to bare pushes.
LIVE = "live:"
KEY = "uni-browser-api-key-0123456789"
BINARY = bytes(range(256))
#: Bound (s) for one test's browser side as a whole.
FLOW_TIMEOUT = 120


class Chromium:
    """One headless Chromium on a thread of its own: ``run(fn)`` calls ``fn(browser)``
    there and returns what it returns (or raises what it raises)."""

    def __init__(self) -> None:
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chromium")
        self.playwright: Any = None
        self.browser: Any = None

    def _launch(self) -> None:
        from playwright.sync_api import sync_playwright

        self.playwright = sync_playwright().start()
        self.browser = self.playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)

    def _close(self) -> None:
        try:
            if self.browser is not None:
                self.browser.close()
        finally:
            if self.playwright is not None:
                self.playwright.stop()

    def start(self) -> None:
        self.thread.submit(self._launch).result(timeout=90)

    def run(self, fn: Callable[[Any], Any]) -> Any:
        return self.thread.submit(fn, self.browser).result(timeout=FLOW_TIMEOUT)

    def stop(self) -> None:
        try:
            self.thread.submit(self._close).result(timeout=60)
        finally:
            self.thread.shutdown(wait=False)


def running_chromium() -> Iterator[Chromium]:
    """A headless Chromium on a thread of its own: the ``chromium`` fixture
    (tests/e2e/conftest.py: one for all the tests that take it)."""
    if not os.access(CHROMIUM, os.X_OK):
        test_browser_chat._missing(f"{CHROMIUM} is not installed (tests/run.sh installs it: "
                                   "apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        test_browser_chat._missing("the playwright package is not installed "
                                   "(pip install -e '.[test]')")
    running = Chromium()
    try:
        running.start()
        yield running
    finally:
        running.stop()


async def _serve(pubsub_server: Any, **config: Any) -> tuple[Any, Any]:  # noqa: F811
    """The page app on a fresh in-memory layer with FEED and LIVE: (server, layer)."""
    from realtime.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    server = await pubsub_server(FEED, LIVE, app=APP, layer=layer, **config)
    return server, layer


# -- in the browser's thread ---------------------------------------------------------------------

def _open(browser: Any, server: Any) -> Any:
    """A new context (its own connections) on the page; uncaught page errors are kept in
    ``page.page_errors``."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.http_url("/"))
    page.wait_for_function("window.ready === true")
    page.page_errors = errors
    return page


def _wait(page: Any, condition: str, timeout: int = TIMEOUT_MS) -> None:
    page.wait_for_function(condition, timeout=timeout)


def _call(page: Any, fn: str, *args: Any) -> None:
    """``window[fn](...args)`` (not awaited: a stream's reader goes on in the page)."""
    page.evaluate(f"(args) => {{ window.{fn}(...args); }}", list(args))


def _rec(page: Any, name: str) -> dict[str, Any]:
    rec: dict[str, Any] = page.evaluate(f"window.recs[{json.dumps(name)}]")
    return rec


def _r(name: str) -> str:
    return f"window.recs[{json.dumps(name)}]"


def _h(name: str) -> str:
    return f"window.handles[{json.dumps(name)}]"


def _publish(layer: Any, channel: str, data: Any) -> Any:
    return from_thread(pubsub.publish, channel, data, layer=layer)


def _api(server: Any, method: str, body: dict[str, Any]) -> int:
    status, _, _ = http_get(server.http_url(f"/api/{method}"), method="POST",
                            data=json.dumps(body).encode(), headers={"X-API-Key": KEY})
    return status


# -- the tests -----------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_an_event_source_gets_the_pushes_of_its_token_channels(
        chromium, pubsub_server):  # noqa: F811
    """``new EventSource("/connection/uni_sse?cf_connect=...")`` with a token whose
    ``channels`` are a history channel and one without: the page's first event is the
    ``connect`` push with both subscriptions, then what Python publishes, in order, with
    the offsets ``publish`` returned on the history channel and none on the other; the
    source stays OPEN. A token signed with another key: the EventSource ends CLOSED
    (readyState 2) by itself, never open, no event."""
    server, layer = await _serve(pubsub_server)

    def flow(browser: Any) -> Any:
        page = _open(browser, server)
        try:
            _call(page, "sse", "ada", {"token": token("ada", channels=["feed:news", "live:x"])})
            _wait(page, f"{_r('ada')}.pushes.length === 1")
            positions = [_publish(layer, "feed:news", {"n": 1}),
                         _publish(layer, "live:x", "plain ✓"),
                         _publish(layer, "feed:news", ["héllo", 2.5, None]),
                         _publish(layer, "live:x", {"n": 4})]
            _wait(page, f"{_r('ada')}.pushes.length === 5")
            ada = _rec(page, "ada")
            state = page.evaluate(f"{_h('ada')}.readyState")

            _call(page, "sse", "eve", {"token": token("eve", key="x" * 40)})
            _wait(page, f"{_h('eve')}.readyState === 2")
            time.sleep(0.3)  # anything late would show now
            eve = _rec(page, "eve")
            eve_state = page.evaluate(f"{_h('eve')}.readyState")
            return ada, state, positions, eve, eve_state, page.page_errors
        finally:
            page.context.close()

    ada, state, positions, eve, eve_state, errors = await in_thread(chromium.run, flow)
    connect = ada["pushes"][0]
    assert set(connect) == {"connect"}
    assert connect["connect"]["client"] and connect["connect"]["version"].startswith("realtime ")
    subs = connect["connect"]["subs"]
    assert set(subs) == {"feed:news", "live:x"}
    assert subs["feed:news"]["recoverable"] is True and subs["feed:news"]["offset"] == 0
    assert positions[1] is None and positions[3] is None  # no history: no position
    assert [p["epoch"] for p in (positions[0], positions[2])] == [subs["feed:news"]["epoch"]] * 2
    assert ada["pushes"][1:] == [
        {"channel": "feed:news", "pub": {"data": {"n": 1}, "offset": positions[0]["offset"]}},
        {"channel": "live:x", "pub": {"data": "plain ✓"}},
        {"channel": "feed:news", "pub": {"data": ["héllo", 2.5, None],
                                         "offset": positions[2]["offset"]}},
        {"channel": "live:x", "pub": {"data": {"n": 4}}},
    ]
    assert (positions[0]["offset"], positions[2]["offset"]) == (1, 2)
    assert ada["opens"] == 1 and ada["errors"] == [] and state == 1  # OPEN
    assert eve["pushes"] == [] and eve["opens"] == 0 and eve_state == 2  # CLOSED
    assert eve["errors"] == [2]  # one error, after which it does not retry
    assert errors == []


@pytest_twisted.ensureDeferred
async def test_a_websocket_gets_pushes_recovers_and_sees_close_codes(
        chromium, pubsub_server, monkeypatch):  # noqa: F811
    """``new WebSocket(".../connection/uni_websocket")`` sending the connect request as its
    first message: the ``connect`` push, then publications in order (binary data as
    ``b64data``, which the page decodes with ``atob`` to the bytes published). The page
    closes it, Python publishes twice, and a new WebSocket with the request in
    ``cf_connect`` and its last offset and epoch in ``subs`` recovers both. A failed
    connect is the close code the page's ``onclose`` sees: 3500 for a bad signature (first
    message) and for no token (in the URL), 3005 for an expired token, 3502 for a socket
    that sends nothing (within ``STALE_AFTER``, shortened here); nothing before it."""
    monkeypatch.setattr(pubsub, "STALE_AFTER", 1.0)
    server, layer = await _serve(pubsub_server)

    def flow(browser: Any) -> Any:
        page = _open(browser, server)
        try:
            request = {"token": token("ada", channels=["feed:news", "live:x"])}
            _call(page, "ws", "ada", request, False)
            _wait(page, f"{_r('ada')}.pushes.length === 1")
            first = [_publish(layer, "feed:news", "one"),
                     _publish(layer, "live:x", BINARY),
                     _publish(layer, "live:x", "three")]
            _wait(page, f"{_r('ada')}.pushes.length === 4")
            decoded = page.evaluate(f"""Array.from(atob({_r('ada')}.pushes[2].pub.b64data),
                                        (c) => c.charCodeAt(0))""")
            page.evaluate(f"{_h('ada')}.close(1000)")
            _wait(page, f"{_r('ada')}.close !== null")
            ada = _rec(page, "ada")

            missed = [_publish(layer, "feed:news", {"n": n}) for n in (2, 3)]
            epoch = ada["pushes"][0]["connect"]["subs"]["feed:news"]["epoch"]
            again = dict(request, subs={"feed:news": {
                "recover": True, "offset": ada["pushes"][1]["pub"]["offset"], "epoch": epoch}})
            _call(page, "ws", "again", again, True)
            _wait(page, f"{_r('again')}.pushes.length === 3")
            after = _publish(layer, "feed:news", "live again")
            _wait(page, f"{_r('again')}.pushes.length === 4")
            recovered = _rec(page, "again")

            _call(page, "ws", "forged", {"token": token("eve", key="x" * 40)}, False)
            _call(page, "ws", "anonymous", {}, True)
            _call(page, "ws", "expired", {"token": token("ada", ttl=-10)}, False)
            _call(page, "ws", "silent", None, False)
            names = ("forged", "anonymous", "expired", "silent")
            for name in names:
                _wait(page, f"{_r(name)}.close !== null")
            refused = {name: _rec(page, name) for name in names}
            return ada, first, decoded, missed, after, recovered, refused, page.page_errors
        finally:
            page.context.close()

    (ada, first, decoded, missed, after, recovered, refused, errors) = await in_thread(
        chromium.run, flow)
    connect = ada["pushes"][0]["connect"]
    assert set(connect["subs"]) == {"feed:news", "live:x"}
    assert ada["pushes"][1] == {"channel": "feed:news", "pub": {
        "data": "one", "offset": first[0]["offset"]}}
    binary = ada["pushes"][2]
    assert binary["channel"] == "live:x" and binary["pub"]["data"] is None
    assert base64.b64decode(binary["pub"]["b64data"]) == BINARY
    assert bytes(decoded) == BINARY  # what the page itself decoded
    assert ada["pushes"][3] == {"channel": "live:x", "pub": {"data": "three"}}
    assert ada["opens"] == 1 and ada["close"]["code"] == 1000

    again = recovered["pushes"][0]["connect"]
    assert again["client"] != connect["client"]
    feed = again["subs"]["feed:news"]
    assert (feed.get("recovered"), feed.get("was_recovering")) == (True, True)
    assert feed["epoch"] == connect["subs"]["feed:news"]["epoch"]
    assert recovered["pushes"][1:] == [
        {"channel": "feed:news", "pub": {"data": {"n": 2}, "offset": missed[0]["offset"]}},
        {"channel": "feed:news", "pub": {"data": {"n": 3}, "offset": missed[1]["offset"]}},
        {"channel": "feed:news", "pub": {"data": "live again", "offset": after["offset"]}},
    ]
    assert [m["offset"] for m in missed] + [after["offset"]] == [2, 3, 4]
    assert recovered["close"] is None  # still open

    assert {name: (rec["close"]["code"], rec["close"]["reason"])
            for name, rec in refused.items()} == {
        "forged": (3500, "invalid token"), "anonymous": (3500, "unauthorized"),
        "expired": (3005, "connection expired"), "silent": (3502, "stale")}
    # Each is told in a disconnect push too, just before the close frame (Centrifugo
    # >= 6.5.1), with the same code and reason, which a page reads without the close event.
    assert all(rec["pushes"] == [{"disconnect": {"code": rec["close"]["code"],
                                                 "reason": rec["close"]["reason"]}}]
               and rec["opens"] == 1 for rec in refused.values())
    assert errors == []


@pytest_twisted.ensureDeferred
async def test_fetch_reads_the_http_stream_line_by_line(chromium, pubsub_server):  # noqa: F811
    """``fetch`` POSTs the connect request to ``/connection/uni_http_stream`` and reads its
    ``ReadableStream``: status 200, ``application/json``, the ``connect`` push and the
    publications, one line each. With one connection per user, a second stream of the same
    user is 429 with the ``disconnect`` push as its body; a bad token is 401 with its
    ``disconnect``. Once the page aborts its fetch the server lets the user in again."""
    server, layer = await _serve(pubsub_server, max_connections_per_user=1)

    def flow(browser: Any) -> Any:
        page = _open(browser, server)
        try:
            request = {"token": token("ada", channels=["feed:news", "live:x"])}
            _call(page, "stream", "ada", request)
            _wait(page, f"{_r('ada')}.pushes.length === 1")
            positions = [_publish(layer, "live:x", {"text": "a\nb"}),
                         _publish(layer, "feed:news", "news")]
            _wait(page, f"{_r('ada')}.pushes.length === 3")

            _call(page, "stream", "second", request)
            _call(page, "stream", "forged", {"token": token("eve", key="x" * 40)})
            _wait(page, f"{_r('second')}.ended && {_r('forged')}.ended")
            ada_state = _rec(page, "ada")
            refused = {name: _rec(page, name) for name in ("second", "forged")}

            page.evaluate(f"{_h('ada')}.abort()")
            _wait(page, f"{_r('ada')}.failure !== null")
            # The server learns of the abort when the connection goes: until then a new
            # stream of ada's is refused (429) and the page tries again.
            statuses = page.evaluate(f"""async () => {{
                const statuses = [];
                const deadline = Date.now() + 10000;
                for (;;) {{
                    statuses.push(await window.stream("later", {json.dumps(request)}));
                    if (statuses.at(-1) !== 429 || Date.now() > deadline) return statuses;
                    await new Promise((done) => setTimeout(done, 100));
                }}
            }}""")
            _wait(page, f"{_r('later')}.pushes.length === 1")
            _publish(layer, "feed:news", "after the abort")
            _wait(page, f"{_r('later')}.pushes.length === 2")
            return (ada_state, positions, refused, statuses, _rec(page, "later"),
                    page.page_errors)
        finally:
            page.context.close()

    ada, positions, refused, statuses, later, errors = await in_thread(chromium.run, flow)
    assert (ada["status"], ada["contentType"]) == (200, "application/json")
    assert set(ada["pushes"][0]["connect"]["subs"]) == {"feed:news", "live:x"}
    assert ada["pushes"][1:] == [
        {"channel": "live:x", "pub": {"data": {"text": "a\nb"}}},
        {"channel": "feed:news", "pub": {"data": "news", "offset": positions[1]["offset"]}},
    ]
    assert ada["ended"] is False and ada["failure"] is None  # still streaming then
    assert {name: (rec["status"], rec["pushes"]) for name, rec in refused.items()} == {
        "second": (429, [{"disconnect": {"code": 3504, "reason": "connection limit"}}]),
        "forged": (401, [{"disconnect": {"code": 3500, "reason": "invalid token"}}]),
    }
    assert statuses[-1] == 200 and set(statuses[:-1]) <= {429}
    assert later["status"] == 200 and set(later["pushes"][0]) == {"connect"}
    assert later["pushes"][1] == {"channel": "feed:news", "pub": {
        "data": "after the abort", "offset": positions[1]["offset"] + 1}}
    assert errors == []


@pytest_twisted.ensureDeferred
async def test_the_server_api_disconnect_ends_an_event_source(
        chromium, pubsub_server):  # noqa: F811
    """``POST /api/disconnect {"user": "ada"}``: each of ada's EventSources gets the
    ``{"disconnect": {"code": 3503, "reason": "force disconnect"}}`` event, then its
    response ends. The one that closes itself on it (code >= 3500, as the README says)
    stays CLOSED; the one that does not is opened again by the browser and gets a new
    ``connect`` push; bob's, of another user, goes on and still gets publications."""
    server, layer = await _serve(pubsub_server, api_keys=(KEY,))

    def flow(browser: Any) -> Any:
        page = _open(browser, server)
        try:
            channels = {"channels": ["live:x"]}
            _call(page, "sse", "closes", {"token": token("ada", **channels)}, False)
            _call(page, "sse", "keeps", {"token": token("ada", **channels)}, True)
            _call(page, "sse", "bob", {"token": token("bob", **channels)}, False)
            for name in ("closes", "keeps", "bob"):
                _wait(page, f"{_r(name)}.pushes.length === 1")
            status = _api(server, "disconnect", {"user": "ada"})
            _wait(page, f"{_r('closes')}.pushes.length === 2 && "
                        f"{_r('keeps')}.pushes.length >= 2")
            # The one kept open comes back by itself (after the EventSource's retry delay).
            _wait(page, f"{_r('keeps')}.opens === 2 && {_r('keeps')}.pushes.length === 3",
                  timeout=2 * TIMEOUT_MS)
            _publish(layer, "live:x", "to everyone left")
            _wait(page, f"{_r('bob')}.pushes.length === 2 && {_r('keeps')}.pushes.length === 4")
            states = page.evaluate("Object.fromEntries(['closes', 'keeps', 'bob'].map("
                                   "(n) => [n, window.handles[n].readyState]))")
            recs = {name: _rec(page, name) for name in ("closes", "keeps", "bob")}
            return status, states, recs, page.page_errors
        finally:
            page.context.close()

    status, states, recs, errors = await in_thread(chromium.run, flow)
    assert status == 200
    forced = {"disconnect": {"code": 3503, "reason": "force disconnect"}}
    closes, keeps, bob = recs["closes"], recs["keeps"], recs["bob"]
    assert closes["pushes"][1] == forced and len(closes["pushes"]) == 2
    assert states == {"closes": 2, "keeps": 1, "bob": 1}
    assert closes["opens"] == 1
    assert keeps["pushes"][1] == forced
    assert set(keeps["pushes"][2]) == {"connect"}
    assert keeps["pushes"][2]["connect"]["client"] != keeps["pushes"][0]["connect"]["client"]
    assert keeps["pushes"][3] == {"channel": "live:x", "pub": {"data": "to everyone left"}}
    assert keeps["errors"] == [0]  # the end of the response: CONNECTING again
    assert bob["pushes"][1:] == [{"channel": "live:x", "pub": {"data": "to everyone left"}}]
    assert bob["opens"] == 1 and bob["errors"] == []
    assert errors == []
