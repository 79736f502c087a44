"""Django's database from consumers: ``database_sync_to_async`` (Channels' name) and the
connection hygiene around every handler that runs in a thread.

Django keeps one database connection per thread and closes stale ones only at the start
and end of an HTTP request (its ``request_started``/``request_finished`` signals). A
consumer's handlers run outside any request, in the reactor's thread pool, so without help
a pooled thread keeps its connection open for ever: past ``CONN_MAX_AGE``, past a database
restart (the next query fails), one connection per pool thread. Channels' answer is
``close_old_connections()`` before and after each such call; so is this module's, for
``database_sync_to_async``, ``thread_handlers`` consumers, ``SyncConsumer`` workers and the
Django sessions and users of ``realtime.sessions``/``realtime.auth``.

Nothing here imports Django: without a configured Django every helper is a plain thread
hop, so projects without Django pay nothing.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

T = TypeVar("T")


#: Django's ``close_old_connections``, once Django is set up (it stays set up).
_close: Callable[[], None] | None = None


def django_ready() -> bool:
    """Django is imported, configured and set up (``django.setup()`` has run): its database
    and models may be used. False without Django, before ``DJANGO_SETTINGS_MODULE`` is
    read, or while the app registry is still loading."""
    global _close
    if _close is not None:
        return True
    if "django.apps" not in sys.modules:
        return False
    from django.apps import apps
    from django.conf import settings

    if not (settings.configured and apps.ready):
        return False
    from django.db import close_old_connections as close

    _close = close
    return True


def close_old_connections() -> None:
    """Django's ``close_old_connections()`` when Django is set up, else nothing: closes this
    thread's connections that are past ``CONN_MAX_AGE`` or unusable."""
    if django_ready():
        assert _close is not None
        _close()


def run_with_hygiene(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` in this (worker) thread between two ``close_old_connections()``: the
    one before drops a connection a database restart broke, or one past its age, before
    ``fn`` queries; the one after leaves none open past ``CONN_MAX_AGE``."""
    if not django_ready():
        return fn(*args, **kwargs)
    close_old_connections()
    try:
        return fn(*args, **kwargs)
    finally:
        close_old_connections()


def in_pool(reactor: Any, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
    """Run ``fn(*args, **kwargs)`` in ``reactor``'s thread pool with connection hygiene:
    how every handler, ORM call and session load that goes to a thread goes."""
    from twisted.internet.threads import deferToThreadPool

    return deferToThreadPool(reactor, reactor.getThreadPool(), run_with_hygiene, fn,
                             *args, **kwargs)


def in_db_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
    """``in_pool`` on the global reactor."""
    from twisted.internet import reactor

    return in_pool(reactor, fn, *args, **kwargs)


def database_sync_to_async(fn: Callable[..., T]) -> Callable[..., Deferred[T]]:
    """Channels' ``database_sync_to_async``: calling the wrapper runs ``fn`` in the thread
    pool, Django's stale connections closed before and after, and returns a Deferred
    (``await`` it in an ``async def`` handler, under either reactor). Also a decorator."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Deferred[T]:
        return in_db_thread(fn, *args, **kwargs)

    return wrapper
