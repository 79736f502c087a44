"""The ASGI lifespan protocol (realtime.lifespan) in process: which apps get it, the state
their requests see, start-up failures, shut-down order and deadline, and the service
holding requests while start-up runs. Real servers and real clients; the processes
(``twistd``'s exit status 3, ``--workers``) are in tests/e2e/test_lifespan_process.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from realtime import AsyncWebsocketConsumer, ProtocolTypeRouter, URLRouter, path
from realtime.asgi import AsgiApp
from realtime.config import ServerConfig
from realtime.lifespan import STARTUP_FAILED, LifespanError, Lifespans, lifespan_apps
from realtime.middleware import BaseMiddleware
from realtime.service import ListenerService, RealtimeService
from realtime.site import RealtimeSite
from tests.clients import captured_log, http_get, in_thread, later, raw_connect, until

TIMEOUT = 10


class LifespanApp:
    """A raw ASGI app with a lifespan: records each phase in ``events`` (shared between
    apps, so order shows), puts ``name`` into the state, and answers what it is told to."""

    def __init__(self, name: str, events: list[str], *, fail: str | None = None,
                 gate: Deferred[None] | None = None, answer_shutdown: bool = True) -> None:
        self.name = name
        self.events = events
        self.fail = fail
        self.gate = gate
        self.answer_shutdown = answer_shutdown

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(scope, receive, send)
        elif scope["type"] == "http":
            state = scope.get("state")
            body = json.dumps(state).encode()
            if state is not None:
                state["mutated"] = True  # a copy: the next request must not see it
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
        else:
            message = await receive()
            assert message["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": json.dumps(scope.get("state"))})
            while (await receive())["type"] != "websocket.disconnect":
                pass

    async def lifespan(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "lifespan.startup"
        assert scope["asgi"]["version"] == "3.0"
        self.events.append(f"{self.name} startup")
        if self.gate is not None:
            await self.gate
        if self.fail is not None:
            await send({"type": "lifespan.startup.failed", "message": self.fail})
            return
        scope["state"]["app"] = self.name
        await send({"type": "lifespan.startup.complete"})
        assert (await receive())["type"] == "lifespan.shutdown"
        self.events.append(f"{self.name} shutdown")
        if self.answer_shutdown:
            await send({"type": "lifespan.shutdown.complete"})
            return
        try:
            await Deferred()  # never answers: the shut-down deadline must cancel it
        except CancelledError:
            self.events.append(f"{self.name} cancelled")
            raise


async def http_only(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """What Django's ``ASGIHandler`` does with a lifespan scope: raise."""
    if scope["type"] != "http":
        raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"plain"})


class StateConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.accept()
        await self.send(text_data=json.dumps(self.scope.get("state")))


def ws_first(url: str) -> Any:
    with connect(url, open_timeout=TIMEOUT, proxy=None) as ws:
        return json.loads(ws.recv(timeout=TIMEOUT))


def get_json(url: str) -> tuple[int, Any]:
    status, _, body = http_get(url)
    return status, json.loads(body) if status == 200 else body


# -- which apps --------------------------------------------------------------------------------
def test_every_raw_asgi_app_in_the_tree_once_in_the_order_written():
    events: list[str] = []
    a, b, c = (LifespanApp(name, events) for name in "abc")
    router = ProtocolTypeRouter({
        "http": URLRouter([path("a/", a), path("b/", b), path("again/", a)]),
        "websocket": BaseMiddleware(URLRouter([path("c/", c),
                                               path("consumer/", StateConsumer.as_asgi())])),
        "lifespan": a,
    })
    found = lifespan_apps(router)
    assert [app for app, _ in found] == [a, b, c]
    holders = dict((id(app), holders) for app, holders in found)
    # a: its two route wrappers, the "lifespan" entry's wrapper, and the router it serves.
    assert len(holders[id(a)]) == 4 and router in holders[id(a)]
    assert all(isinstance(h, AsgiApp) and h.app is a for h in holders[id(a)] if h is not router)
    assert lifespan_apps(StateConsumer.as_asgi()) == []
    assert lifespan_apps(AsgiApp(http_only))[0][0] is http_only


def test_off_finds_nothing_and_modes_are_checked():
    assert not Lifespans(AsgiApp(LifespanApp("a", [])), "off", reactor)
    with pytest.raises(ValueError, match="lifespan mode must be one of auto, on, off"):
        Lifespans(AsgiApp(http_only), "yes", reactor)
    with pytest.raises(ValueError, match="lifespan must be 'auto', 'on' or 'off'"):
        ServerConfig(lifespan="sometimes")


# -- state, start-up and shut-down through the testing toolkit's real server ------------------
@pytest_twisted.ensureDeferred
async def test_state_reaches_http_and_websocket_scopes_as_a_copy(live):
    events: list[str] = []
    app = LifespanApp("one", events)
    server = await live(URLRouter([path("http/", app), path("ws/", app)]))
    assert events == ["one startup"]  # before serve() returned
    first = await in_thread(get_json, server.http_url("/http/"))
    second = await in_thread(get_json, server.http_url("/http/"))
    assert first == second == (200, {"app": "one"})  # the first request's change stayed its own
    assert await in_thread(ws_first, server.ws_url("/ws/")) == {"app": "one"}
    await server.stop()
    assert events == ["one startup", "one shutdown"]


@pytest_twisted.ensureDeferred
async def test_a_lifespan_entry_fills_the_state_every_consumer_sees(live):
    """A Channels project's ``"lifespan"`` entry: its state reaches consumers' scopes."""
    app = LifespanApp("pool", [])
    server = await live(ProtocolTypeRouter({
        "websocket": URLRouter([path("ws/", StateConsumer.as_asgi())]),
        "lifespan": app,
    }))
    assert await in_thread(ws_first, server.ws_url("/ws/")) == {"app": "pool"}


@pytest_twisted.ensureDeferred
async def test_apps_start_in_order_and_shut_down_in_reverse(live):
    events: list[str] = []
    first, second = LifespanApp("first", events), LifespanApp("second", events)
    server = await live(URLRouter([path("1/", first), path("2/", second)]))
    assert (await in_thread(get_json, server.http_url("/2/")))[1] == {"app": "second"}
    await server.stop()
    assert events == ["first startup", "second startup", "second shutdown", "first shutdown"]


@pytest_twisted.ensureDeferred
async def test_auto_serves_an_app_that_does_not_speak_lifespan_and_on_refuses_it(live):
    with captured_log() as logged:
        server = await live(AsgiApp(http_only))
    lines = [e.get("log_format", "") for e in logged if e.get("log_namespace") ==
             "realtime.lifespan"]
    assert any("does not speak it" in line for line in lines), lines
    assert (await in_thread(http_get, server.http_url("/")))[::2] == (200, b"plain")
    with pytest.raises(LifespanError, match=r"tests\.test_lifespan\.http_only raised "
                                            r"ValueError: Django can only handle"):
        await live(AsgiApp(http_only), lifespan="on")


@pytest_twisted.ensureDeferred
async def test_returning_without_an_answer_is_no_lifespan_under_auto_only(live):
    async def quits(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await http_only(scope, receive, send)

    server = await live(AsgiApp(quits))
    assert (await in_thread(http_get, server.http_url("/")))[0] == 200
    with pytest.raises(LifespanError, match=r"quits: it returned without answering "
                                            r"lifespan\.startup"):
        await live(AsgiApp(quits), lifespan="on")


async def any_scope_is_http(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app that never looks at ``scope["type"]``: it waits for ``http.disconnect``, as
    a long poll does, so a lifespan start-up would wait for it forever."""
    await receive()
    if scope.get("path") != "/now":
        await receive()  # a long poll: waits for the client to leave
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"plain"})


@pytest_twisted.ensureDeferred
async def test_a_second_receive_before_answering_startup_is_no_lifespan(live):
    with captured_log() as logged:
        server = await live(AsgiApp(any_scope_is_http))
    assert [formatEvent(e) for e in logged if e.get("log_namespace") == "realtime.lifespan"
            ] == ["ASGI lifespan: tests.test_lifespan.any_scope_is_http does not speak it (it "
                  "called receive() again before answering lifespan.startup); serving without"]
    assert not any(e.get("log_failure") for e in logged)
    with pytest.raises(LifespanError, match="any_scope_is_http: it called receive"):
        await live(AsgiApp(any_scope_is_http), lifespan="on")
    assert (await in_thread(http_get, server.http_url("/now")))[::2] == (200, b"plain")


@pytest_twisted.ensureDeferred
async def test_an_app_that_waits_before_taking_startup_is_no_lifespan_under_auto():
    """Every lifespan app takes ``lifespan.startup`` first; one that waits for something
    else first serves whatever it is called for (a long poll): cancelled, not waited for."""
    cancelled: list[str] = []

    async def waits_first(scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await Deferred()
        except CancelledError:
            cancelled.append(scope["type"])
            raise

    with captured_log() as logged:
        await Lifespans(AsgiApp(waits_first), "auto", reactor).startup()
    assert cancelled == ["lifespan"]
    assert [formatEvent(e) for e in logged] == [
        "ASGI lifespan: tests.test_lifespan.test_an_app_that_waits_before_taking_startup_is_"
        "no_lifespan_under_auto.<locals>.waits_first does not speak it (it waited without "
        "taking lifespan.startup); serving without (--lifespan on if it does)"]
    assert logged[0]["log_level"].name == "warn"
    started = Lifespans(AsgiApp(waits_first), "on", Clock()).startup()
    assert not started.called and cancelled == ["lifespan"]  # "on" waits for it


@pytest_twisted.ensureDeferred
async def test_a_slow_startup_is_logged_and_waited_for():
    gate: Deferred[None] = Deferred()
    clock = Clock()
    lifespans = Lifespans(AsgiApp(LifespanApp("slow", [], gate=gate)), "auto", clock)
    with captured_log() as logged:
        started = lifespans.startup()
        clock.advance(10)
        assert not started.called
        gate.callback(None)
    await started
    assert [formatEvent(e) for e in logged] == [
        "ASGI lifespan: tests.test_lifespan.LifespanApp has not finished its startup after "
        "10.0 s; requests wait for it",
        "ASGI lifespan: tests.test_lifespan.LifespanApp started"]
    assert not clock.getDelayedCalls()
    await lifespans.shutdown()


@pytest_twisted.ensureDeferred
async def test_a_failed_startup_shuts_down_the_apps_already_started(live):
    events: list[str] = []
    ok, bad = LifespanApp("ok", events), LifespanApp("bad", events, fail="database unavailable")
    with pytest.raises(LifespanError) as raised:
        await live(URLRouter([path("ok/", ok), path("bad/", bad)]))
    assert str(raised.value) == "tests.test_lifespan.LifespanApp: database unavailable"
    assert events == ["ok startup", "bad startup", "ok shutdown"]


@pytest_twisted.ensureDeferred
async def test_an_app_that_runs_on_after_saying_startup_failed_is_cancelled():
    ends: list[str] = []

    async def fails_and_stays(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no"})
        try:
            await Deferred()
        except CancelledError:
            ends.append("cancelled")
            raise

    clock = Clock()
    with pytest.raises(LifespanError, match=r"fails_and_stays: no$"):
        await Lifespans(AsgiApp(fails_and_stays), "auto", clock).startup()
    assert ends == []
    clock.advance(0)  # out of its send first
    assert ends == ["cancelled"] and not clock.getDelayedCalls()


@pytest_twisted.ensureDeferred
async def test_off_sends_no_lifespan(live):
    events: list[str] = []
    server = await live(AsgiApp(LifespanApp("x", events)), lifespan="off")
    assert (await in_thread(get_json, server.http_url("/")))[1] is None  # no state key
    await server.stop()
    assert events == []


@pytest_twisted.ensureDeferred
async def test_messages_out_of_turn_raise_in_the_app():
    seen: list[str] = []

    async def confused(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        for message in ({"type": "lifespan.shutdown.complete"},
                        {"type": "http.response.start", "status": 200},
                        {"type": "lifespan.startup.done"}):
            try:
                await send(message)
            except (RuntimeError, ValueError) as exc:
                seen.append(str(exc))
        await send({"type": "lifespan.startup.complete"})
        try:
            await send({"type": "lifespan.startup.complete"})
        except RuntimeError as exc:
            seen.append(str(exc))
        await receive()

    lifespans = Lifespans(AsgiApp(confused), "on", reactor)
    await lifespans.startup()
    assert seen == [
        "ASGI 'lifespan.shutdown.complete' sent, but no lifespan.shutdown is awaited",
        "ASGI message type 'http.response.start' is not one a lifespan app can send",
        "ASGI message type 'lifespan.startup.done' is not one a lifespan app can send",
        "ASGI 'lifespan.startup.complete' sent, but no lifespan.startup is awaited",
    ]
    await lifespans.shutdown()


@pytest_twisted.ensureDeferred
async def test_a_shutdown_that_hangs_is_cancelled_at_the_deadline():
    events: list[str] = []
    clock = Clock()
    lifespans = Lifespans(AsgiApp(LifespanApp("slow", events, answer_shutdown=False)), "auto",
                          clock, timeout=5.0)
    await lifespans.startup()
    with captured_log() as logged:
        done = lifespans.shutdown()
        clock.advance(4.9)
        assert not done.called and events == ["slow startup", "slow shutdown"]
        clock.advance(0.2)
        assert done.called
    assert events == ["slow startup", "slow shutdown", "slow cancelled"]
    assert [formatEvent(e) for e in logged] == [
        "ASGI lifespan: tests.test_lifespan.LifespanApp did not finish its shutdown in 5.0 s: "
        "cancelled"]
    assert not clock.getDelayedCalls()


# -- the service: requests held while start-up runs ---------------------------------------------
def _service(application: Any, statuses: list[int], **config: Any
             ) -> tuple[RealtimeService, RealtimeSite]:
    site = RealtimeSite(application, ServerConfig(**config), reactor)
    endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
    service = RealtimeService([site], reactor, 5.0,
                              lifespan=Lifespans(application, "auto", reactor),
                              on_failure=statuses.append)
    ListenerService(endpoint, "tcp:0", site).setServiceParent(service)
    service.privilegedStartService()
    service.startService()
    return service, site


@pytest_twisted.ensureDeferred
async def test_the_service_holds_requests_until_startup_completes():
    events: list[str] = []
    gate: Deferred[None] = Deferred()
    app = LifespanApp("gated", events, gate=gate)
    statuses: list[int] = []
    service, site = _service(URLRouter([path("http/", app), path("ws/", app)]), statuses)
    try:
        port = (await next(iter(service)).when_listening()).getHost().port
        base = f"http://127.0.0.1:{port}"
        assert await until(lambda: events == ["gated startup"])
        ready = await in_thread(http_get, base + "/readyz")
        assert ready[::2] == (503, b"starting\n")
        assert (await in_thread(http_get, base + "/healthz"))[0] == 200
        held_http = in_thread(get_json, base + "/http/")
        held_ws = in_thread(ws_first, f"ws://127.0.0.1:{port}/ws/")
        assert await until(lambda: isinstance(site.gate, list) and len(site.gate) == 2)
        assert not held_http.called and not held_ws.called
        gate.callback(None)
        assert await held_http == (200, {"app": "gated"})
        assert await held_ws == {"app": "gated"}
        assert (await in_thread(http_get, base + "/readyz"))[0] == 200
    finally:
        await service.stopService()
    assert events == ["gated startup", "gated shutdown"] and statuses == []


@pytest_twisted.ensureDeferred
async def test_a_failed_startup_answers_held_requests_503_and_stops_with_status_3():
    gate: Deferred[None] = Deferred()
    app = LifespanApp("gated", [], gate=gate, fail="no database")
    statuses: list[int] = []
    service, site = _service(AsgiApp(app), statuses)
    try:
        port = (await next(iter(service)).when_listening()).getHost().port
        held = in_thread(http_get, f"http://127.0.0.1:{port}/x")
        assert await until(lambda: isinstance(site.gate, list) and len(site.gate) == 1)
        with captured_log() as logged:
            gate.callback(None)
        status, _, body = await held
        assert (status, body) == (503, b"Service Unavailable\n")
        assert statuses == [STARTUP_FAILED] and service.exit_status == STARTUP_FAILED
        errors = [e for e in logged if e.get("log_level") is not None
                  and e["log_level"].name == "error"]
        assert [str(e["error"]) for e in errors] == [
            "tests.test_lifespan.LifespanApp: no database"]
        # Until the process is gone, later requests are refused too, never served by an
        # app whose start-up failed.
        later_one = await in_thread(http_get, f"http://127.0.0.1:{port}/x")
        assert later_one[::2] == (503, b"Service Unavailable\n")
        ready = await in_thread(http_get, f"http://127.0.0.1:{port}/readyz")
        assert ready[::2] == (503, b"application startup failed\n")
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_stopping_during_startup_refuses_the_waiting_and_shuts_the_app_down():
    """SIGTERM while the start-up runs: requests waiting get 503 at once, the start-up is
    waited for, then the app is shut down; not a start-up failure (no status 3)."""
    events: list[str] = []
    gate: Deferred[None] = Deferred()
    statuses: list[int] = []
    service, site = _service(AsgiApp(LifespanApp("slow", events, gate=gate)), statuses)
    port = (await next(iter(service)).when_listening()).getHost().port
    held = in_thread(http_get, f"http://127.0.0.1:{port}/x")
    assert await until(lambda: isinstance(site.gate, list) and len(site.gate) == 1)
    stopped = service.stopService()
    done: list[Any] = []
    stopped.addBoth(done.append)
    status, _, body = await held
    assert (status, body) == (503, b"Service Unavailable\n")
    assert done == [] and events == ["slow startup"]
    gate.callback(None)
    assert await until(lambda: done)
    assert events == ["slow startup", "slow shutdown"] and statuses == []


@pytest_twisted.ensureDeferred
async def test_a_startup_still_running_at_the_shutdown_deadline_is_abandoned():
    events: list[str] = []
    clock = Clock()
    lifespans = Lifespans(AsgiApp(LifespanApp("stuck", events, gate=Deferred())), "auto",
                          clock, timeout=3.0)
    starting = lifespans.startup()
    failures: list[Any] = []
    starting.addErrback(failures.append)
    with captured_log() as logged:
        stopping = lifespans.shutdown()
        clock.advance(2.9)
        assert not stopping.called
        clock.advance(0.2)
    assert stopping.called
    assert [str(f.value) for f in failures] == [
        "tests.test_lifespan.LifespanApp: the server stopped during its startup"]
    assert [formatEvent(e) for e in logged] == [
        "ASGI lifespan: tests.test_lifespan.LifespanApp still starting when the server "
        "stopped: cancelled"]
    assert events == ["stuck startup"] and not clock.getDelayedCalls()


@pytest_twisted.ensureDeferred
async def test_a_waiting_upgrade_gets_503_at_its_connect_deadline():
    gate: Deferred[None] = Deferred()
    app = LifespanApp("slow", [], gate=gate)
    service, site = _service(AsgiApp(app), [], connect_timeout=0.3)
    try:
        port = (await next(iter(service)).when_listening()).getHost().port

        def upgrade() -> int:
            try:
                with connect(f"ws://127.0.0.1:{port}/", open_timeout=TIMEOUT, proxy=None):
                    return 101
            except InvalidStatus as exc:
                return exc.response.status_code

        assert await in_thread(upgrade) == 503
        assert site.gate == []
    finally:
        gate.callback(None)
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_the_wait_for_startup_is_bounded_in_count_and_by_http_timeout(monkeypatch):
    """A restart under load: past ``GATE_LIMIT`` held requests the next get 503 with
    ``Retry-After`` (one log line), a client gone makes room, and ``-t`` counts from
    arrival, so a held request gets its 503 while the start-up still runs."""
    import realtime.site as site_module

    monkeypatch.setattr(site_module, "GATE_LIMIT", 2)
    gate: Deferred[None] = Deferred()
    app = LifespanApp("slow", [], gate=gate)
    service, site = _service(AsgiApp(app), [], http_response_timeout=1.5)
    request = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"
    try:
        port = (await next(iter(service)).when_listening()).getHost().port
        first, gone = await raw_connect(port), await raw_connect(port)
        first.write(request)
        gone.write(request)
        assert await until(lambda: isinstance(site.gate, list) and len(site.gate) == 2)
        with captured_log() as logged:
            over = await in_thread(http_get, f"http://127.0.0.1:{port}/x")
            assert over[0] == 503 and over[1]["retry-after"] == ["1"]
            again = await in_thread(http_get, f"http://127.0.0.1:{port}/x")
            assert again[0] == 503
        assert [formatEvent(e) for e in logged] == [
            "2 requests already wait for the application's start-up: 503 to the next ones "
            "until it is done"]
        gone.abort()
        await until(lambda: gone.proto.done.called)
        third = await raw_connect(port)
        third.write(request)  # room again: the gone one is forgotten
        assert await until(lambda: isinstance(site.gate, list) and third_held(site))
        answered = await first.wait_for(lambda d: b"\r\n\r\n" in d, timeout=5)
        assert answered.startswith(b"HTTP/1.1 503 ")  # -t 1.5 s from arrival
        assert not gate.called
        gate.callback(None)
        answer = await third.wait_for(lambda d: b"\r\n\r\n" in d, timeout=5)
        assert answer.startswith(b"HTTP/1.1 200 ")  # released within its -t
        fresh = await in_thread(http_get, f"http://127.0.0.1:{port}/x")
        assert fresh[0] == 200
    finally:
        if not gate.called:
            gate.callback(None)
        await service.stopService()


def third_held(site: Any) -> bool:
    return sum(not (r.finished or r._disconnected) for r in site.gate) == 2


@pytest_twisted.ensureDeferred
async def test_a_router_keeps_its_lifespan_state_for_apps_that_do_not_speak_it(live):
    """A Channels project: a ``"lifespan"`` entry, and Django (no lifespan) on a route:
    both Django's scopes and consumers' get the entry's state."""
    async def sees_state(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError("only HTTP")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps(scope["state"]).encode()})

    server = await live(ProtocolTypeRouter({
        "http": URLRouter([path("django/", sees_state)]),
        "websocket": URLRouter([path("ws/", StateConsumer.as_asgi())]),
        "lifespan": LifespanApp("pool", []),
    }))
    assert await in_thread(get_json, server.http_url("/django/")) == (200, {"app": "pool"})
    assert await in_thread(ws_first, server.ws_url("/ws/")) == {"app": "pool"}


@pytest_twisted.ensureDeferred
async def test_one_application_served_again_keeps_nothing_of_the_first_server(live):
    application = URLRouter([path("http/", LifespanApp("one", []))])
    first = await live(application)
    assert (await in_thread(get_json, first.http_url("/http/")))[1] == {"app": "one"}
    await first.stop()
    second = await live(application, lifespan="off")
    assert (await in_thread(get_json, second.http_url("/http/")))[1] is None


@pytest_twisted.ensureDeferred
async def test_a_failed_or_raising_shutdown_is_logged_and_the_rest_shut_down():
    events: list[str] = []

    def failing(how: str) -> Any:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            events.append(how)
            if how == "fails":
                await send({"type": "lifespan.shutdown.failed", "message": "pool stuck"})
            else:
                raise RuntimeError("broke on the way out")
        app.__qualname__ = how
        return app

    last = LifespanApp("last", events)
    lifespans = Lifespans(URLRouter([path("a/", last), path("b/", failing("fails")),
                                     path("c/", failing("raises"))]), "on", reactor)
    await lifespans.startup()
    with captured_log() as logged:
        await lifespans.shutdown()
    assert events == ["last startup", "raises", "fails", "last shutdown"]
    lines = [formatEvent(e) for e in logged]
    assert "ASGI lifespan: tests.test_lifespan.raises raised" in lines
    assert "ASGI lifespan: tests.test_lifespan.fails: shutdown failed: pool stuck" in lines


@pytest_twisted.ensureDeferred
async def test_the_lifespan_manager_for_the_in_memory_communicators():
    from realtime.testing import HttpCommunicator, LifespanManager

    events: list[str] = []
    application = AsgiApp(LifespanApp("mem", events))
    async with LifespanManager(application):
        communicator = HttpCommunicator(application, "GET", "/")
        response = await communicator.get_response()
        assert json.loads(response["body"]) == {"app": "mem"}
    assert events == ["mem startup", "mem shutdown"]
    with pytest.raises(LifespanError, match="LifespanApp: no"):
        async with LifespanManager(AsgiApp(LifespanApp("bad", [], fail="no"))):
            pass


def held_shutdown(events: list[str], release: Deferred[None]) -> Any:
    """A raw ASGI app whose lifespan shut-down waits for ``release``."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.complete"})
        assert (await receive())["type"] == "lifespan.shutdown"
        events.append("shutdown")
        await release
        events.append("shut down")
        await send({"type": "lifespan.shutdown.complete"})

    return AsgiApp(app)


@pytest_twisted.ensureDeferred
async def test_a_second_stop_waits_for_the_first_and_the_app_shuts_down_once():
    """A fixture's teardown stopping a server the test is still stopping: both wait for
    the one shut-down, which runs once."""
    events: list[str] = []
    release: Deferred[None] = Deferred()
    from realtime.testing import serve

    server = await serve(held_shutdown(events, release))
    first, second = server.stop(), server.stop()
    assert await until(lambda: events == ["shutdown"])
    await later(0.2)  # the listener has closed: each stop is at its lifespan step
    assert not first.called and not second.called
    release.callback(None)
    await first
    await second
    assert events == ["shutdown", "shut down"]
    await server.stop()  # after: nothing left to do
    assert events == ["shutdown", "shut down"]


class _Accepting(AsyncWebsocketConsumer):
    pass


@pytest_twisted.ensureDeferred
async def test_a_failed_stop_fails_for_every_caller_and_a_second_one_finishes_it():
    from realtime.testing import serve
    from tests.clients import handshake

    server = await serve(URLRouter([path("ws", _Accepting.as_asgi())]))
    conn = await raw_connect(server.port)
    conn.write(handshake("/ws"))
    assert await until(lambda: len(server.site.connections) == 1)
    real_abort = server.site.abort_all

    def broken() -> None:
        raise RuntimeError("abort failed")

    server.site.abort_all = broken
    outcomes: list[Any] = []
    for stopping in (server.stop(), server.stop()):
        stopping.addBoth(outcomes.append)
    assert await until(lambda: len(outcomes) == 2)
    assert [type(o.value) for o in outcomes] == [RuntimeError, RuntimeError]
    server.site.abort_all = real_abort
    await server.stop()  # does what the failed one left: the socket is dropped
    assert not server.site.connections
    assert (await conn.closed(timeout=5)) is not None and conn.proto.done.called


@pytest_twisted.ensureDeferred
async def test_cancelling_one_callers_stop_leaves_it_running_for_the_others():
    events: list[str] = []
    release: Deferred[None] = Deferred()
    from realtime.testing import serve

    server = await serve(held_shutdown(events, release))
    first, second = server.stop(), server.stop()
    assert await until(lambda: events == ["shutdown"])
    first.cancel()
    with pytest.raises(CancelledError):
        await first
    await later(0.1)
    assert not second.called
    release.callback(None)
    await second
    assert events == ["shutdown", "shut down"]
