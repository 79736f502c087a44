"""The Redis layer across real processes: ``twistd -n realtime --layer redis://...`` servers
(and ``realtime-runworker`` workers) on one redis-server that the tests start, kill and
restart themselves."""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.e2e.support import BENCH_APP, REPO, Server, script, start, twistd
from tests.redis_support import RedisServer, free_port

LAYER_APP = "tests.apps.layer_app:application"
WORKER_APP = "tests.apps.worker_app:application"
ENV = {"PYTHONPATH": str(REPO)}

pytestmark = pytest.mark.slow


def serve(layer_url: str, app: str = LAYER_APP) -> Server:
    return start(twistd("--app", app, "--port", "0", "--layer", layer_url,
                        "--shutdown-timeout", "3"), env=ENV, cwd=REPO)


def status(server: Server, path: str = "/readyz") -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_status(server: Server, expected: int, timeout: float = 10.0) -> float:
    """Poll until ``path`` answers ``expected``; returns the seconds it took."""
    began = time.monotonic()
    while status(server) != expected:
        if time.monotonic() - began > timeout:
            raise AssertionError(f"/readyz did not become {expected} in {timeout} s:\n"
                                 + server.output()[-3000:])
        time.sleep(0.05)
    return time.monotonic() - began


def recv_json(ws: ClientConnection, kind: str | None = None, timeout: float = 5.0) -> Any:
    """The next JSON message (of ``kind`` if given, skipping others)."""
    deadline = time.monotonic() + timeout
    while True:
        message = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        if kind is None or message.get("type") == kind:
            return message


@contextlib.contextmanager
def typed(server: Server, group: str = "g") -> Iterator[ClientConnection]:
    with connect(server.ws_url(f"/typed/{group}")) as ws:
        assert recv_json(ws)["type"] == "hello"
        yield ws


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def two_servers(redis: RedisServer) -> Iterator[tuple[Server, Server]]:
    with serve(redis.url) as one, serve(redis.url) as two:
        wait_status(one, 200)
        wait_status(two, 200)
        yield one, two


def test_bench_room_across_two_processes_reaches_all_three_clients(redis):
    with serve(redis.url, BENCH_APP) as one, serve(redis.url, BENCH_APP) as two:
        wait_status(one, 200)
        wait_status(two, 200)
        with contextlib.ExitStack() as stack:
            a = stack.enter_context(connect(one.ws_url("/room/lobby")))
            b = stack.enter_context(connect(one.ws_url("/room/lobby")))
            c = stack.enter_context(connect(two.ws_url("/room/lobby")))
            clients = (a, b, c)
            # The room joins without waiting for Redis's SUBSCRIBE (bench's consumer does
            # not await group_add): sync once so every process is subscribed.
            for attempt in range(50):
                a.send(f"sync {attempt}")
                try:
                    for ws in clients:
                        while not ws.recv(timeout=0.2).startswith("sync"):
                            pass
                    break
                except TimeoutError:
                    continue
            a.send("synced")  # behind every earlier sync in each client's stream
            for ws in clients:
                while ws.recv(timeout=5) != "synced":
                    pass
            for i, ws in enumerate(clients):
                for n in range(5):
                    ws.send(f"{i}:{n}")
            for ws in clients:
                got = [ws.recv(timeout=5) for _ in range(15)]
                assert sorted(got) == sorted(f"{i}:{n}" for i in range(3) for n in range(5))
                for i in range(3):  # each sender's messages in its order
                    assert [m for m in got if m.startswith(f"{i}:")] == [
                        f"{i}:{n}" for n in range(5)]


def typed_across(one: Server, two: Server, a: ClientConnection, c: ClientConnection) -> None:
    """A typed group message from each process reaches both (each from its process), and
    ``send()`` reaches a consumer's channel in the other process."""
    a.send(json.dumps({"text": "from one"}))
    c.send(json.dumps({"text": "from two"}))
    for ws in (a, c):
        got = [recv_json(ws, "chat"), recv_json(ws, "chat")]
        assert sorted(m["text"] for m in got) == ["from one", "from two"]
        pids = {m["text"]: m["pid"] for m in got}
        assert pids["from one"] == one.pid and pids["from two"] == two.pid
    with connect(two.ws_url("/typed/other")) as e:
        hello = recv_json(e, "hello")
        a.send(json.dumps({"send_to": hello["channel"], "text": "psst"}))
        assert recv_json(e, "direct") == {"type": "direct", "text": "psst", "pid": one.pid}


def test_typed_group_send_and_send_cross_processes_both_ways(two_servers):
    one, two = two_servers
    with typed(one) as a, typed(two) as c:
        typed_across(one, two, a, c)


def test_redis_killed_and_restarted_sockets_stay_open_rooms_resume_and_gap_reported(redis):
    with serve(redis.url) as one, serve(redis.url) as two:
        wait_status(one, 200)
        wait_status(two, 200)
        with typed(one) as a, typed(two) as c:
            a.send(json.dumps({"text": "before"}))
            assert recv_json(c, "chat")["text"] == "before"
            killed = time.time()
            redis.kill()
            wait_status(one, 503, timeout=5)
            wait_status(two, 503, timeout=5)
            # Sockets stay open; a publish while Redis is down fails loudly, not silently.
            a.send(json.dumps({"text": "during"}))
            error = recv_json(a, "error")
            assert "not connected to Redis" in error["error"] or "lost" in error["error"]
            time.sleep(0.5)
            redis.start()
            ready_one = wait_status(one, 200, timeout=10)
            ready_two = wait_status(two, 200, timeout=10)
            took = max(ready_one, ready_two)
            print(f"\nreconnect after Redis restart: {took:.2f} s "
                  f"(one {ready_one:.2f}, two {ready_two:.2f})")
            for ws in (a, c):
                gap = recv_json(ws, "gap")
                assert gap["group"] == "g"
                assert killed - 1 <= gap["since"] <= gap["until"] <= time.time()
            c.send(json.dumps({"text": "after"}))
            assert recv_json(a, "chat")["text"] == "after"
            assert recv_json(c, "chat")["text"] == "after"
        for server in (one, two):
            server.wait_for(r"group g: messages published between \S+ and \S+ may be lost")
            server.wait_for(r"reconnected to Redis after [\d.]+ s; resubscribed 1 group")
        log = one.stop().output
        assert "Traceback" not in log, log


def test_redis_unreachable_at_start_readyz_503_until_it_comes_up():
    port = free_port()
    with serve(f"redis://127.0.0.1:{port}/0") as server:
        assert status(server, "/healthz") == 200
        for _ in range(5):
            assert status(server) == 503
            time.sleep(0.1)
        with RedisServer(port=port):
            wait_status(server, 200, timeout=10)  # the backoff's cap: tests/test_layers_redis.py
            with typed(server) as a:
                a.send(json.dumps({"text": "up"}))
                assert recv_json(a, "chat")["text"] == "up"
        result = server.stop()
    assert result.returncode == 0, result.output
    assert "connection to Redis" in result.output and "Connection refused" in result.output


def test_runworker_handles_each_message_exactly_once_across_two_workers(redis):
    worker_cmd = [script("twistd"), "-n", "--pidfile=", "realtime-runworker",
                  "--layer", redis.url, "--app", WORKER_APP, "thumbnails"]
    with start(worker_cmd, env=ENV, cwd=REPO, listeners=0) as w1, \
            start(worker_cmd, env=ENV, cwd=REPO, listeners=0) as w2, \
            serve(redis.url) as server:
        for worker in (w1, w2):
            worker.wait_for(r"worker consuming thumbnails")
        wait_status(server, 200)
        with typed(server) as ws:
            for n in range(20):
                ws.send(json.dumps({"enqueue": "thumbnails", "n": n}))
            done = [recv_json(ws, "done", timeout=10) for _ in range(20)]
            assert sorted(m["n"] for m in done) == list(range(20))
            assert {m["worker"] for m in done} <= {w1.pid, w2.pid}
            with pytest.raises(TimeoutError):  # no duplicates
                recv_json(ws, "done", timeout=0.5)
        counts = [len(re.findall(r"handled thumbnail \d+ in", w.output())) for w in (w1, w2)]
        assert sum(counts) == 20, counts
        results = [w.stop() for w in (w1, w2)]
    for result in results:
        assert result.returncode == 0, result.output
        assert "worker stopped after" in result.output


def test_runworker_refuses_the_memory_layer_and_bad_channels():
    from tests.e2e.support import run

    base = [script("twistd"), "-n", "--pidfile=", "realtime-runworker", "--app", WORKER_APP]
    for extra, expected in (
        (["thumbnails"], "a worker needs a shared layer"),
        (["--layer", "redis://127.0.0.1:1/0"], "name at least one channel"),
        (["--layer", "redis://127.0.0.1:1/0", "bad name"], "channel name must be"),
        (["--layer", "redis://127.0.0.1:1/0", "specific.x!y"], "process-specific"),
        (["--layer", "ftp://x", "thumbnails"], "--layer: unknown layer"),
        (["--layer", "redis://127.0.0.1:1/0", "-v", "4", "thumbnails"],
         "--verbosity: must be between 0 and 3, got '4'"),
    ):
        result = run([*base, *extra], env=ENV, cwd=REPO)
        assert result.returncode == 1, result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and expected in lines[0], result.output


def test_runworker_verbosity_0_keeps_warnings_only():
    """Django's management commands take ``-v``; so does the worker. Redis is unreachable
    here: the warning that says so is kept, the info lines are not."""
    cmd = [script("twistd"), "-n", "--pidfile=", "realtime-runworker", "-v", "0",
           "--layer", "redis://127.0.0.1:1/0", "--app", WORKER_APP, "thumbnails"]
    with start(cmd, env=ENV, cwd=REPO, listeners=0) as worker:
        worker.wait_for(r"connection to Redis .* refused")
        result = worker.stop()
    assert result.returncode == 0, result.output
    for hidden in ("worker consuming", "starting up", "worker stopped after"):
        assert hidden not in result.output


def test_redis_layer_under_the_asyncio_reactor(redis):
    """txredisapi imports the global reactor: imported in start(), after twistd installed
    the one --reactor chose."""
    cmd = twistd("--app", LAYER_APP, "--port", "0", "--layer", redis.url, reactor="asyncio")
    with start(cmd, env=ENV, cwd=REPO) as server:
        wait_status(server, 200)
        with typed(server) as a:
            a.send(json.dumps({"text": "on asyncio"}))
            assert recv_json(a, "chat")["text"] == "on asyncio"
        assert "AsyncioSelectorReactor" in server.output()


def test_two_processes_and_a_worker_on_a_redis_cluster(redis_cluster):
    """``--layer redis+cluster://...``: typed group messages and a consumer's channel across
    two server processes, and a worker's named channel, over a three-node Redis Cluster."""
    import uuid

    url = f"{redis_cluster.url}?prefix=e2e{uuid.uuid4().hex[:8]}&partitions=4"
    worker_cmd = [script("twistd"), "-n", "--pidfile=", "realtime-runworker",
                  "--layer", url, "--app", WORKER_APP, "thumbnails"]
    with serve(url) as one, serve(url) as two, \
            start(worker_cmd, env=ENV, cwd=REPO, listeners=0) as worker:
        wait_status(one, 200)
        wait_status(two, 200)
        worker.wait_for(r"worker consuming thumbnails")
        assert "16 partitions" not in one.output()
        assert re.search(r"connected to the Redis Cluster .*: 4 partitions on \d node",
                         one.output())
        with typed(one) as a, typed(two) as c:
            typed_across(one, two, a, c)
            for n in range(5):
                c.send(json.dumps({"enqueue": "thumbnails", "n": n}))
            done = [recv_json(c, "done", timeout=10) for _ in range(5)]
            assert sorted(m["n"] for m in done) == list(range(5))
            assert {m["worker"] for m in done} == {worker.pid}
