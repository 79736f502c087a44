"""The chat example's protocol, in memory: join/here/leave presence and messages."""

from __future__ import annotations

import pytest_twisted

from realtime.examples.chat import application
from realtime.layers import InMemoryChannelLayer
from realtime.testing import HttpCommunicator, WebsocketCommunicator


def chat(name, room="lobby", layer=None):
    comm = WebsocketCommunicator(application, f"/ws/chat/{room}/?name={name}")
    if layer is not None:
        comm.site.layer = layer
    return comm


@pytest_twisted.ensureDeferred
async def test_presence_and_messages():
    layer = InMemoryChannelLayer()
    ada = chat("ada", layer=layer)
    assert (await ada.connect())[0]
    assert await ada.receive_json_from() == {"type": "join", "name": "ada"}
    bob = chat("bob", layer=layer)
    await bob.connect()
    assert await ada.receive_json_from() == {"type": "join", "name": "bob"}
    seen_by_bob = [await bob.receive_json_from(), await bob.receive_json_from()]
    assert {"type": "join", "name": "bob"} in seen_by_bob
    assert {"type": "here", "name": "ada"} in seen_by_bob  # bob learns who is there
    await bob.send_json_to({"message": "hi ada"})
    assert await ada.receive_json_from() == {"type": "message", "name": "bob",
                                             "message": "hi ada"}
    assert await bob.receive_json_from() == {"type": "message", "name": "bob",
                                             "message": "hi ada"}
    await bob.send_json_to({"message": ""})
    assert (await bob.receive_json_from())["type"] == "error"
    await bob.disconnect()
    assert await ada.receive_json_from() == {"type": "leave", "name": "bob"}
    await ada.disconnect()
    assert layer.local_members("chat.lobby") == []


@pytest_twisted.ensureDeferred
async def test_bad_name_is_refused_and_page_is_served():
    assert await chat("").connect() == (False, 403)
    assert await chat("x" * 40).connect() == (False, 403)
    response = await HttpCommunicator(application, "GET", "/").get_response()
    assert response["status"] == 200
    assert b'import { RealtimeSocket } from "./realtime.js"' in response["body"]
    assert (b"content-type", b"text/html; charset=utf-8") in response["headers"]
    client = await HttpCommunicator(application, "GET", "/realtime.js").get_response()
    assert client["status"] == 200
    assert b"class RealtimeSocket extends EventTarget" in client["body"]


@pytest_twisted.ensureDeferred
async def test_a_newcomer_sees_the_last_messages_of_a_history_room():
    from realtime.examples import chat as demo

    layer = InMemoryChannelLayer(history={"chat.*": (50, 3600)})
    ada = chat("ada", layer=layer)
    await ada.connect()
    assert await ada.receive_json_from() == {"type": "join", "name": "ada"}
    for n in range(demo.EARLIER + 2):
        await ada.send_json_to({"message": f"m{n}"})
        assert (await ada.receive_json_from())["message"] == f"m{n}"
    bob = chat("bob", layer=layer)
    await bob.connect()
    seen = [await bob.receive_json_from() for _ in range(2 + demo.EARLIER)]
    earlier = [m for m in seen if m.get("earlier")]
    assert [m["message"] for m in earlier] == [f"m{n}" for n in range(2, demo.EARLIER + 2)]
    assert {"type": "here", "name": "ada"} in seen
    await ada.send_json_to({"message": "after"})
    after = await bob.receive_json_from()
    assert (after["type"], after["name"], after["message"]) == ("message", "ada", "after")
    assert after["position"]["offset"] == demo.EARLIER + 3  # the page keeps the last one
    assert await bob.receive_nothing()
    # Without history the newcomer sees nothing earlier (as before).
    plain = InMemoryChannelLayer()
    cy = chat("cy", layer=plain)
    await cy.connect()
    assert await cy.receive_json_from() == {"type": "join", "name": "cy"}
    assert await cy.receive_nothing()
    for comm in (ada, bob, cy):
        await comm.disconnect()


@pytest_twisted.ensureDeferred
async def test_a_page_that_comes_back_gets_what_it_missed_or_a_gap():
    layer = InMemoryChannelLayer(history={"chat.*": (3, 3600)})
    ada = chat("ada", layer=layer)
    await ada.connect()
    await ada.receive_json_from()  # her join
    await ada.send_json_to({"message": "one"})
    had = await ada.receive_json_from()
    assert had["message"] == "one" and had["position"]["offset"] == 1
    bob = chat("bob", layer=layer)
    await bob.connect()
    assert (await bob.receive_json_from())["earlier"] is True  # "one", shown to a newcomer
    await bob.disconnect()
    assert await ada.receive_json_from() == {"type": "join", "name": "bob"}
    assert await ada.receive_json_from() == {"type": "leave", "name": "bob"}
    for text in ("two", "three"):
        await ada.send_json_to({"message": text})
        await ada.receive_json_from()
    where = f"&epoch={had['position']['epoch']}&offset=1"
    back = chat("bob" + where)
    back.site.layer = layer
    await back.connect()
    seen = [await back.receive_json_from() for _ in range(4)]
    assert [m.get("message") for m in seen if m["type"] == "message"] == ["two", "three"]
    assert not any(m.get("earlier") for m in seen)  # a return, not a newcomer
    assert {"type": "here", "name": "ada"} in seen
    assert await back.receive_nothing()
    # Three more: offset 1 is no longer kept (the room keeps 3): a gap, nothing replayed.
    for text in ("four", "five", "six"):
        await ada.send_json_to({"message": text})
        await ada.receive_json_from()
        await back.receive_json_from()
    late = chat("cy" + where)
    late.site.layer = layer
    await late.connect()
    seen = [await late.receive_json_from() for _ in range(3)]
    assert {"type": "gap"} in seen
    assert not [m for m in seen if m["type"] == "message"]
    # A position that is not one is ignored: a newcomer.
    odd = chat("dee&epoch=zz&offset=-1")
    odd.site.layer = layer
    await odd.connect()
    seen = [await odd.receive_json_from() for _ in range(6)]
    assert [m["message"] for m in seen if m.get("earlier")] == ["four", "five", "six"]
    for comm in (ada, back, late, odd):
        await comm.disconnect()
