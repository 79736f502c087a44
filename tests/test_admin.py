"""The admin UI's option and how its page is served (``--admin-path``, realtime/admin.py).

The options through ``tap.Options`` (and one real ``twistd`` for the one-line error); the
page from a live in-process server over real HTTP/1.1 (urllib, and raw bytes where what
is *not* sent matters: HEAD's body). What the page does in a browser is
tests/e2e/test_browser_admin.py.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

import pytest
import pytest_twisted

from realtime import AsyncHttpConsumer, URLRouter, path
from realtime.config import ServerConfig
from tests.clients import http_get, http_request, in_thread, parse_response, raw_exchange
from tests.e2e.support import REPO, run, twistd
from tests.test_tap import APP, assert_one_line_error, error, parse

KEY = "admin-test-api-key-0123456789"
SOURCE = resources.files("realtime.static").joinpath("admin.html").read_text("utf-8")


@pytest.fixture(autouse=True)
def _no_realtime_environment(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("REALTIME_"):
            monkeypatch.delenv(name)


# -- the option -----------------------------------------------------------------------------------

def test_off_by_default_and_set_with_an_api_key(tmp_path, monkeypatch):
    assert parse().config.admin_path == ""
    assert parse("--api-key", KEY).config.admin_path == ""
    assert parse("--api-key", KEY, "--admin-path", "/admin").config.admin_path == "/admin"
    keys = tmp_path / "keys"
    keys.write_text(KEY + "\n")
    assert parse("--api-key-file", str(keys), "--admin-path", "/ops/ui").config.admin_path \
        == "/ops/ui"
    monkeypatch.setenv("REALTIME_ADMIN_PATH", "/from-env")
    monkeypatch.setenv("REALTIME_API_KEY", KEY)
    assert parse().config.admin_path == "/from-env"
    # Another --health-path frees /healthz.
    assert parse("--api-key", KEY, "--health-path", "/live", "--admin-path",
                 "/healthz").config.admin_path == "/healthz"


ERRORS = [
    (["--admin-path", "/admin"], "--admin-path needs --api-key (or --api-key-file): the "
     "admin UI calls the server API with that key"),
    (["--api-key", KEY, "--admin-path", "admin"],
     "--admin-path: expected a path starting with '/', got 'admin'"),
    (["--api-key", KEY, "--admin-path", "/admin?x=1"],
     "--admin-path: expected a path starting with '/', got '/admin?x=1'"),
    (["--api-key", KEY, "--admin-path", "/ad min"],
     "--admin-path: expected a path starting with '/', got '/ad min'"),
    (["--api-key", KEY, "--admin-path", "/healthz"],
     "--admin-path /healthz: the same path as --health-path"),
    (["--api-key", KEY, "--admin-path", "/readyz"],
     "--admin-path /readyz: the same path as --ready-path"),
    (["--api-key", KEY, "--ready-path", "/ops", "--admin-path", "/ops"],
     "--admin-path /ops: the same path as --ready-path"),
    (["--api-key", KEY, "--admin-path", "/metrics"],
     "--admin-path /metrics: the same path as --metrics"),
    (["--api-key", KEY, "--admin-path", "/api/info"],
     "--admin-path /api/info: /api/ is the server API's"),
]


@pytest.mark.parametrize(("args", "message"), ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_startup_errors(args, message):
    assert error(*args) == message


def test_the_command_line_stops_with_one_line_naming_both_options():
    result = run(twistd(*APP, "--admin-path", "/admin"), env={"PYTHONPATH": str(REPO)}, cwd=REPO)
    assert result.returncode == 1
    assert_one_line_error(result, "--admin-path needs --api-key")


def test_a_config_needs_a_key_and_a_path():
    with pytest.raises(ValueError, match="needs api_keys"):
        ServerConfig(admin_path="/admin")
    with pytest.raises(ValueError, match="must start with '/'"):
        ServerConfig(admin_path="admin", api_keys=(KEY,))


#: admin_path values ``tap.Options`` refuses (ERRORS) that ``ServerConfig`` (built directly:
#: realtime.testing.serve, the realtime_server fixture) refuses too.
REFUSED_BY_THE_COMMAND_LINE = ["/readyz", "/healthz", "/metrics", "/api/info", "/admin?x=1",
                               "/ad min"]


@pytest.mark.parametrize("admin_path", REFUSED_BY_THE_COMMAND_LINE)
def test_a_config_refuses_what_the_command_line_refuses(admin_path):
    """A probe's path (the page would answer /readyz with 200 while draining), /metrics,
    the API's, one with '?' or a space (never matched)."""
    with pytest.raises(ValueError):
        ServerConfig(admin_path=admin_path, api_keys=(KEY,))


def test_a_config_frees_a_built_in_path_moved_elsewhere():
    assert ServerConfig(admin_path="/healthz", health_path="/live",
                        api_keys=(KEY,)).admin_path == "/healthz"
    assert ServerConfig(admin_path="/readyz", ready_path="",
                        api_keys=(KEY,)).admin_path == "/readyz"


# -- the page as served ---------------------------------------------------------------------------

class Ok(AsyncHttpConsumer):
    async def handle(self, body: bytes) -> None:
        await self.send_response(200, b"the application\n")


APPLICATION = URLRouter([path("other", Ok.as_asgi())])


def _sha256(code: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(code.encode()).digest()).decode() + "'"


def get(server, target: str, method: str = "GET") -> tuple[int, dict[str, list[str]], bytes]:
    return in_thread(http_get, server.http_url(target), None, method)


@pytest_twisted.ensureDeferred
async def test_not_served_when_off(live):
    """Without --admin-path the path is the application's (404 here); with it, only that
    exact path is the page."""
    off = await live(APPLICATION, api_keys=(KEY,))
    status, _, _ = await get(off, "/admin")
    assert status == 404
    on = await live(APPLICATION, api_keys=(KEY,), admin_path="/admin")
    for target in ("/admin/", "/admin/x", "/Admin"):
        status, _, _ = await get(on, target)
        assert status == 404, target
    status, _, body = await get(on, "/other")
    assert (status, body) == (200, b"the application\n")


@pytest_twisted.ensureDeferred
async def test_the_path_told_to_the_page_is_text_in_an_attribute(live):
    """An admin path may hold quotes and angle brackets (printable ASCII): the meta tag
    that tells the page its path carries them escaped, never as markup."""
    server = await live(APPLICATION, api_keys=(KEY,), admin_path='/x"><b>&')
    raw = await raw_exchange(server.port, http_request('/x"><b>&'))
    status, _, body = parse_response(raw)
    assert status == 200
    assert b'<meta name="realtime-admin-path" content="/x&quot;&gt;&lt;b&gt;&amp;">' in body
    assert body.count(b"<b>") == SOURCE.encode().count(b"<b>")


@pytest_twisted.ensureDeferred
async def test_get_serves_the_page_with_strict_headers(live):
    server = await live(APPLICATION, api_keys=(KEY,), admin_path="/admin")
    status, headers, body = await get(server, "/admin?anything=1")
    assert status == 200
    # The page as written, with the path it was asked at (where its script finds /api/).
    assert body == SOURCE.replace(
        "<head>\n", '<head>\n<meta name="realtime-admin-path" content="/admin">\n', 1).encode()
    assert headers["content-type"] == ["text/html; charset=utf-8"]
    assert headers["cache-control"] == ["no-store"]
    assert headers["x-content-type-options"] == ["nosniff"]
    assert headers["referrer-policy"] == ["no-referrer"]
    assert headers["x-frame-options"] == ["DENY"]
    [policy] = headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    # The one inline script and the one inline style, allowed by their own hashes.
    [script] = re.findall(r"<script>(.*?)</script>", SOURCE, re.DOTALL)
    [style] = re.findall(r"<style>(.*?)</style>", SOURCE, re.DOTALL)
    assert directives == {
        "default-src": "'none'",
        "script-src": _sha256(script),
        "style-src": _sha256(style),
        "connect-src": "'self'",
        "img-src": "'none'",
        "base-uri": "'none'",
        "form-action": "'none'",
        "frame-ancestors": "'none'",
        "require-trusted-types-for": "'script'",
        "trusted-types": "'none'",
    }


@pytest_twisted.ensureDeferred
async def test_head_has_the_headers_and_no_body_and_other_methods_get_405(live):
    server = await live(APPLICATION, api_keys=(KEY,), admin_path="/admin")
    raw = await raw_exchange(server.port, http_request("/admin", method=b"HEAD"))
    status, headers, body = parse_response(raw)
    assert status == 200 and body == b""
    assert headers[b"content-type"] == [b"text/html; charset=utf-8"]
    meta = b'<meta name="realtime-admin-path" content="/admin">\n'
    assert headers[b"content-length"] == [str(len(SOURCE.encode()) + len(meta)).encode()]
    assert headers[b"content-security-policy"][0].startswith(b"default-src 'none'; ")
    for method in ("POST", "PUT", "DELETE"):
        status, headers, body = await get(server, "/admin", method)
        assert status == 405, method
        assert headers["allow"] == ["GET, HEAD"]
        assert headers["cache-control"] == ["no-store"]
        assert body == b"method not allowed\n"
        assert "content-security-policy" not in headers


def test_the_page_loads_nothing_and_writes_no_html():
    """Self-contained (no URL of another origin, no file but itself); no HTML sink, no
    eval, no inline handler or style attribute (the CSP would refuse those, and Trusted
    Types the sinks: this says so before a browser does)."""
    assert not re.search(r"https?://|//[a-z]", SOURCE.replace("http://www.w3.org", ""))
    assert not re.search(r"\b(src|href)=", SOURCE)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                 "eval(", "new Function", "setAttribute("):
        assert sink not in SOURCE, sink
    assert not re.search(r"\son[a-z]+=", SOURCE)
    assert not re.search(r"\sstyle=", SOURCE)
    # The key goes in X-API-Key to the same origin's /api/, and is kept nowhere but memory.
    assert 'fetch(API + method' in SOURCE and '"X-API-Key": state.key' in SOURCE
    assert 'return prefix + "/api/";' in SOURCE  # beside the page, never another origin
    for storage in ("localStorage", "sessionStorage", "document.cookie", "indexedDB"):
        assert storage not in SOURCE, storage
    # The proxy's credentials in front of the page guard its calls too (not "omit").
    assert 'credentials: "same-origin"' in SOURCE and '"omit"' not in SOURCE
    # Rows are never spread into one call's arguments (past ~100 000 that throws).
    assert not re.search(r"(replaceChildren|append)\(\s*\.\.\.", SOURCE)


@pytest_twisted.ensureDeferred
async def test_the_readiness_probe_stays_the_probe(live):
    """``ServerConfig(admin_path="/readyz")`` is refused (above); were it taken, a load
    balancer would read 200 (the page) whatever the readiness, draining included."""
    try:
        server = await live(APPLICATION, api_keys=(KEY,), admin_path="/readyz")
    except ValueError:
        return  # refused: fine
    status, headers, body = await get(server, "/readyz")
    assert body == b"ready\n", (status, headers.get("content-type"), body[:40])
