"""pytest plugin (entry point ``realtime``): live-server fixtures and a reactor leak check.

Loading it imports no reactor (pytest-twisted installs the one chosen with ``--reactor``
later); the fixtures import it when they run.

- ``realtime_server``: ``server = await realtime_server(app, **config)`` starts the real
  server on a free loopback port; ``server.ws_url("/echo")``, ``server.http_url("/")``. After
  the test every server is stopped and the reactor is checked for leaks. ``tls=`` (a
  ``CertificateOptions``) serves over TLS, with HTTP/2 offered (``https://``/``wss://`` URLs).
- ``realtime_leak_check``: the leak check alone, for tests that start their own things. A
  test that leaves a listening port, a connection or a pending delayed call behind fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

#: How long a leftover may take to go away on its own (a close in flight) before it is a leak.
GRACE = 1.0


def _reactor_internal(selectable: Any) -> bool:
    """The reactor's own wakers come and go on first use; they are not the test's."""
    return type(selectable).__module__.startswith("twisted.internet._signals") or type(
        selectable
    ).__name__.endswith("Waker")


def _snapshot(reactor: Any) -> tuple[set[Any], set[Any]]:
    selectables = {
        s for s in (*reactor.getReaders(), *reactor.getWriters()) if not _reactor_internal(s)
    }
    calls = {call for call in reactor.getDelayedCalls() if call.active()}
    return selectables, calls


async def _leaks(reactor: Any, before: tuple[set[Any], set[Any]]) -> list[str]:
    from twisted.internet.task import deferLater

    waited = 0.0
    while True:
        selectables, calls = _snapshot(reactor)
        new_selectables = selectables - before[0]
        new_calls = calls - before[1]
        if not new_selectables and not new_calls:
            return []
        if waited >= GRACE:
            break
        await deferLater(reactor, 0.01, lambda: None)
        waited += 0.01
    problems = [f"left open: {s!r}" for s in new_selectables]
    problems += [f"left pending: {c!r}" for c in new_calls]
    # Clean up so the next test starts clean.
    for selectable in new_selectables:
        if hasattr(selectable, "abortConnection"):
            selectable.abortConnection()
        elif hasattr(selectable, "stopListening"):
            selectable.stopListening()
    for call in new_calls:
        if call.active():
            call.cancel()
    return problems


def check_leaks(reactor: Any, before: tuple[set[Any], set[Any]]) -> None:
    import pytest_twisted
    from twisted.internet.defer import Deferred

    problems = pytest_twisted.blockon(Deferred.fromCoroutine(_leaks(reactor, before)))
    if problems:
        pytest.fail("the test leaked reactor state:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.fixture
def realtime_leak_check() -> Iterator[None]:
    from twisted.internet import reactor

    before = _snapshot(reactor)
    yield
    check_leaks(reactor, before)


@pytest.fixture
def realtime_server() -> Iterator[Any]:
    import pytest_twisted
    from twisted.internet import reactor

    from realtime.config import ServerConfig
    from realtime.testing import serve

    before = _snapshot(reactor)
    servers: list[Any] = []

    async def start(application: Any, tls: Any = None, **config: Any) -> Any:
        server = await serve(application, ServerConfig(**config), reactor, tls=tls)
        servers.append(server)
        return server

    yield start
    for server in servers:
        pytest_twisted.blockon(server.stop())
    check_leaks(reactor, before)
