"""``realtime.static``: the app that serves ``realtime.js`` (status, headers, body, ETag and
304), and the classic-script form. The browser tests (tests/e2e/test_browser_client.py)
load both forms in Chromium."""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest
import pytest_twisted

from realtime import URLRouter, path
from realtime.static import client_app, script
from realtime.testing import HttpCommunicator

FILE = Path(str(resources.files("realtime.static").joinpath("realtime.js")))


def app(**options):
    return URLRouter([path("realtime.js", client_app(**options))])


async def get(application, method="GET", headers=None):
    return await HttpCommunicator(application, method, "/realtime.js",
                                  headers=headers).get_response()


def header(response, name):
    values = [v for k, v in response["headers"] if k.lower() == name]
    assert len(values) == 1, (name, response["headers"])
    return values[0]


@pytest_twisted.ensureDeferred
async def test_get_serves_the_file_with_its_type_cache_control_and_etag():
    response = await get(app())
    assert response["status"] == 200
    assert response["body"] == FILE.read_bytes()
    assert header(response, b"content-type") == b"text/javascript; charset=utf-8"
    assert header(response, b"cache-control") == b"no-cache"
    assert header(response, b"x-content-type-options") == b"nosniff"
    assert header(response, b"content-length") == str(FILE.stat().st_size).encode()
    etag = header(response, b"etag")
    assert etag.startswith(b'"') and etag.endswith(b'"') and len(etag) == 34
    # Another mount of the same file has the same ETag; the classic form another one.
    assert header(await get(app()), b"etag") == etag
    assert header(await get(app(module=False)), b"etag") != etag


@pytest_twisted.ensureDeferred
async def test_if_none_match_answers_304_without_a_body():
    etag = header(await get(app()), b"etag")
    for sent in (etag, b"W/" + etag, b'"other", ' + etag, b"*"):
        response = await get(app(), headers=[(b"if-none-match", sent)])
        assert response["status"] == 304, sent
        assert response["body"] == b""
        assert header(response, b"etag") == etag
        assert header(response, b"cache-control") == b"no-cache"
    stale = await get(app(), headers=[(b"if-none-match", b'"stale"')])
    assert stale["status"] == 200 and stale["body"] == FILE.read_bytes()


@pytest_twisted.ensureDeferred
async def test_head_other_methods_and_cache_control():
    head = await get(app(cache_control="public, max-age=60"), method="HEAD")
    assert head["status"] == 200 and head["body"] == b""
    assert header(head, b"cache-control") == b"public, max-age=60"
    assert header(head, b"content-length") == str(FILE.stat().st_size).encode()
    post = await get(app(), method="POST")
    assert post["status"] == 405
    assert header(post, b"allow") == b"GET, HEAD"


@pytest_twisted.ensureDeferred
async def test_the_classic_form_is_the_same_code_without_exports():
    module = script().decode()
    classic = script(module=False).decode()
    assert "\nexport { RealtimeSocket, RECONNECT_CODES };" in module
    assert "export " not in classic.replace("// realtime.static", "")
    assert classic.startswith('(() => {\n"use strict";\n')
    assert classic.endswith("\nglobalThis.RealtimeSocket = RealtimeSocket;\n})();\n")
    body = module.partition("\n// realtime.static.client_app(module=False)")[0].rstrip()
    assert body in classic and "class RealtimeSocket extends EventTarget" in body
    served = await get(app(module=False))
    assert served["body"] == classic.encode()


@pytest.mark.skipif(shutil.which("node") is None, reason="no node to check the syntax with")
def test_both_forms_parse(tmp_path):
    """``node --check``: the module as a module (``.mjs``), the classic form as a script."""
    (tmp_path / "realtime.mjs").write_bytes(script())
    (tmp_path / "classic.js").write_bytes(script(module=False))
    for name in ("realtime.mjs", "classic.js"):
        done = subprocess.run(["node", "--check", str(tmp_path / name)], capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 0, done.stderr
