"""Centrifugo's publication filters by tags (``tf`` in a subscribe request;
``realtime.pubsub_filter``): the expression language as Centrifugo documents it, the
refusals, and Centrifugo's Python SDK (JSON and Protobuf) getting only what its filter
lets through, live and in a recovery, beside a subscriber without one."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from centrifuge import Filter
from websockets.sync.client import connect

from realtime import pubsub
from realtime.layers import InMemoryChannelLayer
from realtime.pubsub_filter import MAX_NODES, FilterError, compile_filter
from tests.clients import in_thread
from tests.test_pubsub import (
    PATH,
    WAIT,
    Raw,
    _settings,  # noqa: F401
    from_thread,
    pubsub_server,  # noqa: F401
    raw,
    run,
    sdk_client,
    subscribed,
    token,
)

#: Centrifugo's documentation's example publication.
TAGS = {"ticker": "AAPL", "source": "NASDAQ", "price": "150.25", "category": "tech",
        "volume": "1000"}
#: No history: publications go to each member as an event, filtered there.
MARKET = "market:allow_subscribe_for_client,allow_tags_filter"
#: History and recovery: recovered publications are filtered too.
FEED = ("feed:allow_subscribe_for_client,allow_tags_filter,history_size=20,history_ttl=60s,"
        "force_recovery,allowed_delta_types=fossil")
PLAIN = "plain:allow_subscribe_for_client"


# -- the expression language ----------------------------------------------------------------

@pytest.mark.parametrize("node, matches", [
    (Filter.eq("ticker", "AAPL"), True),
    (Filter.eq("ticker", "MSFT"), False),
    (Filter.neq("source", "TEST"), True),
    (Filter.neq("missing", "x"), True),  # absent: not equal
    (Filter.is_in("category", ["tech", "finance"]), True),
    (Filter.is_in("missing", ["tech"]), False),
    (Filter.not_in("ticker", ["MSFT", "GOOGL"]), True),
    (Filter.not_in("missing", ["x"]), True),
    (Filter.exists("price"), True),
    (Filter.not_exists("internal_id"), True),
    (Filter.exists("internal_id"), False),
    (Filter.starts_with("ticker", "AA"), True),
    (Filter.ends_with("source", "DAQ"), True),
    (Filter.contains("category", "ec"), True),
    (Filter.contains("missing", ""), False),
    (Filter.gt("price", "100"), True),
    (Filter.gte("volume", "1000"), True),
    (Filter.lt("price", "200"), True),
    (Filter.lte("volume", "999.5"), False),
    (Filter.gt("ticker", "1"), False),  # not a number: false, not an error
    (Filter.gt("missing", "1"), False),
    (Filter.all(Filter.eq("ticker", "AAPL"), Filter.eq("category", "tech")), True),
    (Filter.all(Filter.eq("ticker", "AAPL"), Filter.eq("category", "food")), False),
    (Filter.any(Filter.eq("ticker", "MSFT"), Filter.eq("category", "tech")), True),
    (Filter.negate(Filter.eq("source", "NYSE")), True),
    (Filter.negate(Filter.any(Filter.gt("price", "100"), Filter.exists("x"))), False),
], ids=lambda v: str(getattr(v, "node", v)))
def test_the_comparisons_and_logic_as_centrifugo_documents_them(node, matches):
    assert compile_filter(node.node)(TAGS) is matches


def test_numbers_are_read_as_centrifugo_reads_them():
    """Go's ParseFloat: no underscores, spaces or other scripts' digits; finite only."""
    above = compile_filter(Filter.gt("n", "1").node)
    assert [above({"n": n}) for n in ("2", "1e1", "+3.5", ".5e1")] == [True] * 4
    assert [above({"n": n}) for n in ("1_000", " 5", "\u0665", "inf", "nan", "1e999")] == \
        [False] * 6


@pytest.mark.parametrize("node, error", [
    ({"key": "a", "cmp": "like", "val": "x"}, "unknown comparison"),
    ({"cmp": "eq", "val": "x"}, "needs a key"),
    ({"key": "a", "cmp": "in"}, "in needs vals"),
    ({"key": "a", "cmp": "gt", "val": "ten"}, "needs a number"),
    ({"key": "a", "cmp": "gt", "val": "nan"}, "needs a number"),
    ({"key": "a"}, "unknown comparison"),
    ({"op": "xor", "nodes": [{"key": "a", "cmp": "ex"}]}, "unknown filter op"),
    ({"op": "and", "nodes": []}, "and needs nodes"),
    ({"op": "not", "nodes": [{"key": "a", "cmp": "ex"}] * 2}, "exactly one"),
    ({"op": "or", "key": "a", "nodes": [{"key": "a", "cmp": "ex"}]}, "no key or cmp"),
    ({"key": "a", "cmp": "eq", "val": 5}, "strings"),
    ({"key": "a", "cmp": "in", "vals": ["x", 1]}, "list of strings"),
    ("ticker=AAPL", "an object"),
    ({"op": "and", "nodes": [{"key": "a", "cmp": "ex"}] * MAX_NODES}, "at most"),
])
def test_a_filter_that_cannot_compile_says_why(node, error):
    with pytest.raises(FilterError, match=error):
        compile_filter(node)


# -- live ------------------------------------------------------------------------------------

def publish_three(layer: Any, channel: str, start: int = 0) -> None:
    for n, tags in enumerate(({"ticker": "AAPL"}, {"ticker": "MSFT"}, None), start):
        from_thread(pubsub.publish, channel, {"n": n}, layer=layer, tags=tags)


@pytest.mark.parametrize("use_protobuf", [False, True], ids=["json", "protobuf"])
@pytest.mark.parametrize("channel", ["market:stocks", "feed:stocks"])
@pytest_twisted.ensureDeferred
async def test_the_sdk_gets_only_what_its_filter_lets_through(pubsub_server,  # noqa: F811
                                                              channel, use_protobuf):
    layer = InMemoryChannelLayer()
    server = await pubsub_server(MARKET, FEED, layer=layer)
    history = channel.startswith("feed:")

    async def scenario() -> Any:
        ada, _ = sdk_client(server, token("ada"), use_protobuf=use_protobuf)
        bob, _ = sdk_client(server, token("bob"), use_protobuf=use_protobuf)
        await ada.connect()
        await bob.connect()
        _, filtered = await subscribed(ada, channel, tags_filter=Filter.eq("ticker", "AAPL"))
        _, everything = await subscribed(bob, channel)
        publish_three(layer, channel)
        got_all = [(await everything.next("publication")).pub for _ in range(3)]
        got = [(await filtered.next("publication")).pub]
        await filtered.none("publication", 0.3)
        recovered = []
        if history:  # what a recovery replays is filtered too
            await ada.disconnect()
            publish_three(layer, channel, start=3)
            await ada.connect()
            await filtered.next("subscribed")
            recovered = [(await filtered.next("publication")).pub]
            await filtered.none("publication", 0.3)
        await ada.disconnect()
        await bob.disconnect()
        return got, got_all, recovered

    got, got_all, recovered = await run(scenario)
    decode = __import__("json").loads if use_protobuf else (lambda data: data)
    assert [decode(p.data) for p in got_all] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [(decode(p.data), p.tags) for p in got] == [({"n": 0}, {"ticker": "AAPL"})]
    if history:
        assert [(decode(p.data), p.offset) for p in recovered] == [({"n": 3}, 4)]


@pytest_twisted.ensureDeferred
async def test_refused_filters_and_no_delta_beside_one(pubsub_server):  # noqa: F811
    server = await pubsub_server(MARKET, FEED, PLAIN)
    aapl = Filter.eq("ticker", "AAPL").node

    def flow(c: Any) -> Any:
        c.connect()
        return (c.error("subscribe", {"channel": "plain:x", "tf": aapl}),
                c.error("subscribe", {"channel": "market:x", "tf": {"key": "a", "cmp": "?"}}),
                c.result("subscribe", {"channel": "feed:x", "tf": aapl, "delta": "fossil"}),
                c.result("subscribe", {"channel": "feed:y", "delta": "fossil"}))

    not_allowed, invalid, filtered, delta = await raw(server, flow)
    assert (not_allowed, invalid) == (107, 107)  # Centrifugo's bad request
    assert "delta" not in filtered and delta["delta"] is True  # not both, as Centrifugo


@pytest_twisted.ensureDeferred
async def test_the_server_api_s_tags_reach_filters(pubsub_server):  # noqa: F811
    """A publication with tags from the server API, in the namespace without history."""
    import json

    from tests.clients import http_get

    key = "k" * 20
    server = await pubsub_server(MARKET, api_keys=(key,))

    def post(tags: dict[str, str] | None, n: int) -> None:
        body: dict[str, Any] = {"channel": "market:x", "data": {"n": n}}
        if tags:
            body["tags"] = tags
        status, _, _ = http_get(server.http_url("/api/publish"), method="POST",
                                data=json.dumps(body).encode(), headers={"X-API-Key": key})
        assert status == 200

    async def scenario() -> Any:
        ada, _ = sdk_client(server, token("ada"))
        await ada.connect()
        _, events = await subscribed(ada, "market:x", tags_filter=Filter.any(
            Filter.gt("price", "100"), Filter.eq("kind", "alert")))
        import asyncio

        for n, tags in enumerate(({"price": "99.5"}, {"price": "100.5"}, None,
                                  {"kind": "alert"})):
            await asyncio.to_thread(post, tags, n)
        got = [(await events.next("publication")).pub.data for _ in range(2)]
        await events.none("publication", 0.3)
        await ada.disconnect()
        return got

    assert await run(scenario) == [{"n": 1}, {"n": 3}]



# -- review 2's reproductions (each failed before its fix) -----------------------------------

@pytest.mark.parametrize("tf, tags", [
    ({"key": "ticker", "cmp": "sw", "val": "AA"}, {"ticker": 5}),
    ({"key": "ticker", "cmp": "ct", "val": "A"}, {"ticker": 1.5}),
    ({"key": "price", "cmp": "gt", "val": "1"}, {"price": [1]}),
    ({"key": "ticker", "cmp": "eq", "val": "AAPL"}, [("ticker", "AAPL")]),
], ids=["sw-int", "ct-float", "gt-list", "tags-not-a-dict"])
@pytest_twisted.ensureDeferred
async def test_tags_that_are_not_str_to_str_do_not_kill_filtering_subscribers(
        pubsub_server, tf, tags):  # noqa: F811
    """``publish(tags=...)`` from Python is not checked (the server API checks its tags):
    tags that are not str -> str must not make the filter raise in every filtering
    member's handler. Correct: ``publish`` refuses them (TypeError, as for data JSON cannot
    carry), or the filter treats such a tag as not matching; either way a filtering
    subscriber stays connected and gets the next, well-formed publication."""
    layer = InMemoryChannelLayer()
    server = await pubsub_server(MARKET, layer=layer)

    def publish(data: Any, tags: Any) -> Any:
        try:
            sent = pubsub.publish("market:x", data, layer=layer, tags=tags)
        except TypeError:
            return None  # refused at the publisher: fine
        return sent.addErrback(lambda failure: failure.trap(TypeError) and None)

    def flow(c: Raw) -> Any:
        c.connect(token("ada"))
        c.result("subscribe", {"channel": "market:x", "tf": tf})
        from_thread(publish, {"n": 0}, tags)
        from_thread(publish, {"n": 1}, {"ticker": "AAPL", "price": "10"})
        pushed = c.push()
        return pushed["push"]["pub"]["data"], "error" not in c.call("ping", {})

    assert await raw(server, flow) == ({"n": 1}, True)


@pytest_twisted.ensureDeferred
async def test_a_filter_namespace_s_publication_is_encoded_once_per_process(
        pubsub_server, monkeypatch):  # noqa: F811
    """In a namespace with ``allow_tags_filter`` and no history, ``publish`` now sends an
    event to each member instead of one ``broadcast()`` frame; the push must still be
    encoded once per process and form (as a history channel's is, ``_PUSHES``: benchmarks
    step 16, -25 to -33 % per delivery), not once per member: the event has no position,
    so ``_push_frame`` caches nothing and every member (filtering or not) serialises the
    same publication again."""
    layer = InMemoryChannelLayer()
    server = await pubsub_server(MARKET, layer=layer)
    members = 8
    encoded: list[Any] = []
    original = pubsub._publication

    def counting(message: dict[str, Any]) -> dict[str, Any]:
        encoded.append(message.get("data"))
        return original(message)

    def flow() -> Any:
        from contextlib import ExitStack

        with ExitStack() as stack:
            clients = [Raw(stack.enter_context(connect(server.ws_url(PATH), open_timeout=WAIT)))
                       for _ in range(members)]
            for n, c in enumerate(clients):
                c.connect(token(f"u{n}"))
                c.result("subscribe", {"channel": "market:x", **(
                    {"tf": {"key": "ticker", "cmp": "eq", "val": "AAPL"}} if n % 2 else {})})
            monkeypatch.setattr(pubsub, "_publication", counting)
            from_thread(pubsub.publish, "market:x", {"n": 1}, layer=layer,
                        tags={"ticker": "AAPL"})
            got = [c.push()["push"]["pub"]["data"] for c in clients]
            return got

    assert await in_thread(flow) == [{"n": 1}] * members
    assert len(encoded) == 1, f"encoded {len(encoded)} times for {members} members"
