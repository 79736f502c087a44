"""The ASGI lifespan under the real command line (tests/e2e/lifespan_app.py): state in
requests, shut-down on SIGTERM, requests held while start-up runs, and a failed start-up
that exits with status 3 (``twistd``, the ``realtime`` script, and ``--workers``)."""

from __future__ import annotations

import re
import signal
import threading
import time

import pytest

from tests.clients import http_get
from tests.e2e.support import REPO, run, script, start, twistd

APP = ["--app", "tests.e2e.lifespan_app:app"]
ENV = {"PYTHONPATH": str(REPO)}


def phases(log_file) -> list[tuple[str, int]]:
    if not log_file.exists():
        return []
    return [(word, int(pid)) for word, pid in
            (line.split() for line in log_file.read_text().splitlines())]


def test_startup_state_and_shutdown_on_sigterm(tmp_path):
    log_file = tmp_path / "phases"
    env = {**ENV, "LIFESPAN_LOG": str(log_file)}
    with start(twistd(*APP, "--port", "0"), env=env) as server:
        server.wait_for(r"ASGI lifespan: tests\.e2e\.lifespan_app\.app started")
        status, _, body = http_get(f"http://127.0.0.1:{server.port}/")
        assert status == 200 and body == f"pid={server.pid} started=yes".encode()
    assert server.result.returncode == 0, server.output()
    assert phases(log_file) == [("startup", server.pid), ("shutdown", server.pid)]


def test_requests_wait_for_a_slow_startup(tmp_path):
    env = {**ENV, "LIFESPAN_DELAY": "1.5"}
    with start(twistd(*APP, "--port", "0"), env=env) as server:
        base = f"http://127.0.0.1:{server.port}"
        ready = http_get(base + "/readyz")
        assert ready[::2] == (503, b"starting\n")  # the listener is open, start-up is not over
        answers: list[tuple[int, bytes]] = []
        held = threading.Thread(target=lambda: answers.append(http_get(base + "/")[::2]))
        began = time.monotonic()
        held.start()
        held.join(15)
        assert answers == [(200, f"pid={server.pid} started=yes".encode())]
        assert time.monotonic() - began > 0.5  # it waited for the start-up
        assert http_get(base + "/readyz")[0] == 200


def test_sigterm_during_startup_refuses_the_waiting_and_still_shuts_down(tmp_path):
    log_file = tmp_path / "phases"
    env = {**ENV, "LIFESPAN_DELAY": "2", "LIFESPAN_LOG": str(log_file)}
    with start(twistd(*APP, "--port", "0"), env=env) as server:
        base = f"http://127.0.0.1:{server.port}"
        assert http_get(base + "/readyz")[::2] == (503, b"starting\n")
        answers: list[tuple[int, bytes]] = []
        held = threading.Thread(target=lambda: answers.append(http_get(base + "/")[::2]))
        held.start()
        time.sleep(0.3)  # the request is in, waiting for the start-up
        server.send_signal(signal.SIGTERM)
        held.join(15)
        result = server.wait(15)
    assert answers == [(503, b"Service Unavailable\n")]
    assert result.returncode == 0, server.output()
    assert phases(log_file) == [("startup", server.pid), ("shutdown", server.pid)]


@pytest.mark.parametrize("command", ["twistd", "realtime"])
def test_a_failed_startup_exits_with_status_3(tmp_path, command):
    env = {**ENV, "LIFESPAN_FAIL": "database unavailable"}
    pidfile = tmp_path / "twistd.pid"
    if command == "twistd":
        cmd = [script("twistd"), "-n", f"--pidfile={pidfile}", "realtime", *APP, "--port", "0"]
    else:
        cmd = [script("realtime"), *APP, "--port", "0"]
    result = run(cmd, env=env, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert re.search(r"\[realtime\.service#error\] application startup failed: "
                     r"tests\.e2e\.lifespan_app\.app: database unavailable\n", output), output
    assert "Traceback" not in output
    assert not pidfile.exists()


def test_lifespan_off_and_a_bad_mode(tmp_path):
    log_file = tmp_path / "phases"
    env = {**ENV, "LIFESPAN_LOG": str(log_file), "LIFESPAN_FAIL": "never asked"}
    with start(twistd(*APP, "--port", "0", "--lifespan", "off"), env=env) as server:
        assert http_get(f"http://127.0.0.1:{server.port}/")[::2] == (200, b"")
    assert server.result.returncode == 0 and phases(log_file) == []
    result = run(twistd(*APP, "--lifespan", "sometimes"), env=ENV)
    assert result.returncode == 1
    assert result.stderr == ("realtime: error: --lifespan: expected one of auto, on, off, "
                             "got 'sometimes'\n")


def test_each_worker_runs_the_lifespan(tmp_path, redis_url):
    log_file = tmp_path / "phases"
    env = {**ENV, "LIFESPAN_LOG": str(log_file)}
    cmd = twistd(*APP, "--port", "0", "--workers", "2", "--layer", redis_url,
                 "--shutdown-timeout", "5")
    with start(cmd, env=env) as server:
        server.wait_for(r"all 2 workers ready")
        started = phases(log_file)
        assert sorted(word for word, _ in started) == ["startup", "startup"]
        assert len({pid for _, pid in started}) == 2 and server.pid not in dict(started).values()
    assert server.result.returncode == 0, server.output()
    ended = phases(log_file)[2:]
    assert sorted(ended) == sorted(("shutdown", pid) for _, pid in started)


def test_a_worker_whose_startup_fails_stops_the_supervisor_with_status_3(redis_url):
    env = {**ENV, "LIFESPAN_FAIL": "database unavailable"}
    cmd = twistd(*APP, "--port", "0", "--workers", "2", "--layer", redis_url,
                 "--shutdown-timeout", "5")
    server = start(cmd, env=env)
    result = server.wait(20)
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert "application startup failed: tests.e2e.lifespan_app.app: database unavailable" \
        in output
    assert re.search(r"worker \d \(pid \d+\): the application's startup failed; stopping "
                     r"every worker", output), output
    assert "restarting in" not in output
