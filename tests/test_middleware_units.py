"""Unit tests: cookies, sessions and their stores, users, tokens, origins, proxies."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import jwt
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from realtime.auth import AnonymousUser, AuthMiddleware, User, login, logout
from realtime.cookies import CookieMiddleware, parse_cookie, set_cookie
from realtime.exceptions import Refuse
from realtime.origins import AllowedHostsOriginValidator, OriginValidator, origin_allowed
from realtime.proxy import apply as apply_proxy_headers
from realtime.proxy import parse_networks, resolve_client, root_path_of
from realtime.routing import Ready
from realtime.scope import BadRequest
from realtime.sessions import (
    CookieStore,
    MemorySessionStore,
    Session,
    SessionError,
    SessionMiddleware,
    Signer,
)
from realtime.settings import ConfigurationError
from realtime.tokens import (
    InvalidToken,
    TokenAuthMiddleware,
    extract_token,
    key_from_text,
    keys_from_jwks,
    verify,
)

SECRET = "s" * 40


def run(middleware, scope):
    """Drive a middleware to the inner app's result (the inner app returns the scope)."""
    from twisted.internet.defer import Deferred

    from realtime.middleware import resolve

    return Deferred.fromCoroutine(resolve(middleware(scope)))


def inner(scope):
    return Ready(scope)


def ws_scope(headers=(), query=b"", subprotocols=()):
    return {"type": "websocket", "path": "/", "headers": list(headers), "query_string": query,
            "subprotocols": list(subprotocols), "scheme": "ws"}


# -- cookies ---------------------------------------------------------------------------------

def test_parse_cookie_skips_bad_pairs():
    assert parse_cookie('a=1; bad; =x; b="two"; c=3=3; a=again') == {
        "a": "1", "b": "two", "c": "3=3"}


@given(st.text())
def test_parse_cookie_never_raises(header):
    result = parse_cookie(header)
    assert isinstance(result, dict)


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_cookie_middleware_never_raises_on_raw_headers(raw):
    scope = {"type": "http", "headers": [(b"cookie", raw)]}
    d = run(CookieMiddleware(inner), scope)
    results = []
    d.addCallback(results.append)
    assert isinstance(results[0]["cookies"], dict)  # synchronous: nothing to wait for


def test_set_cookie_attributes_and_refusals():
    name, value = set_cookie("sid", "abc", max_age=60, path="/p", domain="example.com",
                             secure=True, httponly=True, samesite="strict")
    assert name == b"Set-Cookie"
    text = value.decode()
    for part in ("sid=abc", "Max-Age=60", "Path=/p", "Domain=example.com", "Secure",
                 "HttpOnly", "SameSite=Strict", "Expires="):
        assert part in text
    for bad in ("a;b", "a\r\nX: y", 'q"'):
        with pytest.raises(ValueError):
            set_cookie("sid", bad)
    with pytest.raises(ValueError):
        set_cookie("bad name", "x")
    with pytest.raises(ValueError):
        set_cookie("sid", "x", samesite="sometimes")


# -- signing and the cookie store ------------------------------------------------------------

def test_signer_rotation_tamper_and_expiry():
    old = Signer(["old-key"])
    value = old.sign("payload", now=1000)
    rotated = Signer(["new-key", "old-key"])
    assert rotated.unsign(value, max_age=100, now=1050) == "payload"  # old key verifies
    assert Signer(["new-key"]).unsign(value, max_age=100, now=1050) is None  # forgotten key
    assert rotated.unsign(value, max_age=10, now=1050) is None  # expired
    tampered = value.replace("payload", "paylOad")
    assert rotated.unsign(tampered, max_age=100, now=1050) is None
    assert rotated.unsign("garbage", max_age=100, now=1050) is None
    assert rotated.unsign("", max_age=100, now=1050) is None


def test_cookie_store_round_trip_and_bad_cookies_are_empty():
    clock = [1000.0]
    store = CookieStore(SECRET, max_age=60, clock=lambda: clock[0])
    value = store.encode({"user": 7})
    assert store.decode(value) == {"user": 7}
    assert store.decode(value[:-2] + "xx") == {}
    assert store.decode("a.b.c") == {}
    forged = CookieStore("another secret key that is long enough!", clock=lambda: clock[0])
    assert store.decode(forged.encode({"user": 1})) == {}
    clock[0] += 61
    assert store.decode(value) == {}


def test_cookie_store_needs_a_secret():
    with pytest.raises(ConfigurationError, match="secret key"):
        CookieStore(None)


@pytest_twisted.ensureDeferred
async def test_session_middleware_cookie_store_sets_cookie_and_refuses_save_after_accept():
    store = CookieStore(SECRET)
    mw = CookieMiddleware(SessionMiddleware(inner, store=store))
    scope = await run(mw, ws_scope())
    session = scope["session"]
    assert len(session) == 0
    session["name"] = "ada"
    headers = scope["realtime.response_hooks"][0]()
    assert len(headers) == 1 and headers[0][0] == b"Set-Cookie"
    cookie = headers[0][1].decode().split(";")[0]
    assert "HttpOnly" in headers[0][1].decode()
    with pytest.raises(SessionError, match="after accept"):
        session.save()
    # The browser comes back with that cookie: the session is there.
    again = await run(mw, ws_scope([(b"cookie", cookie.encode())]))
    assert again["session"]["name"] == "ada"
    # A tampered cookie is an empty session, not an error.
    name, _, value = cookie.partition("=")
    tampered = await run(mw, ws_scope([(b"cookie", f"{name}={value[:-3]}abc".encode())]))
    assert dict(tampered["session"]) == {}


@pytest_twisted.ensureDeferred
async def test_session_middleware_memory_store_uses_a_random_id():
    store = MemorySessionStore()
    mw = SessionMiddleware(inner, store=store)
    scope = await run(mw, ws_scope())
    scope["session"]["n"] = 1
    (_, value), = scope["realtime.response_hooks"][0]()
    session_id = value.decode().split(";")[0].split("=", 1)[1]
    # The cookie carries a random id, not the data (the old check, "n" not in the id,
    # failed whenever the random id happened to contain an "n").
    assert len(session_id) >= 24 and b'"n"' not in value
    other = await run(mw, ws_scope())
    other["session"]["n"] = 1
    (_, other_value), = other["realtime.response_hooks"][0]()
    assert other_value.split(b";")[0] != value.split(b";")[0]
    assert await store.load(session_id) == {"n": 1}
    later = await run(mw, ws_scope([(b"cookie", f"sessionid={session_id}".encode())]))
    assert later["session"]["n"] == 1
    # Server-side stores save after accept too.
    later["session"].headers_sent = True
    later["session"]["n"] = 2
    await later["session"].save()
    assert await store.load(session_id) == {"n": 2}
    unknown = await run(mw, ws_scope([(b"cookie", b"sessionid=forged")]))
    assert dict(unknown["session"]) == {} and unknown["session"].session_key is None


@pytest_twisted.ensureDeferred
async def test_login_cycles_the_key_and_logout_flushes():
    store = MemorySessionStore()
    scope = await run(SessionMiddleware(inner, store=store), ws_scope())
    session = scope["session"]
    session["x"] = 1
    session.response_headers()
    first_key = session.session_key
    session.headers_sent = False
    await login(scope, User(42))
    assert scope["user"].id == 42 and session["_auth_user_id"] == "42"
    headers = session.response_headers()
    assert session.session_key != first_key
    assert await store.load(first_key) is None  # the old id is gone: no fixation
    assert headers
    await logout(scope)
    assert isinstance(scope["user"], AnonymousUser) and len(session) == 0
    # Channels' backend= argument ports (the user_loader finds users here).
    await login(scope, User(7), backend="django.contrib.auth.backends.ModelBackend")
    assert scope["user"].id == 7 and session["_auth_user_id"] == "7"


@pytest_twisted.ensureDeferred
async def test_auth_middleware_loads_the_user_with_the_loader():
    store = MemorySessionStore()
    await store.save("k" * 30, {"_auth_user_id": "7"}, 60)

    async def loader(user_id):
        return User(int(user_id), name="grace") if user_id == "7" else None

    mw = SessionMiddleware(AuthMiddleware(inner, user_loader=loader), store=store)
    scope = await run(mw, ws_scope([(b"cookie", b"sessionid=" + b"k" * 30)]))
    assert scope["user"].is_authenticated and scope["user"].name == "grace"
    anon = await run(mw, ws_scope())
    assert anon["user"].is_authenticated is False
    with pytest.raises(ValueError, match="SessionMiddleware"):
        await run(AuthMiddleware(inner), ws_scope())


# -- tokens ----------------------------------------------------------------------------------

def rsa_pair():
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public_pem


def test_tokens_hmac_valid_expired_forged_and_none():
    key = key_from_text(SECRET)
    assert key.algorithms == ("HS256", "HS384", "HS512")
    now = 1_000_000
    good = jwt.encode({"sub": "u1", "exp": now + 60}, SECRET, algorithm="HS256")
    assert verify(good, [key], now)["sub"] == "u1"
    with pytest.raises(InvalidToken, match="expired"):
        verify(good, [key], now + 61)
    forged = jwt.encode({"sub": "u1"}, "x" * 40, algorithm="HS256")
    with pytest.raises(InvalidToken):
        verify(forged, [key], now)
    none_token = jwt.encode({"sub": "u1"}, None, algorithm="none")
    with pytest.raises(InvalidToken):
        verify(none_token, [key], now)
    with pytest.raises(InvalidToken):
        verify("not.a.token", [key], now)
    with pytest.raises(InvalidToken):
        verify(good[:-4] + "AAAA", [key], now)


def test_an_unknown_kid_beside_a_key_without_one_is_an_unknown_key_id():
    """A static key without a ``kid`` (``--jwt-key``) beside JWKS keys: a token naming a
    key id nobody has is tried against the static key and, failing it, is an unknown key
    id (so a ``--jwks-url`` is refetched), not a bad signature; one the static key signed
    passes whatever its ``kid``; a token naming a known key id with a bad signature stays
    a bad signature."""
    static = key_from_text(SECRET)
    other = "o" * 40
    [listed] = keys_from_jwks(json.dumps({"keys": [{
        "kty": "oct", "kid": "k1", "alg": "HS256",
        "k": base64.urlsafe_b64encode(other.encode()).rstrip(b"=").decode()}]}),
        ("HS256",))
    keys = [static, listed]
    now = 1_000_000
    rotated = jwt.encode({"sub": "u"}, "n" * 40, algorithm="HS256", headers={"kid": "k2"})
    with pytest.raises(InvalidToken, match=r"^unknown key id$"):
        verify(rotated, keys, now)
    assert verify(jwt.encode({"sub": "s"}, SECRET, algorithm="HS256", headers={"kid": "k9"}),
                  keys, now)["sub"] == "s"
    forged = jwt.encode({"sub": "u"}, "n" * 40, algorithm="HS256", headers={"kid": "k1"})
    with pytest.raises(InvalidToken, match=r"^bad signature$"):
        verify(forged, keys, now)
    with pytest.raises(InvalidToken, match=r"^bad signature$"):
        verify(jwt.encode({"sub": "u"}, "n" * 40, algorithm="HS256"), keys, now)


def test_tokens_algorithm_confusion_is_refused():
    private, public_pem = rsa_pair()
    key = key_from_text(public_pem)
    assert "HS256" not in key.algorithms
    good = jwt.encode({"sub": "r"}, private, algorithm="RS256")
    assert verify(good, [key], time.time())["sub"] == "r"
    # The classic attack: HMAC-sign with the public key's PEM text.
    import base64
    import hashlib
    import hmac

    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": "evil"}).encode())
    mac = b64(hmac.new(public_pem.encode(), header + b"." + body, hashlib.sha256).digest())
    attack = (header + b"." + body + b"." + mac).decode()
    with pytest.raises(InvalidToken):
        verify(attack, [key], time.time())


def test_tokens_audience_issuer_leeway_and_jwks(tmp_path):
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    jwk.update({"kid": "k1", "alg": "ES256"})
    keys = keys_from_jwks(json.dumps({"keys": [jwk]}))
    assert keys[0].algorithms == ("ES256",) and keys[0].kid == "k1"
    now = 5000
    token = jwt.encode({"sub": "e", "aud": "app", "iss": "me", "exp": now},
                       private, algorithm="ES256", headers={"kid": "k1"})
    assert verify(token, keys, now + 5, audience="app", issuer="me", leeway=10)["sub"] == "e"
    with pytest.raises(InvalidToken):
        verify(token, keys, now + 5, audience="other", issuer="me", leeway=10)
    with pytest.raises(InvalidToken):
        verify(token, keys, now + 5, audience="app", issuer="them", leeway=10)
    with pytest.raises(InvalidToken, match="expired"):
        verify(token, keys, now + 11, audience="app", issuer="me", leeway=10)
    with pytest.raises(ConfigurationError):
        keys_from_jwks("{}")
    with pytest.raises(ConfigurationError):
        key_from_text("short")


def test_a_jwks_keeps_its_usable_signing_keys_and_says_why_it_skips_the_others():
    ec_key = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(
        ec.generate_private_key(ec.SECP256R1()).public_key()))
    short = {"kty": "oct", "kid": "short", "k": jwt.utils.base64url_encode(b"x" * 8).decode()}
    good_secret = {"kty": "oct", "kid": "hs", "alg": "HS256",
                   "k": jwt.utils.base64url_encode(b"s" * 40).decode()}
    entries = [
        {**ec_key, "kid": "es", "alg": "ES256", "use": "sig"},
        {**ec_key, "kid": "enc", "use": "enc"},
        {**ec_key, "kid": "noverify", "key_ops": ["encrypt"]},
        short, good_secret, "not a key", {"kty": "EC", "kid": "broken"},
    ]
    skipped: list[str] = []
    keys = keys_from_jwks(json.dumps({"keys": entries}), skipped=skipped)
    assert [k.kid for k in keys] == ["es", "hs"]
    assert skipped[:4] == ["key enc: not a signing key (use 'enc')",
                           "key noverify: its key_ops do not include verify",
                           "key short: an HMAC secret shorter than 32 bytes",
                           "key #5: not a JSON object"]
    assert skipped[4].startswith("key broken: ")
    # --jwt-algorithms binds a key that names its own alg too; a URL gets no secrets.
    with pytest.raises(ConfigurationError) as refused:
        keys_from_jwks(json.dumps({"keys": entries}), ["RS256", "HS256"], remote=True)
    assert str(refused.value).startswith(
        "the JWKS file has no usable key (key es: its alg 'ES256' is not one "
        "--jwt-algorithms allows; key enc: not a signing key")
    assert "key hs: an HMAC secret published at a URL" not in str(refused.value)  # 3 shown
    skipped = []
    with pytest.raises(ConfigurationError):
        keys_from_jwks(json.dumps({"keys": [good_secret]}), remote=True, skipped=skipped)
    assert skipped == ["key hs: an HMAC secret published at a URL (anyone who reads it "
                       "could sign)"]


def test_extract_token_sources_and_subprotocol_removal():
    assert extract_token(ws_scope([(b"authorization", b"Bearer abc")])) == "abc"
    assert extract_token(ws_scope(query=b"x=1&token=qq")) == "qq"
    scope = ws_scope(subprotocols=["chat", "bearer.tok.en"])
    assert extract_token(scope) == "tok.en"
    assert scope["subprotocols"] == ["chat"]
    assert extract_token(ws_scope([(b"authorization", b"Basic x")])) is None


@pytest_twisted.ensureDeferred
async def test_token_middleware_required_and_refusals():
    key = key_from_text(SECRET)

    class Clock:
        def seconds(self):
            return 100.0

    mw = TokenAuthMiddleware(inner, keys=[key], clock=Clock())
    anon = await run(mw, ws_scope())
    assert anon["user"].is_authenticated is False
    required = TokenAuthMiddleware(inner, required=True, keys=[key], clock=Clock())
    with pytest.raises(Refuse) as refused:
        await run(required, ws_scope())
    assert refused.value.status == 401
    token = jwt.encode({"sub": "u", "exp": 160}, SECRET, algorithm="HS256")
    scope = await run(required, ws_scope(query=b"token=" + token.encode()))
    assert scope["user"].claims["sub"] == "u" and scope["auth_expires_at"] == 160
    expired = jwt.encode({"sub": "u", "exp": 50}, SECRET, algorithm="HS256")
    with pytest.raises(Refuse) as refused:
        await run(mw, ws_scope([(b"authorization", b"Bearer " + expired.encode())]))
    assert refused.value.status == 401
    challenge = dict(refused.value.headers)[b"WWW-Authenticate"]
    assert b"invalid_token" in challenge and expired.encode() not in challenge
    with pytest.raises(ConfigurationError):
        TokenAuthMiddleware(inner, keys=[])


# -- origins ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("origin", "patterns", "allowed"),
    [
        ("https://app.example.com", ["https://app.example.com"], True),
        ("https://app.example.com:443", ["https://app.example.com"], True),
        ("https://app.example.com:8443", ["https://app.example.com"], False),
        ("http://app.example.com", ["https://app.example.com"], False),
        ("https://a.b.example.com", [".example.com"], True),
        ("https://example.com", [".example.com"], True),
        ("https://badexample.com", [".example.com"], False),
        ("http://example.com:9000", ["example.com"], True),
        ("http://example.com:9000", ["example.com:9000"], True),
        ("http://example.com:9001", ["example.com:9000"], False),
        (None, ["example.com"], False),
        ("null", ["example.com"], False),
        (None, ["*"], True),
        ("not a url", ["example.com"], False),
        ("http://[::1]:8000", ["[::1]"], True),
    ],
)
def test_origin_patterns(origin, patterns, allowed):
    assert origin_allowed(origin, patterns) is allowed


@given(st.text(max_size=80), st.lists(st.text(max_size=30), max_size=4))
def test_origin_matching_never_raises(origin, patterns):
    assert origin_allowed(origin, patterns) in (True, False)


@pytest_twisted.ensureDeferred
async def test_origin_validators_on_websocket_and_http():
    mw = OriginValidator(inner, ["https://ok.example"])
    with pytest.raises(Refuse) as refused:
        await run(mw, ws_scope([(b"origin", b"https://evil.example")]))
    assert refused.value.status == 403
    with pytest.raises(Refuse):
        await run(mw, ws_scope())  # a WebSocket without Origin
    assert await run(mw, ws_scope([(b"origin", b"https://ok.example")]))
    http = {"type": "http", "headers": [], "path": "/"}
    assert await run(mw, http)  # plain HTTP without Origin passes
    with pytest.raises(Refuse):
        await run(mw, dict(http, headers=[(b"origin", b"https://evil.example")]))
    local = AllowedHostsOriginValidator(inner, [])
    assert await run(local, ws_scope([(b"origin", b"http://localhost:8000")]))
    with pytest.raises(Refuse):
        await run(local, ws_scope([(b"origin", b"http://example.com")]))


_HOSTS_SCRIPT = """
import json, sys
from realtime.origins import AllowedHostsOriginValidator
from realtime.settings import settings
built = AllowedHostsOriginValidator(lambda scope: None)
explicit = AllowedHostsOriginValidator(lambda scope: None, [])
settings.allowed_hosts = ["other.example"]
flag = AllowedHostsOriginValidator(lambda scope: None)
before = "django" in sys.modules
def ok(validator, origin):
    return validator.allowed({"type": "websocket", "headers": [(b"origin", origin.encode())]})
print(json.dumps({
    "django before": before,
    "site": ok(built, "https://example.com"), "local": ok(built, "http://localhost:8000"),
    "explicit site": ok(explicit, "https://example.com"),
    "explicit local": ok(explicit, "http://localhost"),
    "flag site": ok(flag, "https://example.com"), "flag other": ok(flag, "http://other.example"),
    "django after": "django" in sys.modules}))
"""


@pytest.mark.parametrize("settings_text,want", [
    ("ALLOWED_HOSTS = ['example.com']\nDEBUG = False", {"site": True, "local": False}),
    ("ALLOWED_HOSTS = []\nDEBUG = True", {"site": False, "local": True}),
    ("ALLOWED_HOSTS = []\nDEBUG = False", {"site": False, "local": False}),
    (None, {"site": False, "local": True, "django after": False}),
    ("raise ImportError('broken settings')", {"site": False, "local": True}),
], ids=["hosts", "debug-empty", "empty", "no-django", "broken-settings"])
def test_allowed_hosts_validator_reads_djangos_settings_at_the_first_connection(
        tmp_path, settings_text, want):
    """Channels' AllowedHostsOriginValidator reads ALLOWED_HOSTS (with DEBUG and none, the
    local hosts): so does realtime's without --allowed-hosts, read at the first connection,
    so an asgi.py that builds it before Django is imported (DJANGO_SETTINGS_MODULE set, no
    get_asgi_application() yet) still gets Django's list. An explicit list and
    --allowed-hosts win; without a Django project, local origins, Django not imported."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), repo])
    if settings_text is not None:
        (tmp_path / "hosts_settings.py").write_text(f"SECRET_KEY = 'x' * 50\n{settings_text}\n")
        env["DJANGO_SETTINGS_MODULE"] = "hosts_settings"
    done = subprocess.run([sys.executable, "-c", _HOSTS_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["django before"] is False  # built before Django was imported
    assert {key: got[key] for key in want} == want
    assert (got["explicit site"], got["explicit local"]) == (False, True)
    assert (got["flag site"], got["flag other"]) == (False, True)


# -- proxies ---------------------------------------------------------------------------------

def test_proxy_resolution_walks_from_the_right():
    nets = parse_networks(["127.0.0.0/8", "10.0.0.0/8", "::1"])
    headers = [(b"x-forwarded-for", b"6.6.6.6, 1.2.3.4, 10.0.0.5"),
               (b"x-forwarded-proto", b"https"), (b"x-forwarded-port", b"443")]
    assert resolve_client(("127.0.0.1", 5000), headers, nets) == (("1.2.3.4", 443), "https")
    # An untrusted peer cannot speak for anybody.
    assert resolve_client(("8.8.8.8", 5000), headers, nets) == (("8.8.8.8", 5000), None)
    # Garbage in the header: keep the peer.
    assert resolve_client(("127.0.0.1", 1), [(b"x-forwarded-for", b"nonsense")], nets) == (
        ("127.0.0.1", 1), None)
    with pytest.raises(ValueError):
        parse_networks(["10.0.0.0/33"])


def test_proxy_resolution_with_other_header_names():
    """--proxy-headers-host/-port (Daphne's): X-Real-IP is read as X-Forwarded-For is, and
    a port that is not a port number is none (a latin-1 digit like "²" too)."""
    nets = parse_networks(["127.0.0.0/8"])
    real = [(b"x-real-ip", b"1.2.3.4"), (b"x-real-port", b"8443"),
            (b"x-forwarded-for", b"6.6.6.6")]
    assert resolve_client(("127.0.0.1", 1), real, nets, b"x-real-ip", b"x-real-port") == (
        ("1.2.3.4", 8443), None)
    for port in (b"\xb2", b"99999", b"-1", b"80x"):
        headers = [(b"x-forwarded-for", b"1.2.3.4"), (b"x-forwarded-port", port)]
        assert resolve_client(("127.0.0.1", 1), headers, nets) == (("1.2.3.4", 0), None)


def test_daphne_root_path_only_from_a_trusted_proxy():
    """Daphne takes root_path from a Daphne-Root-Path header of any client; here only a
    --trusted-proxies peer's counts (with --proxy-headers and --root-path-header),
    percent-decoded, its trailing slash dropped as --root-path's, and the header leaves the
    scope as under Daphne."""
    nets = parse_networks(["10.0.0.0/8"])

    def scope_from(peer, *values, root="", header=b"daphne-root-path"):
        scope = {"type": "websocket", "client": (peer, 1), "root_path": root, "scheme": "ws",
                 "headers": [(b"host", b"h"), *((b"daphne-root-path", v) for v in values)]}
        apply_proxy_headers(scope, nets, b"x-forwarded-for", b"x-forwarded-port", header)
        return scope

    # Not named (--root-path-header not given): an ordinary header, from a trusted peer too.
    not_named = scope_from("10.1.2.3", b"/app", root="/opt", header=b"")
    assert not_named["root_path"] == "/opt"
    assert not_named["headers"] == [(b"host", b"h"), (b"daphne-root-path", b"/app")]
    assert scope_from("10.1.2.3", b"//x\x00", header=b"")["root_path"] == ""  # not read

    trusted = scope_from("10.1.2.3", b"/first", b"/my%20app/", root="/opt")
    assert trusted["root_path"] == "/my app"  # the last one, over --root-path
    assert trusted["headers"] == [(b"host", b"h")]
    assert scope_from("10.1.2.3", b"/")["root_path"] == ""
    assert scope_from("10.1.2.3", b"")["root_path"] == ""
    untrusted = scope_from("8.8.8.8", b"/app", root="/opt")
    assert untrusted["root_path"] == "/opt"
    assert untrusted["headers"] == [(b"host", b"h"), (b"daphne-root-path", b"/app")]
    for bad in (b"app", b"/a?b", b"/a#b", b"/%zz", b"/%ff", b"/a b", b"//x\x00"):
        with pytest.raises(BadRequest):
            scope_from("10.1.2.3", bad)
        assert scope_from("8.8.8.8", bad)["root_path"] == ""  # not read: not refused
    assert root_path_of(b" /caf%C3%A9 ") == "/caf\u00e9"
    assert root_path_of(b"/a%2Fb/c/") == "/a/b/c"
    assert root_path_of(b"///") == ""


@pytest.mark.parametrize("value", [
    b"/a%00b", b"/a%0D%0ASet-Cookie:%20x=1", b"/a%09b", b"/a%7F", b"/a%C2%85b",  # controls
    b"//evil.example", b"/%2F%2Fevil.example", b"/%2fevil.example", b"/a//b",  # "//"
    b"/%5Cevil.example", b"/\\evil.example",  # a browser's "//"
    b"/..", b"/a/../b", b"/a/%2E%2E/b", b"/./a", b"/a/.", b"/a/%2e",  # dot segments
])
def test_a_trusted_root_path_is_a_plain_path_once_decoded(value):
    """Decoded, a Daphne-Root-Path with a control character (NUL, CR/LF: a header or a log
    line split where an app writes it), an empty or dot segment or a backslash is a 400:
    a mount prefix has none, and Django joins root_path into the URLs it writes, where
    "//evil.example" or "/\\evil.example" is another site."""
    with pytest.raises(BadRequest):
        root_path_of(value)


def test_session_repr_is_not_the_data():
    session = Session(MemorySessionStore(), None, {"token": "secret"}, False)
    assert "secret" not in repr(session)


# -- the Redis session store, on a real redis-server ------------------------------------------

@pytest_twisted.ensureDeferred
async def test_redis_session_store_round_trip_and_middleware(redis_server):
    from realtime.sessions import RedisSessionStore

    store = RedisSessionStore(redis_server.url)
    try:
        assert await store.load("missing") is None
        await store.save("abc", {"user": "7"}, 60)
        assert await store.load("abc") == {"user": "7"}
        mw = SessionMiddleware(inner, store=store)
        scope = await run(mw, ws_scope([(b"cookie", b"sessionid=abc")]))
        assert scope["session"]["user"] == "7"
        scope["session"]["seen"] = True
        (_, value), = scope["realtime.response_hooks"][0]()
        assert value.startswith(b"sessionid=abc;")
        await until_loaded(store, "abc", {"user": "7", "seen": True})
        await store.delete("abc")
        assert await store.load("abc") is None
    finally:
        await store.close()


async def until_loaded(store, key, expected, timeout=5.0):
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    waited = 0.0
    while await store.load(key) != expected:
        assert waited < timeout, "the session was not saved"
        await deferLater(reactor, 0.02, lambda: None)
        waited += 0.02
