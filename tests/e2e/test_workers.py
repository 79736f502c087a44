"""``--workers N`` on real processes: a supervisor and its workers share the listeners
(SO_REUSEPORT for TCP), meet through a real Redis layer, survive a SIGKILLed worker, and
drain together on SIGTERM. Workers are identified by the pid ``/pid`` sends
(tests/e2e/worker_app.py)."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.e2e.support import BENCH_APP, REPO, run, start, twistd

APP = "tests.e2e.worker_app:application"
ENV = {"PYTHONPATH": str(REPO)}  # the test application lives in the repository
TIMEOUT = 15


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


@contextlib.contextmanager
def supervisor(redis_url: str, *args: str, workers: int = 2):
    cmd = twistd("--app", APP, "--port", "0", "--workers", str(workers),
                 "--layer", redis_url, "--shutdown-timeout", "5", *args)
    with start(cmd, env=ENV) as server:
        server.wait_for(rf"all {workers} workers ready")
        yield server


def open_pid(stack: contextlib.ExitStack, server, path: str = "/pid"
             ) -> tuple[ClientConnection, int]:
    """A client (closed with ``stack``) and the pid of the worker it reached."""
    ws = stack.enter_context(connect(server.ws_url(path), open_timeout=TIMEOUT, proxy=None))
    return ws, int(ws.recv(timeout=TIMEOUT))


def worker_pids(server) -> dict[int, int]:
    """worker number -> pid, from the latest ``worker N started (pid P)`` lines."""
    pids: dict[int, int] = {}
    for m in re.finditer(r"worker (\d+) started \(pid (\d+)\)", server.output()):
        pids[int(m.group(1))] = int(m.group(2))
    return pids


@pytest.mark.parametrize("how", ["option", "environment"])
def test_more_than_one_worker_needs_a_shared_layer(how):
    args, env = ("--workers", "2"), {}
    if how == "environment":
        args, env = (), {"REALTIME_WORKERS": "2"}
    result = run(twistd("--app", BENCH_APP, "--port", "0", *args), env=env)
    assert result.returncode == 1
    assert result.stderr == ("realtime: error: --workers 2 needs a shared channel layer: "
                             "use --layer redis://...\n")


def test_workers_must_be_a_positive_count():
    result = run(twistd("--app", BENCH_APP, "--workers", "0"))
    assert result.returncode == 1
    assert result.stderr == "realtime: error: --workers: must be at least 1, got '0'\n"


def test_two_workers_share_the_port_and_the_layer(redis_url):
    with supervisor(redis_url) as server:
        assert len(server.addresses) == 1  # the supervisor's line; workers say "serving"
        assert server.output().count("listening on") == 1
        assert server.output().count(f"serving tcp:127.0.0.1:{server.port}") == 2
        started = worker_pids(server)
        assert sorted(started) == [1, 2]
        assert all(parent_of(pid) == server.pid for pid in started.values())
        # 200 connections spread over both workers (SO_REUSEPORT hashes each one).
        counts: collections.Counter[int] = collections.Counter()
        with contextlib.ExitStack() as stack:
            for _ in range(200):
                ws, pid = open_pid(stack, server)
                counts[pid] += 1
        assert set(counts) == set(started.values()), counts
        assert min(counts.values()) >= 60, counts  # an even split is 100 each
        # Two members of one room on different workers meet through Redis.
        with contextlib.ExitStack() as stack:
            members: dict[int, ClientConnection] = {}
            for _ in range(50):
                ws, pid = open_pid(stack, server, "/room/lobby")
                members.setdefault(pid, ws)
                if len(members) == 2:
                    break
            assert len(members) == 2, "no two members on different workers"
            first, second = members.values()
            first.send("across workers")
            assert second.recv(timeout=TIMEOUT) == "across workers"
            assert first.recv(timeout=TIMEOUT) == "across workers"
        # Worker log lines reach the supervisor's output, numbered.
        assert re.search(r"worker [12]: \[realtime\.service#info\] serving tcp:",
                         server.output())
        result = server.stop()
    assert result.returncode == 0, result.output


def test_a_killed_worker_is_replaced_and_clients_reconnect(redis_url):
    with supervisor(redis_url) as server:
        started = worker_pids(server)
        clients: dict[int, list[ClientConnection]] = collections.defaultdict(list)
        with contextlib.ExitStack() as stack:
            while len(clients) < 2 or min(len(c) for c in clients.values()) < 3:
                ws, pid = open_pid(stack, server)
                clients[pid].append(ws)
            victim_number, victim = 1, started[1]
            assert parent_of(victim) == server.pid  # ours: the supervisor we started
            survivor = started[2]
            os.kill(victim, signal.SIGKILL)
            for ws in clients[victim]:
                with pytest.raises(ConnectionClosed):
                    ws.recv(timeout=TIMEOUT)
            server.wait_for(rf"worker {victim_number} \(pid {victim}\) killed by signal 9; "
                            r"restarting in 0\.5 s")
            server.wait_for(rf"worker {victim_number} started \(pid (?!{victim}\))\d+\)")
            replacement = worker_pids(server)[victim_number]
            assert replacement != victim and parent_of(replacement) == server.pid
            # The other worker's clients never noticed.
            for ws in clients[survivor]:
                ws.send("still here")
                assert ws.recv(timeout=TIMEOUT) == "still here"
            # Clients reconnect: connections reach the survivor and the replacement.
            seen: set[int] = set()
            deadline = time.monotonic() + TIMEOUT
            while seen != {survivor, replacement} and time.monotonic() < deadline:
                ws, pid = open_pid(stack, server)
                seen.add(pid)
            assert seen == {survivor, replacement}
        server.wait_for(r"all 2 workers ready")
        result = server.stop()
    assert result.returncode == 0, result.output


def test_sigterm_drains_every_worker_and_exits_0(redis_url):
    with supervisor(redis_url) as server:
        pids = set(worker_pids(server).values())
        clients: list[ClientConnection] = []
        seen: set[int] = set()
        with contextlib.ExitStack() as stack:
            while seen != pids or len(clients) < 10:
                ws, pid = open_pid(stack, server)
                clients.append(ws)
                seen.add(pid)
            server.send_signal(signal.SIGTERM)
            codes = []
            for ws in clients:
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=TIMEOUT)
                assert closed.value.rcvd is not None
                codes.append((closed.value.rcvd.code, closed.value.rcvd.reason))
        result = server.wait(timeout=TIMEOUT)
    assert codes == [(1001, "server shutting down")] * len(clients)
    assert result.returncode == 0, result.output
    for number in (1, 2):
        assert re.search(rf"worker {number} \(pid \d+\) exited with status 0", result.output)
    assert "restarting" not in result.output
    assert "Traceback" not in result.output


def test_tls_and_unix_listeners_with_workers(redis_url, tmp_path):
    """ssl: (a SO_REUSEPORT group; each worker wraps its socket in TLS) and unix: (one
    socket every worker shares)."""
    import ssl

    import httpx
    from websockets.sync.client import unix_connect

    from tests.e2e.support import self_signed

    cert, key = self_signed(tmp_path)
    path = str(tmp_path / "rt.sock")
    cmd = twistd("--app", APP, "--workers", "2", "--layer", redis_url,
                 "--port", f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
                 "-u", path)
    with start(cmd, env=ENV, listeners=2) as server:
        server.wait_for(r"all 2 workers ready")
        assert server.addresses[1] == f"unix:{path}"
        trusting = ssl.create_default_context(cafile=str(cert))
        # TLS 1.2: about 1 in 30 TLS 1.3 handshakes stalls (no HTTP response) in a single
        # process too, without --workers; that is the site's TLS path, not this feature.
        trusting.maximum_version = ssl.TLSVersion.TLSv1_2
        pids = set()
        with contextlib.ExitStack() as stack:
            for _ in range(30):
                ws = stack.enter_context(connect(server.ws_url("/pid", "wss"), ssl=trusting,
                                                 open_timeout=TIMEOUT, proxy=None))
                pids.add(int(ws.recv(timeout=TIMEOUT)))
            for _ in range(10):
                ws = stack.enter_context(unix_connect(path, "ws://localhost/pid",
                                                      open_timeout=TIMEOUT))
                pids.add(int(ws.recv(timeout=TIMEOUT)))
        assert pids == set(worker_pids(server).values())
        # Each worker's TLS offers HTTP/2 as a single server's does.
        with httpx.Client(http2=True, verify=trusting) as client:
            response = client.get(server.ws_url("/healthz", "https"))
        assert (response.http_version, response.text) == ("HTTP/2", "ok\n")
        result = server.stop()
    assert result.returncode == 0, result.output


def test_sighup_is_passed_on_and_kills_nobody(redis_url):
    with supervisor(redis_url) as server:
        pids = worker_pids(server)
        server.send_signal(signal.SIGHUP)
        server.wait_for(r"signal 1: passed on to 2 worker\(s\)")
        with contextlib.ExitStack() as stack:
            _ws, pid = open_pid(stack, server)
            assert pid in pids.values()
        assert worker_pids(server) == pids  # nobody died, nobody restarted
        assert "restarting" not in server.output()
        result = server.stop()
    assert result.returncode == 0, result.output


def test_sighup_reloads_the_api_keys_in_every_worker(redis_url, tmp_path):
    """The supervisor passes SIGHUP on; each worker re-reads --api-key-file, so whichever
    worker a request reaches takes the new key and refuses the old one."""
    from realtime.client import PublishError, publish

    old, new = "old-api-key-0123456789", "new-api-key-0123456789"
    key_file = tmp_path / "api.keys"
    key_file.write_text(old)
    with supervisor(redis_url, "--api-key-file", str(key_file)) as server:
        base = f"http://127.0.0.1:{server.port}"
        # Listening is not the layer connected: a publish before that is a 503.
        server.wait_for(r"publisher connected to Redis", count=2, timeout=TIMEOUT)
        server.wait_for(r"subscriber connected to Redis", count=2, timeout=TIMEOUT)
        key_file.write_text(new)
        server.send_signal(signal.SIGHUP)
        server.wait_for(r"SIGHUP: reloaded 1 API key\(s\)", count=2, timeout=TIMEOUT)
        for _ in range(8):  # new connections: the kernel spreads them over both workers
            assert publish(base, new, "g", text="x")["ok"] is True
            with pytest.raises(PublishError) as refused:
                publish(base, old, "g", text="x")
            assert refused.value.status == 401
        result = server.stop()
    assert result.returncode == 0, result.output


def _scrape(url: str) -> dict[str, float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name + str(sorted(sample.labels.items()))] = sample.value
    return values


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_the_internal_port_is_every_workers(redis_url):
    """``--internal-port`` under ``--workers 2``: the supervisor binds it (one SO_REUSEPORT
    socket per worker, as the main port) and every worker serves the operator endpoints
    there: the probes, /metrics with both workers' totals, the server API, whose publish
    reaches members on both workers; the main port has none of them."""
    from realtime.client import PublishError, publish

    key = "workers-internal-key-0123"
    with supervisor(redis_url, "--internal-port", "0", "--metrics", "--api-key", key
                    ) as server, contextlib.ExitStack() as stack:
        found = server.wait_for(r"listening on tcp:127\.0\.0\.1:(\d+) \(internal: /healthz, "
                                r"/readyz, /metrics, /api/\)")
        port = int(found[0].group(1))
        assert port != server.port
        assert server.output().count(f"serving tcp:127.0.0.1:{port} (internal: ") == 2
        internal, main = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{server.port}"
        members, pids = [], set()
        while len(pids) < 2 and len(members) < 60:
            ws, pid = open_pid(stack, server, "/room/ops")
            members.append(ws)
            pids.add(pid)
        assert len(pids) == 2, "connections never reached the second worker"
        deadline = time.monotonic() + TIMEOUT
        while True:
            # A worker whose Redis connection is not up yet refuses at once (503, nothing
            # published): the other may have taken this request; try again.
            try:
                assert publish(internal, key, "ops", text="deploy finished")["ok"] is True
                break
            except PublishError as exc:
                assert exc.status == 503 and time.monotonic() < deadline, exc
                time.sleep(0.1)
        for ws in members:
            assert ws.recv(timeout=TIMEOUT) == "deploy finished"
        for _ in range(8):  # each a connection of its own: both workers answer some
            assert _status(internal + "/healthz") == 200
            assert _status(internal + "/readyz") == 200
            assert _status(main + "/healthz") == 404
            assert _status(main + "/metrics") == 404
        deadline = time.monotonic() + TIMEOUT
        while (values := _scrape(internal + "/metrics")).get(
                "realtime_connections[]") != len(members):
            assert time.monotonic() < deadline, values.get("realtime_connections[]")
            time.sleep(0.1)
        result = server.stop()
    assert result.returncode == 0, result.output


@pytest.mark.parametrize("where", ["main-port", "metrics-port"])
def test_metrics_totals_add_up_across_workers(redis_url, where):
    """/metrics (on a worker's main port, or on the supervisor's --metrics-port) counts the
    traffic of both workers: every message sent and every HTTP request, whichever worker
    took it."""
    extra = ("--metrics",) if where == "main-port" else ("--metrics-port", "0")
    with supervisor(redis_url, *extra) as server, contextlib.ExitStack() as stack:
        if where == "metrics-port":
            found = server.wait_for(r"listening on tcp:127\.0\.0\.1:(\d+)", count=2)
            ports = [int(p) for p in re.findall(r"listening on tcp:127\.0\.0\.1:(\d+)",
                                                server.output())]
            assert found and len(set(ports)) >= 2
            url = f"http://127.0.0.1:{ports[-1]}/metrics"
        else:
            url = f"http://127.0.0.1:{server.port}/metrics"
        pids: set[int] = set()
        clients = []
        while len(pids) < 2 and len(clients) < 60:
            ws, pid = open_pid(stack, server)
            pids.add(pid)
            clients.append(ws)
        assert len(pids) == 2, "connections never reached the second worker"
        sent = 0
        for ws in clients:
            for i in range(3):
                ws.send(f"m{i}")
                assert ws.recv(timeout=TIMEOUT) == f"m{i}"
                sent += 1
        deadline = time.monotonic() + TIMEOUT
        while True:  # the other worker's snapshot is at most half a second old
            values = _scrape(url)
            if values.get("realtime_messages_in_total[]") == sent:
                break
            assert time.monotonic() < deadline, (values.get("realtime_messages_in_total[]"),
                                                 sent)
            time.sleep(0.1)
        assert values["realtime_connections[]"] == len(clients)

        # HTTP: POSTs (scrapes are GETs), each on a connection of its own, until both
        # workers have answered some.
        posted: collections.Counter[int] = collections.Counter()
        while len(posted) < 2 and sum(posted.values()) < 60:
            request = urllib.request.Request(f"http://127.0.0.1:{server.port}/pid", b"x")
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                posted[int(response.read())] += 1
        assert set(posted) == pids, posted
        expected = sum(posted.values())
        # A scrape on a worker is in progress as it counts; the supervisor's is no worker's.
        own = 1 if where == "main-port" else 0
        post_200 = "realtime_http_requests_total[('method', 'POST'), ('status', '200')]"
        deadline = time.monotonic() + TIMEOUT
        while True:
            values = _scrape(url)
            if (values.get(post_200) == expected
                    and values["realtime_http_requests_in_progress[]"] == own):
                break
            assert time.monotonic() < deadline, (values.get(post_200), expected)
            time.sleep(0.1)
        counted = sum(v for k, v in values.items() if k.startswith("realtime_http_requests_total["))
        assert values["realtime_http_request_seconds_count[]"] == counted >= expected
