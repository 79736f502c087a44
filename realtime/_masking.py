"""Unmasking small client frames without a new NVX object per frame.

Autobahn makes a masker object for every incoming frame; its NVX (CFFI) masker costs about
2 µs to create, which is a tenth of an echo's CPU for small messages. For frames up to
``SMALL`` bytes this module's masker XORs through Python's big integers instead (~0.5 µs);
larger frames keep NVX, which is far faster per byte. ``install()`` points Autobahn's frame
parser at it; it is idempotent and changes no behaviour, only the cost.
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
        n = len(data)
        if not n:
            return b""
        offset = self.ptr & 3
        mask = self.mask[offset:] + self.mask[:offset] if offset else self.mask
        key = (mask * ((n >> 2) + 1))[:n]
        self.ptr += n
        return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(
            n, "little"
        )


_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    from autobahn.websocket import protocol

    original = protocol.create_xor_masker

    def create_xor_masker(mask: bytes, length: int | None = None) -> Any:
        if length is not None and length <= SMALL:
            return SmallMasker(mask)
        return original(mask, length)

    protocol.create_xor_masker = create_xor_masker
    _installed = True
