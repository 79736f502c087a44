"""``get_channel_layer()`` kept as a module global from the application's import (before
the reactor runs) is guarded: at import (``keep_history``) and on the reactor thread its
calls pass straight through, from another thread only ``async_to_sync``'s (realtime's or
asgiref's) do, and a direct call there raises ``RuntimeError`` instead of racing the
reactor.
A real ``twistd realtime`` on each layer kind that takes a URL, real WebSocket clients."""

from __future__ import annotations

import pytest
from websockets.sync.client import connect

from tests.e2e.support import REPO, start, twistd

APP = "tests.e2e.layer_global_app:application"


@pytest.mark.filterwarnings("ignore:async_to_sync was passed a non-async-marked callable")
@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_module_global_layer_from_import_time_is_guarded(kind, request):
    url = "memory" if kind == "memory" else request.getfixturevalue("redis_url")
    name = "InMemoryChannelLayer" if kind == "memory" else "RedisChannelLayer"
    with start(twistd("--app", APP, "--port", "tcp:0:interface=127.0.0.1", "--layer", url),
               env={"PYTHONPATH": str(REPO)}, cwd=REPO) as server:
        if kind == "redis":  # (it listens before Redis answers: /readyz says 503 till then)
            server.wait_for(r"(publisher|subscriber) connected to Redis", count=2)
        with connect(server.ws_url("/reactor/"), open_timeout=10) as ada, \
                connect(server.ws_url("/pool/"), open_timeout=10) as bob:
            seen = [ada.recv(timeout=10)]
            for text in ("direct", "realtime", "asgiref"):
                bob.send(text)
                seen.append(bob.recv(timeout=10))
                if text != "direct":
                    seen.append(ada.recv(timeout=10))
    assert seen == [
        "ThreadGuardedLayer",
        f"{name}.group_send() called from a thread other than the reactor's, where it would "
        "race the reactor (Twisted is not thread-safe): call it through "
        "async_to_sync(get_channel_layer().group_send)(...), which runs it on the reactor "
        "thread",
        "sent, offset 1", "realtime", "sent, offset 2", "asgiref"]
