"""Deliberately leaky trial tests, run in a subprocess by tests/test_testing.py: trial's
dirty-reactor check must fail the two leaky ones while the mixin's server is cleaned up."""

from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase

from realtime.examples.bench import application
from realtime.testing import LiveServerMixin


class Leaky(LiveServerMixin, TestCase):
    async def test_leaks_a_port(self):
        from twisted.internet import reactor

        await self.start_server(application)
        reactor.listenTCP(0, Factory(), interface="127.0.0.1")

    async def test_leaks_a_delayed_call(self):
        from twisted.internet import reactor

        await self.start_server(application)
        reactor.callLater(3600, lambda: None)

    async def test_clean(self):
        server = await self.start_server(application)
        self.assertGreater(server.port, 0)
