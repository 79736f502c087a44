"""``--jwks-url``: a running ``twistd realtime`` takes its verification keys from an identity
provider's JWKS endpoint (here a real HTTP server on 127.0.0.1 in the test process): fetched
at start-up, refetched for a token naming a new key id (rate-limited), every
``--jwks-refresh`` seconds and at SIGHUP; a provider that fails keeps the keys in use."""

from __future__ import annotations

import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from tests.e2e.support import REPO, run, start, twistd
from tests.e2e.test_reload import SECRET, status_of

AUTH_APP = "realtime.examples.auth:application"
#: An identity provider's signing keys (P-256: fast to make), by key id.
PRIVATE = {kid: ec.generate_private_key(ec.SECP256R1()) for kid in ("k1", "k2", "k3")}


def jwk(kid, **extra):
    entry = ECAlgorithm.to_jwk(PRIVATE[kid].public_key(), as_dict=True)
    return {**entry, "kid": kid, "alg": "ES256", "use": "sig", **extra}


def jwks(*kids, extra=()):
    return json.dumps({"keys": [jwk(kid) for kid in kids] + list(extra)})


def token(kid, sub="ada", ttl=60):
    return jwt.encode({"sub": sub, "exp": int(time.time()) + ttl}, PRIVATE[kid],
                      algorithm="ES256", headers={"kid": kid})


class Provider:
    """A JWKS endpoint whose answer (and status) the test changes; it counts fetches."""

    def __init__(self) -> None:
        self.body = jwks("k1")
        self.status = 200
        self.fetches = 0
        self.redirect: str | None = None
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                if provider.redirect:
                    self.send_response(302)
                    self.send_header("Location", provider.redirect)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
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
        assert status_of(url + token("k1")) == 101
        provider.body = jwks("k1", "k2")  # the provider rotated
        assert status_of(url + token("k2")) == 101  # fetched on the miss
        assert provider.fetches == 2
        server.wait_for(r"JWKS \S+: 2 key\(s\)")
        # Made-up key ids right after: refused, and no fetch (one per MISS_INTERVAL, 10 s,
        # at most), so garbage tokens cannot make the server hammer the provider.
        for n in range(5):
            bogus = jwt.encode({"sub": "x"}, PRIVATE["k3"], algorithm="ES256",
                               headers={"kid": f"bogus{n}"})
            assert status_of(url + bogus) == 401
        assert provider.fetches == 2
        assert status_of(url + token("k1")) == 101


def test_a_removed_key_stops_verifying_at_the_next_refresh_and_a_failing_provider_keeps_keys(
        provider):
    provider.body = jwks("k1", "k2")
    with serve(provider, "--jwks-refresh", "1") as server:
        url = server.ws_url("/ws/token") + "?token="
        assert status_of(url + token("k1")) == 101
        provider.body = jwks("k2")  # k1 revoked
        server.wait_for(r"JWKS \S+: 1 key\(s\)", timeout=10)
        assert status_of(url + token("k1")) == 401
        provider.status = 500
        server.wait_for(r"JWKS \S+: not refreshed, the keys in use stay: the JWKS URL "
                        r"answered 500", timeout=10)
        assert status_of(url + token("k2")) == 101
        result = server.stop()
    assert result.returncode == 0, result.output


def test_sighup_refetches_the_jwks_url(provider):
    with serve(provider, "--jwks-refresh", "0") as server:
        provider.body = jwks("k2")
        server.send_signal(signal.SIGHUP)
        server.wait_for(r"JWKS \S+: 1 key\(s\)", timeout=10)
        url = server.ws_url("/ws/token") + "?token="
        assert provider.fetches == 2
        assert status_of(url + token("k1")) == 401  # k1 is gone (its miss fetch finds none)
        assert status_of(url + token("k2")) == 101


def test_an_open_socket_refreshing_with_a_new_key_id_gets_it_on_its_next_try(provider):
    from websockets.sync.client import connect

    with serve(provider, "--jwks-refresh", "0") as server:
        url = server.ws_url("/ws/token") + "?token="
        with connect(url + token("k1"), proxy=None) as ws:
            assert ws.recv(timeout=5) == "hello, ada"
            provider.body = jwks("k1", "k2")
            fresh = token("k2", ttl=120)
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


def test_a_keycloak_set_takes_its_signing_keys_and_skips_the_rest(provider):
    """Keycloak publishes an encryption key beside its signing key; an HMAC secret at a
    URL would let anyone sign. Each is skipped with a line saying why; the set serves."""
    rsa_enc = {"kty": "RSA", "kid": "enc1", "use": "enc", "alg": "RSA-OAEP",
               "n": "sXch", "e": "AQAB"}
    secret = {"kty": "oct", "kid": "hs", "alg": "HS256",
              "k": jwt.utils.base64url_encode(b"s" * 40).decode()}
    provider.body = jwks("k1", extra=[rsa_enc, secret])
    with serve(provider, "--jwks-refresh", "0") as server:
        server.wait_for(r"skipped key enc1: not a signing key \(use 'enc'\)")
        server.wait_for(r"skipped key hs: an HMAC secret published at a URL")
        url = server.ws_url("/ws/token") + "?token="
        assert status_of(url + token("k1")) == 101
        forged = jwt.encode({"sub": "eve", "exp": int(time.time()) + 60}, "s" * 40,
                            algorithm="HS256", headers={"kid": "hs"})
        assert status_of(url + forged) == 401


def test_a_set_of_nothing_usable_and_a_redirect_to_http_stop_start_up(provider):
    provider.body = json.dumps({"keys": [{"kty": "oct", "kid": "hs", "alg": "HS256",
                                          "k": "c2VjcmV0"}]})
    result = run(twistd("--app", AUTH_APP, "--port", "0", "--secret-key", SECRET,
                        "--jwks-url", provider.url), cwd=REPO)
    assert result.stderr.startswith(
        f"realtime: error: --jwks-url {provider.url}: the JWKS URL's answer has no usable key "
        "(key hs: an HMAC secret published at a URL"), result.stderr
    provider.redirect = "http://127.0.0.2:9/jwks.json"  # loopback, but not one we trust
    result = run(twistd("--app", AUTH_APP, "--port", "0", "--secret-key", SECRET,
                        "--jwks-url", provider.url), cwd=REPO)
    assert result.stderr.strip() == (
        f"realtime: error: --jwks-url {provider.url}: cannot fetch the JWKS URL: redirected "
        "to a URL that must be https://... (http:// only to a loopback address: keys "
        "fetched in clear can be forged)"), result.stderr


def test_a_provider_that_drips_its_answer_is_cut_at_the_timeout(monkeypatch):
    """``TIMEOUT`` bounds the whole fetch, not each read."""
    import socket

    from realtime import jwks as module
    from realtime.settings import ConfigurationError

    monkeypatch.setattr(module, "TIMEOUT", 1.0)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def drip() -> None:
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        try:
            for _ in range(40):  # a byte every 0.1 s: each read is quick, the whole is not
                conn.sendall(b" ")
                time.sleep(0.1)
        except OSError:
            pass
        conn.close()

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match=r"the JWKS URL took over 1 s"):
        module.fetch(f"http://127.0.0.1:{port}/jwks.json")
    assert time.monotonic() - started < 3
    listener.close()


def test_a_worker_restarted_while_the_provider_is_down_serves_and_fetches_later(provider,
                                                                               redis_url):
    """Under ``--workers`` the supervisor checked the URL at start-up; a worker that
    restarts while the provider is down starts anyway, refusing tokens (no keys), and
    fetches every 10 s (here every second: ``jwks_retry_app``) until the provider answers;
    it then verifies as the others do. (Before, the restarted worker failed its start-up
    again and again while the provider was away.)"""
    import os

    from tests.e2e.test_workers import worker_pids

    cmd = twistd("--app", "tests.e2e.jwks_retry_app:application", "--port", "0",
                 "--secret-key", SECRET, "--jwks-url", provider.url, "--jwks-refresh", "0",
                 "--workers", "2", "--layer", redis_url, "--shutdown-timeout", "5")
    with start(cmd, env={"PYTHONPATH": str(REPO)}, cwd=REPO) as server:
        server.wait_for(r"all 2 workers ready")
        victim = worker_pids(server)[1]
        provider.status = 503
        os.kill(victim, signal.SIGKILL)
        server.wait_for(r"--jwks-url \S+: .*; tokens are refused until it answers")
        server.wait_for(r"JWKS \S+: still no keys, tokens are refused")  # it serves
        assert worker_pids(server)[1] != victim
        provider.status = 200
        server.wait_for(r"JWKS \S+: 1 key\(s\)", timeout=30)
        url = server.ws_url("/ws/token") + "?token="
        assert [status_of(url + token("k1")) for _ in range(8)] == [101] * 8
        result = server.stop()
    assert result.returncode == 0, result.output
