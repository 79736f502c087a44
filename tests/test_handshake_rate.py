"""``--handshake-rate`` / ``--handshake-burst``: a process starts at most so many WebSocket
handshakes a second; past that a handshake gets 503 with ``Retry-After`` before anything of
the application runs, while open sockets and plain HTTP go on. The bucket on a ``Clock``;
real servers with the ``websockets`` client; ``twistd`` with two listeners sharing it."""

from __future__ import annotations

import urllib.request

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from realtime.examples.bench import application as bench
from realtime.ratelimit import TokenBucket
from tests.clients import in_thread


def handshake(url):
    """101, or the refusal's status and Retry-After."""
    try:
        with connect(url, open_timeout=5, proxy=None):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code, exc.response.headers.get("Retry-After")


def test_the_bucket_spends_refills_and_says_how_long_to_wait():
    clock = Clock()
    bucket = TokenBucket(0.5, 2, clock)  # one token every 2 s, two saved up
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    assert bucket.wait() == 2
    clock.advance(1.0)
    assert not bucket.take() and bucket.wait() == 1
    clock.advance(1.0)
    assert bucket.take() and not bucket.take()
    clock.advance(60)  # a long quiet spell saves up only the burst
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    assert TokenBucket(20.0, 0, clock).burst == 20.0  # no burst given: the rate
    clock.advance(60)
    assert bucket.take()  # full again (2), one taken
    clock.rightNow -= 3600  # the wall clock stepped back an hour (NTP)
    assert bucket.take() and bucket.tokens == 0  # the last one: nothing taken for the step


@pytest_twisted.ensureDeferred
async def test_handshakes_past_the_burst_get_503_with_retry_after_and_others_go_on(live):
    server = await live(bench, handshake_rate=0.2, handshake_burst=3)  # 12 a minute

    def flow():
        with connect(server.ws_url("/echo"), proxy=None) as open_socket:
            results = [handshake(server.ws_url("/echo")) for _ in range(3)]
            # The socket opened first still echoes; plain HTTP is not rate limited.
            open_socket.send("still here")
            echoed = open_socket.recv(timeout=5)
            with urllib.request.urlopen(server.http_url("/healthz"), timeout=5) as response:
                health = response.status
        return results, echoed, health

    results, echoed, health = await in_thread(flow)
    assert results[:2] == [101, 101]
    assert results[2] == (503, "5")  # 1 token at 0.2/s: 5 s away
    assert (echoed, health) == ("still here", 200)


def test_the_limit_is_per_process_across_listeners_and_checked_at_start_up():
    from tests.e2e.support import BENCH_APP, run, start, twistd

    with start(twistd("--app", BENCH_APP, "--port", "0", "--port", "0",
                      "--handshake-rate", "6/m", "--handshake-burst", "2"),
               listeners=2) as server:
        first, second = (f"ws://127.0.0.1:{address.rsplit(':', 1)[1]}/echo"
                         for address in server.addresses)
        assert handshake(first) == 101
        assert handshake(second) == 101
        assert handshake(first) == (503, "10")
        assert handshake(second) == (503, "10")
        server.wait_for(r"1 WebSocket handshake\(s\) over --handshake-rate 0.1/s answered "
                        r"503")
        # The second refusal, within 10 s of the first, is not a line of its own.
        assert server.output().count("over --handshake-rate") == 1
    for args, says in [
        (("--handshake-rate", "fast"),
         "--handshake-rate: expected a rate such as 20/s or 600/m, got 'fast'"),
        (("--handshake-rate", "10/s", "--handshake-burst", "0"),
         "--handshake-burst: must be at least 1, got '0'"),
    ]:
        result = run(twistd("--app", BENCH_APP, "--port", "0", *args))
        assert result.returncode == 1
        assert result.stderr == f"realtime: error: {says}\n", result.stderr


@pytest_twisted.ensureDeferred
async def test_a_handshake_refused_for_another_reason_spends_no_token(live):
    """One client held at --max-connections-per-ip retrying must not spend the process's
    handshakes for everyone else."""
    server = await live(bench, handshake_rate=0.01, handshake_burst=3,
                        max_connections_per_ip=1)

    def flow():
        with connect(server.ws_url("/echo"), proxy=None):
            return [handshake(server.ws_url("/echo")) for _ in range(4)]

    assert [status for status, _ in await in_thread(flow)] == [429] * 4
    assert server.site.handshakes.tokens >= 1.9  # only the open socket's was spent


@pytest.mark.parametrize("field", ["handshake_rate", "handshake_burst"])
def test_a_negative_config_is_refused(field):
    from realtime.config import ServerConfig

    with pytest.raises(ValueError, match="handshake_rate and handshake_burst must not be "
                                         "negative"):
        ServerConfig(**{field: -1})
