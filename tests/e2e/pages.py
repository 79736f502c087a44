"""What the browser tests' apps share: ``Page``, an HTML page given as ``body``."""

from __future__ import annotations

from realtime import AsyncHttpConsumer


class Page(AsyncHttpConsumer):
    body = b""

    async def handle(self, body: bytes) -> None:
        await self.send_response(200, self.body,
                                 headers=[(b"content-type", b"text/html; charset=utf-8")])
