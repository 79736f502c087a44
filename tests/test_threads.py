"""``realtime.threads`` under the default reactor: what a failed handler's exception keeps,
and ``async_to_sync`` from a worker thread waiting for a Deferred that fires later.

The asyncio reactor's side is in tests/asyncio_reactor/test_asyncio_consumers.py."""

from __future__ import annotations

import gc
import traceback
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task, threads
from twisted.internet.defer import Deferred

from realtime.threads import as_deferred, async_to_sync, run_handler
from tests.clients import fire_from_a_frame, traceback_names


async def _fails(d: Deferred[None]) -> None:
    await d
    raise ValueError("after the wait")


def test_a_failed_handler_keeps_no_frame_of_whoever_fired_its_deferred() -> None:
    """A handler that fails after a wait fails inside the callback that resumed it; its
    exception (logged, kept by a Failure, often in a cycle) must not keep that caller's
    frame, and so the caller's whole stack, alive. (``as_deferred`` here is Twisted's own
    driver, ``Deferred.fromCoroutine``: not ours to trim.)"""
    gc.collect()
    gc.disable()
    try:
        d: Deferred[None] = Deferred()
        running = run_handler(_fails(d))
        assert running is not None
        failures: list[Any] = []
        running.addErrback(failures.append)
        marker = fire_from_a_frame(d)
        exc = failures[0].value
        assert isinstance(exc, ValueError)
        assert marker() is None  # the exception lives; the firing frame does not
        names = traceback_names(exc)
        assert names[-1] == "_fails" and "step" not in names, names
    finally:
        gc.enable()


def test_a_handler_failing_at_once_keeps_its_traceback() -> None:
    """What is dropped is the bridge's own entry, not the handler's frames."""

    async def at_once() -> None:
        raise KeyError("k")

    failures: list[Any] = []
    as_deferred(at_once()).addErrback(failures.append)
    assert failures[0].check(KeyError)
    assert traceback_names(failures[0].value)[-1] == "at_once"


async def _later(value: str, fail: bool) -> str:
    await task.deferLater(reactor, 0.05, lambda: None)
    if fail:
        raise LookupError(value)
    return value * 2


@pytest_twisted.ensureDeferred
async def test_async_to_sync_in_a_thread_waits_for_the_result_and_raises_the_error() -> None:
    """The worker gets the coroutine's value once its Deferred fires on the reactor, and its
    exception with the traceback of the reactor-side frames."""

    def worker() -> tuple[str, str]:
        value = async_to_sync(_later)("ab", False)
        try:
            async_to_sync(_later)("gone", True)
        except LookupError:
            return value, traceback.format_exc()
        return value, "no exception"

    value, trace = await threads.deferToThread(worker)
    assert value == "abab"
    assert "LookupError: gone" in trace and "_later" in trace, trace


class _Reactor:
    """Just what ``run_on_reactor`` reads: a thread that runs the calls, after ``delay``."""

    def __init__(self, running: bool, started: bool, stopping: bool, delay: float) -> None:
        self.running, self._startedBefore, self._stopped = running, started, stopping
        self.delay = delay
        self.timers: list[Any] = []

    def callFromThread(self, fn: Any, *args: Any) -> None:
        import threading

        timer = threading.Timer(self.delay, fn, args)
        self.timers.append(timer)
        timer.start()

    def join(self) -> None:
        """The calls' threads, done (one given up on still runs its call, later)."""
        for timer in self.timers:
            timer.join(10)
            assert not timer.is_alive()


@pytest.mark.parametrize("running, started, stopping, outcome", [
    (True, True, True, "done"),  # draining: asked to stop, still running calls
    (False, False, False, "done"),  # not started yet: it will run the call
    (False, True, True, "ConnectionClosed"),  # stopped running calls: never will
])
def test_run_on_reactor_waits_unless_the_reactor_has_stopped_running_calls(
        running, started, stopping, outcome) -> None:
    from realtime.exceptions import ConnectionClosed
    from realtime.threads import run_on_reactor

    fake = _Reactor(running, started, stopping, delay=1.0)  # past one 0.5 s check
    try:
        result = run_on_reactor(fake, lambda: "done")
    except ConnectionClosed:
        result = "ConnectionClosed"
    fake.join()
    assert result == outcome


@pytest.mark.parametrize("running, started, stopping, outcome", [
    (True, True, True, "done"),
    (False, False, False, "done"),
    (False, True, True, "ConnectionClosed"),
])
def test_awaited_on_reactor_waits_on_its_loop_unless_the_reactor_has_stopped(
        running, started, stopping, outcome) -> None:
    """The coroutine form (what a guarded layer gives asgiref's ``async_to_sync``), awaited
    on an asyncio loop of another thread: the same rules, and that loop is not blocked
    meanwhile."""
    import asyncio
    import threading

    from realtime.exceptions import ConnectionClosed
    from realtime.threads import awaited_on_reactor

    fake = _Reactor(running, started, stopping, delay=1.0)
    found: list[Any] = []

    async def main() -> None:
        ticks = 0

        async def tick() -> None:  # runs while the call waits: the loop is free
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticker = asyncio.create_task(tick())
        try:
            found.append(await awaited_on_reactor(fake, lambda: "done"))
        except ConnectionClosed:
            found.append("ConnectionClosed")
        ticker.cancel()
        found.append(ticks > 5)

    thread = threading.Thread(target=asyncio.run, args=(main(),))  # not the reactor's
    thread.start()
    thread.join(10)
    fake.join()
    assert found == [outcome, True]
