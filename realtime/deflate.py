"""permessage-deflate (RFC 7692), opt-in with ``--compression``, without per-socket zlib state.

Autobahn's own extension keeps a compressor and a decompressor per connection for its whole
life (about 300 KiB each with the default window); at 5,000 sockets that is over a gigabyte.
Here every accepted offer is answered with ``server_no_context_takeover`` and
``client_no_context_takeover`` (RFC 7692 lets a server add both to any offer; Go's
gorilla/websocket, and so Centrifugo, answer the same), so every message stands alone:

- outbound, one compressor per window size is shared by the whole process and ends each
  message with a full flush (which forgets everything before it), so a ``broadcast()`` is
  compressed once and the same compressed frame goes to every compressing member;
- inbound, Autobahn's parser inflates each compressed message with a fresh decompressor,
  bounded by ``--max-message-size`` after inflation (a small "zip bomb" frame closes 1009),
  and the decompressor is dropped at the message's end.

An idle compressing socket costs only the small extension object; messages under
``--compression-min-size`` bytes, and any the compression would not make smaller, go out
uncompressed (RSV1 clear), which the RFC allows for every message.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Any

from autobahn.websocket.compress_deflate import PerMessageDeflate

EXTENSION = "permessage-deflate"
_BITS = re.compile(r"^(?:[89]|1[0-5])$")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
#: The four bytes a sync or full flush ends with, left off the wire (RFC 7692 7.2.1).
_TAIL = b"\x00\x00\xff\xff"
_RSV1 = 0x40


def parse_offers(values: Sequence[bytes]) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """``Sec-WebSocket-Extensions`` header values -> ``[(name, [(param, value)])]``, in the
    client's order of preference; a malformed offer comes back with the name ``""``."""
    offers: list[tuple[str, list[tuple[str, str | None]]]] = []
    for value in values:
        text = value.decode("latin-1")
        for item in text.split(","):
            parts = [part.strip() for part in item.split(";")]
            if not parts[0]:
                continue
            name = parts[0].lower() if _TOKEN.match(parts[0]) else ""
            params: list[tuple[str, str | None]] = []
            for part in parts[1:]:
                key, sep, raw = part.partition("=")
                key = key.strip().lower()
                param: str | None = None
                if sep:
                    raw = raw.strip()
                    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
                        raw = raw[1:-1]
                    param = raw
                    if not _TOKEN.match(raw):
                        name = ""
                if not _TOKEN.match(key):
                    name = ""
                params.append((key, param))
            offers.append((name, params))
    return offers


def choose(offers: list[tuple[str, list[tuple[str, str | None]]]]) -> tuple[bytes, int] | None:
    """The first permessage-deflate offer this server can honour -> (the response header
    value, the window bits to compress with); None: compression stays off. An offer with an
    unknown or repeated parameter or a bad value is declined (RFC 7692 5), and so is one
    that limits the server's window to 8 bits, which zlib cannot write."""
    for name, params in offers:
        if name != EXTENSION:
            continue
        seen: set[str] = set()
        bits = 15
        good = True
        for key, value in params:
            if key in seen:
                good = False
            seen.add(key)
            if key in ("server_no_context_takeover", "client_no_context_takeover"):
                good = good and value is None
            elif key == "server_max_window_bits":
                good = good and value is not None and bool(_BITS.match(value)) and value != "8"
                if good and value is not None:
                    bits = int(value)
            elif key == "client_max_window_bits":
                good = good and (value is None or bool(_BITS.match(value)))
            else:
                good = False
        if not good:
            continue
        answer = EXTENSION + "; server_no_context_takeover; client_no_context_takeover"
        if "server_max_window_bits" in seen:
            answer += f"; server_max_window_bits={bits}"
        return answer.encode("ascii"), bits
    return None


class _Inbound(PerMessageDeflate):
    """Autobahn's inflater for one socket, holding no zlib state between messages."""

    def end_decompress_message(self) -> None:
        try:
            super().end_decompress_message()
        finally:
            self._decompressor = None


def inbound(max_message_size: int) -> Any:
    """The object Autobahn's parser inflates a socket's compressed messages with."""
    return _Inbound(
        is_server=True,
        server_no_context_takeover=True,
        client_no_context_takeover=True,
        server_max_window_bits=15,
        client_max_window_bits=15,  # the largest: inflates whatever the client chose
        mem_level=8,
        max_message_size=max_message_size,
    )


class Deflater:
    """One site's outbound compression: settings, shared compressors, counters."""

    def __init__(self, level: int = 1, min_size: int = 128) -> None:
        from realtime.websocket import frame_header  # (realtime.websocket imports this module)

        self._header = frame_header
        self.level = level
        self.min_size = max(1, min_size)
        self._compressors: dict[int, Any] = {}
        #: The last broadcast frames compressed, per window size: what they became, the
        #: bytes and messages that counted (a fan-out asks once per member, same object).
        self._last: dict[int, tuple[bytes, bytes, int, int]] = {}
        #: Messages that went out compressed (counted per member), and the bytes that saved.
        self.messages = 0
        self.saved = 0

    def _deflate(self, payload: bytes, bits: int) -> bytes:
        compressor = self._compressors.get(bits)
        if compressor is None:
            compressor = zlib.compressobj(self.level, zlib.DEFLATED, -bits, 8)
            self._compressors[bits] = compressor
        # A full flush ends the message byte-aligned and forgets it: the next message
        # refers to nothing before it (server_no_context_takeover).
        data = compressor.compress(payload) + compressor.flush(zlib.Z_FULL_FLUSH)
        return data[:-4] if data.endswith(_TAIL) else data

    def message(self, opcode: int, payload: bytes, bits: int) -> bytes | None:
        """A whole compressed frame for ``payload``; None when it goes uncompressed (under
        the minimum size, or no smaller compressed)."""
        size = len(payload)
        if size < self.min_size:
            return None
        data = self._deflate(payload, bits)
        if len(data) >= size:
            return None
        self.messages += 1
        self.saved += size - len(data)
        return self._header(opcode | _RSV1, len(data)) + data

    def frame(self, data: bytes, bits: int) -> bytes:
        """Prepared (uncompressed, final, unmasked) server frames, one or several back to
        back (held broadcasts joined), each compressed when that pays; the same bytes
        object asked for again (the next member of a fan-out) gets the same answer without
        compressing again."""
        last = self._last.get(bits)
        if last is not None and last[0] is data:
            self.messages += last[3]
            self.saved += last[2]
            return last[1]
        messages, saved = self.messages, self.saved
        parts = []
        pos, end = 0, len(data)
        while pos < end:
            length = data[pos + 1]
            if length < 126:
                start = pos + 2
            elif length == 126:
                start, length = pos + 4, int.from_bytes(data[pos + 2 : pos + 4], "big")
            else:
                start, length = pos + 10, int.from_bytes(data[pos + 2 : pos + 10], "big")
            stop = start + length
            compressed = self.message(data[pos] & 0x0F, data[start:stop], bits)
            parts.append(data[pos:stop] if compressed is None else compressed)
            pos = stop
        out = data if self.messages == messages else b"".join(parts)
        self._last[bits] = (data, out, self.saved - saved, self.messages - messages)
        return out
