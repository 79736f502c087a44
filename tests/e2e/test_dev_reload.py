"""``--reload`` on real processes: a module in tmp_path is rewritten under a running
``twistd realtime --reload``; the server restarts once per save, a SyntaxError leaves the
supervisor (and its listening socket) up until the fix, SIGTERM leaves no child behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.e2e.support import REPO, run, start, twistd

TIMEOUT = 15
READY = r"server \(pid (\d+)\) ready"

APP = '''\
import os

from realtime import URLRouter, WebsocketConsumer, path

from greeting import GREETING


class Hello(WebsocketConsumer):
    def connect(self):
        self.accept()
        self.send(text_data=f"{GREETING} {os.getpid()}")


application = URLRouter([path("hello", Hello.as_app())])
'''


class Files:
    """Writes modules into a directory, each write's mtime a second past the last one's
    (a change polling sees, and Python's .pyc check too)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.stamp = time.time_ns()

    def write(self, **modules: str) -> None:
        for name, text in modules.items():
            path = self.directory / f"{name}.py"
            path.write_text(text)
            self.stamp += 1_000_000_000
            os.utime(path, ns=(self.stamp, self.stamp))


def hello(server) -> tuple[str, int]:
    with connect(server.ws_url("/hello"), open_timeout=TIMEOUT, proxy=None) as ws:
        greeting, pid = str(ws.recv(timeout=TIMEOUT)).split()
    return greeting, int(pid)


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def gone(pid: int) -> bool:
    """No such process, not even a zombie: exited and reaped."""
    return not Path(f"/proc/{pid}").exists()


def test_edit_restart_syntax_error_fix_and_sigterm(tmp_path):
    files = Files(tmp_path)
    files.write(greeting='GREETING = "v1"\n', reloadapp=APP)
    cmd = twistd("--app", "reloadapp:application", "--reload", "--reload-dir", str(tmp_path),
                 "--port", "tcp:0:interface=127.0.0.1", "--shutdown-timeout", "2")
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    with start(cmd, env=env, cwd=tmp_path) as server:
        server.wait_for(r"reload: watching 2 file\(s\) \(\*\.py\) in "
                        + re.escape(str(tmp_path)) + "; for development only")
        first = int(server.wait_for(READY)[0].group(1))
        assert parent_of(first) == server.pid
        assert hello(server) == ("v1", first)

        # SIGHUP reaches the server (which reloads what it has: nothing here).
        server.send_signal(signal.SIGHUP)
        server.wait_for(r"server: .*SIGHUP: nothing to reload")

        # Two modules saved together: one restart naming both; an open socket is drained.
        with connect(server.ws_url("/hello"), open_timeout=TIMEOUT, proxy=None) as open_ws:
            assert open_ws.recv(timeout=TIMEOUT) == f"v1 {first}"
            files.write(greeting='GREETING = "v2"\n', reloadapp=APP + "\n# edited\n")
            server.wait_for(r"reload: greeting\.py, reloadapp\.py changed; restarting the server")
            with pytest.raises(ConnectionClosed) as closed:
                open_ws.recv(timeout=TIMEOUT)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        second = int(server.wait_for(READY, count=2)[1].group(1))
        assert second != first and gone(first)
        assert hello(server) == ("v2", second)
        assert server.output().count("restarting the server") == 1

        # A SyntaxError: the server cannot start; the supervisor says so and stays up.
        files.write(greeting='GREETING = "v3\n')
        server.wait_for(r"reload: greeting\.py changed")
        server.wait_for(r"server: realtime: error: --app 'reloadapp:application': importing "
                        r"module 'reloadapp' raised SyntaxError: .*greeting\.py, line 1")
        server.wait_for(r"server \(pid \d+\) exited with status 1; waiting for a file change")
        assert server.proc.poll() is None
        # Its listening socket stays open: a client connecting now waits, not refused ...
        waiting = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
        waiting.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")

        # ... and the fixed module's server answers it.
        files.write(greeting='GREETING = "v3"\n')
        third = int(server.wait_for(READY, count=3)[2].group(1))
        with waiting:
            assert waiting.recv(64).startswith(b"HTTP/1.1 200 ")
        assert hello(server) == ("v3", third)

        server.send_signal(signal.SIGTERM)
        result = server.wait(timeout=TIMEOUT)
    assert result.returncode == 0, result.output
    assert re.search(rf"server \(pid {third}\) exited with status 0", result.output)
    assert gone(third)
    assert "Traceback" not in result.output


def test_reload_refuses_more_than_one_worker():
    result = run(twistd("--app", "realtime.examples.bench:application", "--reload",
                        "--workers", "2", "--layer", "redis://127.0.0.1:6379/0"))
    assert result.returncode == 1
    assert result.stderr == ("realtime: error: --reload and --workers 2 cannot be used "
                             "together: --reload runs one server process\n")


def test_unix_and_tls_listeners_serve_after_a_restart(tmp_path):
    """A child that exits must not take the supervisor's unix socket path with it (Twisted's
    port removes its path when it stops): the next server adopts the same socket and
    clients still find it by its path. TLS is wrapped around the new server's socket."""
    import ssl

    from websockets.sync.client import unix_connect

    from tests.e2e.support import self_signed

    cert, key = self_signed(tmp_path)
    sock = tmp_path / "rt.sock"
    files = Files(tmp_path)
    files.write(greeting='GREETING = "v1"\n', reloadapp=APP)
    cmd = twistd("--app", "reloadapp:application", "--reload", "--reload-dir", str(tmp_path),
                 "--port", f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
                 "-u", str(sock), "--shutdown-timeout", "2")
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    trusting = ssl.create_default_context(cafile=str(cert))
    trusting.maximum_version = ssl.TLSVersion.TLSv1_2  # see tests/e2e/test_workers.py

    def over_unix() -> str:
        with unix_connect(str(sock), "ws://localhost/hello", open_timeout=TIMEOUT) as ws:
            return str(ws.recv(timeout=TIMEOUT)).split()[0]

    def over_tls() -> str:
        with connect(server.ws_url("/hello", "wss"), ssl=trusting, open_timeout=TIMEOUT,
                     proxy=None) as ws:
            return str(ws.recv(timeout=TIMEOUT)).split()[0]

    with start(cmd, env=env, cwd=tmp_path, listeners=2) as server:
        server.wait_for(READY)
        assert (over_unix(), over_tls()) == ("v1", "v1")
        files.write(greeting='GREETING = "v2"\n')
        server.wait_for(r"server \(pid \d+\) exited with status 0")
        assert sock.exists()
        server.wait_for(READY, count=2)
        assert (over_unix(), over_tls()) == ("v2", "v2")
        server.send_signal(signal.SIGTERM)
        result = server.wait(timeout=TIMEOUT)
    assert result.returncode == 0, result.output
    assert "Traceback" not in result.output and "realtime: error" not in result.output
    assert not sock.exists()  # the supervisor's to remove, at the end


HELPER = '''\
import os
import subprocess
import sys

# A helper the application starts (an asset watcher, say): it inherits stdout and stderr.
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
with open(os.path.join(os.path.dirname(__file__), "helpers"), "a") as f:
    f.write(f"{helper.pid}\\n")
'''


def test_a_process_the_server_started_does_not_hold_up_the_restart(tmp_path):
    """The old server has exited, but a process it started still holds its stdout: the
    new server starts anyway (it waited for that process to end), and SIGTERM stops."""
    files = Files(tmp_path)
    files.write(greeting='GREETING = "v1"\n', helper=HELPER, reloadapp="import helper\n" + APP)
    cmd = twistd("--app", "reloadapp:application", "--reload", "--reload-dir", str(tmp_path),
                 "--port", "tcp:0:interface=127.0.0.1", "--shutdown-timeout", "2")
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    try:
        with start(cmd, env=env, cwd=tmp_path) as server:
            first = int(server.wait_for(READY)[0].group(1))
            files.write(greeting='GREETING = "v2"\n')
            server.wait_for(rf"server \(pid {first}\) exited with status 0", timeout=TIMEOUT)
            second = int(server.wait_for(READY, count=2, timeout=TIMEOUT)[1].group(1))
            assert hello(server) == ("v2", second)
            server.send_signal(signal.SIGTERM)
            result = server.wait(timeout=TIMEOUT)
        assert result.returncode == 0, result.output
        assert "Traceback" not in result.output
    finally:
        helpers = tmp_path / "helpers"
        for pid in map(int, helpers.read_text().split() if helpers.exists() else []):
            try:  # only the helpers this test's servers started, by pid
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_save_within_the_same_second_at_the_same_size_is_served(tmp_path):
    """Python trusts a .pyc whose recorded source mtime (whole seconds) and size match: the
    supervisor removes a changed module's .pyc, or the new server would serve the old
    code."""
    greeting = tmp_path / "greeting.py"
    second = (time.time_ns() // 10**9 - 60) * 10**9

    def save(text: str, at: int) -> None:
        greeting.write_text(text)
        os.utime(greeting, ns=(second + at, second + at))

    save('GREETING = "v1"\n', 0)
    (tmp_path / "reloadapp.py").write_text(APP)
    cmd = twistd("--app", "reloadapp:application", "--reload", "--reload-dir", str(tmp_path),
                 "--port", "tcp:0:interface=127.0.0.1", "--shutdown-timeout", "2")
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", "PYTHONDONTWRITEBYTECODE": None}
    with start(cmd, env=env, cwd=tmp_path) as server:
        first = int(server.wait_for(READY)[0].group(1))
        assert hello(server) == ("v1", first)
        assert list((tmp_path / "__pycache__").glob("greeting.*.pyc"))  # it was cached
        save('GREETING = "v2"\n', 500_000_000)
        second_pid = int(server.wait_for(READY, count=2)[1].group(1))
        assert hello(server) == ("v2", second_pid)
