"""Crossing between the reactor thread, worker threads and asyncio.

``sync_to_async`` runs blocking code (an ORM call, a file read) in the reactor's thread pool
and returns a Deferred; ``async_to_sync`` lets code in a worker thread call something that
returns a Deferred and wait for it; ``aio`` turns an asyncio awaitable into a Deferred
(under ``--reactor=asyncio``).

``as_deferred`` is how the server runs an application's coroutines (handlers, middleware, routing).
Under ``--reactor=asyncio`` it runs them as asyncio Tasks on the reactor's loop, and every
Task on that loop may await Deferreds too (``install_bridge`` wraps the loop's task
factory): so a Channels consumer's ``await asyncio.sleep()``, Django's async ORM,
``asgiref.sync.sync_to_async``, ``asyncio.create_task``/``gather``/``wait_for`` and
``await self.channel_layer.group_send()`` all work, as under Daphne. Under any other
reactor coroutines run with ``Deferred.fromCoroutine`` (no Task, nothing scheduled: the
fast path), and a handler that awaits asyncio code fails with a RuntimeError that says
to run under ``--reactor=asyncio``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import sys
import threading
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from realtime.middleware import resolve

T = TypeVar("T")


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def installed_reactor(what: str) -> Any:
    """The reactor a thread hands ``what`` to, or ``RuntimeError`` while this process has
    none installed (a Django view under another server, a Celery task): nothing would ever
    run the call, and its thread (asgiref's loop's too, which the interpreter joins at
    exit) would wait for ever; importing one here would install the default reactor from
    this thread."""
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None:
        raise RuntimeError(
            f"{what} called in a thread while this process has no Twisted reactor (a Django "
            "view under another server, a Celery task, a script): nothing would ever run the "
            "call; the layer reaches only this process's consumers, and from another process "
            "realtime.client (the server API) reaches the server's")
    return reactor


def sync_to_async(fn: Callable[..., T]) -> Callable[..., Deferred[T]]:
    """Wrap a blocking function: calling the wrapper runs it in the thread pool."""
    from twisted.internet.threads import deferToThreadPool

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Deferred[T]:
        reactor = _reactor()
        return deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args, **kwargs)

    return wrapper


def run_on_reactor(reactor: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """From a worker thread: ``fn(*args)`` on the reactor thread, its result returned (a
    Deferred's once it fires) or its exception raised here. Not ``blockingCallFromThread``:
    a reactor that stops (and joins this thread's pool) would never run the call, and both
    would wait for ever; here the wait ends with ``ConnectionClosed`` once the reactor has
    stopped."""
    done = threading.Event()
    outcome: list[tuple[bool, Any]] = []

    def settle(result: Any) -> None:
        outcome.append((not isinstance(result, Failure), result))
        done.set()

    _start_on_reactor(reactor, fn, args, settle)
    while not done.wait(0.5):
        _raise_if_stopped(reactor, fn)
    ok, value = outcome[0]
    if not ok:
        value.raiseException()  # with the traceback from the reactor thread
    return value


def _start_on_reactor(reactor: Any, fn: Callable[..., Any], args: tuple[Any, ...],
                      settle: Callable[[Any], None]) -> None:
    """``fn(*args)`` on the reactor thread; ``settle`` gets its result there (a Deferred's
    once it fires) or its ``Failure``."""

    def on_reactor() -> None:
        try:
            result = fn(*args)
        except BaseException:
            settle(Failure())
            return
        if isinstance(result, Deferred):
            result.addBoth(settle)
        else:
            settle(result)

    reactor.callFromThread(on_reactor)


def _raise_if_stopped(reactor: Any, fn: Callable[..., Any]) -> None:
    """``ConnectionClosed`` once ``reactor`` no longer runs calls (so one handed to it
    never will be). Not ``_stopped``: that is set when the stop is asked for, and the
    reactor still runs calls through the drain. ``running`` goes False as it stops running
    them, before it joins the thread pool; a reactor not started yet will run it later."""
    if getattr(reactor, "_startedBefore", True) and not getattr(reactor, "running", True):
        from realtime.exceptions import ConnectionClosed

        name = getattr(fn, "__qualname__", "a call")
        raise ConnectionClosed(f"the server stopped before {name} finished on its thread")


async def awaited_on_reactor(reactor: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """``run_on_reactor`` for a coroutine on an asyncio loop of another thread (the loop
    asgiref's ``async_to_sync`` runs, or the reactor's own under ``--reactor=asyncio``):
    ``fn(*args)`` runs on the reactor thread and its result (a Deferred's or coroutine's
    once done) is awaited here, without blocking this loop."""
    from twisted.python.threadable import isInIOThread

    loop = asyncio.get_running_loop()
    if isInIOThread():  # the reactor's own loop: no hop
        return await as_deferred(fn(*args)).asFuture(loop)
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def settle(result: Any) -> None:
        try:
            if isinstance(result, Failure):
                future.set_exception(result.value)
            else:
                future.set_result(result)
        except concurrent.futures.InvalidStateError:  # the waiter was cancelled: nobody reads it
            pass

    def call() -> Deferred[Any]:
        return as_deferred(fn(*args))

    call.__qualname__ = getattr(fn, "__qualname__", "a call")
    _start_on_reactor(reactor, call, (), settle)
    waiting = asyncio.wrap_future(future)
    while True:
        done, _ = await asyncio.wait((waiting,), timeout=0.5)
        if done:
            return waiting.result()
        _raise_if_stopped(reactor, call)


def async_to_sync(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Deferred- or coroutine-returning function for a worker thread: the call runs on
    the reactor thread and the worker waits for its result (``run_on_reactor``: a server
    that stops meanwhile makes it raise ``ConnectionClosed`` rather than wait for ever).
    Called on the reactor thread itself it raises ``RuntimeError`` instead of hanging."""
    from twisted.python import threadable
    from twisted.python.threadable import isInIOThread

    name = getattr(fn, "__qualname__", fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if isInIOThread():
            # Waiting here would wait for the reactor, which is this thread: the whole
            # process would hang (asgiref raises the same way inside an event loop).
            raise RuntimeError(
                f"async_to_sync({name!r}) called on the reactor thread, which it would "
                "block forever: await the call in an async def handler, or set "
                "thread_handlers = True on the consumer (as a Channels sync consumer runs "
                "in a thread)"
            )
        if threadable.ioThread is None and threading.current_thread() is threading.main_thread():
            # Before the reactor runs (a module-level call while --app is imported): the
            # thread that would run it is this one, waiting.
            raise RuntimeError(
                f"async_to_sync({name!r}) called before the reactor runs, on the thread "
                "that will run it, which it would block forever: make the call once the "
                "service runs (in a consumer, or a worker thread)"
            )

        def call() -> Deferred[Any]:
            return as_deferred(fn(*args, **kwargs))

        call.__qualname__ = f"async_to_sync({name})"
        return run_on_reactor(installed_reactor(f"async_to_sync({name!r})"), call)

    return wrapper


def aio(awaitable: Awaitable[T]) -> Deferred[T]:
    """An asyncio awaitable (a coroutine, task or future) as a Deferred, for consumers that
    use asyncio libraries; needs ``--reactor=asyncio``."""
    return Deferred.fromFuture(asyncio.ensure_future(awaitable))


# -- running coroutines: Twisted's way, or asyncio's under --reactor=asyncio ---------------------
#
# Under --reactor=asyncio an application coroutine runs as an asyncio Task (so
# ``asyncio.current_task()``, ``asyncio.timeout``, anyio and asgiref work in it) wrapped in a
# ``_Bridge``, which turns the Deferreds it awaits into futures of the loop. Progress on a
# Deferred is made as Twisted's own driver makes it: inside the Deferred's callback, with the
# Task made current for the step (what Python 3.12's eager tasks do), and the Task replays the
# step's outcome on its next turn. So a coroutine that waits for nothing finishes before
# ``as_deferred`` returns, a ``Clock``-driven test sees its effects at ``advance``, and a
# cancelled handler gets its CancelledError at once; a wait on an asyncio future resumes on the
# loop's next turn, as asyncio does.

#: Making a Task current for a step: asyncio's table of current Tasks (3.11), or its swap
#: function (3.12+). None: not available, so Tasks only step on the loop's turns.
try:
    from asyncio.tasks import _current_tasks  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    _current_tasks = None
try:
    from asyncio.tasks import _swap_current_task  # type: ignore[attr-defined]
except ImportError:
    _swap_current_task = None
_CAN_SWAP = _current_tasks is not None or _swap_current_task is not None
_EAGER = sys.version_info >= (3, 12)  # asyncio.Task(..., eager_start=True)
_COROUTINE = types.CoroutineType

#: The reactor's asyncio loop under ``--reactor=asyncio``, False under another reactor,
#: None until the first look (the reactor is installed after this module is imported).
_loop: Any = None


def asyncio_loop() -> Any:
    """The asyncio loop the reactor runs on (its task factory bridged), or None when the
    reactor is not asyncio's."""
    global _loop
    if _loop is None:
        if "twisted.internet.reactor" not in sys.modules:
            return None  # no reactor installed yet: never install one from here
        reactor = _reactor()
        loop = getattr(reactor, "_asyncioEventloop", None)
        if loop is None:
            _loop = False
        else:
            install_bridge(loop)
            _loop = loop
    return _loop or None


def as_deferred(value: Any) -> Deferred[Any]:
    """A Deferred for ``value`` (a coroutine, Deferred or other awaitable), run until it
    gives a plain value: as an asyncio Task under ``--reactor=asyncio``, else driven by
    Twisted (a failure that looks like asyncio code without its loop gets the hint).

    Either way the coroutine starts at once, and the Deferred of one that waits for nothing
    has fired on return, as ``Deferred.fromCoroutine``'s has."""
    loop = _loop if _loop is not None else asyncio_loop()
    if loop:
        return _run_task(resolve(value), loop)
    d = Deferred.fromCoroutine(resolve(value))
    if d.called and not isinstance(d.result, Failure):
        return d
    return d.addErrback(_explain)


def run_handler(value: Any) -> Deferred[Any] | None:
    """Run a handler's awaitable as ``as_deferred`` does, but None when it has finished
    before this returns (its result is not wanted), and its exception raised here when it
    failed so: no Deferred for a handler that waits for nothing, the common case.

    Under the default reactor a coroutine runs under ``_Driven``: Twisted's own driving
    rules, all of its steps in one copy of the context. SystemExit and KeyboardInterrupt
    come back in a failed Deferred, as Twisted's driver gives them."""
    loop = _loop if _loop is not None else asyncio_loop()
    if not loop and type(value) is _COROUTINE:
        driven = _Driven(value)
        outcome = driven.step(None, None)
        kind = outcome[0]
        if kind == "return":
            return None
        if kind == "raise":
            exc = outcome[1]
            if not isinstance(exc, Exception):
                return fail(Failure(exc))
            hinted = _explained(exc)
            if hinted is exc:
                raise exc
            raise hinted from exc
        return driven.wait(outcome[1])
    d = as_deferred(value)
    if not d.called:
        return d
    result = d.result
    if isinstance(result, Failure):
        if not isinstance(result.value, Exception):
            return d
        d.addErrback(lambda _: None)  # given to the caller instead
        raise result.value
    return None


#: Return values that are never awaitable (exactly these types; a subclass may be).
_PLAIN = frozenset({type(None), bool, int, float, str, bytes, list, tuple, dict})


class _Driven:
    """One coroutine driven by Twisted's rules (``inlineCallbacks``: a plain yielded value is
    sent back, a Deferred, coroutine or generator is waited for and its result sent in or
    its failure thrown in), every step in one copy of the context, as
    ``Deferred.fromCoroutine`` runs it; an awaitable it returns is awaited in that context
    too. ``step`` runs it to its first wait; ``wait`` gives the Deferred of the rest."""

    __slots__ = ("context", "coro", "done", "waiting")

    def __init__(self, coro: Any) -> None:
        self.coro = coro
        self.context = contextvars.copy_context()
        self.done: Deferred[Any] | None = None
        self.waiting: Deferred[Any] | None = None

    def step(self, send: Any, throw: BaseException | None) -> tuple[str, Any]:
        """Until it waits on a Deferred that has not fired: ("wait", that Deferred),
        ("return", value) or ("raise", exception)."""
        run = self.context.run
        yielded: Any
        while True:
            try:
                if throw is None:
                    yielded = run(self.coro.send, send)
                else:
                    yielded = run(self.coro.throw, throw)
                    throw = None
            except StopIteration as stop:
                value = stop.value
                if type(value) in _PLAIN:  # (no isawaitable's ABC check for the common values)
                    return ("return", value)
                if isinstance(value, Deferred) or (value is not None
                                                   and inspect.isawaitable(value)):
                    self.coro, send = resolve(value), None  # awaited here, as resolve() did
                    continue
                return ("return", value)
            except BaseException as exc:
                return ("raise", _unlinked(exc))
            if isinstance(yielded, Deferred):
                d = yielded
            elif inspect.iscoroutine(yielded) or inspect.isgenerator(yielded):
                nested: Any = yielded
                d = run(Deferred.fromCoroutine, nested)
            else:
                send = yielded  # Twisted's driver sends it straight back
                continue
            if not d.called or d.paused:
                return ("wait", d)
            got: list[Any] = []  # fired already: its result now, without recursing
            d.addBoth(got.append)
            result = got[0]
            if isinstance(result, Failure):
                send, throw = None, result.value.with_traceback(result.tb)
            else:
                send = result

    def wait(self, d: Deferred[Any]) -> Deferred[Any]:
        def cancel(_: Deferred[Any]) -> None:
            if self.waiting is not None:
                self.waiting.cancel()  # the coroutine gets the CancelledError

        done = self.done = Deferred(cancel)
        self._wait_on(d)
        return done

    def _wait_on(self, d: Deferred[Any]) -> None:
        self.waiting = d
        d.addBoth(self._resume)

    def _resume(self, result: Any) -> None:
        self.waiting = None
        if isinstance(result, Failure):
            outcome = self.step(None, result.value.with_traceback(result.tb))
        else:
            outcome = self.step(result, None)
        kind, value = outcome
        if kind == "wait":
            self._wait_on(value)
            return
        done, self.done = self.done, None
        if done is None or done.called:  # cancelled, and it went on anyway
            return
        if kind == "return":
            done.callback(value)
        else:
            done.errback(Failure(_explained(value)))


def _run_task(coro: Any, loop: Any) -> Deferred[Any]:
    def cancel(_: Deferred[Any]) -> None:
        waiting = bridge.waiting
        if waiting is not None:
            waiting.cancel()  # the coroutine gets its CancelledError now, as in Twisted
        elif bridge.task is not None:
            bridge.task.cancel()  # waiting for an asyncio future: asyncio's cancellation

    done: Deferred[Any] = Deferred(cancel)
    bridge = _Bridge(coro, loop, done)
    bridge.context = contextvars.copy_context()
    bridge.outer = contextvars.copy_context()
    if _EAGER:  # the first step runs inside the constructor
        bridge.task = asyncio.Task(bridge, loop=loop, context=bridge.context,
                                   eager_start=True)  # type: ignore[call-arg, unused-ignore]
        if bridge.ended is not None:
            bridge.end()
    else:
        bridge.task = asyncio.Task(bridge, loop=loop, context=bridge.context)
        if _CAN_SWAP:  # the first step now; the Task's own first step replays it
            bridge.ready = bridge.step_in_task("send", None)
    return done


def _unlinked(exc: BaseException) -> BaseException:
    """``exc`` without the traceback entry of the frame that caught it (the first).

    A traceback that holds a plain function's frame keeps that frame's callers too once it
    returns (CPython links ``f_back`` then): for a step taken inside a Deferred's callback,
    all of twisted.web's request and the reactor's stack. Kept by an exception that sits in
    a reference cycle (Django's ``RequestAborted`` does, every request), that much more is
    left to the garbage collector."""
    tb = exc.__traceback__
    if tb is not None:
        exc.__traceback__ = tb.tb_next
    return exc


def _retrieve(task: Any) -> None:
    """The outcome went to the Deferred already: no "exception never retrieved"."""
    if not task.cancelled():
        task.exception()


#: What asyncio says when its code runs without its loop (or a Twisted driver gets its
#: future): these failures get the hint.
_NO_LOOP = ("await wasn't used with future", "no running event loop",
            "There is no current event loop")


def _explain(failure: Failure) -> Failure:
    exc = failure.value
    hinted = _explained(exc)
    return failure if hinted is exc else Failure(hinted)


#: What an asyncio Task says when the code it runs awaits a Deferred: asgiref's
#: ``async_to_sync`` awaiting a layer call on a loop of its own (called on the reactor
#: thread, or handed the layer itself in another thread).
_DEFERRED_IN_ASYNCIO = "Task got bad yield: <Deferred"
#: What asgiref's ``async_to_sync`` says on a thread whose asyncio loop runs: the reactor
#: thread under ``--reactor=asyncio`` (a consumer's plain handler, which cannot await).
_ASGIREF_IN_LOOP = "You cannot use AsyncToSync in the same thread as an async event loop"


def _explained(exc: BaseException) -> BaseException:
    """``exc``, or for asyncio code run without its loop (or a Deferred awaited on a loop
    that is not the reactor's, or asgiref's ``async_to_sync`` on the reactor's running
    loop), a RuntimeError with the hint."""
    if not isinstance(exc, RuntimeError) or getattr(exc, "_realtime_explained", False):
        return exc
    text = str(exc)
    if text.startswith(_NO_LOOP):
        hint = RuntimeError(
            f"{exc}: this code awaited asyncio code, which needs the asyncio reactor: run "
            "twistd --reactor=asyncio ... (or await realtime.sync_to_async(...) for blocking "
            "calls)")
    elif text.startswith(_DEFERRED_IN_ASYNCIO):
        hint = RuntimeError(
            f"{exc}: asgiref's async_to_sync awaited a Twisted call on an asyncio loop of its "
            "own, which cannot run it: called from a consumer's plain handler on the reactor "
            "thread, where no async_to_sync can wait, set thread_handlers = True on the "
            "consumer (or await the call in an async def handler); from another thread, "
            "call the layer that thread got (self.channel_layer, get_channel_layer()) or use "
            "realtime's (from realtime import async_to_sync)")
    elif text.startswith(_ASGIREF_IN_LOOP):
        hint = RuntimeError(
            f"{exc}: asgiref's async_to_sync called on a thread whose asyncio loop runs (a "
            "consumer's plain handler on the reactor thread, under --reactor=asyncio), where "
            "it cannot wait: set thread_handlers = True on the consumer (or await the call "
            "in an async def handler)")
    else:
        return exc
    hint._realtime_explained = True  # type: ignore[attr-defined]
    hint.__cause__ = exc
    return hint


class CancelledError(defer.CancelledError, asyncio.CancelledError):
    """The CancelledError a bridged coroutine gets when the server cancels what it waits
    on (``--application-close-timeout``): asyncio's and Twisted's at once, so a handler
    written for either (Channels' or Twisted's) catches it."""


class _Reported(Exception):
    """What the Task of a coroutine that raised SystemExit or KeyboardInterrupt ends with:
    its Deferred has that already (under Twisted's driver too it only fails the handler)."""


class _Bridge(Coroutine[Any, Any, Any]):
    """A coroutine as an asyncio Task runs it, the Deferreds it awaits turned into futures
    of the loop; ``done`` (when given) fires once the coroutine finishes, outside its
    context and Task."""

    __slots__ = ("_coro", "_loop", "context", "done", "ended", "outer", "ready", "task",
                 "waiting")

    def __init__(self, coro: Any, loop: Any, done: Deferred[Any] | None = None) -> None:
        self._coro = coro
        self._loop = loop
        self.done = done
        #: The Task that drives it and that Task's context, once known (a step inside a
        #: Deferred's callback needs both); ``outer``: the context ``done`` fires in.
        self.task: Any = None
        self.context: Any = None
        self.outer: Any = None
        #: A step taken outside the Task's turn, for the Task to replay: ("yield", what it
        #: waits for), ("return", value) or ("raise", exception).
        self.ready: tuple[str, Any] | None = None
        #: How it finished in a step of the Task's own, for ``end`` to report.
        self.ended: tuple[str, Any] | None = None
        #: The Deferred it waits for, if any (a cancel cancels that).
        self.waiting: Deferred[Any] | None = None

    # -- stepping ---------------------------------------------------------------------------
    def _step(self, how: str, arg: Any) -> tuple[str, Any]:
        try:
            if how == "send":
                yielded = self._coro.send(arg)
            else:
                yielded = self._coro.throw(arg)
        except StopIteration as stop:
            return ("return", stop.value)
        except BaseException as exc:
            return ("raise", _unlinked(exc))
        return ("yield", self._adapt(yielded))

    def step_in_task(self, how: str, arg: Any) -> tuple[str, Any]:
        """One step now, outside the Task's turn, with the Task current and in its context;
        if the coroutine finished, ``done`` fires after (outside both)."""
        loop, task = self._loop, self.task
        if _current_tasks is not None:
            previous = _current_tasks.get(loop)
            _current_tasks[loop] = task
        else:
            previous = _swap_current_task(loop, task)
        try:
            outcome: tuple[str, Any] = self.context.run(self._step, how, arg)
        finally:
            if _current_tasks is not None:
                if previous is None:
                    del _current_tasks[loop]
                else:
                    _current_tasks[loop] = previous
            else:
                _swap_current_task(loop, previous)
        if outcome[0] != "yield":
            self._finish(outcome)
        return outcome

    def end(self) -> None:
        """Report how a step of the Task's own ended (from the loop, in ``outer``)."""
        if self.ended is not None:
            self._finish(self.ended)

    def _finish(self, outcome: tuple[str, Any]) -> None:
        done, self.done = self.done, None
        task, self.task = self.task, None  # no cycle Task -> bridge -> Task left behind
        self.ended = None
        kind, value = outcome
        if kind == "raise" and task is not None:  # the Task ends with it too: reported here
            task.add_done_callback(_retrieve)
        if done is None or done.called:
            return
        if kind == "return":
            done.callback(value)
            return
        if isinstance(value, asyncio.CancelledError) and not isinstance(
                value, CancelledError):
            value = CancelledError(*value.args)
        done.errback(Failure(value))

    def _replay(self, outcome: tuple[str, Any], own: bool) -> tuple[str, Any]:
        """What the Task gets for a step's outcome (``own``: a step the Task itself took
        now): ("yield", what it waits for) or ("raise", what to raise to it)."""
        kind, value = outcome
        if kind == "yield":
            return outcome
        if self.done is None:  # a Task of the loop's: no cycle Task -> bridge -> Task left
            self.task = None
        elif own:  # reported from the loop, outside this step
            self.ended = outcome
            self._loop.call_soon(self.end, context=self.outer)
        if kind == "return":
            return ("raise", StopIteration(value))
        if not isinstance(value, Exception) and self.outer is not None and not isinstance(
                value, asyncio.CancelledError):
            return ("raise", _Reported(repr(value)))  # SystemExit in a handler: not out of
        return outcome                                 # the loop

    # -- what the Task calls ----------------------------------------------------------------
    # Each raises its outcome itself, its own traceback entry dropped (a bare ``raise``
    # adds none): the exception the Task keeps holds no frame of ours, so not the loop's
    # stack either (see ``_unlinked``). The lines that do it are repeated on purpose: a
    # shared helper would put its own frame in the traceback.
    def send(self, value: Any = None) -> Any:
        ready = self.ready
        if ready is not None:
            self.ready = None
            kind, value = self._replay(ready, False)
        else:
            kind, value = self._replay(self._step("send", value), True)
        if kind == "yield":
            return value
        try:
            raise value
        except BaseException:
            _unlinked(value)
            raise

    __next__ = send

    def throw(self, *args: Any) -> Any:
        exc = args[1] if len(args) > 1 and args[1] is not None else args[0]
        if isinstance(exc, type):
            exc = exc()
        ready, self.ready = self.ready, None
        if ready is not None and ready[0] != "yield":
            kind, value = self._replay(ready, False)  # it finished before the Task saw it
        else:
            if ready is not None and ready[1] is not None:
                ready[1].cancel()  # cancelled before the Task took the step: stop waiting
            # asyncio's own CancelledError, unchanged: asyncio.timeout() and TaskGroup test
            # it by identity.
            kind, value = self._replay(self._step("throw", exc), True)
        if kind == "yield":
            return value
        try:
            raise value
        except BaseException:
            _unlinked(value)
            raise

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        return self

    def __iter__(self) -> Any:
        return self

    # What a Task's repr and stack look at.
    @property
    def cr_frame(self) -> Any:
        return getattr(self._coro, "cr_frame", None)

    @property
    def cr_code(self) -> Any:
        return getattr(self._coro, "cr_code", None)

    @property
    def cr_running(self) -> bool:
        return bool(getattr(self._coro, "cr_running", False))

    @property
    def cr_await(self) -> Any:
        return getattr(self._coro, "cr_await", None)

    # -- Deferreds as futures ---------------------------------------------------------------
    def _adapt(self, yielded: Any) -> Any:
        if not isinstance(yielded, Deferred):
            self.waiting = None
            return yielded  # an asyncio future, None (sleep(0)), or a bad yield: the Task's
        future = self._loop.create_future()
        deferred: Deferred[Any] = yielded
        self.waiting = deferred

        def fired(result: Any) -> Any:
            if self.waiting is deferred:
                self.waiting = None
            if future.done():  # the Task stopped waiting (cancelled): nobody reads this
                return None if isinstance(result, Failure) else result
            ready = self.ready  # None, or this very wait (the Task has not replayed it yet)
            if ((ready is None or ready[1] is future) and self.task is not None and _CAN_SWAP
                    and not self.cr_running):
                # Resume now, as Twisted's driver does: while this callback runs, the
                # Deferred's result is still ``result``, which the coroutine reads.
                if not isinstance(result, Failure):
                    self.ready = self.step_in_task("send", None)
                elif result.check(defer.CancelledError) and not result.check(CancelledError):
                    self.ready = self.step_in_task("throw", CancelledError())
                else:  # as Twisted's driver does (the Deferred's debug info is not set yet)
                    self.ready = self.step_in_task("throw", result.value)
                future.set_result(None)
                return None
            future.set_result(None)
            return result  # kept: the coroutine reads it when the Task resumes it

        def stopped(f: Any) -> None:
            if f.cancelled() and not deferred.called:
                deferred.cancel()

        deferred.addBoth(fired)
        future.add_done_callback(stopped)
        future._asyncio_future_blocking = True
        return future


def install_bridge(loop: Any) -> None:
    """Let every Task of ``loop`` await Deferreds: its task factory wraps coroutines in
    ``_Bridge`` (handing them to any factory already set)."""
    prior = loop.get_task_factory()
    if getattr(prior, "_realtime_bridge", False):
        return
    def factory(loop: Any, coro: Any, **kwargs: Any) -> Any:
        bridge = coro if isinstance(coro, _Bridge) else _Bridge(coro, loop)
        if prior is not None:
            return prior(loop, bridge, **kwargs)  # its Task and context are not ours to use
        context = kwargs.pop("context", None)
        bridge.context = contextvars.copy_context() if context is None else context
        task = asyncio.Task(bridge, loop=loop, context=bridge.context, **kwargs)
        bridge.task = task
        return task

    factory._realtime_bridge = True  # type: ignore[attr-defined]
    loop.set_task_factory(factory)
