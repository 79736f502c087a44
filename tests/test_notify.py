"""realtime.notify (systemd's NOTIFY_SOCKET protocol) and the open-files limit, in process:
a real unix datagram socket receives what is sent; the watchdog runs on a Clock."""

from __future__ import annotations

import os
import resource
import socket
import uuid

import pytest
from twisted.internet.task import Clock

from realtime.notify import Notifier, notify_address, sd_notify, watchdog_interval
from realtime.service import raise_open_files_limit


@pytest.fixture
def receiver(tmp_path):
    """A bound datagram socket; yields (NOTIFY_SOCKET value, socket)."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(2)
        yield path, sock


def received(sock: socket.socket) -> list[str]:
    """Every datagram waiting now."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(2)


def test_address_forms():
    assert notify_address({}) is None
    assert notify_address({"NOTIFY_SOCKET": ""}) is None
    assert notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert notify_address({"NOTIFY_SOCKET": "@abstract/name"}) == "\0abstract/name"
    assert notify_address({"NOTIFY_SOCKET": "vsock:2:1234"}) is None


def test_no_socket_is_a_no_op():
    assert sd_notify("READY=1", {}) is False
    notifier = Notifier(Clock(), env={})
    assert not notifier.enabled
    notifier.ready()
    notifier.start_watchdog()
    assert notifier._watchdog is None


def test_send_to_a_path(receiver):
    path, sock = receiver
    assert sd_notify("READY=1", {"NOTIFY_SOCKET": path}) is True
    assert sock.recv(4096) == b"READY=1"


def test_send_to_the_abstract_namespace():
    name = f"realtime-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert sd_notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(4096) == b"STOPPING=1"


def test_a_failed_send_is_logged_not_raised(tmp_path):
    assert sd_notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody.sock")}) is False


def test_watchdog_interval():
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "200000"}
    assert watchdog_interval(env) == pytest.approx(0.1)
    assert watchdog_interval({**env, "WATCHDOG_PID": str(os.getpid())}) == pytest.approx(0.1)
    assert watchdog_interval({**env, "WATCHDOG_PID": "1"}) is None  # meant for another
    assert watchdog_interval({"NOTIFY_SOCKET": "/x"}) is None
    assert watchdog_interval({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "200000"}) is None  # nowhere to send


def test_notifier_messages_and_watchdog_on_a_clock(receiver):
    path, sock = receiver
    clock = Clock()
    notifier = Notifier(clock, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    notifier.ready()
    notifier.start_watchdog()
    assert received(sock) == ["READY=1", "WATCHDOG=1"]  # the first ping at once
    for _ in range(5):
        clock.advance(0.1)
    assert received(sock) == ["WATCHDOG=1"] * 5
    notifier.stopping()
    notifier.stop_watchdog()
    clock.advance(1)
    assert received(sock) == ["STOPPING=1"]
    assert not clock.getDelayedCalls()


def test_open_files_soft_limit_is_raised_to_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"hard limit {hard} leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        before, after, reported_hard = raise_open_files_limit()
        assert before == 256
        assert reported_hard == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == after > 256
        if hard != resource.RLIM_INFINITY:
            assert after == hard
        assert raise_open_files_limit()[:2] == (after, after)  # already there: unchanged
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
