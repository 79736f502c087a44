"""``--max-groups-per-connection`` (Centrifugo's ``channel_limit``, 128 by default): a
connection's ``group_add`` past the limit fails with ``TooManyGroups``, on every layer kind,
through a real consumer on a real server with a real client; the socket stays open."""

from __future__ import annotations

import pytest
import pytest_twisted
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from realtime import AsyncWebsocketConsumer, URLRouter, path
from realtime.layers import TooManyGroups
from tests.clients import captured_log, in_thread


class Joiner(AsyncWebsocketConsumer):
    """``join NAME`` joins a group (answers ``ok`` or ``refused: ...``), ``leave NAME``
    leaves it; ``say NAME TEXT`` broadcasts to a group."""

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None
                      ) -> None:
        assert text_data is not None
        verb, _, rest = text_data.partition(" ")
        layer = self.channel_layer
        if verb == "join":
            try:
                await layer.group_add(rest, self.channel_name)
            except TooManyGroups as exc:
                await self.send(text_data=f"refused: {exc}")
                return
            await self.send(text_data="ok")
        elif verb == "leave":
            await layer.group_discard(rest, self.channel_name)
            await self.send(text_data="ok")
        elif verb == "say":
            group, _, text = rest.partition(" ")
            await layer.broadcast(group, text=text)


class Crowded(AsyncWebsocketConsumer):
    """Its ``groups`` attribute lists more groups than the test's limit allows."""

    groups = ["a", "b", "c"]
    connected: list[str] = []

    async def connect(self) -> None:
        type(self).connected.append(self.channel_name)
        await self.channel_layer.group_add("late", self.channel_name)
        await self.accept()


app = URLRouter([path("join", Joiner.as_app()), path("crowded", Crowded.as_app())])


@pytest_twisted.ensureDeferred
async def test_past_the_limit_group_add_fails_and_the_socket_stays_open(layer):
    from realtime.testing import serve

    layer.max_groups_per_connection = 2
    server = await serve(app, layer=layer)

    def flow():
        with connect(server.ws_url("/join")) as ws:
            answers = []
            for line in ("join a", "join b", "join c", "join a", "leave a", "join c"):
                ws.send(line)
                answers.append(ws.recv(timeout=5))
            ws.send("say c in c")
            return answers, ws.recv(timeout=5)

    try:
        answers, heard = await in_thread(flow)
    finally:
        await server.stop()
    assert answers[:2] == ["ok", "ok"]
    assert answers[2].startswith("refused: ") and answers[2].endswith(
        "is in 2 groups, as many as --max-groups-per-connection allows: not added to 'c'")
    assert answers[3:] == ["ok", "ok", "ok"]  # a group it is in; room made by leaving one
    assert heard == "in c"


@pytest_twisted.ensureDeferred
async def test_a_groups_attribute_past_the_limit_is_a_500_and_connect_never_runs(layer):
    """A consumer class whose ``groups`` lists more groups than the limit: the handshake
    is refused with 500 (the class's fault: a retry would fail again, so not 503) and one
    error line naming the class and the limit; its ``connect()`` never runs (on the
    in-memory layer the failing join failed at once, and ``connect()`` used to run after
    the refusal and after ``disconnect()``, its own ``group_add`` then leaving a member
    nobody would ever detach), and no membership is left behind."""
    from realtime.testing import serve

    layer.max_groups_per_connection = 2
    Crowded.connected = []
    server = await serve(app, layer=layer)

    def flow():
        try:
            with connect(server.ws_url("/crowded"), open_timeout=5):
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    try:
        with captured_log() as events:
            status = await in_thread(flow)
    finally:
        await server.stop()
    assert status == 500
    assert layer._memberships == {} and layer.local_members("late") == []
    assert Crowded.connected == []
    errors = [e for e in events if e.get("log_level") is not None
              and e["log_level"].name in ("error", "critical")]
    assert len(errors) == 1, errors
    event = errors[0]
    assert event["consumer"] == "Crowded" and "failure" not in event
    assert event["error"].endswith("is in 2 groups, as many as --max-groups-per-connection "
                                   "allows: not added to 'c'")


@pytest_twisted.ensureDeferred
async def test_the_limit_counts_only_this_processs_consumers(layer):
    """A channel no local consumer holds (a worker's named channel, another process's
    consumer) is not limited here."""
    layer.max_groups_per_connection = 1
    for n in range(3):
        await layer.group_add(f"g{n}", "thumbnails")
    assert layer._memberships["thumbnails"] == {"g0", "g1", "g2"}


def test_the_option_sets_the_layers_limit_and_refuses_a_bad_value():
    from realtime.config import StartupError
    from realtime.tap import Options

    base = ["--app", "realtime.examples.bench:application"]
    options = Options()
    options.parseOptions(base)
    assert options.layer.max_groups_per_connection == 128
    options = Options()
    options.parseOptions([*base, "--max-groups-per-connection", "0"])
    assert options.layer.max_groups_per_connection == 0
    with pytest.raises(StartupError) as error:
        Options().parseOptions([*base, "--max-groups-per-connection", "-1"])
    assert str(error.value) == ("realtime: error: --max-groups-per-connection: must be at "
                                "least 0, got '-1'")
