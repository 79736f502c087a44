"""Middleware and auth end to end: each refusal arrives with its documented status or close
code, sessions and tokens work against a real server, and no token reaches a log."""

from __future__ import annotations

import time

import jwt
import pytest
import pytest_twisted
from twisted.internet.task import Clock
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from realtime import AsyncWebsocketConsumer, URLRouter, path
from realtime.settings import configure, reset
from realtime.testing import WebsocketCommunicator
from realtime.tokens import TokenAuthMiddleware, key_from_text
from tests.clients import in_thread

SECRET = "k" * 40
JWT_SECRET = "j" * 40


@pytest.fixture(autouse=True)
def _settings():
    configure(secret_key=SECRET, jwt_keys=[key_from_text(JWT_SECRET)])
    yield
    reset()


def auth_app():
    import importlib

    import realtime.examples.auth as module

    return importlib.reload(module).application


def token(sub="ada", ttl=60, **claims):
    return jwt.encode({"sub": sub, "exp": int(time.time()) + ttl, **claims}, JWT_SECRET,
                      algorithm="HS256")


def status_of(url, **kw):
    try:
        with connect(url, **kw):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


@pytest_twisted.ensureDeferred
async def test_session_cookie_login_then_greeting(live):
    server = await live(auth_app())

    def flow():
        import urllib.request

        with urllib.request.urlopen(server.http_url("/login?name=ada"), timeout=5) as resp:
            cookie = resp.headers["Set-Cookie"]
            body = resp.read()
        assert body == b"signed in as ada\n"
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
        pair = cookie.split(";")[0]
        with connect(server.ws_url("/ws/greet"), additional_headers={"Cookie": pair}) as ws:
            greeting = ws.recv(timeout=5)
        anonymous = status_of(server.ws_url("/ws/greet"))
        name, _, value = pair.partition("=")
        tampered = status_of(server.ws_url("/ws/greet"),
                             additional_headers={"Cookie": f"{name}={value[:-4]}AAAA"})
        return greeting, anonymous, tampered

    greeting, anonymous, tampered = await in_thread(flow)
    assert greeting == "hello, ada"
    assert anonymous == 403  # anonymous: refused by the consumer (close before accept)
    assert tampered == 403  # a tampered cookie is an empty session, never an error


@pytest_twisted.ensureDeferred
async def test_cookie_store_save_after_accept_raises_and_server_store_works(live):
    from realtime.sessions import MemorySessionStore, SessionError, SessionMiddleware

    results = []

    class Saver(AsyncWebsocketConsumer):
        async def connect(self):
            self.scope["session"]["before"] = 1  # goes out with the handshake
            await self.accept()
            self.scope["session"]["after"] = 2
            try:
                await self.scope["session"].save()
                results.append("saved")
            except SessionError as exc:
                results.append(str(exc))
            await self.send(text_data="done")

    cookie_app = URLRouter([path("s", SessionMiddleware(Saver.as_app()))])
    server = await live(cookie_app)

    def client():
        with connect(server.ws_url("/s")) as ws:
            cookie = ws.response.headers["Set-Cookie"]
            ws.recv(timeout=5)
        return cookie

    cookie = await in_thread(client)
    assert cookie.startswith("sessionid=")
    assert "cannot change after accept" in results[0]

    store = MemorySessionStore()
    server2 = await live(URLRouter([path("s", SessionMiddleware(Saver.as_app(), store=store))]))
    cookie = await in_thread(lambda: _cookie_and_done(server2.ws_url("/s")))
    session_id = cookie.split(";")[0].split("=", 1)[1]
    assert results[1] == "saved"
    assert await store.load(session_id) == {"before": 1, "after": 2}


def _cookie_and_done(url):
    with connect(url) as ws:
        cookie = ws.response.headers["Set-Cookie"]
        assert ws.recv(timeout=5) == "done"
    return cookie


@pytest_twisted.ensureDeferred
async def test_token_refusals_and_greeting(live):
    server = await live(auth_app())
    url = server.ws_url("/ws/token")

    def flow():
        good = token()
        with connect(url, additional_headers={"Authorization": f"Bearer {good}"}) as ws:
            by_header = ws.recv(timeout=5)
        with connect(url + f"?token={good}") as ws:
            by_query = ws.recv(timeout=5)
        with connect(url, subprotocols=[f"bearer.{good}"]) as ws:
            by_subprotocol = ws.recv(timeout=5)
            chosen = ws.subprotocol
        try:
            connect(url + f"?token={token(ttl=-10)}")
        except InvalidStatus as exc:
            expired = exc.response.status_code, exc.response.headers["WWW-Authenticate"]
        missing = status_of(url)
        forged = status_of(url + "?token=" + jwt.encode({"sub": "x"}, "z" * 40, "HS256"))
        none_alg = status_of(url + "?token=" + jwt.encode({"sub": "x"}, None, "none"))
        return by_header, by_query, by_subprotocol, chosen, expired, missing, forged, none_alg

    (by_header, by_query, by_subprotocol, chosen, expired, missing, forged,
     none_alg) = await in_thread(flow)
    assert by_header == by_query == by_subprotocol == "hello, ada"
    assert chosen is None  # the token entry is not a protocol to speak
    assert expired[0] == 401 and "invalid_token" in expired[1]
    assert (missing, forged, none_alg) == (401, 401, 401)


@pytest_twisted.ensureDeferred
async def test_token_expiry_closes_4001_on_a_fake_clock():
    clock = Clock()
    clock.advance(1000)

    class Greeter(AsyncWebsocketConsumer):
        pass

    app = URLRouter([path("t", TokenAuthMiddleware(Greeter.as_app(), clock=clock))])
    tok = jwt.encode({"sub": "a", "exp": 1060}, JWT_SECRET, algorithm="HS256")
    comm = WebsocketCommunicator(app, f"/t?token={tok}", clock=clock)
    assert (await comm.connect())[0]
    clock.advance(59)
    assert comm.close_code is None
    clock.advance(1)
    assert comm.close_code == 4001
    assert comm.close_reason == "token expired"
    await comm.disconnect()


@pytest_twisted.ensureDeferred
async def test_origin_refusal_is_403(live):
    from realtime.examples.bench import application as bench
    from realtime.origins import OriginValidator

    server = await live(OriginValidator(bench, ["https://app.example.com"]))
    url = server.ws_url("/echo")
    bad = await in_thread(lambda: status_of(url, origin="https://evil.example.com"))
    good = await in_thread(lambda: status_of(url, origin="https://app.example.com"))
    assert (bad, good) == (403, 101)


@pytest_twisted.ensureDeferred
async def test_per_ip_limit_is_429_with_retry_after(live):
    from realtime.examples.bench import application as bench

    server = await live(bench, max_connections_per_ip=2)

    def flow():
        url = server.ws_url("/echo")
        with connect(url), connect(url):
            try:
                with connect(url):
                    return 101, None
            except InvalidStatus as exc:
                return exc.response.status_code, exc.response.headers.get("Retry-After")

    assert await in_thread(flow) == (429, "1")
    # Closing frees the slots.
    assert await in_thread(lambda: status_of(server.ws_url("/echo"))) == 101


@pytest_twisted.ensureDeferred
async def test_rate_limit_closes_1008(live):
    from realtime.examples.bench import application as bench

    server = await live(bench, rate_limit=5.0, rate_burst=5)

    def flow():
        with connect(server.ws_url("/echo")) as ws:
            for i in range(20):
                try:
                    ws.send(str(i))
                except ConnectionClosed:
                    break
            try:
                while True:
                    ws.recv(timeout=5)
            except ConnectionClosed as exc:
                return exc.rcvd.code, exc.rcvd.reason

    assert await in_thread(flow) == (1008, "rate limit exceeded")


@pytest_twisted.ensureDeferred
async def test_proxy_headers_set_client_and_scheme(live):
    seen = []

    class Who(AsyncWebsocketConsumer):
        async def connect(self):
            seen.append((self.scope["client"], self.scope["scheme"]))
            await self.accept()

    app = URLRouter([path("w", Who.as_app())])
    headers = {"X-Forwarded-For": "203.0.113.9, 127.0.0.1", "X-Forwarded-Proto": "https"}
    trusting = await live(app, proxy_headers=True)
    await in_thread(lambda: status_of(trusting.ws_url("/w"), additional_headers=headers))
    plain = await live(app)
    await in_thread(lambda: status_of(plain.ws_url("/w"), additional_headers=headers))
    assert seen[0] == (("203.0.113.9", 0), "wss")
    assert seen[1][0][0] == "127.0.0.1" and seen[1][1] == "ws"


@pytest_twisted.ensureDeferred
async def test_no_token_in_the_service_log(live):
    from twisted.logger import globalLogPublisher

    lines = []

    def observer(event):
        from twisted.logger import formatEvent

        lines.append(formatEvent(event) + repr(event.get("log_failure", "")))

    globalLogPublisher.addObserver(observer)
    try:
        server = await live(auth_app())
        good, expired = token(), token(ttl=-5)

        def flow():
            with connect(server.ws_url(f"/ws/token?token={good}")) as ws:
                ws.recv(timeout=5)
            status_of(server.ws_url(f"/ws/token?token={expired}"))
            status_of(server.ws_url("/ws/token"), additional_headers={
                "Authorization": f"Bearer {expired}"})

        await in_thread(flow)
    finally:
        globalLogPublisher.removeObserver(observer)
    text = "\n".join(lines)
    for secret in (good, expired, good.split(".")[2], expired.split(".")[2]):
        assert secret not in text


def test_cookie_store_without_a_secret_key_stops_start_up():
    from tests.e2e.support import REPO, run, twistd

    result = run(twistd("--app", "realtime.examples.auth:application", "--port", "0",
                        "--jwt-key", JWT_SECRET), cwd=REPO)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "realtime: error: --app 'realtime.examples.auth:application': SessionMiddleware with "
        "the cookie store needs a secret key (--secret-key or --secret-key-file), or use "
        "--session-store memory|redis://"
    ], result.stderr


def test_allowed_origins_option_without_code():
    from tests.e2e.support import BENCH_APP, start, twistd

    with start(twistd("--app", BENCH_APP, "--port", "0", "--allowed-origins",
                      "https://ok.example")) as server:
        assert status_of(server.ws_url("/echo"), origin="https://evil.example") == 403
        assert status_of(server.ws_url("/echo"), origin="https://ok.example") == 101


def test_session_and_token_greeters_against_twistd(tmp_path):
    """The README's two greeters, served by ``twistd -n realtime`` as a new user runs them:
    sign in over HTTP and be greeted on the socket; be greeted from a JWT; and the access
    log of those connections holds no token and no session cookie."""
    import urllib.request

    from tests.e2e.support import REPO, start, twistd

    log_path = tmp_path / "access.log"
    args = ("--app", "realtime.examples.auth:application", "--port", "0",
            "--secret-key", SECRET, "--jwt-key", JWT_SECRET, "--access-log", str(log_path))
    with start(twistd(*args), cwd=REPO) as server:
        base = f"127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"http://{base}/login?name=grace", timeout=5) as resp:
            cookie = resp.headers["Set-Cookie"].split(";")[0]
        with connect(f"ws://{base}/ws/greet", additional_headers={"Cookie": cookie}) as ws:
            assert ws.recv(timeout=5) == "hello, grace"
        good = token("linus")
        with connect(f"ws://{base}/ws/token?token={good}") as ws:
            assert ws.recv(timeout=5) == "hello, linus"
        assert status_of(f"ws://{base}/ws/token") == 401
        # In-band refresh: told at half a 3-second token's life, a new token keeps the
        # socket open past the first one's exp.
        short_exp = int(time.time()) + 3
        short = jwt.encode({"sub": "linus", "exp": short_exp}, JWT_SECRET, algorithm="HS256")
        with connect(f"ws://{base}/ws/token?token={short}") as ws:
            assert ws.recv(timeout=5) == "hello, linus"
            assert ws.recv(timeout=5) == f"token expiring at {short_exp}"
            renewed = token("linus", ttl=60)
            ws.send(f"refresh {renewed}")
            assert ws.recv(timeout=5).startswith("refreshed until ")
            time.sleep(max(0.0, short_exp + 0.5 - time.time()))
            ws.send(f"refresh {token('eve')}")
            assert ws.recv(timeout=5) == "refresh refused: token is for another user"
        output = server.stop().output
    access = log_path.read_text()
    assert "/ws/token?token=[redacted]" in access
    for secret in (good, good.split(".")[2], cookie.split("=", 1)[1], renewed):
        assert secret not in access
        assert secret not in output
