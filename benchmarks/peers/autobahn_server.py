"""Peer (a): a minimal raw Autobahn-on-Twisted server for the bench protocol.

    python benchmarks/peers/autobahn_server.py --port 8001 [--host 127.0.0.1] [--compression]

``/echo`` echoes text as text and bytes as bytes; ``/room/<name>`` sends every message to
every member of room ``name`` (sender included) with a per-member ``sendMessage`` loop: what a
straightforward Autobahn application does. Autobahn's unsafe defaults are fixed (message and
frame size limits, handshake and close timeouts), the listen backlog is 1024 (Twisted's
default of 50 overflows under a burst of handshakes) and Nagle is off. ``--compression``
accepts permessage-deflate offers the way Autobahn's documentation shows (a
``PerMessageDeflateOfferAccept`` per offer: context takeover, per-connection zlib state), for
``benchmarks/compression.py``.
"""

from __future__ import annotations

import argparse
import sys

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny

MAX_MESSAGE = 1 << 20


class BenchProtocol(WebSocketServerProtocol):
    room: set[BenchProtocol] | None = None
    is_echo = False

    def onConnect(self, request):
        path = request.path
        if path == "/echo":
            self.is_echo = True
            return None
        if path.startswith("/room/") and len(path) > len("/room/"):
            self.room_name = path[len("/room/"):]
            return None
        raise ConnectionDeny(404, "no such path")

    def onOpen(self):
        if not self.is_echo:
            self.room = self.factory.rooms.setdefault(self.room_name, set())
            self.room.add(self)

    def onMessage(self, payload, isBinary):
        if self.is_echo:
            self.sendMessage(payload, isBinary)
            return
        for member in tuple(self.room or ()):
            member.sendMessage(payload, isBinary)

    def onClose(self, wasClean, code, reason):
        room = self.room
        if room is not None:
            room.discard(self)
            if not room:
                self.factory.rooms.pop(self.room_name, None)
            self.room = None


def accept_deflate(offers):
    """Accept the first permessage-deflate offer with Autobahn's defaults."""
    from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept

    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


def make_factory(url: str = "ws://127.0.0.1", compression: bool = False) -> WebSocketServerFactory:
    factory = WebSocketServerFactory(url)
    factory.protocol = BenchProtocol
    factory.rooms = {}
    factory.setProtocolOptions(
        maxFramePayloadSize=MAX_MESSAGE,
        maxMessagePayloadSize=MAX_MESSAGE,
        openHandshakeTimeout=5,
        closeHandshakeTimeout=1,
        autoFragmentSize=0,
        failByDrop=False,
        tcpNoDelay=True,
        autoPingInterval=20,
        autoPingTimeout=30,
        perMessageCompressionAccept=accept_deflate if compression else lambda offers: None,
        allowedOrigins=["*"],
        allowNullOrigin=True,
    )
    return factory


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="raw Autobahn bench peer")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--compression", action="store_true", help="accept permessage-deflate")
    a = p.parse_args(argv)
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    port = reactor.listenTCP(a.port, make_factory(compression=a.compression), backlog=1024,
                            interface=a.host)
    addr = port.getHost()
    print(f"listening on tcp:{addr.host}:{addr.port}", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
