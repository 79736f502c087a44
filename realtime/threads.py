"""Crossing between the reactor thread, worker threads and asyncio.

``sync_to_async`` runs blocking code (an ORM call, a file read) in the reactor's thread pool
and returns a Deferred; ``async_to_sync`` lets code in a worker thread call something that
returns a Deferred and wait for it; ``aio`` turns an asyncio awaitable into a Deferred
(under ``--reactor=asyncio``).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

T = TypeVar("T")


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def sync_to_async(fn: Callable[..., T]) -> Callable[..., Deferred[T]]:
    """Wrap a blocking function: calling the wrapper runs it in the thread pool."""
    from twisted.internet.threads import deferToThreadPool

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Deferred[T]:
        reactor = _reactor()
        return deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args, **kwargs)

    return wrapper


def async_to_sync(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Deferred- or coroutine-returning function for a worker thread: the call runs on
    the reactor thread and the worker waits for its result (``blockingCallFromThread``).
    Called on the reactor thread itself it raises ``RuntimeError`` instead of hanging."""
    from twisted.internet.threads import blockingCallFromThread
    from twisted.python import threadable
    from twisted.python.threadable import isInIOThread

    from realtime.middleware import resolve

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
            return Deferred.fromCoroutine(resolve(fn(*args, **kwargs)))

        return blockingCallFromThread(_reactor(), call)

    return wrapper


def aio(awaitable: Awaitable[T]) -> Deferred[T]:
    """An asyncio awaitable (a coroutine, task or future) as a Deferred, for consumers that
    use asyncio libraries; needs ``--reactor=asyncio``."""
    import asyncio

    return Deferred.fromFuture(asyncio.ensure_future(awaitable))
