"""``--internal-port``: the service ``twistd realtime`` builds (``tap.makeService``, in
process), on real listeners, with real HTTP and WebSocket clients: the operator endpoints
(the probes, /metrics, the server API, the admin UI) answer on the internal port and 404 on
the main one, the application only on the main one; the drain shows on the internal
port's /readyz; --metrics-port keeps /metrics to itself. (``--workers``:
tests/e2e/test_workers.py; a Centrifugo file's ``internal_port``:
tests/test_centrifugo_config.py.)"""

from __future__ import annotations

import json
import signal
import socket
import urllib.error
import urllib.request
from typing import Any

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from realtime.client import PublishError, publish
from realtime.service import ListenerService
from realtime.tap import Options, makeService
from tests.clients import in_thread, until
from tests.e2e.support import BENCH_APP

KEY = "internal-port-key-0123"
TIMEOUT = 10
OPERATOR = ["--metrics", "--api-key", KEY, "--admin-path", "/admin"]


@pytest.fixture(autouse=True)
def _no_realtime_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("REALTIME_"):
            monkeypatch.delenv(name)


async def started(*args: str) -> tuple[Any, dict[str, int]]:
    """The service of ``twistd realtime ARGS``, started; its listeners' ports by role
    (``main``, ``internal``, ``metrics``)."""
    options = Options()
    options.parseOptions(["--app", BENCH_APP, "--port", "0", *args])
    hup = signal.getsignal(signal.SIGHUP)
    service = makeService(options)
    signal.signal(signal.SIGHUP, hup)  # (makeService installs the reload handler)
    service.privilegedStartService()
    service.startService()
    ports: dict[str, int] = {}
    for child in service:
        if isinstance(child, ListenerService):
            role = ("internal" if child.option == "--internal-port" else
                    "metrics" if child.description == options.metrics_listener else "main")
            ports[role] = (await child.when_listening()).getHost().port
    return service, ports


def request(url: str, data: bytes | None = None, headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def scrape(url: str) -> dict[str, float]:
    status, _, body = request(url)
    assert status == 200, body
    return {sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples}


def refused_upgrade(url: str) -> int:
    with pytest.raises(InvalidStatus) as refused:
        connect(url, open_timeout=TIMEOUT, proxy=None).close()
    return refused.value.response.status_code


@pytest_twisted.ensureDeferred
async def test_the_operator_endpoints_answer_on_the_internal_port_alone(realtime_leak_check):
    service, ports = await started("--internal-port", "0", *OPERATOR)
    main = f"http://127.0.0.1:{ports['main']}"
    internal = f"http://127.0.0.1:{ports['internal']}"
    bearer = {"Authorization": f"Bearer {KEY}"}

    def flow() -> None:
        # The operator endpoints: on the internal port, and paths like any other (the
        # application has none of them: 404) on the main one.
        assert request(internal + "/healthz")[::2] == (200, b"ok\n")
        assert request(internal + "/readyz")[::2] == (200, b"ready\n")
        status, headers, _ = request(internal + "/admin")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        for path in ("/healthz", "/readyz", "/metrics", "/admin"):
            assert request(main + path)[0] == 404, path
        document = json.dumps({"group": "lobby", "text": "x"}).encode()
        assert request(main + "/api/publish", document, bearer)[0] == 404
        assert request(main + "/api/info", b"{}", {"X-API-Key": KEY})[0] == 404
        assert request(internal + "/api/info", b"{}", {"X-API-Key": KEY})[0] == 200
        # --api-body-limit (64 KiB) is the internal port's: the main one's is
        # --http-body-limit, and the application's 404.
        big = b'{"group": "lobby", "text": "' + b"x" * 100_000 + b'"}'
        assert request(main + "/api/publish", big, bearer)[0] == 404
        assert request(internal + "/api/publish", big, bearer)[0] == 413

        # The application: on the main port alone (a WebSocket route's 426 to a GET).
        assert request(main + "/echo")[0] == 426
        assert request(internal + "/echo")[0] == 404
        assert refused_upgrade(f"ws://127.0.0.1:{ports['internal']}/echo") == 404
        with connect(f"ws://127.0.0.1:{ports['main']}/room/lobby", open_timeout=TIMEOUT,
                     proxy=None) as member:
            # realtime.client publishes through the internal address; the main one is no
            # API's.
            with pytest.raises(PublishError) as refused:
                publish(main, KEY, "lobby", text="lost")
            assert refused.value.status == 404
            assert publish(internal, KEY, "lobby", text="deploy finished") == {
                "ok": True, "groups": 1}
            assert member.recv(timeout=TIMEOUT) == "deploy finished"
            # /metrics counts every listener's requests and the main port's socket.
            values = scrape(internal + "/metrics")
            assert values["realtime_connections{}"] == 1
            assert values['realtime_http_requests_total{"method": "POST", "status": "200"}'] \
                == 2  # /api/info, the publish
            assert values['realtime_http_requests_total{"method": "POST", "status": "413"}'] \
                == 1
            assert values['realtime_http_requests_total{"method": "GET", "status": "404"}'] \
                == 5  # four on the main port, /echo on the internal one

    try:
        await in_thread(flow)
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_the_drain_shows_on_the_internal_ports_readyz(realtime_leak_check):
    """SIGTERM's drain: /readyz on the internal port says 503 while the main port's
    connections finish (here a request whose head is still coming), /healthz 200."""
    service, ports = await started("--internal-port", "0", "--shutdown-timeout", "5")
    internal = f"http://127.0.0.1:{ports['internal']}"
    held = socket.create_connection(("127.0.0.1", ports["main"]), timeout=TIMEOUT)
    try:
        held.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # (the rest later)
        main_site = service.sites[0]
        assert await until(lambda: any(channel.requests for channel in main_site.open_channels),
                           TIMEOUT)  # its request line is read: the drain waits for it
        stopped = service.stopService()

        def during() -> bytes:
            assert request(internal + "/readyz")[::2] == (503, b"draining\n")
            assert request(internal + "/healthz")[::2] == (200, b"ok\n")
            held.sendall(b"\r\n")
            answer = b""
            while chunk := held.recv(4096):
                answer += chunk
            return answer

        answer = await in_thread(during)
        # The main port's /healthz is the application's (none: 404), and its last answer.
        assert answer.startswith(b"HTTP/1.1 404 ") and b"Connection: close" in answer
        await stopped
    finally:
        held.close()


@pytest_twisted.ensureDeferred
async def test_metrics_port_keeps_metrics_to_itself(realtime_leak_check):
    service, ports = await started("--internal-port", "0", "--metrics-port", "0",
                                   "--api-key", KEY)
    assert set(ports) == {"main", "internal", "metrics"}

    def flow() -> None:
        internal = f"http://127.0.0.1:{ports['internal']}"
        assert request(internal + "/metrics")[0] == 404
        assert request(f"http://127.0.0.1:{ports['main']}/metrics")[0] == 404
        assert publish(internal, KEY, "nobody", text="x") == {"ok": True, "groups": 1}
        values = scrape(f"http://127.0.0.1:{ports['metrics']}/metrics")
        assert values['realtime_http_requests_total{"method": "POST", "status": "200"}'] == 1
        assert values['realtime_http_requests_total{"method": "GET", "status": "404"}'] == 2

    try:
        await in_thread(flow)
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_http2_reaches_the_same_endpoints_as_http11(realtime_leak_check, tmp_path):
    """TLS listeners speak HTTP/2 (ALPN): on the main one the API, the probes and the admin
    page are the application's paths (404) as over HTTP/1.1, and they answer on the
    internal one, also over HTTP/2."""
    import ssl

    import httpx

    from tests.e2e.support import self_signed

    cert, key = self_signed(tmp_path)
    tls = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    service, _ = await started("--port", tls, "--internal-port", tls, *OPERATOR)
    found = {child.option: (await child.when_listening()).getHost().port for child in service
             if isinstance(child, ListenerService) and child.description.startswith("ssl:")}
    main, internal = (f"https://127.0.0.1:{found[role]}" for role in ("", "--internal-port"))

    def flow() -> None:
        with httpx.Client(http2=True, timeout=TIMEOUT,
                          verify=ssl.create_default_context(cafile=str(cert))) as client:
            for base, status in ((main, 404), (internal, 200)):
                for path in ("/healthz", "/readyz", "/metrics", "/admin"):
                    answer = client.get(base + path)
                    assert (answer.http_version, answer.status_code) == ("HTTP/2", status), \
                        (base, path)
                answer = client.post(base + "/api/info", content=b"{}",
                                     headers={"X-API-Key": KEY})
                assert (answer.http_version, answer.status_code) == ("HTTP/2", status), base

    try:
        await in_thread(flow)
    finally:
        await service.stopService()
