"""Long subprocess runs that the session starts ahead of the tests that need them, one at a
time, so the seconds they spend (mostly waiting: servers starting, paced load, virtualenvs)
pass beside the rest of the suite (tests/conftest.py: when the first test outside tests/e2e/
starts, since the end-to-end tests keep both cores busy with their own processes; those
tests run last). The test that needs one takes it up with ``take``, which starts it then if
the session did not (the test run alone).

Output goes to files (nobody reads a pipe meanwhile); a run the session never took up is
stopped by its PID when the session finishes."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class Run:
    """One command started now, bounded by ``timeout`` seconds from its start. ``nice``:
    a lower CPU priority, for a run whose results depend on no timing (the benchmarks'
    smoke runs), so the tests running meanwhile keep the cores they had."""

    def __init__(self, argv: Sequence[str], timeout: float, cwd: str | Path,
                 env: Mapping[str, str] | None = None, nice: int = 0) -> None:
        self.args = list(argv)
        self.deadline = time.monotonic() + timeout
        self._out = tempfile.TemporaryFile("w+")
        self._err = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            self.args, cwd=str(cwd), env=dict(env) if env is not None else None,
            stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL, text=True,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )

    def result(self) -> subprocess.CompletedProcess[str]:
        """Wait (until the deadline) for the run: its exit status, stdout and stderr.
        ``subprocess.TimeoutExpired`` (the run killed) past the deadline."""
        try:
            self.proc.wait(timeout=max(0.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        texts = []
        for file in (self._out, self._err):
            file.seek(0)
            texts.append(file.read())
            file.close()
        return subprocess.CompletedProcess(self.args, self.proc.returncode, *texts)

    def stop(self) -> None:
        """End the run (this process only, by its PID) if it is still going."""
        if self.proc.poll() is None:
            self.proc.terminate()  # (run.py stops its servers on SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


#: The runs started by the session, by name, until a test takes them up.
started: dict[str, Run] = {}
#: The runs waiting for their turn (``start_in_turn``), by name: set when started.
_turns: dict[str, threading.Event] = {}
_lock = threading.Lock()
_stopping = threading.Event()


def start_in_turn(runs: Sequence[tuple[str, Callable[[], Run]]]) -> None:
    """Start ``runs`` one after the other, each when the one before has ended (or passed
    its deadline), in a thread: one run at a time beside the suite, not all at once."""
    runs = [(name, make) for name, make in runs if name not in started and name not in _turns]
    for name, _make in runs:
        _turns[name] = threading.Event()

    def turns() -> None:
        for name, make in runs:
            run = None
            try:
                if not _stopping.is_set():
                    run = make()
            except Exception:  # the test's own take() starts it again, and fails there
                pass
            finally:
                with _lock:
                    late = _stopping.is_set()  # (stop_all() came while it started)
                    if run is not None and not late:
                        started[name] = run
                    _turns[name].set()
            if run is not None and late:
                run.stop()
                return
            if run is not None:
                try:
                    run.proc.wait(timeout=max(0.0, run.deadline - time.monotonic()))
                except subprocess.TimeoutExpired:  # the test that takes it up kills it
                    pass

    threading.Thread(target=turns, name="early-runs", daemon=True).start()


def take(name: str, make: Callable[[], Run]) -> Run:
    """The run ``name`` the session started (waiting for its turn if need be), or one
    started now."""
    turn = _turns.get(name)
    if turn is not None:
        turn.wait(900)
    with _lock:
        _turns.pop(name, None)
        run = started.pop(name, None)
    return run if run is not None else make()


def stop_all() -> None:
    """Stop the runs no test took up (the session was interrupted, ``-x``, deselected),
    and start no more."""
    _stopping.set()
    with _lock:
        runs = list(started.values())
        started.clear()
    for run in runs:
        run.stop()
