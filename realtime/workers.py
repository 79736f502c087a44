"""``--workers N``: N worker processes serve the same listeners.

With ``--workers N`` (N > 1) ``makeService`` returns a ``SupervisorService`` instead of
serving. The supervisor binds every listener itself, while still privileged (so
``--port 0``, ports below 1024 with ``--uid`` and systemd's sockets work, and each real
address is logged once), and starts N children: the same interpreter running ``twistd -n
--pidfile= [--reactor=...] realtime <the same options>``, with the listening sockets
inherited as file descriptors 3, 4, ... Each child adopts them (as ``--fd`` does; the
``ssl:``/``tls:``/``haproxy:`` wrappers are re-applied around the adopted socket). Children
know they are workers from ``_REALTIME_WORKER`` in their environment, so they never spawn
workers of their own.

How connections are spread:

- TCP listeners (``tcp:``, ``tcp6:``, a bare port, and those inside ``ssl:``, ``tls:``,
  ``haproxy:``): one ``SO_REUSEPORT`` socket per worker, all bound to the same address by
  the supervisor; the kernel hashes each new connection to one of them. The supervisor
  keeps its copy of every socket open, so connections that reach a dead worker's socket
  wait in its queue for the replacement (0.5 s later) instead of being refused.
- Other listeners (``unix:``, ``systemd:``, ``--fd``): one socket that every worker
  accepts from (a worker's ``unix:`` port neither shuts it down nor removes its path when
  the worker exits: the supervisor holds it for the next).
- ``--internal-port`` is bound the same way and handed to every worker as well (the
  ``internal`` of ``_REALTIME_WORKER``), which serves the operator endpoints on it: the
  server API needs the layer, which the supervisor has not; /metrics there adds every
  worker's snapshot up, as on a main port. (``--metrics-port`` is the supervisor's own.)

Measured (2 cores, ``--workers 2``, 400 WebSockets opened to ``/pid`` of
tests/e2e/worker_app.py and kept open, counted per worker pid, 8 runs each; the share of
the busiest worker, 0.5 is even):

- one shared socket: opened one at a time, mean 0.655, worst 0.863; opened 50 at a
  time, mean 0.540, worst 0.618;
- one SO_REUSEPORT socket per worker: one at a time, mean 0.525, worst 0.547; 50 at a
  time, mean 0.519, worst 0.535.

(shared, one at a time: 200/200 in the best run and 345/55 in the worst; both workers race
to ``accept`` on every wake-up and the one that is already awake tends to win.) So TCP
listeners use SO_REUSEPORT.

Everything else:

- Log lines: each child's output is relayed into the supervisor's log, prefixed with
  ``worker N:`` (so ``--logfile`` and journald see every worker). A child's exit counts
  once its output is read, or ``PIPE_GRACE`` after it was reaped when a process it started
  still holds its stdout.
- A worker that exits is restarted after 0.5 s, doubling to 10 s while it keeps dying; the
  delay resets once a worker has stayed up for 10 s. A worker that exits with status 3 (its
  application's lifespan start-up failed, ``realtime.lifespan``) before every worker was
  ready once stops every worker and the supervisor, which exits with 3 too.
- SIGHUP to the supervisor is passed on to every worker, which reloads (``realtime.reload``:
  the access log, the key files, ``--jwks-url``); a worker still starting ignores it.
- SIGTERM/SIGINT to the supervisor: every worker gets SIGTERM and drains (1001 to its
  sockets) and shuts its ASGI apps' lifespans down; the supervisor exits 0 when every
  worker has exited (SIGKILL for a worker still there twice ``--shutdown-timeout`` + 5 s
  later: the drain, then the lifespan shut-down). A worker whose supervisor dies gets
  SIGTERM from the kernel (``PR_SET_PDEATHSIG``).
- systemd: workers report READY=1 to the supervisor (their ``NOTIFY_SOCKET`` is the
  supervisor's own datagram socket); the supervisor tells systemd READY=1 once all N are
  ready, STOPPING=1 when it stops, and keeps the watchdog.
"""

from __future__ import annotations

import copy
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.error import (
    CannotListenError,
    ProcessDone,
    ProcessExitedAlready,
    ProcessTerminated,
)
from twisted.internet.protocol import DatagramProtocol, Factory, ProcessProtocol
from twisted.logger import Logger

from realtime.config import StartupError
from realtime.endpoints import (
    adopted_endpoint,
    adopted_socket_family,
    describe_address,
    keep_adopted_unix,
)
from realtime.lifespan import STARTUP_FAILED
from realtime.notify import Notifier
from realtime.verbosity import RELAY_NAMESPACE

log = Logger()
#: Workers' lines, relayed whatever -v says: each worker has applied the same -v to them.
relay = Logger(namespace=RELAY_NAMESPACE)

#: The environment variable that makes a process a worker (JSON; see ``WorkerInfo``).
WORKER_ENV = "_REALTIME_WORKER"
#: Where workers leave metrics snapshots so that ``/metrics`` on any worker shows totals
#: across all of them (realtime/metrics.py); the supervisor makes a private directory.
METRICS_DIR_ENV = "REALTIME_METRICS_DIR"
FIRST_DELAY = 0.5
MAX_DELAY = 10.0
#: A worker that stayed up this long restarts after ``FIRST_DELAY`` again.
STABLE_AFTER = 10.0
#: Seconds past ``--shutdown-timeout`` before a worker that has not exited is killed.
KILL_GRACE = 5.0
#: Seconds a reaped worker's output pipes may stay open (held by a process it started)
#: before its exit counts anyway.
PIPE_GRACE = 1.0
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d{4}|Z)? ")
#: Starts a child exactly as ``twistd``, on the supervisor's own ``sys.path``.
#: Its own process group: a signal to the supervisor's group (Ctrl-C in a terminal) reaches
#: the supervisor only, which then stops each worker exactly once.
_BOOT = (
    "# realtime worker\nimport json, os, sys\ntry: os.setpgid(0, 0)\nexcept OSError: pass\n"
    "sys.path[:] = json.loads(os.environ.pop('_REALTIME_SYSPATH')); "
    "sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
)


@dataclass
class WorkerInfo:
    """What a worker child reads from ``_REALTIME_WORKER``."""

    index: int
    parent: int
    #: (file descriptor in the child, the supervisor's description of that listener)
    listeners: list[tuple[int, str]]
    #: ``--internal-port``'s listener, the same way (the operator endpoints: every worker
    #: serves them, as the main ports), or None.
    internal: tuple[int, str] | None = None

    def listener_specs(self) -> list[tuple[str, Any]]:
        """``Options.listeners`` for a worker: each spec builds the adopted endpoint."""
        return [self._spec(fd, description) for fd, description in self.listeners]

    def internal_spec(self) -> tuple[str, Any] | None:
        """``Options.internal_listener`` for a worker: the inherited ``--internal-port``."""
        return None if self.internal is None else self._spec(*self.internal)

    def _spec(self, fd: int, description: str) -> tuple[str, Any]:
        try:
            family = adopted_socket_family(fd)
        except ValueError as exc:
            raise StartupError(f"worker {self.index}: {exc}") from None
        return f"fd:{fd}", _AdoptedSpec(fd, family, description)


def worker_info(env: Mapping[str, str] | None = None) -> WorkerInfo | None:
    """The worker's marker, or None in a normal (or supervisor) process."""
    value = (os.environ if env is None else env).get(WORKER_ENV)
    if not value:
        return None
    try:
        data = json.loads(value)
        internal = data.get("internal")
        return WorkerInfo(int(data["index"]), int(data["parent"]),
                          [(int(fd), str(desc)) for fd, desc in data["listeners"]],
                          None if internal is None else (int(internal[0]), str(internal[1])))
    except (ValueError, KeyError, TypeError):
        raise StartupError(f"{WORKER_ENV}: not a worker description: {value!r}") from None


class _AdoptedSpec:
    """Builds a worker's endpoint: the inherited socket, inside whatever the listener's
    description wraps around its socket (TLS, SNI TLS, the PROXY protocol)."""

    def __init__(self, fd: int, family: Any, description: str) -> None:
        self.fd = fd
        self.family = family
        self.description = description

    def __call__(self, reactor: Any) -> Any:
        return self._build(reactor, self.description)

    def _build(self, reactor: Any, description: str) -> Any:
        from twisted.internet.endpoints import serverFromString

        kind, _, inner = description.partition(":")
        if kind == "haproxy":
            # Around the socket, not around what the rest describes: parsing a systemd:
            # description again in the child fails (its LISTEN_FDS went with the
            # supervisor), and whatever it describes is replaced by the socket anyway.
            from twisted.protocols.haproxy import proxyEndpoint

            return proxyEndpoint(self._build(reactor, inner))
        adopted = adopted_endpoint(reactor, self.fd, self.family)
        if kind not in ("ssl", "tls"):
            return adopted
        return _around(serverFromString(reactor, description), adopted)


def _around(endpoint: Any, adopted: Any) -> Any:
    """``endpoint`` with its innermost listening endpoint replaced by ``adopted``."""
    for attribute in ("_wrappedEndpoint", "endpoint"):  # haproxy:, tls: (SNI)
        inner = getattr(endpoint, attribute, None)
        if inner is not None:
            outer = copy.copy(endpoint)
            setattr(outer, attribute, _around(inner, adopted))
            return outer
    context = getattr(endpoint, "_sslContextFactory", None)  # ssl:
    if context is not None:
        return _TLSEndpoint(adopted, context)
    return adopted


class _TLSEndpoint:
    """TLS on an adopted socket (``ssl:`` listens through ``reactor.listenSSL``)."""

    def __init__(self, endpoint: Any, context: Any) -> None:
        self.endpoint = endpoint
        self.context = context

    def listen(self, factory: Any) -> Deferred[Any]:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        result: Deferred[Any] = self.endpoint.listen(
            TLSMemoryBIOFactory(self.context, False, factory)
        )
        return result


def become_worker(info: WorkerInfo) -> None:
    """In a worker: SIGTERM (and so a drain) when the supervisor dies, even by SIGKILL; and
    SIGHUP, which the supervisor passes on, ignored until ``realtime.reload`` installs its
    handler."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() != info.parent:  # it died before prctl
        os.kill(os.getpid(), signal.SIGTERM)


def reactor_name(reactor: Any) -> str | None:
    """The ``--reactor`` name of the installed reactor, so workers run the same one."""
    from twisted.application.reactors import getReactorTypes

    module = type(reactor).__module__
    for kind in getReactorTypes():
        if kind.moduleName == module and kind.shortName != "default":
            return str(kind.shortName)
    return None


class _Ready(DatagramProtocol):
    """The supervisor's ``NOTIFY_SOCKET`` for its workers."""

    noisy = False

    def __init__(self, supervisor: SupervisorService) -> None:
        self.supervisor = supervisor

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if b"READY=1" in datagram.split(b"\n"):
            self.supervisor.worker_ready()


class _Process(ProcessProtocol):
    """One child process's pipes and exit, for its ``Worker``. The worker hears of the exit
    once the output is read too (so the last lines come before the exit line), or
    ``PIPE_GRACE`` seconds after the process was reaped when its pipes stay open: a process
    it started (``subprocess.Popen`` in the application, which inherits stdout and stderr)
    may hold them for as long as it runs, and neither a restart nor the supervisor's own
    stop may wait for that."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._buffers = {1: b"", 2: b""}
        self._grace: Any = None
        self._reported = False

    def connectionMade(self) -> None:
        transport: Any = self.transport  # called inside spawnProcess
        transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self._buffers.get(childFD, b"") + data).split(b"\n")
        self._buffers[childFD] = lines.pop()
        for line in lines:
            self.worker._relay(line)

    def processExited(self, reason: Any) -> None:
        self._grace = self.worker.supervisor.reactor.callLater(PIPE_GRACE, self._report,
                                                                reason)

    def processEnded(self, reason: Any) -> None:
        for fd, rest in self._buffers.items():
            if rest:
                self.worker._relay(rest)
            self._buffers[fd] = b""
        self._report(reason)

    def _report(self, reason: Any) -> None:
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None
        if not self._reported:
            self._reported = True
            self.worker.processEnded(reason)


class Worker:
    """One worker process, restarted with backoff until the supervisor stops."""

    def __init__(self, supervisor: SupervisorService, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.pid: int | None = None
        self.process: Any = None
        self.started = 0.0
        self.delay = FIRST_DELAY
        self.restart: Any = None
        self.ended: Deferred[None] = succeed(None)
        #: The pid ``stop`` sent SIGTERM to: a second ``stop`` does not signal it again.
        self._terminated: int | None = None

    @property
    def name(self) -> str:
        """How log lines name this process."""
        return f"worker {self.index}"

    def spawn(self) -> None:
        self.restart = None
        self._terminated = None  # a new process, even if its pid is an old one's again
        sup = self.supervisor
        self.ended = Deferred()
        self.started = sup.reactor.seconds()
        fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        listeners = []
        for number, listener in enumerate(sup.bound, start=3):
            fds[number] = listener.fileno(self.index)
            listeners.append((number, listener.kind))
        marker: dict[str, Any] = {"index": self.index, "parent": os.getpid(),
                                  "listeners": listeners}
        if sup.internal_bound is not None:
            number = 3 + len(sup.bound)
            fds[number] = sup.internal_bound.fileno(self.index)
            marker["internal"] = (number, sup.internal_bound.kind)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("LISTEN_", "WATCHDOG_")) and k != "NOTIFY_SOCKET"}
        env[WORKER_ENV] = json.dumps(marker)
        env["_REALTIME_SYSPATH"] = json.dumps(sys.path)
        env["NOTIFY_SOCKET"] = "@" + sup.notify_name
        if sup.metrics_dir:
            env[METRICS_DIR_ENV] = sup.metrics_dir
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.process = sup.reactor.spawnProcess(_Process(self), sys.executable, sup.command(),
                                                env=env, childFDs=fds)
        self.pid = self.process.pid
        log.info("{name} started (pid {pid})", name=self.name, pid=self.pid)

    def _relay(self, raw: bytes) -> None:
        line = _TIMESTAMP.sub("", raw.decode("utf-8", "replace").rstrip("\r"))
        if line:
            relay.info("{name}: {line}", name=self.name, line=line)

    def processEnded(self, reason: Any) -> None:
        """The process has exited (``_Process`` says when)."""
        sup = self.supervisor
        value = reason.value
        if isinstance(value, ProcessTerminated) and value.signal is not None:
            how = f"killed by signal {value.signal}"
        elif isinstance(value, ProcessTerminated | ProcessDone):
            how = f"exited with status {value.exitCode}"
        else:  # pragma: no cover
            how = str(value)
        pid, self.pid = self.pid, None
        ended, self.ended = self.ended, succeed(None)
        if sup.stopping:
            log.info("{name} (pid {pid}) {how}", name=self.name, pid=pid, how=how)
        else:
            self.exited(pid, how, getattr(value, "exitCode", None))
        ended.callback(None)

    def exited(self, pid: int | None, how: str, status: int | None) -> None:
        """The process ended by itself (the supervisor is not stopping): restart it."""
        sup = self.supervisor
        if status == STARTUP_FAILED and not sup.all_ready:
            # The application cannot start (its ASGI lifespan start-up failed) before the
            # service ever served: restarting would fail again, and so would every other
            # worker; stop with its status. (Later, a restarted worker's failure is
            # restarted as any exit: the others still serve.)
            log.error("{name} (pid {pid}): the application's startup failed; "
                      "stopping every worker", name=self.name, pid=pid)
            sup.failed(STARTUP_FAILED)
            return
        if sup.reactor.seconds() - self.started >= STABLE_AFTER:
            self.delay = FIRST_DELAY
        log.warn("{name} (pid {pid}) {how}; restarting in {delay} s",
                 name=self.name, pid=pid, how=how, delay=self.delay)
        self.restart = sup.reactor.callLater(self.delay, self.spawn)
        self.delay = min(self.delay * 2, MAX_DELAY)

    def signal(self, number: int) -> None:
        if self.pid is not None:
            try:
                self.process.signalProcess(number)
            except (OSError, ProcessExitedAlready):  # already gone (reaped)
                pass

    def stop(self) -> Deferred[None]:
        """SIGTERM (once per process; no restart after it); fires once it has exited."""
        if self.restart is not None and self.restart.active():
            self.restart.cancel()
        self.restart = None
        if self.pid is not None and self.pid != self._terminated:
            self._terminated = self.pid
            self.signal(signal.SIGTERM)
        return self.ended


class SupervisorService(Service):
    """Binds the listeners, runs ``count`` workers on them, stops them on SIGTERM."""

    worker_class: type[Worker] = Worker

    def __init__(self, options: Any, reactor: Any) -> None:
        self.reactor = reactor
        self.count: int = options.workers
        self.argv: list[str] = list(options.argv)
        self.listeners: list[tuple[str, Any]] = options.listeners
        #: ``--internal-port`` (description, spec), bound here too and handed to every
        #: worker, which serves the operator endpoints on it; and its log line's ending.
        self.internal: tuple[str, Any] | None = getattr(options, "internal_listener", None)
        self.internal_what: str = getattr(options, "internal_what", "")
        self.shutdown_timeout: float = options.config.shutdown_timeout
        self.bound: list[_Bound] = []
        self.internal_bound: _Bound | None = None
        self.workers = [self.worker_class(self, i) for i in range(1, self.count + 1)]
        self.stopping = False
        self.notifier = Notifier(reactor)
        self.notify_name = f"realtime-workers-{os.getpid()}-{secrets.token_hex(4)}"
        self._notify_port: Any = None
        self._ready = 0
        self.metrics_dir = os.environ.get(METRICS_DIR_ENV, "")
        self._own_metrics_dir = False
        #: Called with the exit status when a worker reports a failed start-up (twistd:
        #: ``realtime.service.exit_after_shutdown``).
        self.on_failure: Any = None
        self.exit_status = 0
        #: Every worker has been ready once (READY=1 went to systemd).
        self.all_ready = False

    def what(self) -> str:
        """What the start and stop lines call the children."""
        return f"{self.count} workers"

    def command(self) -> list[str]:
        head = [sys.executable, "-c", _BOOT, "--nodaemon", "--pidfile="]
        name = reactor_name(self.reactor)
        if name:
            head.append(f"--reactor={name}")
        return [*head, "realtime", *self.argv]

    def privilegedStartService(self) -> None:
        from realtime.service import raise_open_files_limit

        raise_open_files_limit()
        super().privilegedStartService()
        try:
            for description, spec in self.listeners:
                self.bound.append(self._bind(description, spec))
            if self.internal is not None:
                self.internal_bound = self._bind(*self.internal, what=self.internal_what,
                                                 option="--internal-port")
        except BaseException:
            self._close_listeners()
            raise

    def _bind(self, description: str, spec: Any, what: str = "", option: str = "") -> _Bound:
        """TCP (also under ssl:, tls:, haproxy:): one SO_REUSEPORT socket per worker, all
        bound here; anything else (unix:, systemd:, --fd): one socket all workers share.
        ``what`` ends the log line, ``option`` begins a failure's (``--internal-port``)."""
        from twisted.internet.endpoints import serverFromString

        named = f"{option}: " if option else ""

        if isinstance(spec, tuple):
            endpoint = adopted_endpoint(self.reactor, spec[0], spec[1])
        else:
            endpoint = keep_adopted_unix(self.reactor, serverFromString(self.reactor, spec))
        tcp = _innermost(endpoint)
        if tcp is not None:
            bound = _Bound(_kind(description, spec), sockets=_reuseport_group(
                description, tcp, self.count, named))
            log.info("listening on {address}{what}", address=bound.address(), what=what)
            return bound
        ports: list[Any] = []
        failures: list[Any] = []
        endpoint.listen(Factory()).addCallbacks(ports.append, failures.append)
        if failures or not ports:
            raise StartupError(f"{named}cannot listen on {description}: "
                               f"{_reason(failures[0].value if failures else 'no port')}")
        port = ports[0]
        port.stopReading()  # the workers accept; the supervisor only holds the socket
        bound = _Bound(_kind(description, spec), port=port)
        log.info("listening on {address}{what}", address=bound.address(), what=what)
        return bound

    def _close_listeners(self) -> list[Deferred[Any]]:
        closing = [listener.close() for listener in self.bound]
        self.bound = []
        if self.internal_bound is not None:
            closing.append(self.internal_bound.close())
            self.internal_bound = None
        return [d for d in closing if d is not None]

    def startService(self) -> None:
        super().startService()
        self._notify_port = self.reactor.listenUNIXDatagram("\0" + self.notify_name,
                                                            _Ready(self))
        if not self.metrics_dir:
            self.metrics_dir = tempfile.mkdtemp(prefix="realtime-metrics-")
            self._own_metrics_dir = True
        log.info("starting {what}", what=self.what())
        for worker in self.workers:
            worker.spawn()
        signal.signal(signal.SIGHUP, self._sighup)
        self.notifier.start_watchdog()

    def _sighup(self, number: int, frame: Any) -> None:
        self.reactor.callFromThread(self.forward, number)

    def forward(self, number: int) -> None:
        """Pass a signal (SIGHUP: reopen the access log) on to every running worker."""
        running = [worker for worker in self.workers if worker.pid is not None]
        log.info("signal {number}: passed on to {count} worker(s)", number=number,
                 count=len(running))
        for worker in running:
            worker.signal(number)

    def failed(self, status: int) -> None:
        """Stop the supervisor (and every worker) and exit with ``status`` (once)."""
        if self.exit_status:
            return
        self.exit_status = status
        if self.on_failure is not None:
            self.on_failure(status)

    def worker_ready(self) -> None:
        self._ready += 1
        if self._ready == self.count and not self.stopping:
            self.all_ready = True
            log.info("all {count} workers ready", count=self.count)
            self.notifier.ready()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self.stopping = True
        self.notifier.stopping()
        log.info("stopping {what}", what=self.what())
        ended = gatherResults([worker.stop() for worker in self.workers])
        # A worker may take the drain's --shutdown-timeout, then as long again for its
        # ASGI apps' lifespan shut-down (realtime.lifespan).
        deadline = self.reactor.callLater(2 * self.shutdown_timeout + KILL_GRACE, self._kill)

        def _stopped(_: Any) -> Any:
            if deadline.active():
                deadline.cancel()
            # twistd re-raises the signal that stopped it (exit status -15); every worker
            # drained and exited, which is a clean exit (README, "Operations": the drain).
            if getattr(self.reactor, "_exitSignal", None) is not None:
                self.reactor._exitSignal = None
            self.notifier.stop_watchdog()
            closing = self._close_listeners()
            if self._notify_port is not None:
                closing.append(self._notify_port.stopListening())
                self._notify_port = None
            if self._own_metrics_dir:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
            return gatherResults(closing)

        return ended.addCallback(_stopped)

    def _kill(self) -> None:
        for worker in self.workers:
            if worker.pid is not None:
                log.warn("{name} (pid {pid}) still running: SIGKILL", name=worker.name,
                         pid=worker.pid)
                worker.signal(signal.SIGKILL)


class _Bound:
    """One listener as the supervisor holds it: a Twisted port that does not read (shared
    by every worker), or one listening socket per worker."""

    def __init__(self, kind: str, port: Any = None, sockets: list[socket.socket] | None = None
                 ) -> None:
        self.kind = kind
        self.port = port
        self.sockets = sockets or []

    def fileno(self, index: int) -> int:
        if self.sockets:
            return self.sockets[(index - 1) % len(self.sockets)].fileno()
        return int(self.port.fileno())

    def address(self) -> str:
        if self.port is not None:
            return describe_address(self.port.getHost())
        host, port = self.sockets[0].getsockname()[:2]
        if self.sockets[0].family == socket.AF_INET6:
            return describe_address(IPv6Address("TCP", host, port))
        return describe_address(IPv4Address("TCP", host, port))

    def close(self) -> Deferred[Any] | None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


def _innermost(endpoint: Any) -> Any:
    """The TCP endpoint a description listens with (inside ssl:, tls:, haproxy:), or None."""
    from twisted.internet.endpoints import (
        SSL4ServerEndpoint,
        TCP4ServerEndpoint,
        TCP6ServerEndpoint,
    )

    for attribute in ("_wrappedEndpoint", "endpoint"):
        inner = getattr(endpoint, attribute, None)
        if inner is not None:
            return _innermost(inner)
    if isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint | SSL4ServerEndpoint):
        return endpoint
    return None


def _reuseport_group(description: str, endpoint: Any, count: int, named: str = ""
                     ) -> list[socket.socket]:
    """``count`` listening sockets on one address with SO_REUSEPORT: the kernel spreads new
    connections over them, and a dead worker's queue waits in its socket for the next."""
    from twisted.internet.endpoints import TCP6ServerEndpoint

    family = socket.AF_INET6 if isinstance(endpoint, TCP6ServerEndpoint) else socket.AF_INET
    host, port = endpoint._interface, endpoint._port
    if family == socket.AF_INET and ":" in host:
        family = socket.AF_INET6
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]  # --port 0: the first one picks, the rest follow
            sock.listen(endpoint._backlog)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise StartupError(f"{named}cannot listen on {description}: {_reason(exc)}") from None
    return sockets


def _reason(exc: Any) -> str:
    reason = exc.socketError if isinstance(exc, CannotListenError) else exc
    return str(getattr(reason, "strerror", None) or reason)


def _kind(description: str, spec: Any) -> str:
    """What a worker needs to rebuild the endpoint around the inherited socket."""
    return "fd" if isinstance(spec, tuple) else description
