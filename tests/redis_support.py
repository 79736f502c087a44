"""A real ``redis-server`` for the tests: started on a free loopback port, stopped by PID.

::

    with RedisServer() as redis:            # --save "" --appendonly no, in a temp dir
        url = redis.url                      # redis://127.0.0.1:PORT/0
        redis.kill()                         # SIGKILL (this process only)
        redis.start()                        # again, on the same port

Fixtures: ``redis_server`` (one per session) and ``redis_layer`` (a started
``RedisChannelLayer`` on it, ready, closed after the test). Without ``redis-server`` on
PATH the Redis tests are skipped, except under ``CI=true`` where that is a failure
(``tests/run.sh`` installs it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

START_TIMEOUT = 10.0


def redis_server_binary() -> str:
    """The path of ``redis-server``; skip (or fail under CI=true) when there is none."""
    path = shutil.which("redis-server")
    if path is None:
        message = ("redis-server is not installed (tests/run.sh installs it: "
                   "apt-get install redis-server)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process of our own (never any other), on a fixed port once
    chosen, so a restart comes back where clients reconnect."""

    def __init__(self, port: int | None = None, args: Sequence[str] = (),
                 unix_socket: bool = False, tls: bool = False,
                 sentinel_of: tuple[str, int] | None = None,
                 password: str | None = None) -> None:
        self.binary = redis_server_binary()
        self.dir = Path(tempfile.mkdtemp(prefix="realtime-redis-"))
        self.port = port or free_port()
        self.tls_port = free_port() if tls else None
        self.unix_socket = str(self.dir / "redis.sock") if unix_socket else None
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "redis.log"
        #: A cluster node's bus port (``RedisCluster``).
        self.bus_port = 0
        #: What ``call`` AUTHs with first (a server started with ``--requirepass``).
        self.password = password
        #: A Sentinel monitoring this (name, port) master instead of a plain server.
        self.sentinel_of = sentinel_of
        if tls:
            self._make_certificates()
        for attempt in range(3):
            try:
                self.start()
                break
            except RuntimeError as exc:
                # The free port we picked was taken before redis-server bound it: pick again
                # (only a plain server of ours; a fixed, TLS or Sentinel port stays an error).
                plain = port is None and not tls and sentinel_of is None
                if not plain or attempt == 2 or "already in use" not in str(exc):
                    raise
                self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _make_certificates(self) -> None:
        from tests.e2e.support import self_signed

        tls_dir = self.dir / "tls"
        tls_dir.mkdir()
        self.cert, self.key = self_signed(tls_dir)
        self.args += [
            "--tls-port", str(self.tls_port), "--tls-cert-file", str(self.cert),
            "--tls-key-file", str(self.key), "--tls-ca-cert-file", str(self.cert),
            "--tls-auth-clients", "no",
        ]

    def command(self) -> list[str]:
        if self.sentinel_of is not None:
            name, master_port = self.sentinel_of
            conf = self.dir / "sentinel.conf"  # Sentinel rewrites its configuration file
            if not conf.exists():
                conf.write_text(
                    f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
                    f"logfile {self.log}\nprotected-mode no\n"
                    f"sentinel monitor {name} 127.0.0.1 {master_port} 1\n"
                    f"sentinel down-after-milliseconds {name} 1000\n"
                    f"sentinel failover-timeout {name} 5000\n"
                )
            return [self.binary, str(conf), "--sentinel"]
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--dir", str(self.dir),
               "--logfile", str(self.log), "--daemonize", "no", "--protected-mode", "no"]
        if self.unix_socket:
            cmd += ["--unixsocket", self.unix_socket, "--unixsocketperm", "700"]
        return cmd + self.args

    def start(self) -> None:
        """Start (or start again, on the same port) and wait until it answers PING."""
        assert self.proc is None or self.proc.poll() is not None
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                log = self.log.read_text() if self.log.exists() else ""
                raise RuntimeError(f"redis-server exited ({self.proc.returncode}): {err}{log}")
            if self.ping():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.02)

    def ping(self) -> bool:
        try:
            return self.call("PING") == "+PONG"
        except OSError:
            return False

    def call(self, *args: str) -> Any:
        """One command over a fresh connection: ``+OK`` -> "+OK", ``:1`` -> ":1", a bulk
        string -> str, an array -> list."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            if self.password is not None:
                s.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n"
                          % (len(self.password), self.password.encode()))
                reply = _Reply(s)
                reply.read()
                if reply.buffer:
                    raise ConnectionError("unexpected data after AUTH")
            parts = [f"*{len(args)}\r\n".encode()]
            for arg in args:
                data = arg.encode()
                parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
            s.sendall(b"".join(parts))
            return _Reply(s).read()

    def kill(self) -> None:
        """SIGKILL our redis-server (by PID) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Reply:
    """A minimal RESP2 reader for the tests' own commands."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def read(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            while len(self.buffer) < size + 2:
                self.buffer += self.sock.recv(4096)
            data, self.buffer = self.buffer[:size], self.buffer[size + 2:]
            return data.decode()
        if kind == b"*":
            return [self.read() for _ in range(int(rest))]
        return line.decode()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared redis-server's URL, restarted first if an earlier test killed it (the
    process tests under ``--workers`` pass it to ``--layer``)."""
    if not redis_server.ping():
        redis_server.kill()
        redis_server.start()
    return str(redis_server.url)


async def started_layer(url: str, timeout: float = 10.0) -> Any:
    """A ``RedisChannelLayer`` for ``url``, started and ready."""
    from twisted.internet import reactor

    from realtime.layers.redis import RedisChannelLayer

    layer = RedisChannelLayer.from_url(url)
    layer.start(reactor)
    await layer.when_ready(timeout)
    return layer


@pytest_twisted.async_yield_fixture
async def redis_layer(redis_server: RedisServer) -> Any:
    if not redis_server.ping():  # a test restarted or killed the shared server
        redis_server.kill()
        redis_server.start()
    layer = await started_layer(redis_server.url)
    yield layer
    await layer.close()


@pytest.fixture(scope="session")
def second_redis_server() -> Iterator[RedisServer]:
    """Another redis-server (the sharded layer's second shard)."""
    server = RedisServer()
    try:
        yield server
    finally:
        server.close()


@pytest_twisted.async_yield_fixture
async def sharded_layer(redis_server: RedisServer, second_redis_server: RedisServer) -> Any:
    """A started ``ShardedRedisChannelLayer`` over both servers."""
    from twisted.internet import reactor

    from realtime.layers import layer_from_url

    for server in (redis_server, second_redis_server):
        if not server.ping():  # a test restarted or killed it
            server.kill()
            server.start()
    layer = layer_from_url(f"{redis_server.url} {second_redis_server.url}")
    layer.start(reactor)
    await layer.when_ready(10)
    yield layer
    await layer.close()


#: What every node of a test cluster runs with: a node away fails only its own slots
#: (``cluster-require-full-coverage no``), and is declared failed after 1 s; a replica
#: syncs at once (not after the default 5 s wait for more replicas).
CLUSTER_ARGS = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no",
                "--repl-diskless-sync-delay", "0")


class RedisCluster:
    """A Redis Cluster of our own: ``masters`` redis-servers on free loopback ports with
    the 16384 slots split evenly, and ``replicas`` more, each replicating a master in turn.
    A node killed and started again (same port, same directory: its ``nodes.conf``) comes
    back with its slots. With ``tls``, clients and the cluster bus speak TLS too (one
    certificate for every node, ``cert``; the tests' own commands stay on the plain port),
    and ``url`` is a ``rediss+cluster://`` one that trusts it."""

    def __init__(self, masters: int = 3, replicas: int = 0, tls: bool = False,
                 password: str | None = None) -> None:
        self.nodes: list[RedisServer] = []
        self.dir = Path(tempfile.mkdtemp(prefix="realtime-cluster-"))
        self.tls = tls
        extra: tuple[str, ...] = ()
        if tls:
            from tests.e2e.support import self_signed

            self.cert, key = self_signed(self.dir)
            extra = ("--tls-cert-file", str(self.cert), "--tls-key-file", str(key),
                     "--tls-ca-cert-file", str(self.cert), "--tls-auth-clients", "no",
                     "--tls-cluster", "yes", "--tls-replication", "yes")
        if password is not None:
            extra += ("--requirepass", password, "--masterauth", password)
        self.password = password
        try:
            for _ in range(masters + replicas):
                # (the cluster bus's port: the default, port + 10000, may be past 65535)
                bus = free_port()
                tls_port = ("--tls-port", str(free_port())) if tls else ()
                self.nodes.append(RedisServer(args=(*CLUSTER_ARGS, "--cluster-port", str(bus),
                                                    *tls_port, *extra), password=password))
                self.nodes[-1].bus_port = bus
                self.nodes[-1].tls_port = int(tls_port[1]) if tls else None
            self.masters = self.nodes[:masters]
            for i, node in enumerate(self.masters):
                first, last = i * 16384 // masters, (i + 1) * 16384 // masters - 1
                node.call("CLUSTER", "ADDSLOTSRANGE", str(first), str(last))
            for node in self.nodes[1:]:
                self.nodes[0].call("CLUSTER", "MEET", "127.0.0.1", str(node.port),
                                   str(node.bus_port))
            self.wait_ok()
            for i, replica in enumerate(self.nodes[masters:]):
                master = self.masters[i % masters]
                assert replica.call("CLUSTER", "REPLICATE", self.node_id(master)) == "+OK"
            self.wait_ok()
            deadline = time.monotonic() + START_TIMEOUT  # (a replica that never synced
            for replica in self.nodes[masters:]:          # is never promoted)
                while "master_link_status:up" not in replica.call("INFO", "replication"):
                    if time.monotonic() > deadline:
                        raise RuntimeError("a test cluster replica did not sync")
                    time.sleep(0.05)
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password is not None else ""
        if self.tls:
            hosts = ",".join(f"127.0.0.1:{node.tls_port}" for node in self.masters)
            return f"rediss+cluster://{auth}{hosts}?ssl_ca_certs={self.cert}"
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.masters)
        return f"redis+cluster://{auth}{hosts}"

    @staticmethod
    def node_id(node: RedisServer) -> str:
        return str(node.call("CLUSTER", "MYID"))

    def wait_ok(self, timeout: float = 15.0) -> None:
        """Until every running node says ``cluster_state:ok`` and knows every node."""
        deadline = time.monotonic() + timeout
        while True:
            running = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
            try:
                if all("cluster_state:ok" in n.call("CLUSTER", "INFO")
                       and len(n.call("CLUSTER", "NODES").strip().splitlines())
                       == len(self.nodes) for n in running):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the test Redis Cluster did not come up")
            time.sleep(0.05)

    def owner(self, slot: int) -> RedisServer:
        """The master that holds ``slot`` now."""
        for node in self.masters:
            if node.proc is None or node.proc.poll() is not None:
                continue
            for entry in node.call("CLUSTER", "SLOTS"):  # (integers come as ":N")
                if int(entry[0][1:]) <= slot <= int(entry[1][1:]):
                    port = int(entry[2][1][1:])
                    return next(n for n in self.nodes if n.port == port)
        raise LookupError(slot)

    def move(self, slot: int, target: RedisServer) -> None:
        """Reshard ``slot`` (its keys too) to ``target``, as ``redis-cli --cluster reshard``
        does: ``migrating``, then ``hand_over``."""
        source, _ = self.migrating(slot, target)
        self.hand_over(slot, source, target)

    def migrating(self, slot: int, target: RedisServer | None = None
                  ) -> tuple[RedisServer, RedisServer]:
        """Open a migration of ``slot`` to ``target`` (by default another master) without
        moving any key yet (the source MIGRATING, the target IMPORTING): the window a
        resharding of a busy slot spends in. Returns (source, target)."""
        source = self.owner(slot)
        if target is None:
            target = next(n for n in self.masters if n is not source)
        target.call("CLUSTER", "SETSLOT", str(slot), "IMPORTING", self.node_id(source))
        source.call("CLUSTER", "SETSLOT", str(slot), "MIGRATING", self.node_id(target))
        return source, target

    @staticmethod
    def migrate(source: RedisServer, target: RedisServer, *keys: str) -> None:
        """Move these keys of a migrating slot to the node importing it."""
        assert source.call("MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000",
                           "KEYS", *keys) == "+OK"

    def hand_over(self, slot: int, source: RedisServer, target: RedisServer) -> None:
        """End ``migrating``: the slot's keys left on the source go, and every master is
        told the slot is the target's."""
        while keys := source.call("CLUSTER", "GETKEYSINSLOT", str(slot), "100"):
            self.migrate(source, target, *keys)
        target_id = self.node_id(target)
        for node in [target, source] + [n for n in self.masters if n not in (source, target)]:
            node.call("CLUSTER", "SETSLOT", str(slot), "NODE", target_id)

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class ClusterSpares:
    """The clusters a module's ``own_cluster`` tests will take, started ahead of them in
    threads, ``AHEAD`` at a time (a new one each time a test takes its own): a fresh
    cluster spends about 2 s waiting to be writable (Redis's ``CLUSTER_WRITABLE_DELAY``
    after a master starts), which then passes while earlier tests run. Each test still
    gets a cluster of its own that nobody else used."""

    AHEAD = 3

    def __init__(self, plan: Sequence[tuple[str, dict[str, Any]]]) -> None:
        from concurrent.futures import Future, ThreadPoolExecutor

        self._plan = list(plan)  # (the test's node id, RedisCluster's options), in order
        self._started: dict[str, Future[RedisCluster]] = {}
        self._threads = ThreadPoolExecutor(self.AHEAD, thread_name_prefix="cluster-spare")
        self._start_more()

    def _start_more(self) -> None:
        while self._plan and len(self._started) < self.AHEAD:
            nodeid, options = self._plan.pop(0)
            self._started[nodeid] = self._threads.submit(RedisCluster, **options)

    def take(self, nodeid: str, options: dict[str, Any]) -> RedisCluster:
        """The cluster started for this test (or one started now, if none was)."""
        future = self._started.pop(nodeid, None)
        self._plan = [(n, o) for n, o in self._plan if n != nodeid]
        self._start_more()
        if future is None:
            return RedisCluster(**options)
        return future.result(timeout=60)

    def close(self) -> None:
        """Stop those no test took (a test deselected after the plan, or failed first)."""
        self._plan = []
        for future in self._started.values():
            try:
                future.result(timeout=60).close()
            except Exception:  # it never came up: RedisCluster closed its nodes itself
                pass
        self._started.clear()
        self._threads.shutdown()


@pytest.fixture(scope="module")
def cluster_spares(request: Any) -> Iterator[ClusterSpares]:
    """``ClusterSpares`` for the module's tests marked ``own_cluster``, in their order; use
    it from the module's first test (``pytestmark = pytest.mark.usefixtures(...)``)."""
    plan = [(item.nodeid, dict(marker.kwargs)) for item in request.session.items
            if item.module is request.module
            and (marker := item.get_closest_marker("own_cluster")) is not None]
    spares = ClusterSpares(plan)
    try:
        yield spares
    finally:
        spares.close()


@pytest.fixture
def own_cluster(request: Any, cluster_spares: ClusterSpares) -> Iterator[RedisCluster]:
    """A Redis Cluster of the test's own, ``RedisCluster(**options)`` with the options of
    the test's ``@pytest.mark.own_cluster(...)`` (tests that move slots, stop nodes or need
    TLS or a password), started ahead by ``cluster_spares``; closed after the test."""
    marker = request.node.get_closest_marker("own_cluster")
    cluster = cluster_spares.take(request.node.nodeid, dict(marker.kwargs) if marker else {})
    try:
        yield cluster
    finally:
        cluster.close()


#: The session's cluster, started in a thread when collection ends (``start_session_cluster``).
_session_cluster: list[Any] = []


def start_session_cluster() -> None:
    """Start the ``redis_cluster`` fixture's cluster now, in a thread (tests/conftest.py,
    when a selected test uses it): its 2 s wait to be writable passes beside the tests."""
    from concurrent.futures import ThreadPoolExecutor

    if not _session_cluster:
        threads = ThreadPoolExecutor(1, thread_name_prefix="session-cluster")
        _session_cluster.append(threads.submit(RedisCluster))
        threads.shutdown(wait=False)


def stop_session_cluster() -> None:
    """Stop that cluster if no test took it (the session was interrupted)."""
    while _session_cluster:
        try:
            _session_cluster.pop().result(timeout=60).close()
        except BaseException:  # it never came up (RedisCluster closed its nodes itself)
            pass


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A three-node Redis Cluster shared by the session's tests (tests that move slots or
    stop nodes make their own)."""
    cluster = _session_cluster.pop().result(timeout=60) if _session_cluster else RedisCluster()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest_twisted.async_yield_fixture
async def cluster_layer(redis_cluster: RedisCluster) -> Any:
    """A started ``ClusterRedisChannelLayer`` on the session's cluster."""
    from twisted.internet import reactor

    from realtime.layers import layer_from_url

    layer = layer_from_url(redis_cluster.url)
    layer.start(reactor)
    await layer.when_ready(10)
    yield layer
    await layer.close()
