"""The testing toolkit (realtime.testing and the pytest plugin), against example consumers."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from realtime import (
    AsyncHttpConsumer,
    AsyncJsonWebsocketConsumer,
    AsyncWebsocketConsumer,
    DenyConnection,
    ProtocolTypeRouter,
    Refuse,
    URLRouter,
    WebsocketConsumer,
    path,
)
from realtime.config import ServerConfig
from realtime.examples.bench import application as bench
from realtime.testing import (
    ApplicationCommunicator,
    HttpCommunicator,
    WebsocketCommunicator,
    decode_chunked,
)
from tests import early

REPO = Path(__file__).resolve().parents[1]


class Recorder(AsyncWebsocketConsumer):
    """Accepts with the last offered subprotocol; records disconnects on the class."""

    events: list = []

    async def connect(self):
        offered = self.scope["subprotocols"]
        await self.accept(offered[-1] if offered else None, headers=[(b"x-served-by", b"t")])

    async def receive(self, text_data=None, bytes_data=None):
        if text_data == "close":
            await self.close(4123, "bye")
        elif text_data == "boom":
            raise RuntimeError("secret detail")
        else:
            await self.send(text_data=text_data, bytes_data=bytes_data)

    async def disconnect(self, code):
        type(self).events.append(("disconnect", code))


class Refuser(WebsocketConsumer):
    def connect(self):
        raise Refuse(429, body=b"slow down")


class Denier(WebsocketConsumer):
    def connect(self):
        raise DenyConnection()


class Closer(WebsocketConsumer):
    def connect(self):
        self.close()


class Raiser(WebsocketConsumer):
    def connect(self):
        raise RuntimeError("do not show this")


class Never(WebsocketConsumer):
    def connect(self):
        pass


class Json(AsyncJsonWebsocketConsumer):
    async def receive_json(self, content, **kwargs):
        await self.send_json({"echo": content})


class Hello(AsyncHttpConsumer):
    async def handle(self, body):
        await self.send_response(201, b"got " + body, headers=[(b"content-type", b"text/plain")])


class Stream(AsyncHttpConsumer):
    async def handle(self, body):
        await self.send_headers(headers={"content-type": "text/event-stream"})
        await self.send_body(b"data: 1\n\n", more_body=True)
        await self.send_body(b"data: 2\n\n")


app = ProtocolTypeRouter(
    {
        "websocket": URLRouter(
            [
                path("rec", Recorder.as_app()),
                path("refuse", Refuser.as_app()),
                path("deny", Denier.as_app()),
                path("close", Closer.as_app()),
                path("raise", Raiser.as_app()),
                path("never", Never.as_app()),
                path("json", Json.as_app()),
            ]
        ),
        "http": URLRouter([path("hello", Hello.as_app()), path("stream", Stream.as_app())]),
    }
)


@pytest.fixture(autouse=True)
def _clean(realtime_leak_check):
    Recorder.events = []


@pytest.mark.parametrize(("body", "decoded"), [
    (b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", b"abcde"),
    (b"3;name=value\r\nabc\r\nA \t;x\r\n0123456789\r\n0\r\n", b"abc0123456789"),
    (b"3\r\nabc\r\n0\r\nTrailer: t\r\n\r\n", b"abc"),  # a trailer after the last
    (b"3\r\nabc", b"abc"),  # no CRLF after the data, no last chunk
    (b"5\r\nab", b"ab"),  # cut short
    (b"", b""),
], ids=["plain", "extensions", "trailer", "no-final-crlf", "cut-short", "empty"])
def test_decode_chunked(body, decoded):
    assert decode_chunked(body) == decoded


@pytest.mark.parametrize("size", [b"-6", b"+3", b"1_0", b"1 0", b"", b"x", b"0x3"])
def test_decode_chunked_refuses_a_size_that_is_not_hex_digits(size):
    """A malformed size line fails the test that reads it (a sign once made the by-offset
    loop step back for ever)."""
    with pytest.raises(ValueError, match="bad chunk size line"):
        decode_chunked(size + b"\r\nabc\r\n0\r\n\r\n")


@pytest_twisted.ensureDeferred
async def test_accept_echo_and_disconnect_reaches_consumer():
    comm = WebsocketCommunicator(app, "/rec")
    assert await comm.connect() == (True, None)
    assert (b"x-served-by", b"t") in comm.response_headers
    await comm.send_to(text_data="hi")
    assert await comm.receive_from() == "hi"
    await comm.send_to(bytes_data=b"\x00")
    assert await comm.receive_from() == b"\x00"
    assert await comm.receive_nothing()
    await comm.disconnect(code=4321)
    assert Recorder.events == [("disconnect", 4321)]


@pytest_twisted.ensureDeferred
async def test_a_broadcast_reaches_the_other_communicators_when_send_to_returns():
    """In memory, held broadcasts leave at the end of the read (not of the reactor turn, as
    on sockets): no reactor turn is needed to see them, as for every other answer."""
    from realtime.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    comms = [WebsocketCommunicator(bench, "/room/r") for _ in range(3)]
    for comm in comms:
        comm.site.layer = layer
        assert (await comm.connect())[0]
    assert len(layer.local_members("r")) == 3
    comms[0].send_to(text_data="one")
    comms[1].send_to(text_data="two")
    assert [list(comm._messages) for comm in comms] == [["one", "two"]] * 3
    for comm in comms:
        await comm.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_test_that_answers_a_frame_as_it_arrives_keeps_every_members_order():
    """A callback on ``receive_from`` that sends at once makes the server parse that read
    inside the flush of the one before: its broadcast goes behind, to everyone, in order."""
    from realtime.layers import InMemoryChannelLayer
    from tests.e2e.test_held_broadcasts import ROOMS

    layer = InMemoryChannelLayer()
    comms = {}
    for name, rooms in (("p", "p"), ("m", "a+b"), ("n", "a+b"), ("o", "a")):
        comm = comms[name] = WebsocketCommunicator(ROOMS, f"/rooms/{rooms}")
        comm.site.layer = layer
        assert (await comm.connect())[0]
    first: list[str] = []

    def answer(message: str) -> None:
        first.append(message)
        comms["n"].send_to(text_data="b reply")

    comms["m"].receive_from().addCallback(answer)
    comms["p"].send_to(text_data="a+b one")
    assert first == ["a: one"]
    assert list(comms["m"]._messages) == ["b: one", "b: reply"]
    assert list(comms["n"]._messages) == ["a: one", "b: one", "b: reply"]
    assert list(comms["o"]._messages) == ["a: one"]
    for comm in comms.values():
        await comm.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_delivery_that_raises_strands_no_other_connections_bytes():
    """The communicators share one wire: a client side that raises inside a delivery (a
    patched protocol, a test's bug) surfaces at the call that was delivering, and every
    other queued delivery still happens, not at some later test's first write."""
    from realtime.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    a, b = (WebsocketCommunicator(bench, "/room/w") for _ in range(2))
    for comm in (a, b):
        comm.site.layer = layer
        assert (await comm.connect())[0]
    received = a._client.dataReceived

    def broken(data: bytes) -> None:
        a._client.dataReceived = received
        b.send_to(text_data="queued behind")  # queued: a delivery is running
        raise RuntimeError("client side bug")

    a._client.dataReceived = broken
    with pytest.raises(RuntimeError, match="client side bug"):
        b.send_to(text_data="first")
    assert list(b._messages) == ["first", "queued behind"]
    assert list(a._messages) == ["queued behind"]  # "first" went to the broken side
    from realtime.testing import _WIRE

    assert not _WIRE.queue and not _WIRE.flushing
    for comm in (a, b):
        await comm.disconnect()


@pytest_twisted.ensureDeferred
async def test_subprotocol_choice():
    comm = WebsocketCommunicator(app, "/rec", subprotocols=["v1", "v2"])
    assert await comm.connect() == (True, "v2")
    await comm.disconnect()


@pytest.mark.parametrize(
    ("route", "status"),
    [("/refuse", 429), ("/deny", 403), ("/close", 403), ("/raise", 500), ("/nowhere", 404)],
)
@pytest_twisted.ensureDeferred
async def test_refusals_report_the_status(route, status):
    comm = WebsocketCommunicator(app, route)
    assert await comm.connect() == (False, status)
    names = [name for name, _ in comm.response_headers]
    if status == 429:
        assert b"retry-after" in names


@pytest_twisted.ensureDeferred
async def test_close_code_and_reason():
    comm = WebsocketCommunicator(app, "/rec")
    await comm.connect()
    await comm.send_to(text_data="close")
    with pytest.raises(AssertionError):
        await comm.receive_from()
    assert comm.close_code == 4123
    assert comm.close_reason == "bye"
    await comm.disconnect()
    assert Recorder.events == [("disconnect", 4123)]


@pytest_twisted.ensureDeferred
async def test_consumer_that_raises_after_accept_closes_1011():
    comm = WebsocketCommunicator(app, "/rec")
    await comm.connect()
    await comm.send_to(text_data="boom")
    await comm.disconnect()
    assert comm.close_code == 1011
    assert "secret" not in (comm.close_reason or "")


@pytest_twisted.ensureDeferred
async def test_json_consumer():
    comm = WebsocketCommunicator(app, "/json")
    await comm.connect()
    await comm.send_json_to({"a": [1, 2]})
    assert await comm.receive_json_from() == {"echo": {"a": [1, 2]}}
    await comm.send_to(text_data="{not json")
    await comm.disconnect()
    assert comm.close_code == 1007

    comm = WebsocketCommunicator(app, "/json")
    await comm.connect()
    await comm.send_to(bytes_data=b"{}")
    await comm.disconnect()
    assert comm.close_code == 1003


@pytest_twisted.ensureDeferred
async def test_never_accepting_consumer_hits_the_connect_deadline_on_the_clock():
    clock = Clock()
    comm = WebsocketCommunicator(app, "/never", clock=clock)
    pending = comm.connect(timeout=5)
    clock.advance(4.9)
    assert not pending.called
    clock.advance(0.2)
    assert await pending == (False, 503)


@pytest_twisted.ensureDeferred
async def test_ping_timeout_on_the_clock():
    clock = Clock()
    comm = WebsocketCommunicator(
        bench, "/echo", clock=clock, config=ServerConfig(ping_interval=20, ping_timeout=30)
    )
    assert (await comm.connect())[0]
    clock.advance(20)
    assert comm.pings_received == 1
    assert comm.close_code is None  # answered: still open
    comm.answer_pings = False
    clock.advance(20)
    assert comm.pings_received == 2
    clock.advance(29)
    assert comm.close_code is None
    clock.advance(1)
    assert comm.close_code == 1006
    await comm.disconnect()


@pytest_twisted.ensureDeferred
async def test_lifetime_on_the_clock():
    clock = Clock()
    comm = WebsocketCommunicator(
        bench, "/echo", clock=clock, config=ServerConfig(websocket_timeout=60)
    )
    await comm.connect()
    clock.advance(59)
    assert comm.close_code is None
    clock.advance(1)
    assert comm.close_code == 1000
    await comm.disconnect()


@pytest_twisted.ensureDeferred
async def test_http_communicator():
    response = await HttpCommunicator(app, "POST", "/hello", body=b"abc").get_response()
    assert response["status"] == 201
    assert response["body"] == b"got abc"
    assert (b"content-type", b"text/plain") in response["headers"]

    response = await HttpCommunicator(app, "GET", "/stream").get_response()
    assert response["status"] == 200
    assert response["body"] == b"data: 1\n\ndata: 2\n\n"

    response = await HttpCommunicator(app, "GET", "/rec").get_response()
    assert response["status"] == 426


class Method(AsyncHttpConsumer):
    async def handle(self, body):
        await self.send_response(200, self.scope["method"].encode())


@pytest_twisted.ensureDeferred
async def test_http_communicator_upper_cases_the_method_as_channels_does():
    """Channels' HttpCommunicator makes ``method.upper()`` the scope's method: a ported test
    that says "post" still POSTs (the server passes a method as sent, RFC 9110 9.1)."""
    methods = ProtocolTypeRouter({"http": URLRouter([path("m", Method.as_app())])})
    response = await HttpCommunicator(methods, "post", "/m").get_response()
    assert (response["status"], response["body"]) == (200, b"POST")
    # asgiref's ApplicationCommunicator gives the app the scope it was given
    comm = ApplicationCommunicator(methods, {"type": "http", "method": "post", "path": "/m"})
    await comm.send_input({"type": "http.request"})
    assert (await comm.receive_output())["status"] == 200
    assert (await comm.receive_output())["body"] == b"post"
    await comm.wait()


@pytest_twisted.ensureDeferred
async def test_realtime_server_fixture_serves_real_clients(realtime_server):
    from tests.clients import in_thread

    server = await realtime_server(bench)
    assert server.ws_url("/echo").startswith("ws://127.0.0.1:")

    def client():
        from websockets.sync.client import connect

        with connect(server.ws_url("/echo")) as ws:
            ws.send("x")
            return ws.recv()

    assert await in_thread(client) == "x"


LEAKY = REPO / "tests" / "leaky"
README_EXAMPLE_START = "<!-- testing-example -->"


def _leaky_pytest() -> early.Run:
    return early.Run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                      "-o", "python_files=leaky_*.py", str(LEAKY / "leaky_pytest.py")],
                     timeout=120, cwd=REPO)


def _leaky_trial() -> early.Run:
    return early.Run([sys.executable, "-m", "twisted.trial", "tests.leaky.leaky_trial"],
                     timeout=120, cwd=REPO)


_readme_projects: list[Path] = []


def _readme_project() -> Path:
    """A new project holding the README's "Testing your consumers" example as
    ``test_echo.py`` (one for the session: removed when the test is done)."""
    if not _readme_projects:
        readme = (REPO / "README.md").read_text()
        block = readme.split(README_EXAMPLE_START, 1)[1].split("```python", 1)[1]
        project = Path(tempfile.mkdtemp(prefix="realtime-readme-example-"))
        (project / "test_echo.py").write_text(block.split("```", 1)[0])
        _readme_projects.append(project)
        atexit.register(shutil.rmtree, project, True)  # (a session cut short)
    return _readme_projects[0]


def _readme_pytest() -> early.Run:
    return early.Run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                      "test_echo.py"], timeout=120, cwd=_readme_project())


def _readme_trial() -> early.Run:
    project = _readme_project()
    return early.Run([sys.executable, "-m", "twisted.trial", "test_echo"], timeout=120,
                     cwd=project, env=dict(os.environ, PYTHONPATH=str(project)))


def early_run_of(item: Any) -> list[tuple[str, Any]] | None:
    """The pytest and trial runs of the two tests below, seconds of waiting (the leak
    check's grace for each leak), started by the session ahead of them (tests/early.py)."""
    if item.name == "test_leaky_tests_fail_under_pytest_and_trial":
        return [("leaky-pytest", _leaky_pytest), ("leaky-trial", _leaky_trial)]
    if item.name == "test_readme_example_passes_under_pytest_and_trial":
        return [("readme-pytest", _readme_pytest), ("readme-trial", _readme_trial)]
    return None


def test_leaky_tests_fail_under_pytest_and_trial():
    """A test that leaks a port, a connection or a delayed call is failed by the fixture
    (pytest) and by trial (the mixin), and a clean one passes."""
    result = early.take("leaky-pytest", _leaky_pytest).result()
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "left open" in out and "left pending" in out, out
    assert "3 errors" in out, out
    for name in ("test_leaks_a_port", "test_leaks_a_delayed_call", "test_leaks_a_connection"):
        assert f"ERROR at teardown of {name}" in out, out
    assert "ERROR at teardown of test_clean" not in out, out

    result = early.take("leaky-trial", _leaky_trial).result()
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "DirtyReactorAggregateError" in out, out
    assert "errors=2" in out.splitlines()[-1], out
    assert "leaky_trial.Leaky.test_leaks_a_port" in out, out
    assert "leaky_trial.Leaky.test_leaks_a_delayed_call" in out, out


def test_readme_example_passes_under_pytest_and_trial():
    """The README's "Testing your consumers" example, copied into a new project, passes
    unchanged under pytest and under trial."""
    try:
        result = early.take("readme-pytest", _readme_pytest).result()
        assert result.returncode == 0, result.stdout + result.stderr
        assert " passed" in result.stdout
        result = early.take("readme-trial", _readme_trial).result()
        assert result.returncode == 0, result.stdout + result.stderr
        assert "PASSED" in result.stdout.splitlines()[-1]
        json.dumps((_readme_project() / "test_echo.py").read_text())  # plain text
    finally:
        while _readme_projects:
            shutil.rmtree(_readme_projects.pop(), ignore_errors=True)


class WhoAmI(AsyncWebsocketConsumer):
    async def connect(self):
        await self.accept()
        await self.send(text_data=f"{self.scope.get('user')} on {self.scope['path']}")


class WhoAmIHttp(AsyncHttpConsumer):
    async def handle(self, body):
        await self.send_response(200, str(self.scope.get("user")).encode())


@pytest_twisted.ensureDeferred
async def test_scope_keys_set_on_the_communicator_reach_the_consumer():
    """Channels' ``comm.scope["user"] = user`` ports: the key is laid over the scope the
    server builds (the path, headers and the rest still come from the request)."""
    app = ProtocolTypeRouter({
        "websocket": URLRouter([path("me/", WhoAmI.as_app())]),
        "http": URLRouter([path("me/", WhoAmIHttp.as_app())]),
    })
    comm = WebsocketCommunicator(app, "/me/")
    comm.scope["user"] = "ada"
    assert await comm.connect() == (True, None)
    assert await comm.receive_from() == "ada on /me/"
    await comm.disconnect()
    plain = WebsocketCommunicator(app, "/me/")  # no override: the server's scope alone
    await plain.connect()
    assert await plain.receive_from() == "None on /me/"
    await plain.disconnect()
    http = HttpCommunicator(app, "GET", "/me/")
    http.scope["user"] = "grace"
    assert (await http.get_response())["body"] == b"grace"


@pytest_twisted.ensureDeferred
async def test_receive_nothing_takes_channels_interval_argument():
    comm = WebsocketCommunicator(bench, "/echo")
    await comm.connect()
    assert await comm.receive_nothing(timeout=0.05, interval=0.01) is True
    await comm.send_to(text_data="x")
    assert await comm.receive_nothing(timeout=0.05, interval=0.01) is False
    await comm.disconnect()


class HangsOnLeaving(AsyncWebsocketConsumer):
    events: list = []

    async def disconnect(self, code):
        from twisted.internet.defer import CancelledError

        try:
            await Deferred()
        except CancelledError:
            type(self).events.append("cancelled")
            raise


@pytest_twisted.ensureDeferred
async def test_disconnect_cancels_handlers_still_running_after_its_timeout():
    """As asgiref cancels an application that outlives the wait: no kill timer is left on
    the reactor for the rest of the test run."""
    HangsOnLeaving.events = []
    comm = WebsocketCommunicator(URLRouter([path("h/", HangsOnLeaving.as_app())]), "/h/")
    await comm.connect()
    conn = comm._connection()
    from tests.clients import captured_log

    with captured_log() as events:
        await comm.disconnect(timeout=0.1)
    assert HangsOnLeaving.events == ["cancelled"]
    assert conn._kill_call is None and not conn._busy
    (warning,) = [e for e in events if "still running" in e.get("log_format", "")]
    assert warning["timeout"] == 0.1  # the wait that ran out, not the server's option


class Buggy(AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        raise KeyError(text_data)


@pytest_twisted.ensureDeferred
async def test_receive_from_raises_the_consumers_own_exception():
    """As Channels' communicator re-raises the application's exception: a bug in a handler
    fails the test with that bug, not with a close code to decode."""
    comm = WebsocketCommunicator(URLRouter([path("b/", Buggy.as_app())]), "/b/")
    await comm.connect()
    await comm.send_to(text_data="missing-key")
    with pytest.raises(KeyError, match="missing-key"):
        await comm.receive_from()
    assert comm.close_code == 1011
    await comm.disconnect()
    quiet = WebsocketCommunicator(bench, "/echo")  # a plain server close stays an assertion
    await quiet.connect()
    await quiet.disconnect()
    with pytest.raises(AssertionError, match="server closed"):
        await quiet.receive_from()
