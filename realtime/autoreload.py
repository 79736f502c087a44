"""``--reload``: restart the server when a watched file changes. For development only.

``twistd -n realtime --reload --app ...`` runs a supervisor (``ReloadSupervisor``, the
``--workers`` supervisor of ``realtime.workers`` with one child) that binds the listeners
and starts the server as a child process on them, as it starts a worker. It polls the
watched directories (``--reload-dir``; by default the current directory, plus the one the
``--app`` module's top-level package is in when that is elsewhere and not an installed
package's) for ``*.py`` files every ``POLL_INTERVAL`` seconds (less often when one scan
takes long: ``SCAN_BACKOFF``): their mtime, size and inode.
Once a change has settled (``SETTLE`` seconds without another: files saved together
restart once), the server is stopped as SIGTERM stops it (open WebSockets get 1001; killed
if still there twice ``--shutdown-timeout`` + 5 s later) and a new one started.

- The supervisor never imports the application, so a server that cannot start (a
  SyntaxError, a failed lifespan start-up) is logged and the next change starts another.
- The listening sockets stay open in the supervisor across restarts: a client that
  connects meanwhile waits in the queue for the new server instead of being refused.
- SIGTERM/SIGINT stop the server and the supervisor (status 0); SIGHUP is passed on to a
  server that is ready (one still starting would die of it).
- A changed module's ``.pyc`` is removed before the restart (``forget_bytecode``).

Not for production: a crashed server is not restarted until a file changes (systemd's
``Restart=`` and ``--workers`` restart processes; this only reloads code).
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import signal
import sysconfig
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.logger import Logger

from realtime.lifespan import STARTUP_FAILED
from realtime.workers import KILL_GRACE, SupervisorService, Worker

log = Logger()

#: Seconds between two scans of the watched directories.
POLL_INTERVAL = 0.5
#: After a change, seconds without another before the restart.
SETTLE = 0.2
#: Files that keep changing delay a restart by at most this many ``SETTLE`` rounds.
MAX_SETTLE_ROUNDS = 10
#: The next scan waits at least this many times as long as the last one took: a huge tree
#: costs the supervisor at most about a fifth of a core instead of all of it, and it still
#: relays output and handles signals in between.
SCAN_BACKOFF = 4
DEFAULT_INCLUDE = ("*.py",)
#: Directories never walked, besides hidden ones and virtualenvs (with a pyvenv.cfg).
SKIPPED_DIRS = frozenset({"__pycache__", "node_modules", "site-packages", "dist-packages"})

#: What a scan keeps of a file: mtime (ns), size, inode (an editor's save-by-rename).
Stamp = tuple[int, int, int]


def _matches(name: str, relative: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(relative, p) for p in patterns)


def scan(dirs: Iterable[str], include: Sequence[str] = DEFAULT_INCLUDE,
         exclude: Sequence[str] = ()) -> dict[str, Stamp]:
    """Every watched file under ``dirs``: path -> stamp. Patterns match a file's (or a
    directory's) name or its path relative to its watched directory; symlinked
    directories are not followed."""
    found: dict[str, Stamp] = {}
    for top in dirs:
        prefix = os.path.join(top, "")  # entry paths start with it (os.path.relpath is slow)
        stack = [top]
        while stack:
            try:
                with os.scandir(stack.pop()) as entries:
                    listed = list(entries)
            except OSError:  # gone, or not readable
                continue
            for entry in listed:
                name = entry.name
                if name.startswith("."):
                    continue
                relative = entry.path[len(prefix):]
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if not (name in SKIPPED_DIRS or _matches(name, relative, exclude)
                                or os.path.exists(os.path.join(entry.path, "pyvenv.cfg"))):
                            stack.append(entry.path)
                    elif (_matches(name, relative, include)
                          and not _matches(name, relative, exclude)):
                        st = entry.stat()
                        found[entry.path] = (st.st_mtime_ns, st.st_size, st.st_ino)
                except OSError:  # removed while scanned
                    continue
    return found


class Watcher:
    """Polls for changed, new and removed files; calls ``on_change`` with their paths once
    they have settled."""

    def __init__(self, dirs: Sequence[str], on_change: Callable[[list[str]], None],
                 reactor: Any, include: Sequence[str] = DEFAULT_INCLUDE,
                 exclude: Sequence[str] = (), interval: float = POLL_INTERVAL,
                 settle: float = SETTLE, timer: Callable[[], float] = time.monotonic) -> None:
        self.dirs = list(dirs)
        self.on_change = on_change
        self.reactor = reactor
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.interval = interval
        self.settle = settle
        self.timer = timer
        self.files: dict[str, Stamp] = {}
        #: How long the last scan took (seconds).
        self.took = 0.0
        self._next: Any = None
        self._settling: Any = None
        self._pending: set[str] = set()
        self._rounds = 0
        self._warned = False

    def start(self) -> int:
        """Take the first snapshot and start polling; returns how many files are watched."""
        self.files = self._scan()
        self._schedule()
        return len(self.files)

    def stop(self) -> None:
        for call in (self._next, self._settling):
            if call is not None and call.active():
                call.cancel()
        self._next = self._settling = None

    @property
    def every(self) -> float:
        """Seconds until the next scan: ``interval``, longer after a slow scan."""
        return max(self.interval, SCAN_BACKOFF * self.took)

    def _schedule(self) -> None:
        self._next = self.reactor.callLater(self.every, self._tick)

    def _tick(self) -> None:
        try:
            self.poll()
        finally:
            self._schedule()

    def _scan(self) -> dict[str, Stamp]:
        began = self.timer()
        files = scan(self.dirs, self.include, self.exclude)
        self.took = self.timer() - began
        if self.took > self.interval / 2 and not self._warned:
            self._warned = True
            log.warn("reload: scanning {count} file(s) took {took:.2f} s, so they are "
                     "scanned every {every:.1f} s; watch less with --reload-dir or "
                     "--reload-exclude", count=len(files), took=self.took, every=self.every)
        return files

    def _changes(self) -> set[str]:
        files = self._scan()
        changed = {path for path in files.keys() | self.files.keys()
                   if files.get(path) != self.files.get(path)}
        self.files = files
        return changed

    def poll(self) -> None:
        if self._settling is not None:
            return
        changed = self._changes()
        if changed:
            self._pending |= changed
            self._rounds = 0
            self._settling = self.reactor.callLater(self.settle, self._settled)

    def _settled(self) -> None:
        self._settling = None
        changed = self._changes()
        self._pending |= changed
        if changed and self._rounds < MAX_SETTLE_ROUNDS:
            self._rounds += 1
            self._settling = self.reactor.callLater(self.settle, self._settled)
            return
        paths, self._pending = sorted(self._pending), set()
        self.on_change(paths)


def default_dirs(app: str, cwd: str | None = None) -> list[str]:
    """The current directory, and the directory the ``--app`` module's top-level package
    (or module) is found in, unless that is an installed package's (the standard library,
    site-packages). The application is not imported."""
    here = os.path.abspath(cwd or os.getcwd())
    dirs = [here]
    top = app.partition(":")[0].partition(".")[0]
    try:
        spec = importlib.util.find_spec(top) if top else None
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return dirs
    if spec.submodule_search_locations:
        found = [os.path.dirname(p) for p in spec.submodule_search_locations]
    elif spec.origin and os.path.isfile(spec.origin):
        found = [os.path.dirname(spec.origin)]
    else:  # built in, frozen
        found = []
    installed = {os.path.realpath(p) for p in sysconfig.get_paths().values()}
    for directory in found:
        real = os.path.realpath(directory)
        parts = real.split(os.sep)
        if ("site-packages" in parts or "dist-packages" in parts
                or any(_within(real, p) for p in installed)):
            continue
        dirs.append(directory)
    return dirs


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def outermost(dirs: Iterable[str]) -> list[str]:
    """Absolute paths without duplicates and without those inside another (one walk each)."""
    kept: list[tuple[str, str]] = []  # (absolute, real)
    for directory in dirs:
        path = os.path.abspath(directory)
        real = os.path.realpath(path)
        if any(_within(real, other) for _, other in kept):
            continue
        kept = [(p, r) for p, r in kept if not _within(r, real)]
        kept.append((path, real))
    return [path for path, _ in kept]


def describe(paths: Sequence[str], limit: int = 3) -> str:
    """``app.py, chat/consumers.py and 2 more``: relative to the current directory when
    under it."""
    here = os.getcwd()
    names = [os.path.relpath(p, here) if _within(p, here) else p for p in paths]
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def forget_bytecode(paths: Iterable[str]) -> None:
    """Remove the cached bytecode (``__pycache__/*.pyc``) of changed modules. Python trusts
    a .pyc whose recorded source mtime, in whole seconds, and size match the source's: a
    module saved again within the second the last server compiled it, at the same size
    (``v1`` -> ``v2``), would be imported from the old bytecode and the change not served."""
    for path in paths:
        if not path.endswith(".py"):
            continue
        for optimization in ("", 1, 2):
            try:
                os.remove(importlib.util.cache_from_source(path, optimization=optimization))
            except (OSError, NotImplementedError, ValueError):  # none; no cache
                continue


class ReloadWorker(Worker):
    """The server child: stopped and started again on a change, never restarted on its own
    (a server that could not start waits for the fix)."""

    replacing = False
    #: It said READY=1: its SIGHUP handler is in place.
    ready = False

    @property
    def name(self) -> str:
        return "server"

    def spawn(self) -> None:
        self.ready = False
        super().spawn()

    def exited(self, pid: int | None, how: str, status: int | None) -> None:
        if status == STARTUP_FAILED and not self.replacing:
            how += " (the application's startup failed)"
        if self.replacing:
            log.info("server (pid {pid}) {how}", pid=pid, how=how)
        else:
            log.error("server (pid {pid}) {how}; waiting for a file change to start it "
                      "again", pid=pid, how=how)

    def replace(self) -> None:
        """Stop the server (a drain, as at SIGTERM) and start a new one once it has exited;
        at once when none runs."""
        if self.replacing:  # the new one reads the files as they are when it starts
            return
        if self.pid is None:
            self.spawn()
            return
        self.replacing = True
        sup = self.supervisor
        pid = self.pid
        deadline = sup.reactor.callLater(2 * sup.shutdown_timeout + KILL_GRACE, self._kill, pid)

        def again(_: Any) -> None:
            self.replacing = False
            if deadline.active():
                deadline.cancel()
            if not sup.stopping:
                self.spawn()

        self.stop().addCallback(again)

    def _kill(self, pid: int) -> None:
        if self.pid == pid:
            log.warn("server (pid {pid}) still running: SIGKILL", pid=pid)
            self.signal(signal.SIGKILL)


class ReloadSupervisor(SupervisorService):
    """One server child, restarted when a watched file changes."""

    worker_class = ReloadWorker

    def __init__(self, options: Any, reactor: Any) -> None:
        super().__init__(options, reactor)
        self.watcher = Watcher(options.reload_dirs, self.changed, reactor,
                               options.reload_include, options.reload_exclude)

    @property
    def server(self) -> ReloadWorker:
        worker = self.workers[0]
        assert isinstance(worker, ReloadWorker)
        return worker

    def what(self) -> str:
        return "the server"

    def startService(self) -> None:
        count = self.watcher.start()
        log.info("reload: watching {count} file(s) ({patterns}) in {dirs}; for development "
                 "only", count=count, patterns=", ".join(self.watcher.include),
                 dirs=", ".join(self.watcher.dirs))
        super().startService()

    def changed(self, paths: list[str]) -> None:
        if self.stopping:
            return
        forget_bytecode(paths)
        log.info("reload: {files} changed; restarting the server", files=describe(paths))
        self.server.replace()

    def forward(self, number: int) -> None:
        """SIGHUP for a server still starting would kill it (its handler is not installed
        yet) and nothing would start another until a file changes; it reads everything
        afresh as it starts anyway."""
        if self.server.pid is not None and not self.server.ready:
            log.info("signal {number}: the server is still starting (and reads everything "
                     "afresh); not passed on", number=number)
            return
        super().forward(number)

    def worker_ready(self) -> None:
        if self.stopping:
            return
        self.server.ready = True
        log.info("server (pid {pid}) ready", pid=self.server.pid)
        if not self.all_ready:
            self.all_ready = True
            self.notifier.ready()

    def stopService(self) -> Any:
        self.watcher.stop()
        return super().stopService()
