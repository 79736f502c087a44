"""A member that stops reading beside a fast broadcaster, on a real ``twistd`` process: the
server's memory stays bounded, the policy fires, the other member gets everything."""

from __future__ import annotations

import os
import socket
import threading

import pytest
from websockets.sync.client import connect

from tests.clients import handshake
from tests.e2e.support import BENCH_APP, start, twistd


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("policy", ["close", "drop"])
def test_stalled_member_keeps_server_memory_bounded(policy):
    args = ("--app", BENCH_APP, "--port", "0", "--max-send-buffer", "256KiB",
            "--slow-consumer", policy)
    with start(twistd(*args)) as server:
        # The stalled member: completes the handshake, then never reads again.
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", server.port))
        stalled.sendall(handshake("/room/big", host="127.0.0.1"))
        head = b""
        while b"\r\n\r\n" not in head:
            head += stalled.recv(1)
        assert head.startswith(b"HTTP/1.1 101 ")
        before = rss_kb(server.pid)

        size, count = 64 * 1024, 192  # 12 MiB towards every member
        payload = os.urandom(size // 2).hex()  # text, never split mid-character
        received = []
        # The fast member and the publisher go in step (one message in flight): the test
        # is about the stalled member, so the others must really be fast — a Python client
        # that let frames pile up would rightly meet the policy too.
        with connect(server.ws_url("/room/big"), max_size=None, max_queue=None) as fast:
            def sender():
                with connect(server.ws_url("/room/big"), max_size=None, max_queue=None) as ws:
                    for _ in range(count):
                        if not turn.acquire(timeout=30):
                            return
                        ws.send(payload)
                    # Stay a member until the reader is done.
                    done.wait(60)

            turn = threading.Semaphore(1)
            done = threading.Event()
            thread = threading.Thread(target=sender)
            thread.start()
            try:
                for _ in range(count):
                    received.append(len(fast.recv(timeout=30)))
                    turn.release()
            finally:
                done.set()
                thread.join(30)
        after = rss_kb(server.pid)
        stalled.close()
        output = server.stop().output
    assert received == [size] * count  # the fast member got every message
    if policy == "close":
        assert "slow consumer" in output and "closing" in output, output
    else:
        assert "dropping messages for" in output, output
    grown_mb = (after - before) / 1024
    assert grown_mb < 16, f"server RSS grew by {grown_mb:.1f} MB"
