"""The ASGI lifespan protocol for the raw ASGI apps an application mounts.

Starlette's and FastAPI's ``on_startup``/``lifespan`` handlers, python-socketio's
``on_startup`` and any app that opens a pool at start-up wait for a ``lifespan`` scope that
uvicorn sends and Daphne never does. ``twistd realtime`` sends it (``--lifespan``, default
``auto``), to every raw ASGI app it finds in the application: ``--app`` itself, the
entries of a ``ProtocolTypeRouter`` (a ``"lifespan"`` entry too), the routes of a
``URLRouter`` and the inner app of middleware, each distinct app once, in the order met.
Unlike uvicorn (and Starlette's ``Mount``), an app mounted inside a router gets its
startup too.

- Start-up runs while the listeners are open but hold every request to the application
  (the built-in paths answer; ``/readyz`` says 503 ``starting``); the apps start one after
  the other, then the held requests go on.
- ``lifespan.startup.failed`` (or, with ``--lifespan on``, an app that raises or returns
  before answering) stops the server: the error is logged, apps already started are shut
  down, and the process exits with status 3 (uvicorn's). Under ``--lifespan auto`` an app
  that raises before answering does not speak lifespan (Django's handler, Channels' router
  without a ``"lifespan"`` entry): one info line and serving goes on without it.
- Shut-down runs in reverse order once the drain is over and the listeners are closed, all
  of the apps within ``--shutdown-timeout`` (one still shutting down then is cancelled,
  with a warning).
- ``scope["state"]``: each app's lifespan scope has a ``state`` dict; every ``http`` and
  ``websocket`` scope served by that app gets a shallow copy of it (ASGI's lifespan state),
  and so does every scope routed through a ``ProtocolTypeRouter`` whose ``"lifespan"`` entry
  filled it, consumers included.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from realtime.config import LIFESPAN_MODES as MODES
from realtime.scope import AsgiKey

log = Logger()

#: The exit status when an application's start-up failed (uvicorn's and gunicorn's 3).
STARTUP_FAILED = 3
#: Seconds of start-up after which a warning says requests are still waiting for it.
SLOW_STARTUP = 10.0
#: Shared by every app's lifespan scope: read-only, as the other kinds' (``AsgiKey``).
LIFESPAN_ASGI = AsgiKey(version="3.0", spec_version="2.0")


def _cancelling(result: Any, call: Any) -> Any:
    """A Deferred's callback that cancels the timer ``call`` and passes ``result`` on."""
    if call.active():
        call.cancel()
    return result


class LifespanError(Exception):
    """An application's start-up failed: the message says which app and why."""


def _name(app: Any) -> str:
    kind = app if isinstance(app, type) else type(app)
    name = getattr(app, "__qualname__", None) or kind.__qualname__
    module = getattr(app, "__module__", None) or kind.__module__
    return f"{module}.{name}"


def lifespan_apps(application: Any) -> list[tuple[Any, list[Any]]]:
    """Every distinct raw ASGI app in ``application`` (through ``ProtocolTypeRouter``,
    ``URLRouter`` and middleware's ``inner``), in the order met, each with the objects that
    copy its state into their scopes: the ``AsgiApp`` wrappers of it, and a
    ``ProtocolTypeRouter`` whose ``"lifespan"`` entry it is."""
    from realtime.asgi import AsgiApp
    from realtime.routing import ProtocolTypeRouter, URLRouter

    found: dict[int, tuple[Any, list[Any]]] = {}

    def held_by(app: Any, holder: Any) -> None:
        found.setdefault(id(app), (app, []))[1].append(holder)

    seen: set[int] = set()
    stack: list[Any] = [application]
    while stack:
        app = stack.pop()
        if id(app) in seen:
            continue
        seen.add(id(app))
        children: list[Any] = []
        if isinstance(app, AsgiApp):
            held_by(app.app, app)
        elif isinstance(app, ProtocolTypeRouter):
            entry = app.application_mapping.get("lifespan")
            if isinstance(entry, AsgiApp):
                held_by(entry.app, app)
            children = list(app.application_mapping.values())
        elif isinstance(app, URLRouter):
            children = [route.app for route in app.routes]
        else:
            inner = getattr(app, "inner", None)
            if inner is not None:
                children = [inner]
        stack.extend(reversed(children))  # depth first, in the order written
    return list(found.values())


class Lifespan:
    """The lifespan protocol with one raw ASGI app: ``startup()``, later ``shutdown()``."""

    def __init__(self, app: Any, mode: str = "auto") -> None:
        self.app = app
        self.mode = mode
        self.name = _name(app)
        #: The lifespan scope's ``state``: what the app puts there, each request sees a copy of.
        self.state: dict[str, Any] = {}
        #: False once the app showed it does not speak lifespan (``auto`` only).
        self.supported = True
        #: True once the app said ``lifespan.startup.failed`` (its reason is reported).
        self.failed = False
        self._inbox: deque[dict[str, Any]] = deque()
        self._waiter: Deferred[dict[str, Any]] | None = None
        self._phase = ""  # "startup" or "shutdown" while an answer is awaited
        self._answer: Deferred[None] | None = None
        self._running: Deferred[Any] | None = None
        self._ended = False

    def startup(self, clock: Any = None) -> Deferred[None]:
        """Fires once the app says ``lifespan.startup.complete`` (or does not speak
        lifespan, under ``auto``); fails with ``LifespanError`` when its start-up failed.
        With ``clock``, a start-up still running after ``SLOW_STARTUP`` seconds is logged
        (nothing ends it: a start-up may take long)."""
        from realtime.asgi import _run_app

        scope = {"type": "lifespan", "asgi": LIFESPAN_ASGI, "state": self.state}
        answer = self._expect("startup")
        self._running = _run_app(self.app, scope, self.receive, self.send, self._app_done)
        running = self._running
        if (self.mode == "auto" and self._inbox and not answer.called and running is not None
                and not running.called):
            # It waits for something before taking lifespan.startup, which every lifespan
            # app takes first (Starlette, Quart, python-socketio, ...): an app that serves
            # whatever it is called for, as a long poll that would wait here forever.
            self._not_lifespan("it waited without taking lifespan.startup", guessed=True)
            running.cancel()
        if clock is not None and not answer.called:
            call = clock.callLater(SLOW_STARTUP, self._slow)
            answer.addBoth(_cancelling, call)
        return answer

    def abandon(self) -> None:
        """The server stops while this app's start-up still runs: cancel the app."""
        running = self._running
        self.failed = True  # its end is not reported again
        self._answered(LifespanError(f"{self.name}: the server stopped during its startup"))
        log.warn("ASGI lifespan: {app} still starting when the server stopped: cancelled",
                 app=self.name)
        if running is not None and not running.called:
            running.cancel()

    def _slow(self) -> None:
        log.warn("ASGI lifespan: {app} has not finished its startup after {seconds} s; "
                 "requests wait for it", app=self.name, seconds=SLOW_STARTUP)

    def _not_lifespan(self, why: str, guessed: bool = False) -> None:
        """Under ``auto``: the app does not speak lifespan; serve without it. A guess (it
        waited first) is a warning: a lifespan app that waits first needs ``on``."""
        self.supported = False
        if guessed:
            log.warn("ASGI lifespan: {app} does not speak it ({why}); serving without "
                     "(--lifespan on if it does)", app=self.name, why=why)
        else:
            log.info("ASGI lifespan: {app} does not speak it ({why}); serving without",
                     app=self.name, why=why)
        self._answered(None)

    def shutdown(self, timeout: float, clock: Any) -> Deferred[None]:
        """Sends ``lifespan.shutdown``; fires once the app answers or ends, or after
        ``timeout`` seconds (the app is cancelled, with a warning). Never fails: a failed
        shut-down is logged."""
        if self._ended or not self.supported:
            return succeed(None)
        answer = self._expect("shutdown")

        def overdue() -> None:
            log.warn("ASGI lifespan: {app} did not finish its shutdown in {timeout} s: "
                     "cancelled", app=self.name, timeout=timeout)
            if self._running is not None and not self._running.called:
                self._running.cancel()
            self._answered(None)

        call = clock.callLater(timeout, overdue)
        answer.addBoth(_cancelling, call)
        return answer

    def _expect(self, phase: str) -> Deferred[None]:
        self._phase = phase
        answer: Deferred[None] = Deferred()
        self._answer = answer
        self._put({"type": f"lifespan.{phase}"})  # the app may answer before this returns
        return answer

    def _put(self, message: dict[str, Any]) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(message)
        else:
            self._inbox.append(message)

    def _answered(self, error: LifespanError | None) -> None:
        answer, self._answer = self._answer, None
        self._phase = ""
        if answer is not None:
            if error is None:
                answer.callback(None)
            else:
                answer.errback(Failure(error))

    # -- what the app calls --------------------------------------------------------------------
    def receive(self) -> Deferred[dict[str, Any]]:
        if self._inbox:
            return succeed(self._inbox.popleft())
        if self._waiter is not None:
            raise RuntimeError("ASGI lifespan: receive() called while one is still waiting")
        if self._phase == "startup":
            # A second receive() before answering start-up: an app that takes every scope
            # for HTTP (waiting for http.disconnect), which would wait here forever.
            # The app gets the error here, and its end is not reported again.
            why = "it called receive() again before answering lifespan.startup"
            if self.mode == "auto":
                self._not_lifespan(why)
            else:
                self.failed = True
                self._answered(LifespanError(f"{self.name}: {why}"))
            raise RuntimeError(f"ASGI lifespan: {why}")

        def forget(_: Any) -> None:
            self._waiter = None

        self._waiter = Deferred(forget)
        return self._waiter

    def send(self, message: dict[str, Any]) -> Deferred[None]:
        kind = message.get("type")
        if not isinstance(kind, str) or not kind.startswith("lifespan."):
            raise ValueError(f"ASGI message type {kind!r} is not one a lifespan app can send")
        phase, _, outcome = kind[len("lifespan."):].partition(".")
        if phase not in ("startup", "shutdown") or outcome not in ("complete", "failed"):
            raise ValueError(f"ASGI message type {kind!r} is not one a lifespan app can send")
        if phase != self._phase:
            raise RuntimeError(f"ASGI {kind!r} sent, but no lifespan.{phase} is awaited")
        if outcome == "complete":
            self._answered(None)
        else:
            reason = message.get("message") or "no message"
            if phase == "startup":
                self.failed = True
                self._answered(LifespanError(f"{self.name}: {reason}"))
            else:
                log.error("ASGI lifespan: {app}: shutdown failed: {reason}", app=self.name,
                          reason=reason)
                self._answered(None)
        return succeed(None)

    def _app_done(self, result: Any) -> None:
        """The app returned or raised. Before answering start-up: under ``auto`` it does
        not speak lifespan; otherwise (or with ``--lifespan on``) start-up failed."""
        self._ended = True
        self._running = None
        phase = self._phase
        if not self.supported or (self.failed and not phase):
            return  # reported already
        if isinstance(result, Failure):
            cancelled = result.check(CancelledError, asyncio.CancelledError)
            if phase == "startup" and self.mode == "auto":
                self._not_lifespan(result.getErrorMessage() or result.type.__name__)
            elif phase == "startup":
                self._answered(LifespanError(
                    f"{self.name} raised {result.type.__name__}: {result.getErrorMessage()}"))
                log.failure("ASGI lifespan: {app} raised during startup", result,
                            app=self.name)
            elif not (phase == "shutdown" and cancelled):
                log.failure("ASGI lifespan: {app} raised", result, app=self.name)
                self._answered(None)
        elif phase == "startup":
            why = "it returned without answering lifespan.startup"
            if self.mode == "on":
                self._answered(LifespanError(f"{self.name}: {why}"))
            else:
                self._not_lifespan(why)
        else:
            self._answered(None)


class Lifespans:
    """The lifespans of every raw ASGI app in an application (``lifespan_apps``), on
    ``clock``; all their shut-downs together take at most ``timeout`` seconds."""

    def __init__(self, application: Any, mode: str, clock: Any, timeout: float = 10.0) -> None:
        if mode not in MODES:
            raise ValueError(f"lifespan mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.clock = clock
        self.timeout = timeout
        self.apps: list[Lifespan] = []
        self._holders: list[list[Any]] = []
        self._started: list[Lifespan] = []
        self._starting: Lifespan | None = None
        self._running: Deferred[None] | None = None
        self._stopping = False
        found = lifespan_apps(application)
        for _, holders in found:
            for holder in holders:
                holder.state = None  # nothing left of an earlier server of this application
        if mode == "off":
            return
        for app, holders in found:
            self.apps.append(Lifespan(app, mode))
            self._holders.append(holders)

    def __bool__(self) -> bool:
        return bool(self.apps)

    def startup(self) -> Deferred[None]:
        """Start each app in turn; on a failure, shut down those started (last first) and
        fail with its ``LifespanError``. Stops early (without failing) once ``shutdown``
        was called."""
        self._running = Deferred.fromCoroutine(self._startup())
        return self._running

    async def _startup(self) -> None:
        for lifespan, holders in zip(self.apps, self._holders, strict=True):
            if self._stopping:
                return
            self._starting = lifespan
            try:
                await lifespan.startup(self.clock)
            except LifespanError:
                running = lifespan._running
                if running is not None and not running.called:
                    # It said startup.failed and runs on: cancelled, once out of its send.
                    self.clock.callLater(0, running.cancel)
                if not self._stopping:  # else shutdown() is doing this
                    await self._shut_down_started(self.timeout)
                raise
            finally:
                self._starting = None
            self._started.append(lifespan)
            if lifespan.supported:
                # Only now: an app that does not speak it leaves a router's state alone.
                for holder in holders:
                    holder.state = lifespan.state
                log.info("ASGI lifespan: {app} started", app=lifespan.name)

    def shutdown(self) -> Deferred[None]:
        """Shut down the apps started, last first; never fails. Called while start-up
        still runs, it waits for the app starting (abandoning it at the deadline) and
        starts no other."""
        return Deferred.fromCoroutine(self._shutdown())

    async def _shutdown(self) -> None:
        self._stopping = True
        ends = self.clock.seconds() + self.timeout
        running = self._running
        if running is not None and not running.called:
            settled: Deferred[None] = Deferred()

            def passed(result: Any) -> Any:
                if not settled.called:
                    settled.callback(None)
                return result  # the start-up's own result goes on to its caller

            def overdue() -> None:
                starting = self._starting
                if starting is not None:
                    starting.abandon()
                if not settled.called:
                    settled.callback(None)

            call = self.clock.callLater(self.timeout, overdue)
            running.addBoth(passed)
            await settled
            if call.active():
                call.cancel()
        await self._shut_down_started(max(0.0, ends - self.clock.seconds()))

    async def _shut_down_started(self, budget: float) -> None:
        ends = self.clock.seconds() + budget
        started, self._started = self._started, []
        for lifespan in reversed(started):
            await lifespan.shutdown(max(0.0, ends - self.clock.seconds()), self.clock)
        for holders in self._holders:
            for holder in holders:
                holder.state = None
