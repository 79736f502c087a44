"""``--session-store`` Redis URLs take every form ``--layer`` does (an ACL user, TLS with a
CA file, Sentinel), on real redis-servers; a bad URL stops start-up with one line."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from realtime.sessions import RedisSessionStore
from tests.redis_support import RedisServer, free_port

ACL = ["--user", "app", "on", ">s3cret", "~*", "&*", "+@all"]


def client_users(redis: RedisServer) -> list[str]:
    """The ACL user of each client connected to ``redis`` (CLIENT LIST)."""
    listing = redis.call("CLIENT", "LIST")
    return [field[len("user="):] for line in listing.splitlines()
            for field in line.split() if field.startswith("user=")]


async def round_trip(store: RedisSessionStore) -> None:
    assert await store.load("k1") is None
    await store.save("k1", {"user": "7"}, 60)
    assert await store.load("k1") == {"user": "7"}
    await store.delete("k1")
    assert await store.load("k1") is None


@pytest_twisted.ensureDeferred
async def test_an_acl_user_and_password_are_used():
    """``redis://user:password@host``: the store signs in as that ACL user (before, the user
    name was dropped and AUTH went to the default user with the user's password)."""
    with RedisServer(args=ACL) as redis:
        store = RedisSessionStore(f"redis://app:s3cret@127.0.0.1:{redis.port}/2")
        try:
            await round_trip(store)
            assert client_users(redis) == ["app", "default"]  # the store's, this CLIENT LIST's
        finally:
            await store.close()



@pytest_twisted.ensureDeferred
async def test_rediss_with_a_ca_file():
    with RedisServer(tls=True) as redis:
        store = RedisSessionStore(
            f"rediss://127.0.0.1:{redis.tls_port}/0?ssl_ca_certs={redis.cert}")
        try:
            await round_trip(store)
        finally:
            await store.close()


@pytest_twisted.ensureDeferred
async def test_sentinel_finds_the_master():
    """``redis+sentinel://``: the first sentinel listed is not there, the next one names the
    master, and the sessions land on it."""
    with RedisServer() as master, RedisServer(sentinel_of=("sessions", master.port)) as sentinel:
        store = RedisSessionStore(f"redis+sentinel://127.0.0.1:{free_port()},"
                                  f"127.0.0.1:{sentinel.port}/sessions/0")
        try:
            await store.save("k3", {"via": "sentinel"}, 60)
            assert master.call("GET", "realtime:session:k3") == '{"via": "sentinel"}'
            assert await store.load("k3") == {"via": "sentinel"}
        finally:
            await store.close()


@pytest_twisted.ensureDeferred
async def test_redis_away_fails_a_request_quickly_with_a_reason():
    """No Redis at the address: a load, a save and a delete fail with ``SessionError``
    naming the store after ``timeout`` s (they waited for Redis for ever before: an HTTP
    request with a session cookie hung until the client gave up)."""
    from realtime.sessions import SessionError

    store = RedisSessionStore(f"redis://127.0.0.1:{free_port()}/0")
    store.timeout = 0.3
    try:
        for call in (lambda: store.load("k"), lambda: store.save("k", {}, 60),
                     lambda: store.delete("k")):
            with pytest.raises(SessionError, match=r"--session-store redis://127.0.0.1:\d+/0: "
                                                   r"no answer from Redis within 0.3 s"):
                await call()
    finally:
        await store.close()


def start_up_error(*args: str) -> str:
    """The one-line error of a start-up with these options."""
    from realtime.config import StartupError
    from realtime.tap import Options

    with pytest.raises(StartupError) as error:
        Options().parseOptions(["--app", "realtime.examples.bench:application", *args])
    return str(error.value)


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://127.0.0.1:6390/x", "the database must be a number, got 'x'"),
    ("redis://127.0.0.1/0?capacity=5", "capacity is a channel-layer option (--layer)"),
    ("redis://127.0.0.1/0?colour=red", "unknown option 'colour'"),
    ("rediss://h/0?ssl_ca_certs=/nonexistent.pem", "No such file or directory"),
    ("redis+sentinel://127.0.0.1:1", "no master name"),
])
def test_a_bad_url_stops_start_up_with_one_line(url, expected):
    message = start_up_error("--session-store", url)
    assert message.startswith("realtime: error: --session-store: "), message
    assert expected in message and "\n" not in message


def test_every_layer_form_is_accepted_at_start_up():
    from realtime.tap import Options

    for url in ("redis://app:pw@127.0.0.1:6390/3", "unix:///run/redis.sock?db=2",
                "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/1"):
        options = Options()
        options.parseOptions(["--app", "realtime.examples.bench:application",
                              "--session-store", url])
        assert options.config is not None


def _log_lines() -> tuple[list[str], Any]:
    """Every log line (with a failure's traceback) until the returned call stops it."""
    from twisted.logger import formatEvent, globalLogPublisher

    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        line = formatEvent(event)
        if "log_failure" in event:
            line += "\n" + event["log_failure"].getTraceback()
        lines.append(line)

    globalLogPublisher.addObserver(observe)
    return lines, lambda: globalLogPublisher.removeObserver(observe)


async def _sleep(seconds: float) -> None:
    from twisted.internet import reactor, task

    await task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_sentinel_with_the_masters_password_user_and_database():
    """The URL's user, password and database are the master's (the sentinels are asked
    without them, as the layer asks them)."""
    with RedisServer(args=ACL) as master, \
            RedisServer(sentinel_of=("sessions", master.port)) as sentinel:
        master.call("CONFIG", "SET", "requirepass", "pw")  # the default user's, for Sentinel
        sentinel.call("SENTINEL", "SET", "sessions", "auth-pass", "pw")
        store = RedisSessionStore(f"redis+sentinel://app:s3cret@127.0.0.1:{sentinel.port}"
                                  f"/sessions/4")
        try:
            await round_trip(store)
            await store.save("k4", {"db": 4}, 60)
            assert "app" in client_users_with(master, "pw")
            assert await store.load("k4") == {"db": 4}
            assert_in_db(master, "pw", 4, "realtime:session:k4")
        finally:
            await store.close()


def client_users_with(redis: RedisServer, password: str) -> list[str]:
    reply = _authed(redis, password, ["CLIENT", "LIST"])
    return [field[len("user="):] for line in reply.splitlines()
            for field in line.split() if field.startswith("user=")]


def assert_in_db(redis: RedisServer, password: str, db: int, key: str) -> None:
    assert _authed(redis, password, ["SELECT", str(db)], ["EXISTS", key]) == ":1"


def _authed(redis: RedisServer, password: str, *commands: list[str]) -> Any:
    import socket

    from tests.redis_support import _Reply

    with socket.create_connection(("127.0.0.1", redis.port), timeout=2) as s:
        reply = _Reply(s)
        result = None
        for args in (["AUTH", password], *commands):
            parts = [f"*{len(args)}\r\n".encode()]
            for arg in args:
                parts.append(b"$%d\r\n%s\r\n" % (len(arg.encode()), arg.encode()))
            s.sendall(b"".join(parts))
            result = reply.read()
        return result


@pytest_twisted.ensureDeferred
async def test_a_refused_password_behind_sentinel_is_one_log_line():
    """A wrong password for the master Sentinel names: refused as on a plain connection
    (one "could not auth" line, then SessionError at once). txredisapi sent ROLE without
    waiting for AUTH: the connection stayed open and never ready, every request waited
    for the time limit, and two "Unhandled error in Deferred" were logged."""
    import gc

    from realtime.sessions import SessionError

    with RedisServer() as master, \
            RedisServer(sentinel_of=("sessions", master.port)) as sentinel:
        master.call("CONFIG", "SET", "requirepass", "pw")
        sentinel.call("SENTINEL", "SET", "sessions", "auth-pass", "pw")
        lines, stop = _log_lines()
        store = RedisSessionStore(f"redis+sentinel://:wrong@127.0.0.1:{sentinel.port}"
                                  f"/sessions/0")
        store.timeout = 1.0
        try:
            with pytest.raises(SessionError):
                await store.load("k")
            with pytest.raises(SessionError, match=r"--session-store sentinel .*: Not connected"):
                await store.load("k")
        finally:
            await store.close()
            await _sleep(0.1)
            gc.collect()
            stop()
    assert [line for line in lines if "could not auth" in line and "WRONGPASS" in line], lines
    assert not [line for line in lines if "Unhandled error" in line], lines


@pytest_twisted.ensureDeferred
async def test_closing_a_sentinel_store_leaves_no_timer_behind():
    """Closed while no sentinel answers: txredisapi's 10 s discovery timer is cancelled
    (it was left pending after close)."""
    from twisted.internet import reactor

    from realtime.sessions import SessionError

    before = set(reactor.getDelayedCalls())
    store = RedisSessionStore(f"redis+sentinel://127.0.0.1:{free_port()}/sessions/0")
    store.timeout = 0.2
    with pytest.raises(SessionError):
        await store.load("k")
    await store.close()
    await _sleep(0.05)
    left = [call for call in reactor.getDelayedCalls()
            if call not in before and call.active()]
    assert not left, left


@pytest_twisted.ensureDeferred
async def test_requests_that_time_out_leave_nothing_waiting():
    """With Redis away, each request that gives up leaves nothing behind (txredisapi kept
    its cancelled wait for a connection until one came: one per request for as long as
    Redis was away)."""
    import gc

    from twisted.internet.defer import Deferred

    from realtime.sessions import SessionError

    def alive() -> int:
        gc.collect()
        return sum(isinstance(o, Deferred) for o in gc.get_objects())

    store = RedisSessionStore(f"redis://127.0.0.1:{free_port()}/0")
    store.timeout = 0.02
    try:
        with pytest.raises(SessionError):
            await store.load("k")
        before = alive()
        for _ in range(30):
            with pytest.raises(SessionError):
                await store.load("k")
        assert alive() - before < 5
    finally:
        await store.close()


@pytest.mark.parametrize(("option", "url"), [
    ("--layer", "redis://app:s3cr3t@127.0.0.1:6390/x"),
    ("--layer", "redis://127.0.0.1/0?password=s3cr3t&colour=red"),
    ("--layer", "rediz://:s3cr3t@127.0.0.1/0"),
    ("--layer", "redis+sentinel://:s3cr3t@127.0.0.1:1"),
    ("--session-store", "redis://:s3cr3t@127.0.0.1/0?capacity=5"),
    ("--session-store", "unix://:s3cr3t@/tmp/none.sock?db=x"),
    # A typo in the scheme: not taken for a Redis URL, still one to hide.
    ("--session-store", "rediz://:s3cr3t@127.0.0.1/0"),
    # An unencoded '/', '?' or '#' (a base64 password: '/', '+', '='), which cut the URL
    # inside the password: no piece of it in the error, which says what to do.
    ("--layer", "redis://:s3cr3t/x+Y==@127.0.0.1:6379/0"),
    ("--session-store", "redis://app:12/s3cr3t@127.0.0.1/0"),
    ("--layer", "redis://:s3cr3t?x@127.0.0.1/0"),
    ("--session-store", "redis+sentinel://:s3cr3t#x@127.0.0.1:1/m/0"),
    ("--layer", "unix://:s3/cr3t@/tmp/none.sock"),
    # ?password= in a query that does not parse, or with a fragment after it.
    ("--layer", "redis://127.0.0.1/0?password=s3cr3t&oops"),
    ("--session-store", "redis://127.0.0.1/0?password=ab#s3cr3t"),
])
def test_a_start_up_error_never_shows_the_password(option, url):
    """The one-line error names the URL with its password as ``***`` (it goes to stderr,
    the journal, CI logs)."""
    message = start_up_error(option, url)
    assert message.startswith(f"realtime: error: {option}: ") and "***" in message, message
    assert "s3cr3t" not in message


@pytest.mark.parametrize("url", [
    "unix:///tmp/redis@main.sock",  # an '@' in the socket's path
    "rediss://127.0.0.1/0?ssl_ca_certs=/nonexistent/ca@corp.pem",  # ... in an option
])
def test_an_at_sign_past_the_host_is_no_password(url):
    from realtime.layers.redis import parse_url, redact_url

    assert redact_url(url) == url
    assert parse_url(url)[0].password is None


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://u:p@ss@[::1]:6379/0", "redis://u:***@[::1]:6379/0"),
    ("redis://:p%40ss@[::1]/0", "redis://:***@[::1]/0"),
    ("redis://:a/b+c==@h:1/0", "redis://:***@h:1/0"),
    ("unix://:p@s/s@/run/r.sock?db=1", "unix://:***@/run/r.sock?db=1"),
    ("redis://h/0?password=p#x", "redis://h/0?password=***"),
])
def test_redact_url(url, shown):
    from realtime.layers.redis import redact_url

    assert redact_url(url) == shown


def test_the_unknown_store_error_of_the_middleware_hides_the_password():
    from realtime.sessions import ConfigurationError, store_from_setting

    with pytest.raises(ConfigurationError) as error:
        store_from_setting("rediz://:s3cr3t@127.0.0.1/0")
    assert "s3cr3t" not in str(error.value) and "***" in str(error.value)
