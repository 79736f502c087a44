"""SIGHUP re-reads the key files of a running ``twistd realtime``: new JWT keys
(``--jwt-key-file``, ``--jwks-file``) and API keys (``--api-key-file``) take effect for new
handshakes, refreshes and API calls, open sockets stay, and a bad file keeps the keys in
use. Real processes, real clients."""

from __future__ import annotations

import json
import signal
import time

import jwt
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from realtime.client import PublishError, publish
from tests.e2e.support import BENCH_APP, REPO, start, twistd

SECRET = "s" * 40
KEY_A = "a" * 40
KEY_B = "b" * 40
AUTH_APP = "realtime.examples.auth:application"


def token(secret, sub="ada", ttl=60, kid=None):
    headers = {"kid": kid} if kid else None
    return jwt.encode({"sub": sub, "exp": int(time.time()) + ttl}, secret, algorithm="HS256",
                      headers=headers)


def status_of(url):
    try:
        with connect(url, open_timeout=5, proxy=None) as ws:
            ws.recv(timeout=5)
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


def jwks(*pairs):
    """A JWKS of HMAC keys: (kid, secret) pairs."""
    return json.dumps({"keys": [
        {"kty": "oct", "kid": kid, "alg": "HS256",
         "k": jwt.utils.base64url_encode(secret.encode()).decode()} for kid, secret in pairs]})


def reload(server, count, what):
    server.send_signal(signal.SIGHUP)
    server.wait_for(rf"SIGHUP: {what}", count=count, timeout=10)


def test_a_rotated_jwt_key_file_takes_effect_and_open_sockets_stay(tmp_path):
    key_file = tmp_path / "jwt.key"
    key_file.write_text(KEY_A)
    with start(twistd("--app", AUTH_APP, "--port", "0", "--secret-key", SECRET,
                      "--jwt-key-file", str(key_file)), cwd=REPO) as server:
        url = server.ws_url("/ws/token") + "?token="
        assert status_of(url + token(KEY_A)) == 101
        with connect(url + token(KEY_A, sub="open"), proxy=None) as open_socket:
            assert open_socket.recv(timeout=5) == "hello, open"
            key_file.write_text(KEY_B + "\n")
            reload(server, 1, r"reloaded 1 JWT key\(s\)")
            assert status_of(url + token(KEY_A)) == 401
            assert status_of(url + token(KEY_B)) == 101
            # The socket opened with the old key is still served, and refreshes with a
            # token of the new key (what the identity provider now issues).
            fresh = token(KEY_B, sub="open", ttl=120)
            open_socket.send("refresh " + fresh)
            assert open_socket.recv(timeout=5).startswith("refreshed until ")
            open_socket.send("refresh " + token(KEY_A, sub="open"))
            assert open_socket.recv(timeout=5) == "refresh refused: bad signature"


def test_a_jwks_rotation_overlaps_then_drops_the_old_key(tmp_path):
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(jwks(("k1", KEY_A)))
    with start(twistd("--app", AUTH_APP, "--port", "0", "--secret-key", SECRET,
                      "--jwks-file", str(jwks_file)), cwd=REPO) as server:
        url = server.ws_url("/ws/token") + "?token="
        old, new = token(KEY_A, kid="k1"), token(KEY_B, kid="k2")
        assert (status_of(url + old), status_of(url + new)) == (101, 401)
        jwks_file.write_text(jwks(("k1", KEY_A), ("k2", KEY_B)))  # the overlap
        reload(server, 1, r"reloaded 2 JWT key\(s\)")
        assert (status_of(url + old), status_of(url + new)) == (101, 101)
        jwks_file.write_text(jwks(("k2", KEY_B)))  # the old key retired
        reload(server, 2, r"reloaded \d JWT key\(s\)")
        assert (status_of(url + old), status_of(url + new)) == (401, 101)


@pytest.mark.parametrize("bad, says", [
    ("{not json", r"--jwks-file \S+: the JWKS file is not a JSON object"),
    (None, r"--jwks-file \S+: No such file or directory"),
    (json.dumps({"keys": []}), r"--jwks-file \S+: the JWKS file has no keys"),
])
def test_a_bad_key_file_on_reload_keeps_the_keys_in_use(tmp_path, bad, says):
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(jwks(("k1", KEY_A)))
    with start(twistd("--app", AUTH_APP, "--port", "0", "--secret-key", SECRET,
                      "--jwks-file", str(jwks_file)), cwd=REPO) as server:
        url = server.ws_url("/ws/token") + "?token="
        if bad is None:
            jwks_file.unlink()
        else:
            jwks_file.write_text(bad)
        reload(server, 1, "keys not reloaded, the ones in use stay: " + says)
        assert status_of(url + token(KEY_A, kid="k1")) == 101  # still verified, still up
        result = server.stop()
    assert result.returncode == 0, result.output


def test_a_rotated_api_key_file_takes_effect_and_an_empty_one_is_refused(tmp_path):
    old, new = "old-api-key-0123456789", "new-api-key-0123456789"
    key_file = tmp_path / "api.keys"
    key_file.write_text(old + "\n")
    with start(twistd("--app", BENCH_APP, "--port", "0", "--api-key-file", str(key_file))
               ) as server:
        base = f"http://127.0.0.1:{server.port}"
        assert publish(base, old, "g", text="x")["ok"] is True
        key_file.write_text(f"{new}\n")
        reload(server, 1, r"reloaded 1 API key\(s\)")
        with pytest.raises(PublishError) as refused:
            publish(base, old, "g", text="x")
        assert refused.value.status == 401
        assert publish(base, new, "g", text="x")["ok"] is True
        key_file.write_text("\n")
        reload(server, 1, r"keys not reloaded, the ones in use stay: --api-key-file \S+: it "
                          r"holds no key")
        assert publish(base, new, "g", text="x")["ok"] is True  # the API is still on


def test_sighup_with_nothing_to_reload_does_not_stop_the_server():
    """SIGHUP's default action terminates a process: a ``systemctl reload`` (or a closed
    terminal) must not take down a server that has no file to re-read."""
    with start(twistd("--app", BENCH_APP, "--port", "0")) as server:
        reload(server, 1, "nothing to reload")
        with connect(server.ws_url("/echo"), proxy=None) as ws:
            ws.send("still here")
            assert ws.recv(timeout=5) == "still here"
        result = server.stop()
    assert result.returncode == 0, result.output
