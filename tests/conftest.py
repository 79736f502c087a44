"""Shared fixtures. Nothing here imports the reactor at module level (pytest-twisted installs
the reactor chosen with --reactor, default or asyncio, after this file is imported)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.redis_support import (  # noqa: F401 (fixtures)
    cluster_layer,
    cluster_spares,
    own_cluster,
    redis_cluster,
    redis_layer,
    redis_server,
    redis_url,
    second_redis_server,
    sharded_layer,
)


@pytest.fixture(autouse=True)
def process_layers_restored() -> Any:
    """Parsing the service's options sets the process's ``get_channel_layer()`` layer (before
    the application is imported); later tests get the layers as they were."""
    from realtime import layers

    saved = dict(layers._layers)
    yield
    layers._layers.clear()
    layers._layers.update(saved)


@pytest.fixture(autouse=True)
def no_broadcast_delay_left() -> Any:
    """``--broadcast-delay`` is process-wide: a test that leaves one set would delay every
    later test's broadcasts (``testing.serve`` sets it and ``stop()`` restores it)."""
    yield
    from realtime.layers.base import _Hold, set_broadcast_delay

    delay = _Hold.delay
    if delay:
        set_broadcast_delay(0)
    assert delay == 0, "a test left a broadcast delay set (stop its server)"


@pytest.fixture
def live(realtime_server: Any) -> Any:
    """``await live(app, **config)``: the toolkit's ``realtime_server`` fixture (a real server
    on a free loopback port, stopped and leak-checked after the test)."""
    return realtime_server


#: The layers every layer test runs against; the Redis layer runs on a real redis-server that
#: tests/redis_support.py starts, the sharded one on two.
LAYER_KINDS = ["memory", "redis", "sharded", "cluster"]


@pytest.fixture(params=LAYER_KINDS)
def layer(request: Any) -> Any:
    """A fresh channel layer of each kind (``InMemoryChannelLayer``, ...)."""
    from realtime.layers import InMemoryChannelLayer

    if request.param == "memory":
        return InMemoryChannelLayer()
    return request.getfixturevalue(f"{request.param}_layer")


def pytest_ignore_collect(collection_path: Any, config: Any) -> bool | None:
    """tests/asyncio_reactor/ runs only under ``--reactor=asyncio`` (the main run drives it
    in a subprocess: tests/test_asyncio_reactor.py)."""
    if collection_path.name == "asyncio_reactor" and config.getoption("reactor") != "asyncio":
        return True
    return None


def pytest_itemcollected(item: Any) -> None:
    """Under ``-n 2 --dist loadgroup`` (pytest-xdist; tests/run.sh) the tests of
    tests/e2e/ and the others are two groups, each run by one worker in its usual order,
    side by side: mostly waiting, they share the two cores well. Each worker has its own
    session (redis-servers, the e2e browser); the early runs start in the other group's.
    xdist compares the two workers' collections: a test id must not be random."""
    if item.config.pluginmanager.hasplugin("xdist"):
        item.add_marker(pytest.mark.xdist_group("e2e" if _in_e2e(item) else "unit"))


def _in_e2e(item: Any) -> bool:
    """The test is in tests/e2e/."""
    return "e2e" in item.path.relative_to(Path(__file__).parent).parts


def _early_runs_of(item: Any) -> list[Any]:
    """The ``(name, make)`` of each long run (tests/early.py) this test takes up: its
    module's ``early_run_of(item)`` says (one, a list of them, or None)."""
    finder = getattr(getattr(item, "module", None), "early_run_of", None)
    runs = finder(item) if finder is not None else None
    if runs is None:
        return []
    return list(runs) if isinstance(runs, list) else [runs]


#: The runs the selected tests take up, in their order; started at the first test outside
#: tests/e2e/ (whose tests keep both cores busy with browsers and servers of their own).
_early_runs: list[Any] = []


def _uses_the_session_cluster(item: Any) -> bool:
    """The test takes ``redis_cluster``, or ``layer`` of the cluster kind (which takes it)."""
    callspec = getattr(item, "callspec", None)
    return ("redis_cluster" in getattr(item, "fixturenames", ())
            or (callspec is not None and callspec.params.get("layer") == "cluster"))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: Any, config: Any, items: list[Any]) -> None:
    """The tests that take up a long run (tests/early.py) go last, so that it runs beside
    the others first; their order among themselves is kept. The session's Redis Cluster
    (``redis_cluster``), if a test uses it, starts coming up now. (Last among the hooks:
    after ``-k``/``-m`` deselected, so that only the runs of selected tests start.)"""
    if config.option.collectonly or len(items) < 2:
        return
    if any(_uses_the_session_cluster(item) for item in items):
        from tests.redis_support import start_session_cluster

        start_session_cluster()
    takers = [item for item in items if _early_runs_of(item)]
    if takers:
        items[:] = [item for item in items if not _early_runs_of(item)] + takers
        for item in takers:
            for run in _early_runs_of(item):
                if run[0] not in (name for name, _ in _early_runs):
                    _early_runs.append(run)


def pytest_runtest_setup(item: Any) -> None:
    """At the first test outside tests/e2e/, the long runs start, one at a time."""
    if _early_runs and not _in_e2e(item):
        from tests import early

        early.start_in_turn(_early_runs)
        _early_runs.clear()


def pytest_sessionfinish(session: Any) -> None:
    """A run no test took up (interrupted, ``-x``) is stopped, by its PID."""
    from tests import early
    from tests.redis_support import stop_session_cluster

    early.stop_all()
    stop_session_cluster()
