"""The admin UI (``--admin-path``, realtime/static/admin.html) in a real browser.

One ``twistd realtime --app realtime.pubsub:application`` subprocess on 127.0.0.1 with
``--api-key``, ``--admin-path /admin``, ``--jwt-key`` and two namespaces (``chat`` with
presence and history, ``plain`` with neither); Centrifugo's own Python SDK
(centrifuge-python, in a thread of its own with an asyncio loop) is the subscribed client;
the same headless Chromium as tests/e2e/test_browser_chat.py (its ``browser`` fixture)
drives the page. Every page also records the Content-Security-Policy violations it meets:
none is expected (the inline script and style run by their hashes; nothing else is there).
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from centrifuge import Client, ClientEventHandler, SubscriptionEventHandler

from tests.e2e import test_browser_chat
from tests.e2e.support import REPO, Server, ServerFailed, free_port, start, twistd
from tests.e2e.test_browser_chat import TIMEOUT_MS

pytestmark = pytest.mark.slow

KEY = "admin-test-api-key-0123456789"
JWT_SECRET = "a" * 40
NAMESPACES = ("chat:allow_subscribe_for_client,presence,history_size=10,history_ttl=300s",
              "plain:allow_subscribe_for_client")
#: Seconds for one SDK event.
WAIT = 10.0
#: Loaded before the page: every CSP violation it reports, in ``window.violations``.
RECORD_VIOLATIONS = """
window.violations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.violations.push(e.violatedDirective + " " + e.blockedURI));
"""

browser = test_browser_chat.browser


def _server(port: int) -> Server:
    namespaces = [arg for ns in NAMESPACES for arg in ("--namespace", ns)]
    return start(twistd("--app", "realtime.pubsub:application",
                        "--port", f"tcp:{port}:interface=127.0.0.1", "--api-key", KEY,
                        "--admin-path", "/admin", "--jwt-key", JWT_SECRET, *namespaces),
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


class Sdk(ClientEventHandler):
    """A centrifuge-python client on a loop in its own thread; what reaches it goes to
    ``events`` (a thread-safe queue the test reads with a bound)."""

    def __init__(self, server: Server, user: str) -> None:
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        token = jwt.encode({"sub": user, "exp": int(time.time()) + 300}, JWT_SECRET,
                           algorithm="HS256")
        self.client = self.call(self._make(server.ws_url("/connection/websocket"), token))

    async def _make(self, url: str, token: str) -> Client:
        return Client(url, events=self, token=token)

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(WAIT)

    def subscribe(self, *channels: str) -> None:
        async def go() -> None:
            await self.client.connect()
            await self.client.ready(WAIT)
            for channel in channels:
                sub = self.client.new_subscription(channel, _SubEvents(self, channel))
                await sub.subscribe()
                await sub.ready(WAIT)
        self.call(go())

    async def on_disconnected(self, ctx: Any) -> None:
        self.events.put(("disconnected", ctx.code, ctx.reason))

    def next(self) -> tuple[Any, ...]:
        return self.events.get(timeout=WAIT)

    def close(self) -> None:
        async def shut() -> None:
            await self.client.disconnect()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.call(shut())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(WAIT)
            self.loop.close()


class _SubEvents(SubscriptionEventHandler):
    def __init__(self, sdk: Sdk, channel: str) -> None:
        self.sdk, self.channel = sdk, channel

    async def on_publication(self, ctx: Any) -> None:
        self.sdk.events.put(("pub", self.channel, ctx.pub.data))

    async def on_unsubscribed(self, ctx: Any) -> None:
        self.sdk.events.put(("unsubscribed", self.channel, ctx.code, ctx.reason))


@pytest.fixture
def sdks(server: Server) -> Iterator[Any]:
    """``sdks(user, *channels)``: a connected SDK client subscribed to the channels; all
    closed after the test."""
    made: list[Sdk] = []

    def make(user: str, *channels: str) -> Sdk:
        sdk = Sdk(server, user)
        made.append(sdk)
        sdk.subscribe(*channels)
        return sdk

    yield make
    for sdk in made:
        sdk.close()


def _admin(browser: Any, server: Server) -> Any:
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(RECORD_VIOLATIONS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.page_errors = errors
    page.goto(f"http://127.0.0.1:{server.port}/admin")
    return page


def _sign_in(page: Any, key: str = KEY) -> None:
    page.fill("#key", key)
    page.click("#login-form button[type=submit]")


def _js_json(value: Any) -> str:
    """``JSON.stringify(value)``, as the page shows data."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _clean(page: Any) -> None:
    """No uncaught exception, no CSP violation in the page."""
    assert page.page_errors == []
    assert page.evaluate("window.violations") == []


def test_status_channels_and_actions_reach_a_real_client(browser, server, sdks):
    """Sign in; the node has the SDK's one client and two subscriptions; the channel list
    has both channels with one client each; a channel with presence and history shows
    them, one without says so; a publish from the form reaches the client with exactly
    that data (and shows in the history); unsubscribe and disconnect reach it too."""
    from playwright.sync_api import expect

    sdk = sdks("ada", "chat:room", "plain:room")
    page = _admin(browser, server)
    try:
        expect(page.locator("#admin")).to_be_hidden()
        _sign_in(page)
        expect(page.locator("#login")).to_be_hidden()
        node = page.locator("#nodes tbody tr")
        expect(node).to_have_count(1)
        expect(node.locator("td.clients")).to_have_text("1")
        expect(node.locator("td.users")).to_have_text("1")
        expect(node.locator("td.channels")).to_have_text("2")
        expect(node.locator("td.subs")).to_have_text("2")
        expect(node.locator("td.version")).not_to_be_empty()
        expect(node.locator("td.uptime")).to_have_text(re.compile(r"^(\d+[dhm] )*\d+s$"))

        rows = page.locator("#channel-list tbody tr")
        expect(rows).to_have_count(2)
        expect(rows.locator("td.channel")).to_have_text(["chat:room", "plain:room"])
        expect(rows.locator("td.clients")).to_have_text(["1", "1"])
        page.fill("#pattern", "chat:*")
        page.click("#channels-form button")
        expect(rows.locator("td.channel")).to_have_text(["chat:room"])

        page.get_by_role("button", name="chat:room").click()
        expect(page.locator("#channel-name")).to_have_text("chat:room")
        expect(page.locator("#channel-stats")).to_have_text("1 clients, 1 users")
        expect(page.locator("#channel-presence td").nth(1)).to_have_text("ada")
        expect(page.locator("#channel-history")).to_contain_text("nothing kept")

        data = {"text": "from the admin <b>ü</b>", "n": [1, 2.5, None]}
        page.fill("#publish-form [name=channel]", "chat:room")
        page.fill("#publish-form [name=data]", json.dumps(data))
        page.click("#publish-form button")
        expect(page.locator("#publish-result")).to_have_text(
            "published to chat:room at offset 1")
        assert sdk.next() == ("pub", "chat:room", data)
        page.get_by_role("button", name="chat:room").click()
        expect(page.locator("#channel-history pre")).to_have_text(
            _js_json(data))

        page.fill("#pattern", "")
        page.click("#channels-form button")
        page.get_by_role("button", name="plain:room").click()
        expect(page.locator("#channel-stats")).to_have_text(
            "presence_stats: error 108: not available")
        expect(page.locator("#channel-history")).to_have_text(
            "history: error 108: not available")

        page.fill("#publish-form [name=data]", "{not json")
        page.click("#publish-form button")
        expect(page.locator("#publish-error")).to_contain_text("the data is not JSON")
        page.fill("#publish-form [name=channel]", "nowhere:room")
        page.fill("#publish-form [name=data]", "1")
        page.click("#publish-form button")
        expect(page.locator("#publish-error")).to_have_text(
            "publish: error 102: unknown channel")

        page.fill("#unsubscribe-form [name=user]", "ada")
        page.fill("#unsubscribe-form [name=channel]", "plain:room")
        page.click("#unsubscribe-form button")
        expect(page.locator("#unsubscribe-result")).to_have_text(
            "unsubscribed user ada from plain:room")
        event = sdk.next()
        assert event[:2] == ("unsubscribed", "plain:room")
        expect(node.locator("td.subs")).to_have_text("1")  # the next refresh

        page.fill("#disconnect-form [name=user]", "ada")
        page.click("#disconnect-form button")
        expect(page.locator("#disconnect-result")).to_have_text(
            "disconnected every connection of user ada")
        assert sdk.next() == ("disconnected", 3503, "force disconnect")
        expect(node.locator("td.clients")).to_have_text("0")
        expect(rows).to_have_count(0)
        _clean(page)
    finally:
        page.context.close()


def test_a_wrong_key_is_told_and_signs_nobody_in(browser, server):
    from playwright.sync_api import expect

    page = _admin(browser, server)
    try:
        _sign_in(page, "schlüssel-0123456789")  # a header could not even carry it
        expect(page.locator("#login-error")).to_have_text("an API key is ASCII without spaces")
        _sign_in(page, "not-the-key-at-all-000")
        expect(page.locator("#login-error")).to_have_text(
            "info: HTTP 401 Unauthorized: the API key is wrong")
        expect(page.locator("#admin")).to_be_hidden()
        expect(page.locator("#key")).to_have_value("")  # not left in the form
        _sign_in(page)
        expect(page.locator("#nodes tbody tr")).to_have_count(1)
        expect(page.locator("#login-error")).to_be_empty()
        page.click("#sign-out")
        expect(page.locator("#login")).to_be_visible()
        expect(page.locator("#admin")).to_be_hidden()
        _clean(page)
    finally:
        page.context.close()


def test_untrusted_names_and_data_are_shown_as_text(browser, server, sdks):
    """A channel, a user and published data that are HTML with a script in an ``onerror``:
    shown literally, no element made of them, nothing run (and no CSP violation: the page
    never even tried)."""
    from playwright.sync_api import expect

    evil = "<img src=x onerror=\"window.xss=1\">"
    channel = f"chat:{evil}"
    sdk = sdks(evil, channel)
    page = _admin(browser, server)
    try:
        _sign_in(page)
        expect(page.locator("#channel-list td.channel")).to_have_text([channel])
        page.fill("#publish-form [name=channel]", channel)
        page.fill("#publish-form [name=data]", json.dumps({"html": evil}))
        page.click("#publish-form button")
        expect(page.locator("#publish-result")).to_have_text(
            f"published to {channel} at offset 1")
        assert sdk.next() == ("pub", channel, {"html": evil})
        page.get_by_role("button", name=channel).click()
        expect(page.locator("#channel-name")).to_have_text(channel)
        expect(page.locator("#channel-presence td").nth(1)).to_have_text(evil)
        expect(page.locator("#channel-history pre")).to_have_text(_js_json({"html": evil}))
        page.fill("#disconnect-form [name=user]", evil)
        page.click("#disconnect-form button")
        expect(page.locator("#disconnect-result")).to_have_text(
            f"disconnected every connection of user {evil}")
        assert sdk.next() == ("disconnected", 3503, "force disconnect")
        assert page.locator("img").count() == 0
        assert page.evaluate("window.xss") is None
        _clean(page)
    finally:
        page.context.close()
