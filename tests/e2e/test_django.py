"""A Django project under the real command line (tests/e2e/django_site): a user logged in
through Django's own login view is that user on the socket, ``login``/``logout`` on the
socket are Django's (its session table, its cookie), and the ORM in a consumer's threads
never keeps a stale connection. Real servers (``twistd``), real clients, a real SQLite
database migrated by ``django-admin``."""

from __future__ import annotations

import json
import sys

import pytest
from websockets.sync.client import connect

from tests.clients import http_get
from tests.e2e.support import REPO, run, start, twistd

APP = ["--app", "tests.e2e.django_site.asgi:application", "--port", "0"]


@pytest.fixture(scope="module")
def site_db(tmp_path_factory):
    """A migrated SQLite database for the site (auth's and sessions' tables)."""
    db = tmp_path_factory.mktemp("django") / "db.sqlite3"
    done = run([sys.executable, "-m", "django", "migrate", "--no-input",
                "--settings", "tests.e2e.django_site.settings"],
               env={"PYTHONPATH": str(REPO), "SITE_DB": str(db)}, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.output
    return db


def env_for(db, **extra):
    return {"PYTHONPATH": str(REPO), "SITE_DB": str(db), **extra}


@pytest.fixture(scope="module")
def django_server(site_db):
    """Django's views and the consumers on one port, as Daphne serves a Channels project
    (Django's views need the asyncio reactor)."""
    with start(twistd(*APP, reactor="asyncio"), env=env_for(site_db, SITE_HTTP="django"),
               cwd=REPO) as server:
        yield server


@pytest.fixture(scope="module")
def consumers_server(site_db):
    """The consumers alone under the default reactor (Django's sessions and users need no
    asyncio), on the same database; the tests that only connect to it share it."""
    with start(twistd(*APP), env=env_for(site_db), cwd=REPO) as server:
        yield server


def django_login(server, name):
    """Log in through Django's own view; the session cookie it set ("sessionid=...")."""
    status, headers, body = http_get(f"http://127.0.0.1:{server.port}/login/?name={name}")
    assert status == 200 and json.loads(body) == {"user": name}, body
    cookie = next(c for c in headers["set-cookie"] if c.startswith("sessionid="))
    return cookie.split(";")[0]


def whoami(server, cookie=None):
    headers = {"Cookie": cookie} if cookie else {}
    status, _, body = http_get(f"http://127.0.0.1:{server.port}/whoami/", headers=headers)
    assert status == 200, body
    return json.loads(body)


def open_who(server, cookie=None, query=""):
    """An open socket to ``/ws/who`` (close it, or use it in ``with``) and its greeting."""
    headers = {"Cookie": cookie} if cookie else {}
    ws = connect(server.ws_url("/ws/who" + query), additional_headers=headers).__enter__()
    return ws, json.loads(ws.recv(timeout=10))


def test_a_user_logged_in_by_a_django_view_is_that_user_on_the_socket(django_server):
    cookie = django_login(django_server, "ada")
    ws, hello = open_who(django_server, cookie)
    with ws:
        assert hello["user"] == "ada"
        assert hello["kind"] == "django.contrib.auth.models.User"  # Django's own model
        assert hello["key"] == cookie.partition("=")[2]
        # A session change saved as Channels' docs save it reaches Django's views.
        ws.send("seen socket")
        assert json.loads(ws.recv(timeout=10))["user"] == "ada"
    assert whoami(django_server, cookie) == {"user": "ada", "seen": "socket"}
    ws, anonymous = open_who(django_server)
    ws.close()
    assert anonymous["user"] is None
    assert anonymous["kind"] == "django.contrib.auth.models.AnonymousUser"
    # A cookie Django does not know is an anonymous session, never an error.
    ws, unknown = open_who(django_server, "sessionid=not-a-session")
    ws.close()
    assert unknown["user"] is None


def test_logout_on_the_socket_logs_the_browser_out_of_django_too(django_server):
    cookie = django_login(django_server, "bob")
    assert whoami(django_server, cookie)["user"] == "bob"
    ws, hello = open_who(django_server, cookie)
    with ws:
        assert hello["user"] == "bob"
        ws.send("logout")
        after = json.loads(ws.recv(timeout=10))
    assert after["user"] is None
    assert after["kind"] == "django.contrib.auth.models.AnonymousUser"
    assert whoami(django_server, cookie)["user"] is None  # Django's session row is gone


def test_login_on_the_socket_is_a_django_login(django_server):
    # After accept: the new session is saved; its key is the new cookie's value.
    ws, hello = open_who(django_server)
    with ws:
        assert hello["user"] is None
        ws.send("login cyd")
        after = json.loads(ws.recv(timeout=10))
    assert after["user"] == "cyd" and after["key"]
    assert whoami(django_server, f"sessionid={after['key']}")["user"] == "cyd"
    # Before accept: the 101 carries Django's cookie for the new session.
    ws = connect(django_server.ws_url("/ws/who?login=dee"))
    with ws:
        hello = json.loads(ws.recv(timeout=10))
        set_cookie = ws.response.headers["Set-Cookie"]
    assert hello["user"] == "dee"
    assert set_cookie.startswith(f"sessionid={hello['key']};")
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie and "Path=/" in set_cookie
    assert whoami(django_server, set_cookie.split(";")[0])["user"] == "dee"


def test_logout_before_accept_deletes_django_cookie_and_nothing_else(django_server):
    """Only a logout (the session's key changed) touches the cookie: a plain connection
    of a logged-in user sends no Set-Cookie (realtime's own store used to answer Django's
    cookie with a deletion)."""
    cookie = django_login(django_server, "eve")
    ws = connect(django_server.ws_url("/ws/who"), additional_headers={"Cookie": cookie})
    with ws:
        assert json.loads(ws.recv(timeout=10))["user"] == "eve"
        assert "Set-Cookie" not in ws.response.headers
    assert whoami(django_server, cookie)["user"] == "eve"
    ws = connect(django_server.ws_url("/ws/who?logout"), additional_headers={"Cookie": cookie})
    with ws:
        assert json.loads(ws.recv(timeout=10))["user"] is None
        deletion = ws.response.headers["Set-Cookie"]
    assert deletion.startswith("sessionid=;") and "Max-Age=0" in deletion, deletion
    assert "SameSite=Lax" in deletion and "Path=/" in deletion
    assert whoami(django_server, cookie)["user"] is None


def test_logout_without_auth_middleware_and_loader_users_in_django_sessions(django_server):
    cookie = django_login(django_server, "hal")
    with connect(django_server.ws_url("/ws/bare"), additional_headers={"Cookie": cookie}) as ws:
        ws.send("logout")
        after = json.loads(ws.recv(timeout=10))
    assert after == {"user": "AnonymousUser", "key": None}
    assert whoami(django_server, cookie)["user"] is None
    # A user_loader's users (not Django's) live in Django's sessions too.
    with connect(django_server.ws_url("/ws/loader")) as ws:
        assert json.loads(ws.recv(timeout=10)) == {"id": None, "source": None}
        ws.send("42")
        key = json.loads(ws.recv(timeout=10))["key"]
    assert key
    with connect(django_server.ws_url("/ws/loader"),
                 additional_headers={"Cookie": f"sessionid={key}"}) as ws:
        assert json.loads(ws.recv(timeout=10)) == {"id": "42", "source": "loader"}


def collect(url, count):
    with connect(url) as ws:
        states = []
        for _ in range(count):
            ws.send("state")
            states.append(json.loads(ws.recv(timeout=10)))
    return states


@pytest.mark.parametrize("route", ["/ws/threaded", "/ws/async"])
def test_orm_in_threads_never_finds_a_connection_left_open(consumers_server, route):
    """Every ORM use in a pool thread starts with the thread's connection closed
    (``close_old_connections`` before and after, as Channels does): a pooled thread never
    keeps a connection past its use. Under the default reactor: Django's sessions and users
    need no asyncio."""
    states = collect(consumers_server.ws_url(route), 12)
    assert [s["open_at_entry"] for s in states] == [False] * 12


def test_django_sessions_under_the_default_reactor(django_server, consumers_server):
    """Consumers alone (no Django views) under the default reactor: the user of a cookie
    that Django's view set, in the same database."""
    cookie = django_login(django_server, "fay")
    ws, hello = open_who(consumers_server, cookie)
    ws.close()
    assert hello["user"] == "fay"
    assert hello["kind"] == "django.contrib.auth.models.User"


def test_an_http_consumers_login_and_session_change_set_djangos_cookie(django_server,
                                                                     consumers_server):
    port = consumers_server.port
    status, headers, body = http_get(f"http://127.0.0.1:{port}/consumer-login/?name=gus")
    changed = http_get(f"http://127.0.0.1:{port}/consumer-login/")
    assert status == 200, body
    answer = json.loads(body)
    assert answer["user"] == "gus"
    (cookie,) = headers["set-cookie"]
    assert cookie.startswith(f"sessionid={answer['key']};")
    assert whoami(django_server, cookie.split(";")[0])["user"] == "gus"
    # A session change in an HTTP consumer is saved before its head, cookie and all.
    status, headers, body = changed
    assert status == 200, body
    assert json.loads(body)["key"] is None  # no session before the response's head
    (cookie,) = headers["set-cookie"]
    assert cookie.startswith("sessionid=") and not cookie.startswith("sessionid=;")
    assert whoami(django_server, cookie.split(";")[0]) == {"user": None, "seen": "http"}


def test_session_store_django_without_django_stops_startup_with_one_line():
    done = run(twistd("--app", "realtime.examples.auth:application", "--port", "0",
                      "--session-store", "django"), cwd=REPO, timeout=60)
    assert done.returncode != 0
    assert "--session-store django: Django is not set up" in done.output, done.output
