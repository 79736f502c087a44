"""realtime.workers in process: restart backoff on a Clock, the worker marker (a child
never spawns children), the child's endpoints around an inherited socket, the command."""

from __future__ import annotations

import json
import os
import socket
import sys
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from realtime import workers
from realtime.config import StartupError
from realtime.tap import Options
from realtime.workers import SupervisorService, Worker, worker_info

APP = "realtime.examples.bench:application"


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[int] = []

    def closeStdin(self) -> None:
        pass

    def signalProcess(self, number: int) -> None:
        self.signals.append(number)


class FakeReactor(Clock):
    """A Clock that records spawnProcess calls."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[dict[str, Any]] = []

    def spawnProcess(self, proto: Any, executable: str, args: list[str], env: dict[str, str],
                     childFDs: dict[int, Any]) -> FakeProcess:
        process = FakeProcess(1000 + len(self.spawned))
        self.spawned.append({"args": args, "env": env, "fds": childFDs, "proto": proto})
        proto.makeConnection(process)
        return process


def supervisor(count: int = 2) -> tuple[SupervisorService, FakeReactor]:
    reactor = FakeReactor()
    options = SimpleNamespace(workers=count, argv=["--app", APP, "--workers", str(count)],
                              listeners=[], config=SimpleNamespace(shutdown_timeout=10.0))
    return SupervisorService(options, reactor), reactor


def killed() -> Failure:
    return Failure(ProcessTerminated(exitCode=None, signal=9))


def test_restart_backoff_doubles_to_ten_seconds_and_resets_after_a_stable_run():
    sup, reactor = supervisor(1)
    worker = Worker(sup, 1)
    worker.spawn()
    delays = []
    for _ in range(8):
        worker.processEnded(killed())
        assert worker.pid is None and len(reactor.spawned) == len(delays) + 1
        call = worker.restart
        delays.append(round(call.getTime() - reactor.seconds(), 3))
        reactor.advance(call.getTime() - reactor.seconds())
        assert len(reactor.spawned) == len(delays) + 1  # respawned after the delay
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    reactor.advance(workers.STABLE_AFTER)  # it stayed up: the next restart is quick again
    worker.processEnded(Failure(ProcessDone(0)))
    assert round(worker.restart.getTime() - reactor.seconds(), 3) == 0.5


def test_stop_signals_each_worker_once_and_cancels_a_pending_restart():
    sup, reactor = supervisor(2)
    first, second = sup.workers
    first.spawn()
    second.spawn()
    second.processEnded(killed())  # waiting to restart
    sup.running = True
    stopped = sup.stopService()
    assert first.process.signals == [15]
    assert second.restart is None
    assert len(reactor.getDelayedCalls()) == 1  # the kill deadline; no restart
    fired: list[Any] = []
    stopped.addBoth(fired.append)
    assert not fired
    first.processEnded(Failure(ProcessDone(0)))
    assert fired == [[]]  # no listeners to close
    assert len(reactor.spawned) == 2  # nothing respawned while stopping
    assert not reactor.getDelayedCalls()


def test_a_worker_still_running_after_the_deadline_is_killed():
    sup, reactor = supervisor(1)
    (worker,) = sup.workers
    worker.spawn()
    sup.running = True
    sup.stopService()
    # The drain's --shutdown-timeout (10 s), then as long for the lifespan shut-down.
    reactor.advance(2 * 10.0 + workers.KILL_GRACE - 0.1)
    assert worker.process.signals == [15]
    reactor.advance(0.2)
    assert worker.process.signals == [15, 9]


def startup_failed() -> Failure:
    return Failure(ProcessTerminated(exitCode=workers.STARTUP_FAILED))


def two_workers_running(ready: int) -> tuple[SupervisorService, list[int]]:
    """A supervisor with both workers spawned, ``ready`` of them reported ready, and the
    exit statuses it asks for recorded."""
    sup, _ = supervisor(2)
    statuses: list[int] = []
    sup.on_failure = statuses.append
    for worker in sup.workers:
        worker.spawn()
    for _ in range(ready):
        sup.worker_ready()
    return sup, statuses


def test_a_worker_whose_startup_fails_before_all_were_ready_stops_everything_once():
    sup, statuses = two_workers_running(ready=1)
    first, second = sup.workers
    first.processEnded(startup_failed())
    second.processEnded(startup_failed())  # before the stop began: still one exit
    assert statuses == [3] and sup.exit_status == 3
    assert first.restart is None and second.restart is None  # no restart scheduled


def test_a_restarted_workers_failed_startup_is_restarted_once_all_had_served():
    sup, statuses = two_workers_running(ready=2)
    assert sup.all_ready
    first = sup.workers[0]
    first.processEnded(startup_failed())  # a transient failure: the other worker serves
    assert statuses == [] and first.restart is not None and first.restart.active()


def test_child_command_and_environment(monkeypatch):
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_PID", "1")
    monkeypatch.setenv("WATCHDOG_USEC", "1000")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("REALTIME_METRICS_DIR", "/tmp/metrics-dir")
    sup, reactor = supervisor(2)
    sup.workers[1].spawn()
    (spawned,) = reactor.spawned
    assert spawned["args"][0] == sys.executable
    assert spawned["args"][3:] == ["--nodaemon", "--pidfile=", "realtime", "--app", APP,
                                   "--workers", "2"]
    env = spawned["env"]
    assert "LISTEN_FDS" not in env and "LISTEN_PID" not in env and "WATCHDOG_USEC" not in env
    assert env["NOTIFY_SOCKET"] == "@" + sup.notify_name  # the supervisor's, not systemd's
    assert json.loads(env[workers.WORKER_ENV])["index"] == 2
    assert json.loads(env["_REALTIME_SYSPATH"]) == sys.path
    assert env["REALTIME_METRICS_DIR"] == "/tmp/metrics-dir"  # shared by every worker
    assert spawned["fds"] == {0: "w", 1: "r", 2: "r"}


def test_supervisor_ready_after_every_worker(tmp_path):
    from realtime.notify import Notifier
    from tests.test_notify import received

    sup, reactor = supervisor(2)
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(address)
        sup.notifier = Notifier(reactor, {"NOTIFY_SOCKET": address})
        sup.worker_ready()
        assert received(systemd) == []
        sup.worker_ready()
        assert received(systemd) == ["READY=1"]
        sup.worker_ready()  # a restarted worker: systemd already knows
        assert received(systemd) == []


@pytest.fixture
def listening():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def test_a_child_takes_its_listeners_from_the_marker_and_spawns_nothing(monkeypatch,
                                                                          listening):
    fd = listening.fileno()
    monkeypatch.setenv(workers.WORKER_ENV, json.dumps(
        {"index": 2, "parent": 1, "listeners": [[fd, "tcp:0:interface=127.0.0.1"]]}))
    options = Options()
    options.parseOptions(["--app", APP, "--workers", "3", "--port", "9"])
    assert options.workers == 1  # a child never starts workers of its own
    assert options.worker is not None and options.worker.index == 2
    ((description, spec),) = options.listeners
    assert description == f"fd:{fd}"
    assert callable(spec)


def test_a_bad_marker_is_one_line(monkeypatch):
    monkeypatch.setenv(workers.WORKER_ENV, "nonsense")
    with pytest.raises(StartupError, match="not a worker description"):
        worker_info()


def test_child_endpoints_around_the_inherited_socket(listening, tmp_path):
    from twisted.internet import reactor
    from twisted.internet.endpoints import AdoptedStreamServerEndpoint

    from tests.e2e.support import self_signed

    fd = listening.fileno()
    plain = workers._AdoptedSpec(fd, socket.AF_INET, "tcp:0:interface=127.0.0.1")(reactor)
    assert isinstance(plain, AdoptedStreamServerEndpoint)
    cert, key = self_signed(tmp_path)
    tls = workers._AdoptedSpec(fd, socket.AF_INET,
                               f"ssl:0:privateKey={key}:certKey={cert}")(reactor)
    assert isinstance(tls, workers._TLSEndpoint)
    assert isinstance(tls.endpoint, AdoptedStreamServerEndpoint)
    proxied = workers._AdoptedSpec(fd, socket.AF_INET, "haproxy:tcp:0")(reactor)
    assert isinstance(proxied._wrappedEndpoint, AdoptedStreamServerEndpoint)
    proxied_tls = workers._AdoptedSpec(fd, socket.AF_INET,
                                       f"haproxy:ssl:0:privateKey={key}:certKey={cert}")(reactor)
    assert isinstance(proxied_tls._wrappedEndpoint, workers._TLSEndpoint)


def test_a_child_behind_haproxy_on_a_systemd_socket(tmp_path):
    """``haproxy:systemd:domain=UNIX:index=0`` under --workers or --reload: the child wraps
    the inherited socket without parsing ``systemd:`` again (its LISTEN_FDS are the
    supervisor's, gone: the child failed with IndexError at every start), and leaves the
    socket to systemd when it stops."""
    from twisted.internet import reactor

    from realtime.endpoints import AdoptedUNIXEndpoint

    with socket.socket(socket.AF_UNIX) as held:
        held.bind(str(tmp_path / "rt.sock"))
        held.listen()
        fd = os.dup(held.fileno())
        try:
            endpoint = workers._AdoptedSpec(fd, socket.AF_UNIX,
                                            "haproxy:systemd:domain=UNIX:index=0")(reactor)
            assert isinstance(endpoint._wrappedEndpoint, AdoptedUNIXEndpoint)
        finally:
            os.close(fd)


def test_reuseport_group_shares_one_port():
    from twisted.internet.endpoints import TCP4ServerEndpoint

    group = workers._reuseport_group("tcp:0", TCP4ServerEndpoint(None, 0, 16, "127.0.0.1"), 3)
    try:
        ports = {sock.getsockname()[1] for sock in group}
        assert len(group) == 3 and len(ports) == 1
        bound = workers._Bound("tcp:0", sockets=group)
        assert bound.address() == f"tcp:127.0.0.1:{ports.pop()}"
        assert len({bound.fileno(i) for i in (1, 2, 3)}) == 3
    finally:
        for sock in group:
            sock.close()


def test_a_workers_unix_port_leaves_the_supervisors_socket_listening_and_in_place(tmp_path):
    """Twisted's unix port shuts its socket down and removes its path when it stops: a
    worker's (each restart under --reload) would take both away from the supervisor, which
    holds the socket for the next worker (that one then could not start, and no client
    could connect)."""
    from twisted.internet import reactor
    from twisted.internet.error import ConnectionDone
    from twisted.internet.protocol import Factory

    path = tmp_path / "rt.sock"
    with socket.socket(socket.AF_UNIX) as held:  # the supervisor's
        held.bind(str(path))
        held.listen()
        for _ in range(2):  # a worker, then its replacement
            fd = os.dup(held.fileno())
            endpoint = workers._AdoptedSpec(fd, socket.AF_UNIX, f"unix:{path}")(reactor)
            ports: list[Any] = []
            endpoint.listen(Factory()).addCallbacks(ports.append, lambda f: f.raiseException())
            (port,) = ports
            port.stopReading()
            port.connectionLost(Failure(ConnectionDone()))  # the worker exits
            assert path.exists()
            with socket.socket(socket.AF_UNIX) as client:  # still listening, for the next
                client.connect(str(path))


def test_a_workers_metrics_snapshot_is_written_once_more_as_it_stops(tmp_path):
    """Every half second, and at the end (after the drain): a worker that exits (each
    --reload restart) leaves its last counts; they were up to half a second old."""
    from realtime.metrics import SnapshotWriter, snapshot_timer

    clock = Clock()
    writes: list[float] = []
    writer = SnapshotWriter(str(tmp_path), [], None)
    writer.write = lambda: writes.append(clock.seconds())  # type: ignore[method-assign]
    timer = snapshot_timer(writer, clock)
    timer.startService()
    clock.advance(0.3)
    assert writes == [0.0]
    stopped: list[object] = []
    timer.stopService().addCallback(stopped.append)
    assert writes == [0.0, 0.3] and stopped == [None]
    clock.advance(5)
    assert writes == [0.0, 0.3]
