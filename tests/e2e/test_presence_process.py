"""Presence across real processes: a ``twistd -n realtime --layer redis://...`` server (the
chat demo, whose members join with presence) is SIGKILLed; a member in this process still
gets ``presence.leave`` for each of its members."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
import urllib.error
import urllib.request

import pytest
import pytest_twisted
from websockets.sync.client import connect

from tests.clients import in_thread
from tests.e2e.support import REPO, start
from tests.redis_support import RedisServer, started_layer
from tests.test_layers import until
from tests.test_layers_redis import Probe

pytestmark = pytest.mark.slow


@pytest_twisted.ensureDeferred
async def test_a_killed_servers_members_leave_for_the_others(redis_server: RedisServer):
    url = redis_server.url
    # twistd run by this interpreter (the same as ``twistd -n --pidfile= realtime ...``).
    command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
               "-n", "--pidfile=", "realtime", "--app", "realtime.examples.chat:application",
               "--port", "0", "--layer", url]
    server = await in_thread(lambda: start(command, env={"PYTHONPATH": str(REPO)}, cwd=REPO))
    clients = contextlib.ExitStack()
    layer = await started_layer(url)
    try:
        def join(name: str) -> None:
            ws = clients.enter_context(connect(server.ws_url(f"/ws/chat/ops/?name={name}")))
            while json.loads(ws.recv(timeout=5)) != {"type": "join", "name": name}:
                pass  # "here" for those already in

        def ready() -> None:  # its layer is connected to Redis (it listens before)
            deadline = time.monotonic() + 10
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/readyz",
                                                timeout=5):
                        return
                except urllib.error.HTTPError:
                    assert time.monotonic() < deadline, "/readyz did not answer 200"
                    time.sleep(0.05)

        await in_thread(ready)
        for name in ("ada", "bob"):
            await in_thread(join, name)
        # Shorter than the defaults (5 s checks, 8 s grace), so the test is quick; the
        # clocked tests check the defaults' schedule.
        layer.presence_check_interval, layer.presence_grace = 0.5, 1.0
        probe = Probe()
        channel = layer.attach(probe)
        # Joined after them: this process asks who is there, and so knows them.
        await layer.group_add("chat.ops", channel, presence={"name": "watcher"})
        await until(lambda: len(layer._remote.groups.get("chat.ops", {})) == 2)
        assert sorted(info["name"] for _, info in layer._remote.groups["chat.ops"].values()) \
            == ["ada", "bob"]
        began = time.monotonic()
        server.send_signal(signal.SIGKILL)  # our subprocess, by its PID
        await until(lambda: len([e for e in probe.events if e["type"] == "presence.leave"])
                    == 2, timeout=15)
        took = time.monotonic() - began
        leaves = [e for e in probe.events if e["type"] == "presence.leave"]
        assert sorted(e["info"]["name"] for e in leaves) == ["ada", "bob"]
        assert all(e["group"] == "chat.ops" and e["channel"].startswith("specific.")
                   for e in leaves)
        assert took > layer.presence_grace  # not before the grace
        assert layer.stats.presence_expired == 2
        assert await layer.group_presence("chat.ops") == {channel: {"name": "watcher"}}
        print(f"presence.leave of a SIGKILLed server's members after {took:.2f} s "
              f"(checks every {layer.presence_check_interval} s, grace "
              f"{layer.presence_grace} s)")
    finally:
        await layer.close()
        clients.close()
        await in_thread(server.wait, 10)
