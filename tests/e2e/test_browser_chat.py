"""The chat example (``realtime/examples/chat.py`` + ``static/chat.html``) in a real browser.

Debian's Chromium (``/usr/bin/chromium``; ``tests/run.sh`` installs it) driven by Playwright's
Python package against ``twistd -n realtime --app realtime.examples.chat:application``
subprocesses on 127.0.0.1. No browser is ever downloaded (never ``playwright install``).
Without Chromium or Playwright these tests are skipped, except under ``CI=true`` where that is
a failure. Every wait is on a DOM condition, with a generous bound for a loaded machine.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import (
    Server,
    ServerFailed,
    free_port,
    on_a_free_port,
    self_signed,
    start,
    twistd,
)

pytestmark = pytest.mark.slow

CHAT_APP = "realtime.examples.chat:application"
CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps trying to reach the internet.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
#: Bound (ms) for one DOM condition: generous, as the machine may be loaded.
TIMEOUT_MS = 15_000
#: Bound (ms) for the page to come back after a restart (its backoff grows with each refusal).
RECONNECT_TIMEOUT_MS = 30_000
RESTART_NOTICE = "The server is restarting; reconnecting…"
#: Loaded before the page's own script: records every WebSocket's close code in
#: ``window.closeCodes`` and its negotiated extensions in ``window.socketExtensions`` (the
#: page's behaviour is otherwise unchanged).
RECORD_CLOSE_CODES = """
window.closeCodes = [];
window.WebSocket = class extends window.WebSocket {
  constructor(...args) {
    super(...args);
    this.addEventListener("close", (e) => window.closeCodes.push(e.code));
    this.addEventListener("open", () => {
      window.socketExtensions = (window.socketExtensions || []).concat([this.extensions]);
    });
  }
};
"""


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def launched_browser() -> Iterator[Any]:
    """A headless Chromium, driven from this thread: the ``browser`` fixture
    (tests/e2e/conftest.py: one for all the browser tests; each opens its own contexts)."""
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"{CHROMIUM} is not installed (tests/run.sh installs it: "
                 "apt-get install chromium)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _missing("the playwright package is not installed (pip install -e '.[test]')")
    expect.set_options(timeout=TIMEOUT_MS)  # for every expect(...) (5 s by default)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000
        )
        try:
            yield chromium
        finally:
            chromium.close()


def _chat_server(port: int, *options: str) -> Server:
    return start(twistd("--app", CHAT_APP, "--port", f"tcp:{port}:interface=127.0.0.1",
                        *options))


def _chat_server_on_a_free_port(*options: str) -> Server:
    for _attempt in range(3):  # the free port may be taken before twistd binds it
        try:
            return _chat_server(free_port(), *options)
        except ServerFailed:
            continue
    return _chat_server(free_port(), *options)


def _join(browser: Any, url: str, name: str, room: str) -> Any:
    """A new browser context (its own tab and cookies) that joins ``room`` as ``name``."""
    from playwright.sync_api import expect

    # A self-signed certificate is accepted (for https:// and wss://); plain http:// is not
    # affected.
    context = browser.new_context(viewport={"width": 760, "height": 560},
                                  ignore_https_errors=True)
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(RECORD_CLOSE_CODES)
    page = context.new_page()
    page.goto(url)
    page.fill("#name", name)
    page.fill("#room", room)
    page.click("#join-form button")
    expect(page.locator("#status")).to_have_text("connected", timeout=TIMEOUT_MS)
    return page


def _alice_and_bob(browser: Any, url: str, room: str) -> tuple[Any, Any]:
    """Two pages in ``room``, each listing both."""
    from playwright.sync_api import expect

    alice = _join(browser, url, "alice", room)
    bob = _join(browser, url, "bob", room)
    for page in (alice, bob):
        expect(page.locator("#members li")).to_have_text(["alice", "bob"])
    return alice, bob


def _say(page: Any, text: str) -> None:
    page.fill("#message", text)
    page.click("#send-form button")


def _side_by_side(browser: Any, pages: list[Any], target: Path) -> None:
    """One screenshot of several pages: each page's own shot, shown next to the others."""
    shots = [base64.b64encode(page.screenshot()).decode() for page in pages]
    images = "".join(f'<img src="data:image/png;base64,{shot}">' for shot in shots)
    sheet = browser.new_page(viewport={"width": 760 * len(pages) + 30, "height": 580})
    try:
        sheet.set_content(
            '<body style="margin:0;display:flex;gap:10px;padding:10px;background:#888">'
            f"{images}</body>"
        )
        sheet.screenshot(path=str(target))
    finally:
        sheet.close()


def test_two_pages_see_each_other_and_each_others_messages(browser, tmp_path):
    from playwright.sync_api import expect

    with _chat_server_on_a_free_port() as server:
        url = f"http://127.0.0.1:{server.port}/"
        alice, bob = _alice_and_bob(browser, url, "lobby")
        try:
            _say(alice, "hello from alice")
            expect(bob.locator("#log > div")).to_have_text(["alice: hello from alice"])
            _say(bob, "hi alice, bob here")
            expect(alice.locator("#log > div")).to_have_text(
                ["bob joined", "alice: hello from alice", "bob: hi alice, bob here"]
            )
            expect(bob.locator("#log > div")).to_have_text(
                ["alice: hello from alice", "bob: hi alice, bob here"]
            )
            for page, who in ((alice, "alice"), (bob, "bob")):
                expect(page.locator("#room-label")).to_have_text(f"#lobby as {who}")
                expect(page.locator("#notice")).to_be_hidden()
                expect(page.locator("#message")).to_have_value("")

            _side_by_side(browser, [alice, bob], tmp_path / "chat-two-pages.png")

            # A page that goes away is a leave for the other one.
            bob.context.close()
            expect(alice.locator("#members li")).to_have_text(["alice"])
            expect(alice.locator("#log > div").last).to_have_text("bob left")
        finally:
            for page in (alice, bob):
                page.context.close()


def test_chat_over_tls_page_on_http2_and_its_websocket_beside_it(browser, tmp_path):
    """An ``ssl:`` listener: Chromium loads the page over HTTP/2 (ALPN h2) and opens its
    ``wss://`` WebSocket on the same port over HTTP/1.1 (no RFC 8441 is announced), and
    the chat works."""
    from playwright.sync_api import expect

    cert, key = self_signed(tmp_path)
    # (the free port may be taken before twistd binds it: the other xdist worker's servers)
    with on_a_free_port(lambda port: start(twistd(
            "--app", CHAT_APP, "--port",
            f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"))) as server:
        url = f"https://127.0.0.1:{server.port}/"
        alice, bob = _alice_and_bob(browser, url, "tls")
        try:
            for page in (alice, bob):
                assert page.evaluate(
                    "performance.getEntriesByType('navigation')[0].nextHopProtocol") == "h2"
            _say(alice, "over h2 and wss")
            expect(bob.locator("#log > div")).to_have_text(["alice: over h2 and wss"])
            assert alice.evaluate("window.closeCodes") == []
        finally:
            for page in (alice, bob):
                page.context.close()


def test_chat_with_compression(browser):
    """Chromium's own permessage-deflate against ``--compression`` (every message
    compressed, both ways): the extension is in use and the chat works."""
    from playwright.sync_api import expect

    long_text = "a longer message, " * 8
    with _chat_server_on_a_free_port("--compression", "--compression-min-size", "1",
                                     "--metrics") as server:
        url = f"http://127.0.0.1:{server.port}/"
        alice, bob = _alice_and_bob(browser, url, "zip")
        try:
            for page in (alice, bob):
                assert page.evaluate("window.socketExtensions") == [
                    "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
                ]
            _say(alice, long_text.strip())
            expect(bob.locator("#log > div")).to_have_text([f"alice: {long_text.strip()}"])
            _say(bob, "short")
            expect(alice.locator("#log > div")).to_have_text(
                ["bob joined", f"alice: {long_text.strip()}", "bob: short"]
            )
            assert alice.evaluate("window.closeCodes") == []
            with urllib.request.urlopen(url + "metrics", timeout=10) as response:
                scrape = response.read().decode()
            compressed = re.search(r"^realtime_compressed_messages_total (\S+)$", scrape, re.M)
            assert compressed is not None and float(compressed.group(1)) >= 4, scrape
        finally:
            for page in (alice, bob):
                page.context.close()


def test_drain_notice_then_the_page_reconnects_to_the_restarted_server(browser):
    from playwright.sync_api import expect

    server = _chat_server_on_a_free_port()
    port = server.port
    try:
        page = _join(browser, f"http://127.0.0.1:{port}/", "carol", "ops")
        _say(page, "before the restart")
        expect(page.locator("#log > div")).to_have_text(["carol: before the restart"])

        server.send_signal(signal.SIGTERM)
        page.wait_for_function("window.closeCodes.length >= 1")
        assert page.evaluate("window.closeCodes[0]") == 1001  # going away: the drain
        notice = page.locator("#notice")
        expect(notice).to_be_visible()
        expect(notice).to_have_text(RESTART_NOTICE)
        expect(page.locator("#status")).not_to_have_text("connected")
        result = server.wait(timeout=15)
        assert result.returncode == 0, result.output
        assert "draining 1 WebSocket connection(s)" in result.output

        # Nothing listens now: the page's next retry is refused, and the notice stays.
        refused = page.evaluate("window.closeCodes.length") + 1
        page.wait_for_function(f"window.closeCodes.length >= {refused}")
        assert page.evaluate("window.closeCodes")[-1] == 1006
        expect(notice).to_have_text(RESTART_NOTICE)

        server = _chat_server(port)  # the same port: the page's URL does not change
        expect(page.locator("#status")).to_have_text("connected", timeout=RECONNECT_TIMEOUT_MS)
        expect(notice).to_be_hidden()
        expect(page.locator("#members li")).to_have_text(["carol"])

        _say(page, "after the restart")
        expect(page.locator("#log > div").last).to_have_text("carol: after the restart")
        page.context.close()
    finally:
        server.stop()


def test_a_page_that_lost_its_connection_gets_what_it_missed(browser):
    """With ``--history``: bob's connection drops, alice says two things meanwhile, and
    bob's page, back with the position of the last message it had, shows them once, in
    order, with no "missed" notice; a newcomer is shown the room's last messages."""
    from playwright.sync_api import expect

    with _chat_server_on_a_free_port("--history", "chat.*=50:3600") as server:
        url = f"http://127.0.0.1:{server.port}/"
        alice, bob = _alice_and_bob(browser, url, "kept")
        carol = None
        try:
            _say(alice, "first")
            expect(bob.locator("#log > div")).to_have_text(["alice: first"])
            # Bob's page closes its socket (realtime.js's close() stops the retries, so
            # alice's messages surely come while it is away).
            bob.evaluate("chat.close()")
            bob.wait_for_function("window.closeCodes.length >= 1")  # the socket's own close
            assert bob.evaluate("chat.state") == "closed"
            expect(alice.locator("#members li")).to_have_text(["alice"])
            _say(alice, "while you were away")
            _say(alice, "and this too")
            expect(alice.locator("#log > div").last).to_have_text("alice: and this too")
            # Back: realtime.js asks the page's params() again, which gives the position of
            # the last message bob had (?epoch=...&offset=...).
            bob.evaluate("chat.connect()")
            expect(bob.locator("#status")).to_have_text("connected")
            expect(bob.locator("#log > div")).to_have_text(
                ["alice: first", "alice: while you were away", "alice: and this too"])
            _say(alice, "live again")
            expect(bob.locator("#log > div").last).to_have_text("alice: live again")
            expect(bob.locator("#log > div")).to_have_count(4)  # none twice, no gap notice
            carol = _join(browser, url, "carol", "kept")
            expect(carol.locator("#log > div")).to_have_text(
                ["alice: first", "alice: while you were away", "alice: and this too",
                 "alice: live again"])
        finally:
            for page in (alice, bob, carol):
                if page is not None:
                    page.context.close()
