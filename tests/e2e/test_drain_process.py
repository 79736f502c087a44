"""SIGTERM and SIGINT on a real ``twistd -n realtime`` process: every client sees 1001, the
process exits 0, and the listener stays open (readiness 503) while sockets drain."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.clients import http_get
from tests.e2e.support import BENCH_APP, REPO, start, twistd


def _drain_codes(server, count, sig):
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(connect(server.ws_url("/echo"))) for _ in range(count)]
        for ws in clients:
            ws.send("ping")
            assert ws.recv(timeout=5) == "ping"
        server.send_signal(sig)
        codes = []
        for ws in clients:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            codes.append((closed.value.rcvd.code, closed.value.rcvd.reason))
        return codes


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_five_clients_with_1001_and_exits_0(sig):
    with start(twistd("--app", BENCH_APP, "--port", "0")) as server:
        codes = _drain_codes(server, 5, sig)
        result = server.wait(timeout=15)
    assert codes == [(1001, "server shutting down")] * 5
    assert result.returncode == 0, result.output
    assert "draining 5 WebSocket connection(s)" in result.output


def test_a_client_that_never_answers_the_close_is_dropped_and_exit_is_0():
    """A raw client completes the handshake and never replies to the 1001 close frame: the
    server drops it after its close deadline and still exits 0."""
    import socket

    from tests.clients import handshake

    with start(twistd("--app", BENCH_APP, "--port", "0", "--shutdown-timeout", "5")) as server:
        stubborn = socket.create_connection(("127.0.0.1", server.port))
        stubborn.settimeout(10)
        stubborn.sendall(handshake(host="127.0.0.1"))
        assert stubborn.recv(4096).startswith(b"HTTP/1.1 101 ")
        server.send_signal(signal.SIGTERM)
        assert stubborn.recv(4096).startswith(b"\x88")  # the close frame; never answered
        try:  # then the server lets go (an abort: a reset)
            assert stubborn.recv(4096) == b""
        except ConnectionResetError:
            pass
        result = server.wait(timeout=15)
        stubborn.close()
    assert result.returncode == 0, result.output


def test_an_http_request_in_progress_is_answered_before_the_exit(tmp_path):
    """A deploy's SIGTERM does not drop a request being answered: it finishes (its
    connection then closes), and only then do the ASGI app's lifespan shut down and the
    process exit 0."""
    log_file = tmp_path / "phases"
    env = {"PYTHONPATH": str(REPO), "LIFESPAN_LOG": str(log_file)}
    with start(twistd("--app", "tests.e2e.lifespan_app:app", "--port", "0"), env=env) as server:
        server.wait_for(r"ASGI lifespan: tests\.e2e\.lifespan_app\.app started")
        answers: list[Any] = []
        url = f"http://127.0.0.1:{server.port}/slow"
        client = threading.Thread(target=lambda: answers.append(http_get(url)))
        client.start()
        time.sleep(0.3)  # the request is in, its answer a second away
        server.send_signal(signal.SIGTERM)
        client.join(15)
        result = server.wait(15)
    status, headers, body = answers[0]
    assert (status, body) == (200, f"pid={server.pid} started=yes".encode())
    assert headers["connection"] == ["close"]
    assert result.returncode == 0, result.output
    assert "draining 0 WebSocket connection(s) and 1 HTTP connection(s)" in result.output
    assert [word for word, _ in (line.split() for line in log_file.read_text().splitlines())
            ] == ["startup", "answered", "shutdown"]
