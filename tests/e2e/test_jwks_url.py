"""``--jwks-url``: a running ``twistd realtime`` takes its verification keys from an identity
provider's JWKS endpoint (here a real HTTP server on 127.0.0.1 in the test process): fetched
at start-up, refetched for a token naming a new key id (rate-limited), every
``--jwks-refresh`` seconds and at SIGHUP; a provider that fails keeps the keys in use."""

from __future__ import annotations

import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.e2e.support import REPO, run, start, twistd
from tests.e2e.test_reload import KEY_A, KEY_B, SECRET, jwks, status_of, token

AUTH_APP = "realtime.examples.auth:application"
KEY_C = "c" * 40


class Provider:
    """A JWKS endpoint whose answer (and status) the test changes; it counts fetches."""

    def __init__(self) -> None:
        self.body = jwks(("k1", KEY_A))
        self.status = 200
        self.fetches = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                body = provider.body.encode()
                self.send_response(provider.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def provider():
    provider = Provider()
    yield provider
    provider.close()


def serve(provider, *args):
    return start(twistd("--app", AUTH_APP, "--port", "0", "--secret-key", SECRET,
                        "--jwks-url", provider.url, *args), cwd=REPO)


def test_a_new_key_id_is_fetched_during_the_handshake_and_misses_are_rate_limited(provider):
    with serve(provider, "--jwks-refresh", "0") as server:
        url = server.ws_url("/ws/token") + "?token="
        assert provider.fetches == 1  # at start-up
        assert status_of(url + token(KEY_A, kid="k1")) == 101
        provider.body = jwks(("k1", KEY_A), ("k2", KEY_B))  # the provider rotated
        assert status_of(url + token(KEY_B, kid="k2")) == 101  # fetched on the miss
        assert provider.fetches == 2
        server.wait_for(r"JWKS \S+: 2 key\(s\)")
        # Made-up key ids right after: refused, and no fetch (one per MISS_INTERVAL, 10 s,
        # at most), so garbage tokens cannot make the server hammer the provider.
        for n in range(5):
            assert status_of(url + token(KEY_C, kid=f"bogus{n}")) == 401
        assert provider.fetches == 2
        assert status_of(url + token(KEY_A, kid="k1")) == 101


def test_a_removed_key_stops_verifying_at_the_next_refresh_and_a_failing_provider_keeps_keys(
        provider):
    provider.body = jwks(("k1", KEY_A), ("k2", KEY_B))
    with serve(provider, "--jwks-refresh", "0.5") as server:
        url = server.ws_url("/ws/token") + "?token="
        assert status_of(url + token(KEY_A, kid="k1")) == 101
        provider.body = jwks(("k2", KEY_B))  # k1 revoked
        server.wait_for(r"JWKS \S+: 1 key\(s\)", timeout=10)
        assert status_of(url + token(KEY_A, kid="k1")) == 401
        provider.status = 500
        server.wait_for(r"JWKS \S+: not refreshed, the keys in use stay: the JWKS URL "
                        r"answered 500", timeout=10)
        assert status_of(url + token(KEY_B, kid="k2")) == 101
        result = server.stop()
    assert result.returncode == 0, result.output


def test_sighup_refetches_the_jwks_url(provider):
    with serve(provider, "--jwks-refresh", "0") as server:
        provider.body = jwks(("k2", KEY_B))
        server.send_signal(signal.SIGHUP)
        server.wait_for(r"JWKS \S+: 1 key\(s\)", timeout=10)
        url = server.ws_url("/ws/token") + "?token="
        assert provider.fetches == 2
        assert status_of(url + token(KEY_A, kid="k1")) == 401  # k1 is gone, no miss fetch
        assert status_of(url + token(KEY_B, kid="k2")) == 101


def test_an_open_socket_refreshing_with_a_new_key_id_gets_it_on_its_next_try(provider):
    from websockets.sync.client import connect

    with serve(provider, "--jwks-refresh", "0") as server:
        url = server.ws_url("/ws/token") + "?token="
        with connect(url + token(KEY_A, sub="ada", kid="k1"), proxy=None) as ws:
            assert ws.recv(timeout=5) == "hello, ada"
            provider.body = jwks(("k1", KEY_A), ("k2", KEY_B))
            fresh = token(KEY_B, sub="ada", ttl=120, kid="k2")
            ws.send("refresh " + fresh)
            assert ws.recv(timeout=5) == "refresh refused: unknown key id"
            server.wait_for(r"JWKS \S+: 2 key\(s\)", timeout=10)  # fetched behind it
            ws.send("refresh " + fresh)
            assert ws.recv(timeout=5).startswith("refreshed until ")


@pytest.mark.parametrize("url, says", [
    ("http://example.com/jwks.json", "--jwks-url: must be https://... (http:// only to a "
                                     "loopback address"),
    ("file:///etc/passwd", "--jwks-url: must be https://"),
    ("http://127.0.0.1:1/jwks.json", "--jwks-url http://127.0.0.1:1/jwks.json: cannot fetch "
                                     "the JWKS URL: [Errno 111] Connection refused"),
])
def test_a_jwks_url_that_cannot_serve_stops_start_up_with_one_line(url, says):
    result = run(twistd("--app", AUTH_APP, "--port", "0", "--secret-key", SECRET,
                        "--jwks-url", url), cwd=REPO)
    assert result.returncode == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("realtime: error: " + says), result.stderr


def test_a_provider_answering_garbage_at_start_up_is_one_line(provider):
    provider.body = "<html>login</html>"
    result = run(twistd("--app", AUTH_APP, "--port", "0", "--secret-key", SECRET,
                        "--jwks-url", provider.url), cwd=REPO)
    assert result.stderr.strip() == (
        f"realtime: error: --jwks-url {provider.url}: the JWKS URL's answer is not a JSON "
        "object with a 'keys' list"), result.stderr
