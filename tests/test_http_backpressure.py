"""An ``AsyncHttpConsumer``'s stream and a client that does not read: ``send_body`` waits
while the client's buffer is full (a ``handle()`` loop goes at the client's pace instead of
piling the body up in memory, over HTTP/1.1 and HTTP/2), and event handlers' sends are
bounded by ``--max-send-buffer``, past which ``--slow-consumer`` acts (``close`` cuts the
stream off, ``drop`` skips sends but never the last) while a reading member of the same
group gets everything. Real servers; raw sockets that stop reading."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from typing import Any

import pytest
import pytest_twisted

from realtime import AsyncHttpConsumer, URLRouter, path
from tests.clients import in_thread, until

CHUNK = 64 * 1024
CHUNKS = 800  # 50 MiB: far more than the kernel's socket buffers hold (a few MiB)
WRITTEN: list[int] = []


class Download(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        await self.send_headers(headers=[(b"Content-Type", b"application/octet-stream"),
                                         (b"Content-Length", str(CHUNK * CHUNKS).encode())])
        WRITTEN.append(0)
        for _ in range(CHUNKS):
            await self.send_body(b"x" * CHUNK, more_body=True)
            WRITTEN[-1] += 1
        await self.send_body(b"")


class Feed(AsyncHttpConsumer):
    groups = ["feed"]

    async def handle(self, body: bytes) -> None:
        await self.send_headers(headers=[(b"Content-Type", b"text/event-stream")])
        await self.send_body(b"data: open\n\n", more_body=True)

    async def feed_item(self, event: dict[str, Any]) -> None:
        await self.send_body(b"data: " + event["text"].encode() + b"\n\n", more_body=True)

    async def feed_end(self, event: dict[str, Any]) -> None:
        await self.send_body(b"data: end\n\n")


APP = URLRouter([path("download", Download.as_asgi()), path("feed", Feed.as_asgi())])


def stalled(port: int, target: str, small: bool = True) -> socket.socket:
    """A client that sends its request, reads a little and then nothing more (``small``:
    with a receive buffer that fills at once; it reads slowly ever after, too)."""
    sock = socket.socket()
    if small:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert sock.recv(256).startswith(b"HTTP/1.1 200")
    return sock


@pytest_twisted.ensureDeferred
async def test_a_handle_loop_waits_for_a_client_that_does_not_read(live):
    server = await live(APP)
    WRITTEN.clear()
    sock = await in_thread(stalled, server.port, "/download", False)
    try:
        await until(lambda: WRITTEN and WRITTEN[-1] > 0, timeout=5)
        await in_thread(time.sleep, 0.5)
        assert WRITTEN[-1] < CHUNKS // 2  # waiting, not writing it all into memory

        def read_all() -> int:
            total = 0
            while True:
                data = sock.recv(1 << 20)
                if not data:
                    return total
                total += len(data)
                if total >= CHUNK * CHUNKS - 256:  # stalled() read up to 256 bytes
                    return total

        got = await in_thread(read_all)
        assert got >= CHUNK * CHUNKS - 256  # the rest of the body, once it reads
        await until(lambda: WRITTEN[-1] == CHUNKS, timeout=5)
    finally:
        sock.close()


def read_events(url: str, opened: threading.Event) -> list[bytes]:
    lines = []
    with urllib.request.urlopen(url, timeout=20) as response:
        for raw in response:
            if raw.strip():
                lines.append(raw.strip())
                opened.set()
    return lines


@pytest.mark.parametrize("policy", ["close", "drop"])
@pytest_twisted.ensureDeferred
async def test_events_for_a_stalled_stream_meet_the_slow_consumer_policy(live, policy):
    """Event handlers' sends do not wait (the group's events would pile up instead): past
    --max-send-buffer bytes written while the client does not read, the policy acts."""
    server = await live(APP, max_send_buffer=4 << 20, slow_consumer=policy)
    site, layer = server.site, server.site.layer
    opened = threading.Event()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(
        read_events(server.http_url("/feed"), opened)))
    reader.start()
    await in_thread(opened.wait, 5)
    sock = await in_thread(stalled, server.port, "/feed")
    try:
        await until(lambda: len(layer._groups.get("feed", {})) == 2, timeout=5)
        text = "y" * 32768
        count = 600  # 19 MiB per member: more than the kernel's buffers and the limit
        for n in range(count):
            await layer.group_send("feed", {"type": "feed.item", "text": f"{n} {text}"})
            if n % 10 == 9:
                await in_thread(time.sleep, 0.02)  # the reading member keeps up
        await layer.group_send("feed", {"type": "feed.end"})
        await in_thread(reader.join, 30)
        # The reading member got every event, in order.
        items = [line for line in got if line.startswith(b"data: ") and b" y" in line]
        assert [int(line.split()[1]) for line in items] == list(range(count))
        assert got[-1] == b"data: end"
        if policy == "close":
            assert (site.slow_consumer_closes, site.dropped_messages) == (1, 0)
        else:
            assert site.slow_consumer_closes == 0 and site.dropped_messages > 0
        # Either way the stalled member's response is over (``drop`` never skips the last
        # send, which ends it), so it left the group.
        assert await until(lambda: len(layer._groups.get("feed", {})) == 0, timeout=5)
    finally:
        sock.close()


BIG: list[int] = []


class BigDownload(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        await self.send_headers(headers=[(b"Content-Type", b"application/octet-stream")])
        BIG.append(0)
        for _ in range(1000):
            await self.send_body(b"x" * CHUNK, more_body=True)
            BIG[-1] += 1
        await self.send_body(b"")


@pytest_twisted.ensureDeferred
async def test_an_http2_client_with_a_huge_window_that_does_not_read_is_waited_for(
        live, certificate):
    """Twisted pauses an HTTP/2 stream only when its flow-control window runs out; a
    client may offer 2 GiB. A full transport pauses the streams too."""
    import h2.settings

    from tests.e2e.test_http2 import RawH2

    cert, options = certificate
    server = await live(URLRouter([path("big", BigDownload.as_asgi())]), tls=options)
    BIG.clear()

    def run() -> int | None:
        client = RawH2(server.port, cert)
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
        client.conn.increment_flow_control_window(2**31 - 1 - 65535)
        client.request("/big")
        client.flush()
        # Reads nothing, until the writes have stood still for half a second (2 s at most).
        written, still_since, deadline = None, time.monotonic(), time.monotonic() + 2
        while time.monotonic() < deadline:
            now = BIG[-1] if BIG else None
            if now != written:
                written, still_since = now, time.monotonic()
            elif written is not None and time.monotonic() - still_since >= 0.5:
                break
            time.sleep(0.05)
        written = BIG[-1] if BIG else None
        client.close()
        return written

    written = await in_thread(run)
    assert written is not None and written < 500  # not the whole 62.5 MiB in memory


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: Any) -> Any:
    from tests.e2e.support import self_signed, tls_options

    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    return cert, tls_options(cert, key)
