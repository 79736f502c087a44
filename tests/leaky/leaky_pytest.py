"""Deliberately leaky tests, run in a subprocess by tests/test_testing.py (never collected
directly: the file name does not match test_*.py). Three must error, one must pass."""

import pytest_twisted

from realtime.examples.bench import application


@pytest_twisted.ensureDeferred
async def test_leaks_a_port(realtime_leak_check):
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory

    reactor.listenTCP(0, Factory(), interface="127.0.0.1")


@pytest_twisted.ensureDeferred
async def test_leaks_a_delayed_call(realtime_server):
    from twisted.internet import reactor

    await realtime_server(application)
    reactor.callLater(3600, lambda: None)


@pytest_twisted.ensureDeferred
async def test_leaks_a_connection(realtime_server):
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    other = await realtime_server(application)
    # A client connection to a port the fixture does not own: nothing closes it.
    from twisted.internet.protocol import Factory

    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
                          Protocol())
    await port.stopListening()
    assert other.port


@pytest_twisted.ensureDeferred
async def test_clean(realtime_server):
    server = await realtime_server(application)
    assert server.port > 0
