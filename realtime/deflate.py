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

from autobahn.exception import PayloadExceededError
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
    """Autobahn's inflater for one socket, holding no zlib state between messages.

    Autobahn caps each frame's inflation at the message's remaining budget, but a cap that
    lands inside a back-reference, with all the input read, leaves the rest of the output
    pending inside zlib with no error: the message would reach the consumer cut short.
    Asking for one byte more than the budget tells the two cases apart: more than the
    budget came out, so the message is over the limit (1009)."""

    def decompress_message_data(self, data: bytes, max_output_len: int | None = None) -> bytes:
        if max_output_len is None:
            return super().decompress_message_data(data)
        out: bytes = super().decompress_message_data(data, max_output_len + 1)
        if len(out) > max_output_len:
            raise PayloadExceededError(
                f"WebSocket message exceeds the inflation limit ({max_output_len} bytes left)")
        return out

    def end_decompress_message(self) -> None:
        try:
            super().end_decompress_message()
        finally:
            self._decompressor = None


def inbound() -> Any:
    """The object Autobahn's parser inflates a socket's compressed messages with (its
    ``maxMessagePayloadSize`` gives each frame its budget)."""
    return _Inbound(
        is_server=True,
        server_no_context_takeover=True,
        client_no_context_takeover=True,
        server_max_window_bits=15,
        client_max_window_bits=15,  # the largest: inflates whatever the client chose
        mem_level=8,
    )


class Deflater:
    """One site's outbound compression: settings, shared compressors, counters."""

    #: Compressed broadcast frames kept (per window size) for members that ask again in
    #: another shape (a paused member takes a burst frame by frame, the others joined):
    #: frames up to 64 KiB, 256 KiB in all, then the cache starts over.
    PIECE_LIMIT = 65536
    CACHE_LIMIT = 262144

    def __init__(self, level: int = 1, min_size: int = 128) -> None:
        from realtime.websocket import frame_header  # (realtime.websocket imports this module)

        self._header = frame_header
        self.level = level
        self.min_size = max(1, min_size)
        self._compressors: dict[int, Any] = {}
        #: The last broadcast bytes asked for, per window size: (them, what they became,
        #: messages compressed in them, bytes saved): the next member of a fan-out asks for
        #: the same object.
        self._last: dict[int, tuple[bytes, bytes, int, int]] = {}
        #: Single frames by content, per window size: (compressed or the frame itself,
        #: bytes saved), and the bytes they hold.
        self._pieces: dict[int, dict[bytes, tuple[bytes, int]]] = {}
        self._pieces_size: dict[int, int] = {}
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

    def _compress(self, opcode: int, payload: bytes, bits: int) -> bytes | None:
        """A whole compressed frame for ``payload``; None when it goes uncompressed (under
        the minimum size, or no smaller compressed). Counts nothing."""
        size = len(payload)
        if size < self.min_size:
            return None
        data = self._deflate(payload, bits)
        if len(data) >= size:
            return None
        return self._header(opcode | _RSV1, len(data)) + data

    def message(self, opcode: int, payload: bytes, bits: int) -> bytes | None:
        """A socket's own send: the compressed frame, or None (send it uncompressed)."""
        frame = self._compress(opcode, payload, bits)
        if frame is not None:
            size = len(payload)
            header = 2 if size < 126 else 4 if size < 65536 else 10  # frame_header's sizes
            self.messages += 1
            self.saved += size + header - len(frame)
        return frame

    def frame(self, data: bytes, bits: int) -> bytes:
        """Prepared (uncompressed, final, unmasked) server frames, one or several back to
        back (held broadcasts joined), each compressed when that pays. A frame is
        compressed once for all members however they take it: the same bytes object asked
        for again (the next member of a fan-out) gets the same answer at once, and each
        frame's result is also kept by content (``_pieces``), for the members that take a
        burst joined while others take it frame by frame."""
        last = self._last.get(bits)
        if last is not None and last[0] is data:
            self.messages += last[2]
            self.saved += last[3]
            return last[1]
        pieces = self._pieces.get(bits)
        if pieces is None:
            pieces = self._pieces[bits] = {}
            self._pieces_size[bits] = 0
        parts = []
        messages = saved = 0
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
            piece = data if pos == 0 and stop == end else data[pos:stop]
            cacheable = stop - pos <= self.PIECE_LIMIT
            known = pieces.get(piece) if cacheable else None
            if known is None:
                compressed = self._compress(data[pos] & 0x0F, data[start:stop], bits)
                known = (piece, 0) if compressed is None else (
                    compressed, len(piece) - len(compressed))
                if cacheable:
                    size = len(piece) + (len(known[0]) if compressed is not None else 0)
                    if self._pieces_size[bits] + size > self.CACHE_LIMIT:
                        pieces.clear()
                        self._pieces_size[bits] = 0
                    pieces[piece] = known
                    self._pieces_size[bits] += size
            if known[1]:
                messages += 1
                saved += known[1]
            parts.append(known[0])
            pos = stop
        out = data if not messages else parts[0] if len(parts) == 1 else b"".join(parts)
        self._last[bits] = (data, out, messages, saved)
        self.messages += messages
        self.saved += saved
        return out
