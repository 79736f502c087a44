"""What the differential harnesses share (``test_http_vs_daphne``, ``test_ws_vs_daphne``,
``test_sio_vs_python_socketio``): the reference server's packages required, Daphne
started on a free port beside realtime, and a row run on both servers at once.

Each harness keeps its own client, rows, timeouts and comparisons: only what is the same
in all three lives here, so a fix to how the servers start reaches all of them.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import pytest

from tests.e2e.support import REPO, Server, on_a_free_port

#: The ``daphne`` column / ``ref`` words every harness uses: all of the answer is
#: compared, or the statuses (and the connection's end) only.
SAME = "same"
STATUS = "status"

#: A distribution whose module is named otherwise.
_MODULES = {"python-socketio": "socketio"}

T = TypeVar("T")


def require(*packages: str) -> None:
    """Import ``packages`` (distribution names), or leave the calling module: failed on
    CI, where a missing reference must not pass as a skip; skipped elsewhere."""
    try:
        for package in packages:
            importlib.import_module(_MODULES.get(package, package))
    except ImportError:
        one = len(packages) == 1
        reason = (f"{' and '.join(packages)} {'is' if one else 'are'} not installed (the "
                  f"test extra has {'it' if one else 'them'}: pip install -e '.[test]')")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason, allow_module_level=True)


def daphne(app: str, *args: str, env: dict[str, str]) -> Callable[[int], Server]:
    """``python -m daphne ARGS APP`` on 127.0.0.1 at a given port, once it listens (for
    ``on_a_free_port``)."""

    def start(port: int) -> Server:
        server = Server([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                         *args, app], env=env, cwd=REPO)
        server.wait_for(rf"Listening on TCP address 127\.0\.0\.1:{port}")
        server.addresses = [f"tcp:127.0.0.1:{port}"]
        return server

    return start


@contextmanager
def beside(ours: Sequence[str], env: dict[str, str],
           reference: Callable[[int], Server]) -> Iterator[tuple[Server, Server]]:
    """Realtime (``ours``: its twistd command) and the reference server, started side by
    side; both stopped after, whatever happened (the first if the second never starts)."""
    mine = Server(ours, env=env, cwd=REPO)
    try:
        theirs = on_a_free_port(reference)
    except BaseException:
        mine.stop()
        raise
    try:
        mine.wait_listening()
        yield mine, theirs
    finally:
        mine.stop()
        theirs.stop(timeout=3)  # Daphne waits for apps still running on SIGTERM


def both(ours: Callable[[], T], theirs: Callable[[], T]) -> tuple[T, T]:
    """``ours()`` and ``theirs()`` at once: a row's waits (timeouts, a reference's slow
    answers) pass once, not twice."""
    with ThreadPoolExecutor(2) as pool:
        mine, yours = pool.submit(ours), pool.submit(theirs)
        return mine.result(), yours.result()
