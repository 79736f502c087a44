"""systemd: the notify protocol on a real ``twistd -n realtime`` process (a test
``NOTIFY_SOCKET``), the open-files limit, the shipped units (``systemd-analyze verify``,
and the service's own ExecStart line run under ``systemd-socket-activate`` with the socket
unit's settings)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.e2e.support import (
    BENCH_APP,
    REPO,
    run,
    script,
    start,
    start_socket_activated,
    twistd,
)

UNITS = REPO / "contrib" / "systemd"
TIMEOUT = 15


def _needed(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path:
        return path
    reason = f"{tool} is not installed (Debian package {package!r}; tests/run.sh installs it)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)


class NotifyReceiver:
    """A unix datagram socket standing in for systemd's ``NOTIFY_SOCKET``."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.messages: list[str] = []

    def expect(self, state: str, timeout: float = TIMEOUT) -> list[str]:
        """Wait (bounded) for a datagram holding ``state``; return every one seen so far."""
        deadline = time.monotonic() + timeout
        while state not in [line for m in self.messages for line in m.split("\n")]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {state!r} in {timeout} s; got {self.messages}")
            self.sock.settimeout(left)
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
        return self.messages

    def close(self) -> None:
        self.sock.close()


def echo(port: int) -> None:
    with connect(f"ws://127.0.0.1:{port}/echo", open_timeout=TIMEOUT, proxy=None) as ws:
        ws.send("hello")
        assert ws.recv(timeout=TIMEOUT) == "hello"


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_ready_then_stopping(tmp_path, kind):
    if kind == "path":
        value = address = str(tmp_path / "notify.sock")
    else:
        name = f"realtime-test-{uuid.uuid4().hex}"
        value, address = "@" + name, "\0" + name
    receiver = NotifyReceiver(address)
    try:
        server = start(twistd("--app", BENCH_APP, "--port", "0", "--port", "0"),
                       env={"NOTIFY_SOCKET": value}, listeners=2)
        with server:
            assert receiver.expect("READY=1") == ["READY=1"]
            echo(server.port)  # READY=1 means it serves
            server.send_signal(signal.SIGTERM)
            assert receiver.expect("STOPPING=1") == ["READY=1", "STOPPING=1"]
            result = server.wait()
        assert result.returncode == 0, result.output
    finally:
        receiver.close()


def test_watchdog_pings(tmp_path):
    receiver = NotifyReceiver(str(tmp_path / "notify.sock"))
    try:
        env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "200000"}
        with start(twistd("--app", BENCH_APP, "--port", "0"), env=env) as server:
            receiver.expect("READY=1")
            # It keeps pinging (how often, on a fake clock: tests/test_notify.py); the log
            # says the interval it took from WATCHDOG_USEC.
            for _ in range(4):
                receiver.messages.clear()
                receiver.expect("WATCHDOG=1")
            server.wait_for(r"systemd watchdog: WATCHDOG=1 every 0\.1 s")
    finally:
        receiver.close()


def test_a_watchdog_for_another_pid_is_not_ours(tmp_path):
    receiver = NotifyReceiver(str(tmp_path / "notify.sock"))
    try:
        env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "200000",
               "WATCHDOG_PID": "1"}
        with start(twistd("--app", BENCH_APP, "--port", "0"), env=env):
            receiver.expect("READY=1")
            time.sleep(0.3)
            receiver.sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                receiver.sock.recv(4096)
    finally:
        receiver.close()


def test_open_files_soft_limit_raised_and_logged():
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 512:
        pytest.skip(f"hard limit {hard} leaves nothing to raise")
    shown = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    cmd = ["sh", "-c", 'ulimit -S -n 512 && exec "$@"', "sh",
           *twistd("--app", BENCH_APP, "--port", "0")]
    with start(cmd) as server:
        server.wait_for(rf"open files: soft 512 -> \d+ \(hard {shown}\)")
        pid = server.pid
        limits = Path(f"/proc/{pid}/limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        now_soft, now_hard = line.split()[3:5]
        assert now_soft == now_hard


def _unit(name: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file (repeated keys keep every value)."""
    values: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_units_pass_systemd_analyze_verify(tmp_path):
    tool = _needed("systemd-analyze", "systemd")
    twistd_path = script("twistd")
    for name in ("realtime.service", "realtime.socket"):
        text = (UNITS / name).read_text()
        # The unit names /opt/realtime/bin/twistd (the venv its comment makes); verify
        # checks that the binary exists, so the copy names this environment's twistd.
        (tmp_path / name).write_text(text.replace("/opt/realtime/bin/twistd", twistd_path))
    result = run([tool, "verify", str(tmp_path / "realtime.service"),
                  str(tmp_path / "realtime.socket")], cwd=tmp_path)
    assert result.returncode == 0, result.output
    problems = [line for line in result.output.splitlines()
                if re.search(r"error|warn|unknown|ignoring|not executable", line, re.I)]
    assert not problems, result.output


def test_units_settings():
    service, sock = _unit("realtime.service"), _unit("realtime.socket")
    assert service["Type"] == ["notify"]
    assert service["KillMode"] == ["mixed"]
    for key in ("DynamicUser", "ProtectHome", "NoNewPrivileges", "PrivateTmp"):
        assert service[key] == ["yes"], key
    assert service["ProtectSystem"] == ["strict"]
    assert int(service["LimitNOFILE"][0]) >= 65536
    assert service["WatchdogSec"]
    (exec_start,) = service["ExecStart"]
    assert "--pidfile=" in exec_start and "--nodaemon" in exec_start
    assert sock["ListenStream"] == ["127.0.0.1:8000"]
    assert f"name={sock['FileDescriptorName'][0]}" in exec_start
    assert "domain=INET:" in exec_start  # 127.0.0.1 is an AF_INET socket
    assert "INET6" in (UNITS / "realtime.socket").read_text()  # the comment on IPv6


def test_service_exec_start_under_socket_activation(tmp_path):
    """The service's own ExecStart, with the socket unit's address (on a free port), its
    FileDescriptorName and the unit's Environment=, started by systemd-socket-activate;
    READY=1 reaches the test's NOTIFY_SOCKET and a WebSocket echo works."""
    output = _socket_activated(tmp_path, {})
    assert "realtime.workers" not in output


def test_socket_activation_with_workers(tmp_path, redis_server):
    """The same with REALTIME_WORKERS=2 (what /etc/realtime/realtime.env would say): the
    supervisor adopts systemd's socket, both workers accept from it, and READY=1 comes
    once both are ready."""
    if not redis_server.ping():
        redis_server.kill()
        redis_server.start()
    output = _socket_activated(tmp_path, {"REALTIME_WORKERS": "2",
                                          "REALTIME_LAYER": redis_server.url})
    assert "all 2 workers ready" in output
    assert len(re.findall(r"worker [12] \(pid \d+\) exited with status 0", output)) == 2


def _socket_activated(tmp_path: Path, extra: dict[str, str]) -> str:
    tool = _needed("systemd-socket-activate", "systemd")
    service, sock = _unit("realtime.service"), _unit("realtime.socket")
    argv = shlex.split(service["ExecStart"][0])
    assert argv[0] == "/opt/realtime/bin/twistd"
    argv[0] = script("twistd")
    env = dict(item.split("=", 1) for value in service.get("Environment", [])
               for item in shlex.split(value))
    assert env["REALTIME_APP"] == BENCH_APP
    env.update(extra)
    env["NOTIFY_SOCKET"] = notify = str(tmp_path / "notify.sock")
    if "PYTHONPATH" in os.environ:  # the tool passes only what -E names
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    host = sock["ListenStream"][0].rsplit(":", 1)[0]
    receiver = NotifyReceiver(notify)
    try:
        server, port = start_socket_activated(
            tool, host, sock["FileDescriptorName"][0], argv,
            [f"-E{k}={v}" for k, v in env.items()],
        )
        with server:
            echo(port)  # the first connection starts the service; it waits in the backlog
            assert server.wait_listening() == [f"tcp:{host}:{port}"]
            receiver.expect("READY=1")
            for _ in range(5):
                echo(port)
            server.send_signal(signal.SIGTERM)
            receiver.expect("STOPPING=1")
            result = server.wait()
        assert result.returncode == 0, result.output
        assert "Traceback" not in result.output
        return result.output
    finally:
        receiver.close()
