"""SIGTERM and SIGINT on a real ``twistd -n realtime`` process: every client sees 1001, the
process exits 0, and the listener stays open (readiness 503) while sockets drain."""

from __future__ import annotations

import contextlib
import signal

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.e2e.support import BENCH_APP, start, twistd


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
