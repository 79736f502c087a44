"""The official Socket.IO Admin UI (npm ``@socket.io/admin-ui``'s built ``ui/dist``, pinned
by tests/run.sh into tests/.node) in headless Chromium against ``AsyncServer.instrument()``.

The UI is served from 127.0.0.1 on a port of its own (a thread's ``http.server``), so it
connects cross-origin to one ``twistd realtime --app tests.e2e.socketio_admin_app``
subprocess (``cors_allowed_origins``: the UI's origin; the UI's client sends credentials)
on its default transports (polling, then the upgrade). Its only remote assets, Google's
Roboto font and the Material Design Icons stylesheet on jsDelivr, are refused here (the
network is closed): the UI works without them, its icons blank. python-socketio's
``Client`` is the application's client the UI shows and disconnects.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import socketio

from tests.e2e.support import REPO, Server, on_a_free_port, start, twistd
from tests.e2e.test_browser_chat import _missing

pytestmark = pytest.mark.slow

UI_DIST = REPO / "tests" / ".node" / "node_modules" / "@socket.io" / "admin-ui" / "ui" / "dist"
SERVER_ID = "realtime-under-test"
WAIT = 10.0



class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def ui() -> Iterator[str]:
    """The UI's origin: ``ui/dist`` served from 127.0.0.1 (skipped, or failed under
    CI=true, without the package)."""
    if not (UI_DIST / "index.html").is_file():
        _missing("needs @socket.io/admin-ui in tests/.node (bash tests/run.sh)")
    handler = functools.partial(_Quiet, directory=str(UI_DIST))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(WAIT)


@pytest.fixture(scope="module")
def server(ui: str) -> Iterator[Server]:
    def make(port: int) -> Server:
        return start(twistd("--app", "tests.e2e.socketio_admin_app:application",
                            "--port", f"tcp:{port}:interface=127.0.0.1"),
                     env={"PYTHONPATH": str(REPO),
                          "SIO_TEST_ORIGINS": f"{ui},http://127.0.0.1:{port}"}, cwd=REPO)

    with on_a_free_port(make) as running:
        yield running


class Client:
    """python-socketio's sync client (its own threads); its disconnect reasons queued."""

    def __init__(self, url: str) -> None:
        self.client = socketio.Client(reconnection=False)
        self.gone: queue.Queue[Any] = queue.Queue()
        self.client.on("disconnect", lambda *reason: self.gone.put(reason))
        self.client.connect(url, transports=["websocket"], wait_timeout=WAIT)


def test_the_official_admin_ui_shows_the_server_its_sockets_and_rooms(
        browser: Any, ui: str, server: Server) -> None:
    """Log in through the UI's own form; it shows itself connected, the server (its
    ``server_id``) in the servers list, the client's socket (its sid) in the sockets list
    and the room it joined on its page; its disconnect button disconnects the client, whose
    socket leaves the list and whose disconnect (with its reason) is in the events list."""
    from playwright.sync_api import expect

    url = f"http://127.0.0.1:{server.port}"
    client = Client(url)
    sid = client.client.get_sid()
    context = browser.new_context(locale="en-US")
    try:
        context.route("https://**/*", lambda route: route.abort())  # fonts, icons: offline
        page = context.new_page()
        page.goto(ui + "/")
        page.get_by_label("Server URL").fill(url)
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill("s3cret")
        page.get_by_role("button", name="Connect").click()
        expect(page.get_by_role("banner")).to_contain_text("Status: connected")

        page.goto(ui + "/#/servers/")
        expect(page.get_by_role("row").filter(has_text=SERVER_ID)).to_be_visible()

        page.goto(ui + "/#/sockets/")
        row = page.get_by_role("row").filter(has_text=sid)
        expect(row).to_be_visible()
        row.get_by_role("cell").first.click()  # the socket's page
        expect(page.get_by_role("row").filter(has_text="lobby")).to_be_visible()

        page.goto(ui + "/#/sockets/")
        # (the click reaches the row too, which opens the socket's page as it was)
        page.get_by_role("row").filter(has_text=sid).get_by_role("button").click()
        assert client.gone.get(timeout=WAIT) == ("server disconnect",)
        page.goto(ui + "/#/sockets/")
        expect(page.get_by_role("row").filter(has_text=sid)).to_have_count(0)
        expect(page.get_by_role("banner")).to_contain_text("Status: connected")
        page.goto(ui + "/#/events/")  # the disconnect, as the UI logged it
        expect(page.get_by_role("row").filter(has_text=sid)).to_contain_text(
            "Reason: server disconnect")
    finally:
        context.close()
        client.client.disconnect()
