"""Asyncio code in applications: under the default reactor it fails with a line that says
what to do; under ``--reactor=asyncio`` (a subprocess runs those files with it) it works,
and the testing API keeps its synchronous delivery."""

from __future__ import annotations

import asyncio
import contextvars
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest_twisted
from websockets.sync.client import connect

from realtime import AsyncWebsocketConsumer, URLRouter, path
from realtime.testing import WebsocketCommunicator
from tests import early
from tests.clients import captured_log, in_thread

REPO = Path(__file__).resolve().parents[1]

#: Run with --reactor=asyncio: every test in them must pass there (none may skip).
UNDER_ASYNCIO = [
    "tests/asyncio_reactor/test_asgi_apps.py",
    "tests/asyncio_reactor/test_asyncio_consumers.py",
    "tests/asyncio_reactor/test_asyncio_socketio.py",
    "tests/e2e/test_smoke_bridge.py",
    "tests/test_application_communicator.py",
    "tests/test_testing.py",
]


def asyncio_run() -> early.Run:
    """The ``--reactor=asyncio`` pytest subprocess over ``UNDER_ASYNCIO`` (about 15 s),
    started by the session ahead of the test (tests/early.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
    return early.Run([sys.executable, "-m", "pytest", *UNDER_ASYNCIO, "--reactor=asyncio",
                      "-q", "-p", "no:cacheprovider", "-p", "no:randomly"],
                     timeout=300, cwd=REPO, env=env)


def early_run_of(item: Any) -> tuple[str, Any] | None:
    """The test below takes up the asyncio run (tests/early.py, tests/conftest.py)."""
    if item.name == "test_the_asyncio_reactor_runs_asyncio_code_and_the_communicator_tests":
        return "asyncio", asyncio_run
    return None


def test_the_asyncio_reactor_runs_asyncio_code_and_the_communicator_tests():
    done = early.take("asyncio", asyncio_run).result()
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    tests = sum(len(re.findall(r"^(?:async )?def test_", (REPO / name).read_text(), re.M))
                for name in UNDER_ASYNCIO)
    passed = re.search(r"(\d+) passed", done.stdout)
    # Parametrised tests count more than once: at least one run per test function.
    assert passed and int(passed.group(1)) >= tests, output[-6000:]
    assert "failed" not in done.stdout and "skipped" not in done.stdout, output[-6000:]


class Sleeper(AsyncWebsocketConsumer):
    """A Channels consumer's ``await asyncio.sleep()``, here under the default reactor."""

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None
                      ) -> None:
        if text_data == "future":
            loop = asyncio.new_event_loop()
            try:
                future = loop.create_future()
            finally:
                loop.close()
            await future
        await asyncio.sleep(0.01)
        await self.send(text_data="slept")


def _hints(events: list[dict[str, Any]]) -> list[str]:
    return [str(e["log_failure"].value) for e in events if "log_failure" in e
            and "needs the asyncio reactor" in str(e["log_failure"].value)]


@pytest_twisted.ensureDeferred
async def test_asyncio_code_under_the_default_reactor_closes_1011_with_a_hint(live):
    server = await live(URLRouter([path("s", Sleeper.as_asgi())]))

    def client() -> int | None:
        with connect(server.ws_url("/s")) as ws:
            ws.send("sleep")
            try:
                ws.recv(timeout=5)
            except Exception:
                pass
            return ws.close_code

    with captured_log() as events:
        assert await in_thread(client) == 1011
    hints = _hints(events)
    assert len(hints) == 1, events
    assert hints[0].startswith("no running event loop: ")
    assert "twistd --reactor=asyncio" in hints[0]


@pytest_twisted.ensureDeferred
async def test_an_awaited_asyncio_future_gets_the_hint_in_a_communicator():
    comm = WebsocketCommunicator(URLRouter([path("s", Sleeper.as_asgi())]), "/s")
    assert (await comm.connect())[0]
    with captured_log() as events:
        await comm.send_to(text_data="future")
        try:
            await comm.receive_from()
        except RuntimeError as exc:  # the handler's exception, as Channels' raises it
            assert "needs the asyncio reactor" in str(exc)
            assert str(exc).startswith("await wasn't used with future: ")
        else:
            raise AssertionError("the handler did not fail")
    assert comm.close_code == 1011
    assert len(_hints(events)) == 1


# -- the default reactor's fast path for handlers that wait for nothing ----------------------

#: Set by the handlers below: each handler's steps share one copy of the context.
REQUEST: contextvars.ContextVar[str | None] = contextvars.ContextVar("request", default=None)


class Steps(AsyncWebsocketConsumer):
    """Handlers that finish at once, wait on a Deferred, or yield bare (asyncio.sleep(0),
    which Twisted's driver sends straight back); each records what it saw."""

    seen: list[Any] = []

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None
                      ) -> None:
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        var = REQUEST
        type(self).seen.append((text_data, var.get()))
        var.set(text_data)  # in the handler's own context: never seen by the next one
        if text_data == "wait":
            await deferLater(reactor, 0.01, lambda: None)
            type(self).seen.append(("after wait", var.get()))
        elif text_data == "bare":
            await asyncio.sleep(0)
            type(self).seen.append(("after bare", var.get()))
        await self.send(text_data=f"done {text_data}")


@pytest_twisted.ensureDeferred
async def test_handlers_that_wait_for_nothing_finish_inline_in_their_own_context():
    Steps.seen = []
    comm = WebsocketCommunicator(URLRouter([path("s", Steps.as_asgi())]), "/s")
    assert (await comm.connect())[0]
    for text in ("now", "bare", "wait", "again"):
        sent = comm.send_to(text_data=text)
        received = comm.receive_from(timeout=None if text in ("now", "bare") else 1)
        if text in ("now", "bare"):  # finished before send_to returned: no turn needed
            # ("again" may find "wait"'s handler still finishing: the test resumed inside
            # its send.)
            assert (text, sent.called, received.called) == (text, True, True)
        assert await received == f"done {text}"
    assert Steps.seen == [("now", None), ("bare", None), ("after bare", "bare"),
                          ("wait", None), ("after wait", "wait"), ("again", None)]
    assert REQUEST.get() is None  # nothing leaked into the test's (the reactor's)
    await comm.disconnect()


class TwistedRules(AsyncWebsocketConsumer):
    """What Twisted's driver guarantees a coroutine, kept by the fast path (found in
    review): one context for all its steps (a ContextVar token set before a wait resets
    after it), a returned awaitable awaited in that context, and a custom awaitable that
    yields a Deferred or a coroutine gets its result sent back."""

    async def reply(self) -> None:
        await self.send(text_data=f"returned sees {REQUEST.get()}")

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None
                      ) -> Any:
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        var = REQUEST
        if text_data == "token":
            token = var.set("x")
            try:
                await deferLater(reactor, 0.01, lambda: None)
            finally:
                var.reset(token)
            await self.send(text_data=f"reset to {var.get()}")
        elif text_data == "return":
            var.set("x")
            return self.reply()
        elif text_data == "yields":
            got = await _Yields(deferLater(reactor, 0.01, lambda: "deferred's result"))
            nested = await _nested()
            await self.send(text_data=f"{got} | {nested}")
        return None


class _Yields:
    def __init__(self, d: Any) -> None:
        self.d = d

    def __await__(self) -> Any:
        got = yield self.d  # Twisted's driver sends the Deferred's result back
        return got


def _nested() -> Any:
    import types

    async def inner() -> str:
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        await deferLater(reactor, 0.01, lambda: None)
        return "inner's result"

    @types.coroutine
    def outer() -> Any:
        got = yield inner()  # run by the driver as a nested coroutine
        return got

    return outer()


@pytest_twisted.ensureDeferred
async def test_the_fast_path_keeps_twisteds_driving_rules():
    comm = WebsocketCommunicator(URLRouter([path("t", TwistedRules.as_asgi())]), "/t")
    assert (await comm.connect())[0]
    answers = []
    for text in ("token", "return", "yields"):
        await comm.send_to(text_data=text)
        answers.append(await comm.receive_from())
    assert answers == ["reset to None", "returned sees x",
                       "deferred's result | inner's result"]
    await comm.disconnect()


class ExitsAtOnce(AsyncWebsocketConsumer):
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None
                      ) -> None:
        raise SystemExit(3)


@pytest_twisted.ensureDeferred
async def test_system_exit_before_any_wait_fails_the_handler_as_twisted_does():
    """As from Twisted's driver: a failed handler (logged), not an exception out of the
    caller (here ``send_to``; on a socket, the reactor's read)."""
    import gc

    comm = WebsocketCommunicator(URLRouter([path("x", ExitsAtOnce.as_asgi())]), "/x")
    assert (await comm.connect())[0]
    with captured_log():
        await comm.send_to(text_data="exit")  # does not raise
        gc.collect()  # its "Unhandled error in Deferred", inside the capture
    comm._connection()._kill_handlers(after=0)  # the queue it left busy (as before)
    await comm.disconnect()
