"""The admin UI (``--admin-path``, realtime/static/admin.html) in a real browser.

One ``twistd realtime --app realtime.pubsub:application`` subprocess on 127.0.0.1 with
``--api-key``, ``--admin-path /admin``, ``--jwt-key`` and two namespaces (``chat`` with
presence and history, ``plain`` with neither); Centrifugo's own Python SDK
(centrifuge-python, in a thread of its own with an asyncio loop) is the subscribed client;
the headless Chromium all the browser tests share (``browser``, tests/e2e/conftest.py)
drives the page. Every page also records the Content-Security-Policy violations it meets:
none is expected (the inline script and style run by their hashes; nothing else is there).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import queue
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from centrifuge import Client, ClientEventHandler, SubscriptionEventHandler

from tests.e2e.support import REPO, Server, ServerFailed, free_port, on_a_free_port, start, twistd
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

#: An integer JSON carries exactly but a JavaScript number cannot (past 2**53).
BIG = 12345678901234567891
#: The most rows one of the page's tables shows (its MAX_ROWS).
MAX_ROWS = int(re.search(r"const MAX_ROWS = (\d+);", (REPO / "realtime" / "static" /
                                                     "admin.html").read_text()).group(1))


def _server(port: int) -> Server:
    namespaces = [arg for ns in NAMESPACES for arg in ("--namespace", ns)]
    return start(twistd("--app", "realtime.pubsub:application",
                        "--port", f"tcp:{port}:interface=127.0.0.1", "--api-key", KEY,
                        "--admin-path", "/admin", "--jwt-key", JWT_SECRET, *namespaces),
                 env={"PYTHONPATH": str(REPO)}, cwd=REPO)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with on_a_free_port(_server) as running:
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


def _admin(browser: Any, server: Server, fake_clock: bool = False) -> Any:
    """The admin page; with ``fake_clock`` its timers wait for ``_refresh(page)`` (the
    page refreshes every 5 s: a test does not wait that long)."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(RECORD_VIOLATIONS)
    if fake_clock:
        context.clock.install()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.page_errors = errors
    page.goto(f"http://127.0.0.1:{server.port}/admin")
    return page


def _refresh(page: Any) -> None:
    """The page's next timed refresh, now (a page opened with ``fake_clock``)."""
    page.clock.run_for(REFRESH_MS + 100)


#: The page's refresh period (``REFRESH`` in admin.html).
REFRESH_MS = 5_000


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
        page.fill("#pattern", "chat:*")
        page.fill("#publish-form [name=channel]", "chat:secret")
        page.fill("#publish-form [name=data]", "{not json")
        page.click("#publish-form button")
        expect(page.locator("#publish-error")).to_contain_text("the data is not JSON")
        page.click("#sign-out")
        expect(page.locator("#login")).to_be_visible()
        expect(page.locator("#admin")).to_be_hidden()
        # Nothing of that session is left for the next one.
        for selector in ("#publish-error", "#nodes tbody", "#updated"):
            expect(page.locator(selector)).to_be_empty()
        expect(page.locator("#pattern")).to_have_value("")
        expect(page.locator("#publish-form [name=channel]")).to_have_value("")
        expect(page.locator("#publish-form [name=data]")).to_have_value('{"text": "hello"}')
        _clean(page)
    finally:
        page.context.close()


def test_a_failure_other_than_a_refused_key_still_signs_in(browser, server):
    """Only a 401 keeps the sign-in form; any other failure (here a proxy's 503 for the
    first ``info``) opens the page, which says what went wrong until a refresh works."""
    from playwright.sync_api import expect

    page = _admin(browser, server)
    answered: list[str] = []

    def unavailable(route: Any) -> None:
        if answered:
            route.continue_()
            return
        answered.append(route.request.url)
        route.fulfill(status=503, body="upstream down\n", content_type="text/plain")

    try:
        page.route("**/api/info", unavailable)
        _sign_in(page)
        expect(page.locator("#admin")).to_be_visible()
        expect(page.locator("#login-error")).to_be_empty()
        expect(page.locator("#nodes tbody tr")).to_have_count(1)
        expect(page.locator("#status-error")).to_be_empty()
        assert answered
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


def _api(server: Server, method: str, params: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/api/{method}", data=json.dumps(params).encode(),
        headers={"X-API-Key": KEY, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _own_server(*args: str) -> Server:
    """A server of the test's own (one it stops, or fills), as ``server`` with ``args``."""
    for _attempt in range(3):
        try:
            return start(twistd("--app", "realtime.pubsub:application", "--port",
                                f"tcp:{free_port()}:interface=127.0.0.1", "--api-key", KEY,
                                "--admin-path", "/admin", *args),
                         env={"PYTHONPATH": str(REPO)}, cwd=REPO)
        except ServerFailed:
            continue
    raise ServerFailed("no server")


# -- data as typed and as kept: numbers JavaScript cannot hold stay exact ------------------------

def test_the_publish_form_sends_the_json_as_typed(browser, server, sdks):
    """The publish form sends the data as typed (it only checks that it is JSON): an
    integer past 2**53 reaches the subscriber exactly, and ``1.0`` stays a float (parsed
    and serialised again by JavaScript they would be 12345678901234567000 and 1)."""
    from playwright.sync_api import expect

    sdk = sdks("ada", "chat:numbers")
    page = _admin(browser, server)
    try:
        _sign_in(page)
        expect(page.locator("#nodes tbody tr")).to_have_count(1)
        page.fill("#publish-form [name=channel]", "chat:numbers")
        page.fill("#publish-form [name=data]", f'{{"id": {BIG}, "price": 1.0}}')
        page.click("#publish-form button")
        expect(page.locator("#publish-result")).to_contain_text("published to chat:numbers")
        kind, channel, data = sdk.next()
        assert (kind, channel) == ("pub", "chat:numbers")
        assert data["id"] == BIG, data
        assert isinstance(data["price"], float), data
        page.get_by_role("button", name="chat:numbers").click()
        expect(page.locator("#channel-history pre")).to_have_text(
            f'{{"id":{BIG},"price":1.0}}')
        _clean(page)
    finally:
        page.context.close()


def test_history_shows_the_data_kept(browser, server, sdks):
    """A channel's history shows the publication's data as the server keeps it: an
    integer past 2**53 published through the API (exactly) shows with all its digits,
    not rounded (…67000, a number never published)."""
    from playwright.sync_api import expect

    sdks("ada", "chat:kept")
    assert "result" in _api(server, "publish", {"channel": "chat:kept", "data": {"id": BIG}})
    page = _admin(browser, server)
    try:
        _sign_in(page)
        page.get_by_role("button", name="chat:kept").click()
        expect(page.locator("#channel-history pre")).to_have_count(1)
        expect(page.locator("#channel-history pre")).to_contain_text(str(BIG))
        _clean(page)
    finally:
        page.context.close()


# -- a channel's panel shows that channel's answers only ----------------------------------------

def test_a_late_answer_for_the_channel_clicked_before_is_dropped(browser, server, sdks):
    """Click channel A (its presence/history answers are slow), then channel B: the panel
    titled B shows B's presence, and A's answers, arriving last, are dropped (they do not
    replace B's)."""
    from playwright.sync_api import expect

    sdks("ada", "chat:late-a")
    sdks("bob", "chat:late-b")
    page = _admin(browser, server, fake_clock=True)
    held: list[Any] = []
    done: list[str] = []

    def hold_a(route: Any) -> None:
        if '"chat:late-a"' in (route.request.post_data or ""):
            held.append(route)  # the network is slow for A's three calls
        else:
            route.continue_()

    page.on("requestfinished", lambda request: done.append(request.post_data or ""))
    try:
        _sign_in(page)
        page.fill("#pattern", "chat:late-*")
        page.click("#channels-form button")
        rows = page.locator("#channel-list td.channel")
        expect(rows).to_have_text(["chat:late-a", "chat:late-b"])
        page.route("**/api/*", hold_a)
        page.get_by_role("button", name="chat:late-a").click()
        page.wait_for_function("() => true")  # let the three requests be issued
        page.get_by_role("button", name="chat:late-b").click()
        expect(page.locator("#channel-name")).to_have_text("chat:late-b")
        expect(page.locator("#channel-presence td").nth(1)).to_have_text("bob")
        expect(page.locator("#channel-stats")).to_have_text("1 clients, 1 users")
        assert len(held) == 3, [r.request.url for r in held]
        for route in held:
            route.continue_()
        for _ in range(100):  # bounded: A's three answers arrive
            if sum('"chat:late-a"' in body for body in done) >= 3:
                break
            page.wait_for_timeout(100)
        page.wait_for_timeout(500)  # and are handled
        expect(page.locator("#channel-name")).to_have_text("chat:late-b")
        assert page.locator("#channel-presence td").nth(1).text_content() == "bob"
        # The refreshes list the pattern last submitted, not what is being typed.
        page.fill("#pattern", "nothing-matches-*")
        stamp = page.locator("#updated").text_content()
        _refresh(page)
        expect(page.locator("#updated")).not_to_have_text(stamp or "")
        expect(rows).to_have_text(["chat:late-a", "chat:late-b"])
        _clean(page)
    finally:
        page.context.close()


# -- behind a proxy's access control ------------------------------------------------------------

class _Gate(BaseHTTPRequestHandler):
    """A reverse proxy with access control, as the README asks for ("Put it behind your
    proxy's access control too"): a request without the proxy's session cookie (what an
    SSO proxy such as oauth2-proxy, or nginx ``auth_request``, checks) is 401; others
    go on, unchanged, to the server."""

    upstream = 0
    protocol_version = "HTTP/1.1"
    #: A path prefix this server is routed under (``/ops``): the rest of the origin is
    #: another application's (404 here).
    prefix = ""

    def log_message(self, *args: Any) -> None:
        pass

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None  # read, even when refused
        if "sso=operator" not in (self.headers.get("Cookie") or ""):
            body = b"sign in at the proxy first\n"
            self.send_response(401)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        path = self.path
        if self.prefix:
            if not path.startswith(self.prefix + "/"):
                body = b"not this application\n"
                self.send_response(404)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            path = path[len(self.prefix):]
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("host", "connection", "cookie")}
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream, timeout=10)
        try:
            conn.request(self.command, path, body=body, headers=headers)
            answer = conn.getresponse()
            data = answer.read()
        finally:
            conn.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_HEAD = _forward


@pytest.fixture(params=[""])
def gate(server: Server, request: Any) -> Iterator[int]:
    handler = type("Gate", (_Gate,), {"upstream": server.port, "prefix": request.param})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy.server_address[1]
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(10)


def test_the_page_works_behind_a_proxy_that_checks_the_operators_session(browser, gate):
    """Behind a proxy with access control (its session cookie, or HTTP Basic auth) the
    page, loaded through it, signs in with the right key: its same-origin API calls carry
    the browser's credentials for that origin like the page's own load did. When the
    proxy refuses a call (the session is gone), the page shows the proxy's answer, and
    does not say that the key is wrong."""
    from playwright.sync_api import expect

    origin = f"http://127.0.0.1:{gate}"
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    context.add_cookies([{"name": "sso", "value": "operator", "url": origin}])
    context.clock.install()  # the refresh comes when _refresh says
    page = context.new_page()
    try:
        page.goto(origin + "/admin")
        expect(page.locator("#login")).to_be_visible()  # the page came through the proxy
        _sign_in(page)
        expect(page.locator("#login-error")).to_be_empty()
        expect(page.locator("#nodes tbody tr")).to_have_count(1)
        context.clear_cookies()
        _refresh(page)
        expect(page.locator("#status-error")).to_have_text(
            "info: HTTP 401 (not from the server API): sign in at the proxy first")
        expect(page.locator("#admin")).to_be_visible()  # still signed in
        page.click("#sign-out")
        _sign_in(page)
        expect(page.locator("#login-error")).to_have_text(
            "info: HTTP 401 (not from the server API): sign in at the proxy first")
        expect(page.locator("#admin")).to_be_hidden()
    finally:
        context.close()


@pytest.mark.parametrize("gate", ["/ops"], indirect=True)
def test_the_page_finds_the_api_under_a_proxys_path_prefix(browser, gate):
    """A proxy routes this server under /ops (the origin's root is another application):
    the page, at /ops/admin, calls /ops/api/ (it called /api/ at the root: 404 from the
    other application, and nobody could sign in)."""
    from playwright.sync_api import expect

    origin = f"http://127.0.0.1:{gate}"
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    context.add_cookies([{"name": "sso", "value": "operator", "url": origin}])
    page = context.new_page()
    calls: list[str] = []
    page.on("request", lambda r: calls.append(r.url) if "/api/" in r.url else None)
    try:
        page.goto(origin + "/ops/admin")
        expect(page.locator("#login")).to_be_visible()
        _sign_in(page)
        expect(page.locator("#login-error")).to_be_empty()
        expect(page.locator("#nodes tbody tr")).to_have_count(1)
        assert calls and all(url.startswith(origin + "/ops/api/") for url in calls)
    finally:
        context.close()


# -- a failed refresh ----------------------------------------------------------------------------

def test_a_failed_refresh_does_not_claim_the_old_numbers_are_fresh(browser):
    """When a refresh fails (the server is gone, Redis is down: error 100, a proxy's 503),
    the header keeps the time of the last refresh that worked and says the last one
    failed: what is shown is not claimed to be current."""
    from playwright.sync_api import expect

    own = _own_server()
    page = None
    try:
        page = _admin(browser, own, fake_clock=True)
        _sign_in(page)
        expect(page.locator("#nodes tbody tr")).to_have_count(1)
        expect(page.locator("#updated")).not_to_be_empty()
        expect(page.locator("#stale")).to_be_empty()
        own.stop()
        _refresh(page)
        expect(page.locator("#status-error")).not_to_be_empty()
        expect(page.locator("#stale")).to_have_text("the last refresh failed")
        first = page.locator("#updated").text_content()
        _refresh(page)  # and the one after it
        expect(page.locator("#stale")).to_have_text("the last refresh failed")
        later = page.locator("#updated").text_content()
        rows = page.locator("#nodes tbody tr").count()
        assert later == first or rows == 0, (first, later, rows)
    finally:
        if page is not None:
            page.context.close()
        if own.proc.poll() is None:
            own.stop()


# -- a long channel list ---------------------------------------------------------------------------

#: Channels with a subscriber: past the rows the page shows (MAX_ROWS). With every one a
#: row, and the rows spread into one call (``replaceChildren(...rows)``), 150 000 threw a
#: RangeError and the next refresh left the list empty with no error; the page now builds
#: at most MAX_ROWS rows without spreading them (200 000 pass: ~40 s, too long for here).
MANY = 2 * MAX_ROWS + 500


def test_a_long_channel_list_is_cut_and_says_how_long_it_is(browser):
    """A server with more channels with subscribers than the page shows (one connection,
    server-side subscriptions through the API's ``subscribe``): the page shows the first
    MAX_ROWS, says how many there are, with no error, now and after the next refresh."""
    from playwright.sync_api import expect

    namespaces = [arg for ns in NAMESPACES for arg in ("--namespace", ns)]
    own = _own_server("--jwt-key", JWT_SECRET, "--max-groups-per-connection", "0",
                      *namespaces)
    sdk = page = None
    try:
        sdk = Sdk(own, "ada")
        sdk.subscribe()
        for first in range(0, MANY, 1000):
            answer = _api(own, "batch", {"commands": [
                {"subscribe": {"user": "ada", "channel": f"plain:c{i}"}}
                for i in range(first, min(first + 1000, MANY))]})
            assert all("error" not in reply for reply in answer["replies"])
        for _ in range(120):  # bounded: the subscriptions are made
            if len(_api(own, "channels", {})["result"]["channels"]) >= MANY:
                break
            sdk.loop.call_soon_threadsafe(lambda: None)
            threading.Event().wait(0.5)
        page = _admin(browser, own, fake_clock=True)
        _sign_in(page)
        expect(page.locator("#nodes td.channels")).to_have_text(str(MANY))
        expect(page.locator("#updated")).not_to_be_empty(timeout=30_000)
        first_stamp = page.locator("#updated").text_content()
        first = (page.locator("#channels-error").text_content(),
                 page.locator("#channels-summary").text_content())
        _refresh(page)
        expect(page.locator("#updated")).not_to_have_text(first_stamp, timeout=30_000)
        later = (page.locator("#channels-error").text_content(),
                 page.locator("#channels-summary").text_content(),
                 page.locator("#channel-list tbody tr").count())
        assert later[0] == "" and str(MANY) in (later[1] or ""), (first, later)
        assert later[2] == MAX_ROWS, later
        assert f"showing the first {MAX_ROWS}" in (later[1] or ""), later
        _clean(page)
    finally:
        if page is not None:
            page.context.close()
        if sdk is not None:
            sdk.close()
        own.stop()
