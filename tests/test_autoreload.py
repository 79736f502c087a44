"""realtime.autoreload in process: what a scan watches, the watcher's settling on a Clock,
the reload supervisor's restarts on a fake reactor, and the ``--reload`` options. The real
processes are tests/e2e/test_dev_reload.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from realtime import autoreload
from realtime.autoreload import ReloadSupervisor, Watcher, default_dirs, outermost, scan
from realtime.config import StartupError
from realtime.tap import Options
from tests.test_workers_supervisor import FakeReactor

APP = "realtime.examples.bench:application"


class Tree:
    """Files under a directory, each write's mtime a second past the last one's."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stamp = 1_700_000_000 * 10**9

    def write(self, *names: str) -> None:
        for name in names:
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(name)
            self.stamp += 10**9
            os.utime(path, ns=(self.stamp, self.stamp))


def relative(root: Path, paths) -> list[str]:
    return sorted(os.path.relpath(p, root) for p in paths)


def test_scan_watches_python_files_and_skips_caches_vcs_virtualenvs_and_hidden(tmp_path):
    tree = Tree(tmp_path)
    tree.write("app.py", "chat/consumers.py", "chat/templates/room.html", "README.md",
               "chat/__pycache__/consumers.cpython-311.py", ".git/hooks/x.py",
               ".hidden.py", "node_modules/pkg/x.py", "env/lib/site.py",
               "env/pyvenv.cfg", "build/lib/site-packages/dep.py")
    assert relative(tmp_path, scan([str(tmp_path)])) == ["app.py", "chat/consumers.py"]
    found = scan([str(tmp_path)], include=("*.py", "*.html"), exclude=("chat/templates",))
    assert relative(tmp_path, found) == ["app.py", "chat/consumers.py"]
    found = scan([str(tmp_path)], include=("*.py", "*.html"), exclude=("consumers.py",))
    assert relative(tmp_path, found) == ["app.py", "chat/templates/room.html"]


def watcher(root: Path) -> tuple[Watcher, Clock, list[list[str]]]:
    clock = Clock()
    calls: list[list[str]] = []
    w = Watcher([str(root)], calls.append, clock, interval=0.5, settle=0.2)
    return w, clock, calls


def test_files_saved_together_are_one_change_once_they_settle(tmp_path):
    tree = Tree(tmp_path)
    tree.write("a.py", "b.py", "c.py")
    w, clock, calls = watcher(tmp_path)
    assert w.start() == 3
    clock.advance(0.5)
    assert calls == []  # nothing changed
    tree.write("a.py")
    clock.advance(0.5)  # seen; waits for it to settle
    tree.write("b.py")  # a second save meanwhile
    clock.advance(0.2)
    assert calls == []
    (tmp_path / "c.py").unlink()
    tree.write("d.py")
    clock.advance(0.2)
    assert calls == []
    clock.advance(0.2)  # quiet for one settle period
    assert [relative(tmp_path, c) for c in calls] == [["a.py", "b.py", "c.py", "d.py"]]
    clock.advance(5)
    assert len(calls) == 1
    w.stop()
    assert not clock.getDelayedCalls()


def test_files_that_keep_changing_restart_after_a_bounded_wait(tmp_path):
    tree = Tree(tmp_path)
    tree.write("a.py")
    w, clock, calls = watcher(tmp_path)
    w.start()
    tree.write("a.py")
    clock.advance(0.5)
    for _ in range(autoreload.MAX_SETTLE_ROUNDS):
        tree.write("a.py")
        clock.advance(0.2)
        assert calls == []
    tree.write("a.py")
    clock.advance(0.2)
    assert len(calls) == 1


def test_default_dirs_add_the_app_package_directory_unless_installed(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "mysite").mkdir(parents=True)
    (project / "mysite" / "__init__.py").write_text("")
    (project / "solo.py").write_text("")
    monkeypatch.syspath_prepend(str(project))
    here = tmp_path / "elsewhere"
    here.mkdir()
    assert default_dirs("mysite.asgi:application", str(here)) == [str(here), str(project)]
    assert default_dirs("solo:application", str(here)) == [str(here), str(project)]
    assert default_dirs("pytest:main", str(here)) == [str(here)]  # site-packages
    assert default_dirs("json:loads", str(here)) == [str(here)]  # the standard library
    assert default_dirs("nowhere_at_all:app", str(here)) == [str(here)]
    assert outermost([str(project), str(project / "mysite"), str(here), str(project)]) == [
        str(project), str(here)]
    assert outermost([str(project / "mysite"), str(tmp_path)]) == [str(tmp_path)]


def reload_supervisor(tmp_path: Path) -> tuple[ReloadSupervisor, FakeReactor]:
    reactor = FakeReactor()
    options = SimpleNamespace(workers=1, argv=["--app", APP, "--reload"], listeners=[],
                              config=SimpleNamespace(shutdown_timeout=2.0),
                              reload_dirs=[str(tmp_path)], reload_include=["*.py"],
                              reload_exclude=[])
    return ReloadSupervisor(options, reactor), reactor


def test_a_change_drains_the_server_then_starts_a_new_one(tmp_path):
    sup, reactor = reload_supervisor(tmp_path)
    server = sup.server
    server.spawn()
    old = server.process
    sup.changed([str(tmp_path / "app.py")])
    assert old.signals == [15] and len(reactor.spawned) == 1  # not before it has exited
    sup.changed([str(tmp_path / "app.py")])  # a change while it drains: no second signal
    assert old.signals == [15]
    server.processEnded(Failure(ProcessDone(0)))
    assert len(reactor.spawned) == 2 and server.pid == 1001
    assert not reactor.getDelayedCalls()  # the kill deadline is cancelled


@pytest.mark.parametrize("status", [1, autoreload.STARTUP_FAILED])
def test_a_server_that_cannot_start_waits_for_the_next_change(tmp_path, status):
    """A SyntaxError (1) or a failed lifespan start-up (3, which stops --workers)."""
    sup, reactor = reload_supervisor(tmp_path)
    statuses: list[int] = []
    sup.on_failure = statuses.append
    server = sup.server
    server.spawn()
    server.processEnded(Failure(ProcessTerminated(exitCode=status)))
    reactor.advance(60)
    assert len(reactor.spawned) == 1 and server.pid is None
    assert statuses == [] and sup.exit_status == 0
    sup.changed([str(tmp_path / "app.py")])
    assert len(reactor.spawned) == 2 and server.pid == 1001


def test_a_server_that_does_not_exit_for_a_restart_is_killed(tmp_path):
    sup, reactor = reload_supervisor(tmp_path)
    server = sup.server
    server.spawn()
    sup.changed([str(tmp_path / "app.py")])
    reactor.advance(2 * 2.0 + autoreload.KILL_GRACE)
    assert server.process.signals == [15, 9]
    server.processEnded(Failure(ProcessTerminated(signal=9)))
    assert len(reactor.spawned) == 2


def test_stopping_while_a_restart_drains_signals_once_and_starts_nothing(tmp_path):
    sup, reactor = reload_supervisor(tmp_path)
    server = sup.server
    server.spawn()
    sup.changed([str(tmp_path / "app.py")])
    sup.running = True
    stopped = sup.stopService()
    fired: list[object] = []
    stopped.addBoth(fired.append)
    assert server.process.signals == [15]
    server.processEnded(Failure(ProcessDone(0)))
    assert fired == [[]] and len(reactor.spawned) == 1
    assert not reactor.getDelayedCalls()


@pytest.fixture
def _no_realtime_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith("REALTIME_"):
            monkeypatch.delenv(name)


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(["--app", APP, *args])
    return options


def error(*args: str) -> str:
    with pytest.raises(StartupError) as info:
        parse(*args)
    return str(info.value).removeprefix("realtime: error: ")


@pytest.mark.usefixtures("_no_realtime_environment")
def test_reload_options(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    options = parse("--reload", "--reload-dir", f"{a},{b}", "--reload-dir", str(a / ".."),
                    "--reload-include", "*.html, *.txt", "--reload-exclude", "migrations")
    assert options.reload and options.application is None  # the child imports it
    assert options.reload_dirs == [str(tmp_path)]
    assert options.reload_include == ["*.py", "*.html", "*.txt"]
    assert options.reload_exclude == ["migrations"]
    monkeypatch.chdir(a)
    assert parse("--reload").reload_dirs == outermost(default_dirs(APP, str(a)))
    assert parse("--reload").reload_dirs[0] == str(a)
    monkeypatch.setenv("REALTIME_RELOAD", "1")
    monkeypatch.setenv("REALTIME_RELOAD_DIR", f"{b}")
    assert parse().reload_dirs == [str(b)]
    monkeypatch.delenv("REALTIME_RELOAD")
    assert error() == "--reload-dir: needs --reload"
    monkeypatch.delenv("REALTIME_RELOAD_DIR")
    assert not parse("--workers", "1").reload


@pytest.mark.usefixtures("_no_realtime_environment")
def test_reload_errors(tmp_path):
    assert error("--reload-include", "*.html") == "--reload-include: needs --reload"
    assert error("--reload", "--reload-dir", str(tmp_path / "missing")) == (
        f"--reload-dir {tmp_path / 'missing'}: not a directory")
    assert error("--reload", "--workers", "3", "--layer", "redis://127.0.0.1/0") == (
        "--reload and --workers 3 cannot be used together: --reload runs one server process")
    with pytest.raises(StartupError, match="expected MODULE:ATTRIBUTE"):
        Options().parseOptions(["--app", "nocolon", "--reload"])


def test_a_reload_child_neither_watches_nor_refuses(monkeypatch):
    import json
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        marker = {"index": 1, "parent": os.getppid(), "listeners": [[sock.fileno(), "tcp:0"]]}
        monkeypatch.setenv("_REALTIME_WORKER", json.dumps(marker))
        import signal

        monkeypatch.setattr(signal, "signal", lambda *a: None)
        options = parse("--reload", "--reload-dir", "/nonexistent")
    assert not options.reload and options.reload_dirs == [] and options.application
    assert sys.modules["realtime.examples.bench"]


def test_a_restart_does_not_wait_for_pipes_a_process_the_server_started_holds(tmp_path):
    """The application started a process (it inherits stdout and stderr): the server has
    exited, but its pipes stay open. The new server starts PIPE_GRACE later anyway; before,
    nothing started until that process ended, and the kill deadline raised
    ProcessExitedAlready."""
    from realtime import workers

    sup, reactor = reload_supervisor(tmp_path)
    server = sup.server
    server.spawn()
    proto = reactor.spawned[0]["proto"]
    sup.changed([str(tmp_path / "app.py")])
    proto.childDataReceived(1, b"last words\n")
    proto.processExited(Failure(ProcessDone(0)))  # reaped; processEnded does not come
    assert len(reactor.spawned) == 1
    reactor.advance(workers.PIPE_GRACE)
    assert len(reactor.spawned) == 2 and server.pid == 1001
    proto.processEnded(Failure(ProcessDone(0)))  # the other process ended at last
    assert len(reactor.spawned) == 2 and server.pid == 1001  # counted once


def test_an_exit_whose_output_is_read_counts_at_once_and_once(tmp_path):
    sup, reactor = reload_supervisor(tmp_path)
    server = sup.server
    server.spawn()
    proto = reactor.spawned[0]["proto"]
    sup.changed([str(tmp_path / "app.py")])
    proto.processExited(Failure(ProcessDone(0)))
    proto.processEnded(Failure(ProcessDone(0)))
    assert len(reactor.spawned) == 2 and server.pid == 1001
    assert not [c for c in reactor.getDelayedCalls() if c.func.__name__ == "_report"]


def test_a_signal_to_a_reaped_server_is_no_error(tmp_path):
    from twisted.internet.error import ProcessExitedAlready

    sup, _reactor = reload_supervisor(tmp_path)
    server = sup.server
    server.spawn()

    def reaped(number: int) -> None:
        raise ProcessExitedAlready()

    server.process.signalProcess = reaped
    sup.changed([str(tmp_path / "app.py")])  # SIGTERM: raised into the watcher before
    sup.forward(1)


def test_a_change_removes_the_changed_modules_bytecode(tmp_path):
    """Python would import a same-size module saved within the second it was compiled from
    the old .pyc (its check is the source's mtime in whole seconds, and its size)."""
    import importlib.util
    import py_compile

    sup, _reactor = reload_supervisor(tmp_path)
    changed, kept = tmp_path / "app.py", tmp_path / "other.py"
    for module in (changed, kept):
        module.write_text("X = 1\n")
        py_compile.compile(str(module), doraise=True)
    (tmp_path / "page.html").write_text("")
    sup.changed([str(changed), str(tmp_path / "gone.py"), str(tmp_path / "page.html")])
    assert not os.path.exists(importlib.util.cache_from_source(str(changed)))
    assert os.path.exists(importlib.util.cache_from_source(str(kept)))


def test_a_slow_scan_makes_the_next_one_wait_longer(tmp_path, monkeypatch):
    """Scanning a huge tree every 0.5 s kept the supervisor busy all the time (18,000 files
    under /usr: about a second a scan): the next scan now waits SCAN_BACKOFF times as long
    as the last one took."""
    Tree(tmp_path).write("a.py")
    clock = Clock()
    now, duration, scans = [0.0], [0.0], []
    real_scan = autoreload.scan

    def slow_scan(*args, **kwargs):
        scans.append(clock.seconds())
        now[0] += duration[0]
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(autoreload, "scan", slow_scan)
    w = Watcher([str(tmp_path)], [].append, clock, interval=0.5, settle=0.2,
                timer=lambda: now[0])
    w.start()
    clock.advance(0.5)
    clock.advance(0.5)
    assert scans == [0.0, 0.5, 1.0]  # quick scans: every interval
    duration[0] = 1.0
    clock.advance(0.5)
    assert w.took == 1.0 and w.every == autoreload.SCAN_BACKOFF * 1.0
    clock.advance(autoreload.SCAN_BACKOFF - 0.1)
    assert len(scans) == 4
    clock.advance(0.1)
    assert len(scans) == 5
    w.stop()
    assert not clock.getDelayedCalls()


def test_sighup_is_not_passed_on_to_a_server_still_starting(tmp_path):
    """Its handler is not installed yet: SIGHUP would kill it, and no server would run
    until the next change."""
    sup, _reactor = reload_supervisor(tmp_path)
    server = sup.server
    server.spawn()
    sup.forward(1)
    assert server.process.signals == []
    sup.worker_ready()
    sup.forward(1)
    assert server.process.signals == [1]
    sup.changed([str(tmp_path / "app.py")])
    server.processEnded(Failure(ProcessDone(0)))
    sup.forward(1)  # the new one is starting
    assert server.pid == 1001 and server.process.signals == []


def test_a_new_server_with_a_reused_pid_still_gets_sigterm(tmp_path, monkeypatch):
    """stop() signals each process once, by pid: a new server whose pid the kernel gave
    again (after the pids wrapped) was never told to stop."""
    from tests.test_workers_supervisor import FakeProcess

    sup, reactor = reload_supervisor(tmp_path)
    spawn = reactor.spawnProcess

    def same_pid(*args, **kwargs):
        spawn(*args, **kwargs)
        process = FakeProcess(1000)
        args[0].makeConnection(process)
        return process

    monkeypatch.setattr(reactor, "spawnProcess", same_pid)
    server = sup.server
    server.spawn()
    sup.changed([str(tmp_path / "app.py")])
    server.processEnded(Failure(ProcessDone(0)))
    assert len(reactor.spawned) == 2 and server.pid == 1000
    sup.changed([str(tmp_path / "app.py")])
    assert server.process.signals == [15]


def test_a_save_by_rename_with_the_same_mtime_and_size_counts(tmp_path):
    """vim (backupcopy=no), JetBrains' safe write: a new file renamed over the old one; the
    inode tells it apart even when mtime and size are the old ones."""
    tree = Tree(tmp_path)
    tree.write("a.py")
    w, clock, calls = watcher(tmp_path)
    w.start()
    old = (tmp_path / "a.py").stat()
    replacement = tmp_path / "a.py___jb_tmp___"
    replacement.write_text("a.p!")  # same size
    os.utime(replacement, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(replacement, tmp_path / "a.py")
    clock.advance(0.5)  # seen
    clock.advance(0.2)  # settled
    assert [relative(tmp_path, c) for c in calls] == [["a.py"]]
