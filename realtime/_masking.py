"""Autobahn's per-frame and per-connection overheads that change nothing we use.

- Unmasking: Autobahn makes a masker object for every incoming frame; its NVX (CFFI) masker
  costs about 2 µs to create, a tenth of an echo's CPU for small messages. For frames up to
  ``SMALL`` bytes ``SmallMasker`` XORs through Python's big integers instead (~0.5 µs);
  larger frames keep NVX, which is far faster per byte.
- Debug logging: Autobahn formats its debug-log arguments eagerly (``pformat`` of 29
  options at every connection, coloured ``hltype``/``hlval`` strings per event) even though
  debug is off. ``Lazy`` defers the formatting to the moment a log line is really written.

``install()`` points Autobahn's protocol module at both; it is idempotent and changes no
behaviour (a debug log, when enabled, reads the same), only the cost.
"""

from __future__ import annotations

from typing import Any

SMALL = 2048


class SmallMasker:
    """The masker interface Autobahn's parser uses: ``process``, ``pointer``, ``reset``."""

    __slots__ = ("mask", "ptr")

    def __init__(self, mask: bytes) -> None:
        self.mask = mask
        self.ptr = 0

    def pointer(self) -> int:
        return self.ptr

    def reset(self) -> None:
        self.ptr = 0

    def process(self, data: bytes) -> bytes:
        offset = self.ptr & 3
        self.ptr += len(data)
        return unmask(self.mask[offset:] + self.mask[:offset] if offset else self.mask, data)


def unmask(mask: bytes, data: bytes) -> bytes:
    """``data`` XORed with the 4-byte ``mask`` repeated, through Python's big integers (one
    C call each way: for small payloads cheaper than a masker object)."""
    n = len(data)
    if not n:
        return b""
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(
        n, "little"
    )


class Lazy:
    """``function(*args)`` computed only when formatted (``str``/``format``/``repr``)."""

    __slots__ = ("args", "function")

    def __init__(self, function: Any, *args: Any) -> None:
        self.function = function
        self.args = args

    def __str__(self) -> str:
        return str(self.function(*self.args))

    def __repr__(self) -> str:
        return str(self)

    def __format__(self, spec: str) -> str:
        return format(self.function(*self.args), spec)


def _lazy(function: Any) -> Any:
    def deferred(*args: Any) -> Lazy:
        return Lazy(function, *args)

    return deferred


_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    from autobahn.twisted import websocket as twisted_websocket
    from autobahn.websocket import protocol

    original = protocol.create_xor_masker

    def create_xor_masker(mask: bytes, length: int | None = None) -> Any:
        if length is not None and length <= SMALL:
            return SmallMasker(mask)
        return original(mask, length)

    protocol.create_xor_masker = create_xor_masker
    for module in (protocol, twisted_websocket):
        for name in ("pformat", "hltype", "hlval"):
            if hasattr(module, name):
                setattr(module, name, _lazy(getattr(module, name)))
    _installed = True
