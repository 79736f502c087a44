"""``realtime.js`` (``realtime/static/realtime.js``, served by ``realtime.static.client_app``)
in a real browser against real servers.

The same headless Chromium as tests/e2e/test_browser_chat.py (its ``browser`` fixture:
Debian's ``/usr/bin/chromium``, skipped without it except under ``CI=true``) loads pages
from ``tests/e2e/client_app.py`` served by ``twistd`` subprocesses on 127.0.0.1. The pages
open ``RealtimeSocket``s and record their events; what the server got (query strings,
subprotocols, tokens) comes back in each socket's first message. Every wait is on a JS
condition with a bound; backoff delays are tens of milliseconds through the options.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from tests.e2e.support import REPO, Server, on_a_free_port, start, twistd
from tests.e2e.test_browser_chat import RECORD_CLOSE_CODES, TIMEOUT_MS

pytestmark = pytest.mark.slow

APP = "tests.e2e.client_app:application"
JWT_SECRET = "j" * 40
#: Small delays for the tests (the defaults are 0.5 s doubling to 20 s).
FAST = {"minDelay": 20, "maxDelay": 80}


def _server(port: int) -> Server:
    return start(twistd("--app", APP, "--port", f"tcp:{port}:interface=127.0.0.1",
                        "--jwt-key", JWT_SECRET),
                 env={"PYTHONPATH": str(REPO)}, cwd=REPO)


def _server_on_a_free_port() -> Server:
    return on_a_free_port(_server)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with _server_on_a_free_port() as running:
        yield running


def _page(browser: Any, base: str, path: str = "/") -> Any:
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(RECORD_CLOSE_CODES)  # window.closeCodes: every WebSocket's
    page = context.new_page()
    page.goto(base + path)
    page.wait_for_function("window.ready === true")
    return page


def _open(page: Any, name: str, path: str, options: str = "{}") -> None:
    """``client(name, path, options)`` in the page; ``options`` is a JS expression."""
    page.evaluate(f"window.client({json.dumps(name)}, {json.dumps(path)}, {options})")


def _seen(page: Any, name: str) -> dict[str, Any]:
    return page.evaluate(f"window.clients[{json.dumps(name)}].seen")


def _wait(page: Any, condition: str, timeout: int = TIMEOUT_MS) -> None:
    page.wait_for_function(condition, timeout=timeout)


def _token(n: int, ttl: float = 60) -> str:
    return jwt.encode({"sub": "ada", "n": n, "exp": int(time.time() + ttl)}, JWT_SECRET,
                      algorithm="HS256")


def test_module_and_classic_script_connect_queue_and_echo(browser, server):
    """The ES module and the classic script both work: a relative URL becomes ws://,
    params and protocols reach the server, sends made while connecting are queued and
    go out in order on open, JSON both ways."""
    base = f"http://127.0.0.1:{server.port}"
    for path in ("/", "/classic"):
        page = _page(browser, base, path)
        try:
            # Not open yet (all in one turn of the page): queued (true), sent in order once
            # it opens.
            assert page.evaluate("""(() => {
                const s = window.client("echo", "/ws/echo?fixed=1", {json: true,
                    protocols: ["chat.v1"], params: {room: "a b", skipped: null}});
                const sent = [1, 2, 3].map((n) => s.sendJson({n}));
                return [s.state, sent, s.queued]; })()""") == [
                "connecting", [True, True, True], 3]
            _wait(page, "window.clients.echo.seen.messages.length >= 4")
            seen = _seen(page, "echo")
            assert seen["messages"] == [
                {"hello": {"query": "fixed=1&room=a+b", "subprotocols": ["chat.v1"]}},
                {"n": 1}, {"n": 2}, {"n": 3},
            ]
            assert seen["opens"] == 1 and seen["closes"] == [] and seen["errors"] == []
            assert page.evaluate("""(() => { const s = window.clients.echo.socket;
                return [s.state, s.queued, s.socket.url, s.socket.protocol]; })()""") == [
                "open", 0, f"ws://127.0.0.1:{server.port}/ws/echo?fixed=1&room=a+b", "chat.v1",
            ]
            # Open: sent at once; a text that is not JSON is an error event, not a message.
            page.evaluate("window.clients.echo.socket.send('not json')")
            page.evaluate("window.clients.echo.socket.sendJson('after')")
            _wait(page, "window.clients.echo.seen.messages.length >= 5")
            seen = _seen(page, "echo")
            assert seen["messages"][-1] == "after"
            assert len(seen["errors"]) == 1 and "JSON" in seen["errors"][0]
        finally:
            page.context.close()


def test_server_restart_reconnects_with_new_params_and_flushes_the_queue(browser):
    """SIGTERM (the drain closes with 1001), nothing listening for a while, then a new
    server on the same port: the page comes back by itself, params() is asked again (the
    new server gets the updated query), and what was sent meanwhile arrives in order; the
    queue is bounded (queueLimit)."""
    server = _server_on_a_free_port()
    port = server.port
    page = None
    try:
        page = _page(browser, f"http://127.0.0.1:{port}")
        page.evaluate("window.paramsCalls = 0")
        _open(page, "r", "/ws/echo", """{
            json: true, minDelay: 50, maxDelay: 300, queueLimit: 5,
            params: () => {
              window.paramsCalls += 1;
              const last = window.clients.r.seen.messages.filter((m) => m.said).pop();
              return {call: window.paramsCalls, last: last ? last.said : undefined};
            }}""")
        page.evaluate("window.clients.r.socket.sendJson({said: 'before'})")
        _wait(page, "window.clients.r.seen.messages.length >= 2")
        assert _seen(page, "r")["messages"] == [
            {"hello": {"query": "call=1", "subprotocols": []}}, {"said": "before"}]

        server.send_signal(signal.SIGTERM)
        _wait(page, "window.clients.r.seen.closes.length >= 1")
        assert _seen(page, "r")["closes"][0] == {
            "code": 1001, "reason": "server shutting down", "willReconnect": True,
            "state": "reconnecting"}
        result = server.wait(timeout=15)
        assert result.returncode == 0, result.output
        # Nothing listens: tries are refused (1006 before open) while the page queues.
        refused = page.evaluate("window.closeCodes.length") + 1
        _wait(page, f"window.closeCodes.length >= {refused}")
        assert page.evaluate("window.closeCodes")[-1] == 1006
        assert page.evaluate("window.clients.r.socket.state") == "reconnecting"
        sent = page.evaluate("""[1, 2, 3, 4, 5, 6].map((n) =>
            window.clients.r.socket.sendJson({said: `queued ${n}`}))""")
        assert sent == [True, True, True, True, True, False]  # the sixth is past queueLimit

        server = _server(port)
        _wait(page, "window.clients.r.seen.opens >= 2", timeout=20_000)
        _wait(page, "window.clients.r.seen.messages.length >= 8")
        seen = _seen(page, "r")
        calls = page.evaluate("window.paramsCalls")
        assert calls >= 3  # the first connect, at least one refused try, the one that worked
        # The new server got the params of the last call, with what the page had by then.
        assert seen["messages"][2] == {
            "hello": {"query": f"call={calls}&last=before", "subprotocols": []}}
        assert seen["messages"][3:] == [{"said": f"queued {n}"} for n in range(1, 6)]
        assert seen["opens"] == 2
        assert all(c["willReconnect"] for c in seen["closes"])
        attempts = [r["attempt"] for r in seen["reconnecting"]]
        assert attempts == list(range(1, len(attempts) + 1)) and len(attempts) >= 2
        assert all(0 <= r["delay"] <= 300 for r in seen["reconnecting"])
        assert page.evaluate("window.clients.r.socket.state") == "open"
    finally:
        if page is not None:
            page.context.close()
        server.stop()


RECONNECTS = [1001, 1011, 1012, 1013, 4001, 4008]
STAYS_CLOSED = [1000, 1003, 1008, 1009, 4000, 4003]


def test_close_code_policy(browser, server):
    """One socket per close code, each closed by the server right after it opens: the
    reconnect codes come back again and again, the others stay closed (checked after the
    reconnecting ones have come back twice, longer than any retry would have taken);
    shouldReconnect overrides the default both ways."""
    page = _page(browser, f"http://127.0.0.1:{server.port}")
    try:
        page.evaluate("window.asked = []")
        for code in RECONNECTS + STAYS_CLOSED:
            _open(page, str(code), f"/ws/close?code={code}", json.dumps(FAST))
        _open(page, "4003 by the app", "/ws/close?code=4003", json.dumps(FAST)[:-1] + """,
            shouldReconnect: (e, byDefault) => {
              window.asked.push([e.code, byDefault]); return e.code === 4003; }}""")
        _open(page, "4008 not by the app", "/ws/close?code=4008", json.dumps(FAST)[:-1]
              + ", shouldReconnect: () => false}")
        back = [*map(str, RECONNECTS), "4003 by the app"]
        _wait(page, f"{json.dumps(back)}.every((n) => window.clients[n].seen.opens >= 3)")
        closed = [*map(str, STAYS_CLOSED), "4008 not by the app"]
        _wait(page, f"{json.dumps(closed)}.every((n) => window.clients[n].seen.closes.length)")
        for name in back:
            page.evaluate(f"window.clients[{json.dumps(name)}].socket.close()")
        for name in closed:
            seen = _seen(page, name)
            code = int(name.split()[0])
            assert seen["opens"] == 1, name
            assert seen["closes"] == [{"code": code, "reason": f"closed with {code}",
                                       "willReconnect": False, "state": "closed"}], name
            assert seen["reconnecting"] == [], name
            assert page.evaluate(f"window.clients[{json.dumps(name)}].socket.state") == "closed"
        for name in back:
            seen = _seen(page, name)
            code = int(name.split()[0])
            assert seen["closes"][0] == {"code": code, "reason": f"closed with {code}",
                                         "willReconnect": True, "state": "reconnecting"}, name
            assert seen["closes"][-1]["willReconnect"] is False, name  # after close()
        assert page.evaluate("window.asked")[:2] == [[4003, False], [4003, False]]
    finally:
        page.context.close()


def test_token_asked_again_on_every_reconnect(browser, server):
    """token() runs before every connect: as a subprotocol entry (beside the app's
    protocols) each new connection carries the next token; as ?token= (no protocols) an
    expired token's 4001 brings a new one; with no token the handshake is refused (401:
    1006 in the browser) and the tries back off, growing, up to maxDelay."""
    page = _page(browser, f"http://127.0.0.1:{server.port}")
    try:
        tokens = [_token(n) for n in range(1, 8)]
        page.evaluate(f"window.tokens = {json.dumps(tokens)}; window.tokenCalls = 0")
        _open(page, "protocol", "/ws/token?close=4008", json.dumps(FAST)[:-1] + """,
            json: true, protocols: "app.v2",
            token: async () => window.tokens[window.tokenCalls++]}""")
        _wait(page, "window.clients.protocol.seen.messages.length >= 3")
        page.evaluate("window.clients.protocol.socket.close()")
        seen = _seen(page, "protocol")
        hellos = [m["hello"] for m in seen["messages"]]
        assert [h["n"] for h in hellos] == list(range(1, len(hellos) + 1))
        assert page.evaluate("window.tokenCalls") in (len(hellos), len(hellos) + 1)
        # The bearer entry is taken out of the subprotocols the app sees ("realtime", the
        # marker offered beside it, stays: the app picked its own).
        assert all(h["subprotocols"] == ["app.v2", "realtime"] and h["sub"] == "ada"
                   for h in hellos)
        assert all(h["query"] == "close=4008" for h in hellos)  # not in the query

        # No protocols of the app: the entry goes beside "realtime", which the server
        # answers when the consumer picks none (a browser fails a handshake whose offered
        # subprotocols get no answer); the token stays out of the URL.
        page.evaluate(f"window.plainToken = {json.dumps(tokens[0])}")
        _open(page, "plain", "/ws/token", json.dumps(FAST)[:-1] + """,
            json: true, token: () => window.plainToken}""")
        _wait(page, "window.clients.plain.seen.messages.length >= 1")
        seen = _seen(page, "plain")
        assert seen["messages"][0]["hello"]["query"] == ""
        assert seen["messages"][0]["hello"]["subprotocols"] == ["realtime"]
        assert page.evaluate("window.clients.plain.socket.state") == "open"
        page.evaluate("window.clients.plain.socket.close()")

        # ?token=: the first token expires in two seconds or so and the server closes with
        # 4001; the page asks token() again and the next connection carries the new one.
        short = _token(1, ttl=2.5)
        page.evaluate(f"window.queryTokens = [{json.dumps(short)}, {json.dumps(tokens[1])}];"
                      "window.queryCalls = 0")
        _open(page, "query", "/ws/token", json.dumps(FAST)[:-1] + """,
            json: true, tokenIn: "query",
            token: () => window.queryTokens[window.queryCalls++]}""")
        _wait(page, "window.clients.query.seen.opens >= 2")
        page.evaluate("window.clients.query.socket.close()")
        seen = _seen(page, "query")
        assert seen["closes"][0] == {"code": 4001, "reason": "token expired",
                                     "willReconnect": True, "state": "reconnecting"}
        assert [m["hello"]["query"] for m in seen["messages"]] == [
            f"token={short}", f"token={tokens[1]}"]
        assert [m["hello"]["n"] for m in seen["messages"]] == [1, 2]

        # No token (a function that has none): 401, the browser sees 1006 before open.
        _open(page, "refused", "/ws/token", """{
            minDelay: 20, maxDelay: 160, jitter: false, token: () => null}""")
        _wait(page, "window.clients.refused.seen.reconnecting.length >= 6")
        page.evaluate("window.clients.refused.socket.close()")
        seen = _seen(page, "refused")
        assert seen["opens"] == 0
        assert [r["delay"] for r in seen["reconnecting"][:6]] == [20, 40, 80, 160, 160, 160]
        assert {c["code"] for c in seen["closes"][:6]} == {1006}
        assert seen["closes"][-1]["willReconnect"] is False  # close() stopped it
    finally:
        page.context.close()


def test_close_stops_reconnecting_and_connect_starts_again(browser, server):
    """close() while the socket reconnects (a 4008 loop) or while it is open: the state is
    closed at once, one close event says willReconnect false, sends are refused, and no
    try follows (checked once another socket has come back three more times);
    connect() opens it again."""
    page = _page(browser, f"http://127.0.0.1:{server.port}")
    try:
        _open(page, "looping", "/ws/close?code=4008", json.dumps(FAST))
        _open(page, "witness", "/ws/close?code=4008", json.dumps(FAST))
        _open(page, "open", "/ws/echo", json.dumps(FAST))
        _wait(page, "window.clients.looping.seen.opens >= 2 && "
                    "window.clients.open.seen.opens === 1")
        stopped = page.evaluate("""(() => {
            const out = [];
            for (const name of ["looping", "open"]) {
              const s = window.clients[name].socket;
              s.close(4000, "bye");
              out.push([s.state, s.send("x"), s.queued]);
            }
            return out; })()""")
        assert stopped == [["closed", False, 0], ["closed", False, 0]]
        _wait(page, "['looping', 'open'].every((n) => "
                    "window.clients[n].seen.closes.some((c) => !c.willReconnect))")
        opens = {name: _seen(page, name)["opens"] for name in ("looping", "open")}
        witness = _seen(page, "witness")["opens"]
        _wait(page, f"window.clients.witness.seen.opens >= {witness + 3}")
        for name in ("looping", "open"):
            seen = _seen(page, name)
            assert seen["opens"] == opens[name], name
            final = [c for c in seen["closes"] if not c["willReconnect"]]
            assert len(final) == 1 and final[0]["state"] == "closed", name
        # The browser reports the server's answer to close(4000): realtime answers 1000.
        assert [c["code"] for c in _seen(page, "open")["closes"]] in ([1000], [4000])

        page.evaluate("window.clients.open.socket.connect()")
        _wait(page, "window.clients.open.seen.opens === 2")
        assert page.evaluate("window.clients.open.socket.state") == "open"
        # close() then connect() in the same turn: the old socket's close does not stop
        # the new one.
        page.evaluate("(() => { const s = window.clients.open.socket; s.close(); "
                      "s.connect(); })()")
        _wait(page, "window.clients.open.seen.opens === 3 && "
                    "window.clients.open.seen.closes.length === 2")
        assert page.evaluate("window.clients.open.socket.state") == "open"
        assert [c["willReconnect"] for c in _seen(page, "open")["closes"]] == [False, False]
        page.evaluate("window.clients.witness.socket.close()")
    finally:
        page.context.close()


def test_the_online_event_ends_a_backoff_wait(browser, server):
    """A client waiting out a long backoff (60 s) tries at once when the browser fires
    "online" (the network came back); with retryOnOnline false it keeps waiting."""
    page = _page(browser, f"http://127.0.0.1:{server.port}")
    slow = json.dumps({"minDelay": 60000, "maxDelay": 60000, "jitter": False})
    try:
        _open(page, "eager", "/ws/close?code=4008", slow)
        _open(page, "patient", "/ws/close?code=4008", slow[:-1] + ", retryOnOnline: false}")
        _wait(page, "['eager', 'patient'].every((n) => "
                    "window.clients[n].seen.reconnecting.length === 1)")
        page.evaluate("window.dispatchEvent(new Event('online'))")
        _wait(page, "window.clients.eager.seen.opens === 2")  # long before 60 s
        assert _seen(page, "patient")["opens"] == 1
        assert page.evaluate("window.clients.patient.socket.state") == "reconnecting"
    finally:
        page.evaluate("Object.values(window.clients).forEach((c) => c.socket.close())")
        page.context.close()
