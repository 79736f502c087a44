"""Socket.IO handlers under ``--reactor=asyncio``: an event's, a connect handler and a
background task await asyncio code, as every other handler does there.

Collected only under ``--reactor=asyncio`` (tests/conftest.py); the main run drives it
in a subprocess (tests/test_asyncio_reactor.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, succeed

from realtime import socketio as rsio
from tests.clients import captured_log, until
from tests.test_socketio import Raw, _joined, start


@pytest_twisted.ensureDeferred
async def test_socketio_handlers_await_asyncio_code(live: Any) -> None:
    """An ``async def`` event handler that awaits ``asyncio.sleep`` is acked (it failed
    with "await wasn't used with future": Twisted's driver got the future), one that
    returns a Deferred is acked with its value (as under the default reactor); a connect
    handler and a background task await asyncio code too."""
    sio = rsio.AsyncServer()
    background: Deferred[str] = Deferred()

    async def connect(sid: str, environ: Any) -> None:
        await asyncio.sleep(0.01)
        await sio.emit("hello", asyncio.current_task() is not None, to=sid)

    async def waits(sid: str, x: str) -> str:
        await asyncio.sleep(0.01)
        return x

    async def returns_deferred(sid: str) -> Deferred[str]:
        return succeed("d")

    async def task() -> None:
        await asyncio.sleep(0.01)
        background.callback("ran")

    sio.on("connect", connect)
    sio.on("waits", waits)
    sio.on("deferred", returns_deferred)
    url = await start(live, sio)
    with captured_log() as events:
        raw = await Raw.open(url)
        await raw.send("40")
        got = sorted([await raw.recv(), await raw.recv()])
        assert got[0].startswith('40{"sid":') and got[1] == '42["hello",true]'
        await raw.send('421["waits","a"]')
        assert await raw.recv() == '431["a"]'
        await raw.send('422["deferred"]')
        assert await raw.recv() == '432["d"]'
        sio.start_background_task(task)
        from twisted.internet import reactor

        assert await background.addTimeout(5, reactor) == "ran"
        await raw.close()
    assert [e for e in events if "log_failure" in e] == []


@pytest_twisted.ensureDeferred
async def test_a_socketio_handler_in_asyncio_sleep_is_cancelled_at_the_close_timeout(
        live: Any) -> None:
    """A handler still in ``asyncio.sleep`` when ``--application-close-timeout`` runs out
    after its client went gets asyncio's CancelledError."""
    sio = rsio.AsyncServer()
    cancelled: Deferred[bool] = Deferred()

    async def sleeps(sid: str) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.callback(True)
            raise

    sio.on("sleeps", sleeps)
    url = await start(live, sio, application_close_timeout=0.2)
    raw = await _joined(url)
    await raw.send('42["sleeps"]')
    await raw.close()
    from twisted.internet import reactor

    assert await cancelled.addTimeout(5, reactor) is True


@pytest_twisted.ensureDeferred
async def test_in_order_handlers_and_always_connect_await_asyncio_code(live: Any) -> None:
    """``async_handlers=False`` (a handler awaited where its packet is read) and
    ``always_connect`` (packets waiting for the connect handler) with handlers that await
    ``asyncio.sleep``: acked in order; closed behind such a handler, the events before
    the close are handled, then the disconnect handler (an asyncio Task after the close)."""
    sio = rsio.AsyncServer(async_handlers=False, always_connect=True)
    handled: list[str] = []

    async def connect(sid: str, environ: Any) -> None:
        await asyncio.sleep(0.05)

    async def waits(sid: str, x: str, delay: float) -> str:
        await asyncio.sleep(delay)
        handled.append(x)
        return x

    async def disconnect(sid: str, reason: str) -> None:
        await asyncio.sleep(0)
        handled.append(reason)

    sio.on("connect", connect)
    sio.on("waits", waits)
    sio.on("disconnect", disconnect)
    url = await start(live, sio)
    with captured_log() as events:
        raw = await Raw.open(url)
        await raw.send("40")
        assert (await raw.recv()).startswith('40{"sid":')
        await raw.send('421["waits","slow",0.05]')  # (behind the connect handler)
        await raw.send('422["waits","fast",0]')
        assert [await raw.recv(), await raw.recv()] == ['431["slow"]', '432["fast"]']
        await raw.send('42["waits","late",0.1]')
        await raw.send('42["waits","later",0]')
        await raw.close()
        assert await until(lambda: len(handled) == 5)
    assert handled == ["slow", "fast", "late", "later", "transport close"]
    assert [e for e in events if "log_failure" in e] == []


@pytest.mark.parametrize("async_handlers", [True, False], ids=["async", "in-order"])
@pytest_twisted.ensureDeferred
async def test_a_disconnect_handler_in_asyncio_sleep_at_the_close_timeout_frees_every_socket(
        live: Any, async_handlers: bool) -> None:
    """Two namespaces, the first one's disconnect handler in ``asyncio.sleep``: past
    ``--application-close-timeout`` it gets asyncio's CancelledError and the other socket
    goes without its handler; both freed (asyncio's cancel used to stop the loop over the
    sockets: the second stayed for ever), nothing logged as a failure."""
    sio = rsio.AsyncServer(async_handlers=async_handlers, namespaces=["/b"])
    log: list[str] = []

    async def sleeps(sid: str, reason: str) -> None:
        log.append(reason)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            log.append("cancelled")
            raise

    sio.on("disconnect", sleeps)
    sio.on("disconnect", lambda sid, reason: log.append("/b"), namespace="/b")
    url = await start(live, sio, application_close_timeout=0.3)
    with captured_log() as events:
        raw = await Raw.open(url)
        await raw.send("40")
        assert (await raw.recv()).startswith("40{")
        await raw.send("40/b,")
        assert (await raw.recv()).startswith("40/b,{")
        await raw.close()
        assert await until(lambda: not sio._sockets, 3), log
    assert log == ["transport close", "cancelled"]
    assert [e for e in events if "log_failure" in e] == []
