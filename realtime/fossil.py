"""Fossil deltas (https://fossil-scm.org/home/doc/tip/www/delta_format.wiki): what
Centrifugo's SDKs apply to a publication in a subscription with delta compression
(``delta: "fossil"``, ``realtime.pubsub``).

Why here: a channel that publishes a document again and again (a scoreboard, an order
book) then sends each subscriber only what changed. ``create`` is written for that: it
runs once per publication and process (not per subscriber), so it favours a short, plain
Python scan over the smallest possible delta; the SDKs only need a valid one.

The format: the target's length, ``\\n``; then commands, each a number and an operator:
``N@O,`` copies N bytes of the source from offset O, ``N:`` inserts the N bytes that
follow; then the target's checksum and ``;``. Numbers are written in base 64 with the
digits ``0-9 A-Z _ a-z ~``.
"""

from __future__ import annotations

import struct

_DIGITS = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~"
_VALUE = {digit: value for value, digit in enumerate(_DIGITS)}
#: The length of the blocks of the source that are indexed: a shorter common run is sent
#: as literal bytes (a copy command costs a few bytes itself).
BLOCK = 16


class DeltaError(ValueError):
    """A delta that does not apply to the source given (``apply``)."""


def _number(value: int) -> bytes:
    if value == 0:
        return b"0"
    out = bytearray()
    while value:
        out.append(_DIGITS[value & 63])
        value >>= 6
    out.reverse()
    return bytes(out)


def checksum(data: bytes) -> int:
    """Fossil's checksum: the sum of ``data``'s big-endian 32-bit words (the last one
    padded with zero bytes), modulo 2**32."""
    padded = data + b"\0" * (-len(data) % 4)
    return sum(struct.unpack(f">{len(padded) // 4}I", padded)) & 0xFFFFFFFF


def _continues(byte: int) -> bool:
    """A UTF-8 continuation byte (10xxxxxx): a character does not start here."""
    return byte & 0xC0 == 0x80


def create(source: bytes, target: bytes, text: bool = False) -> bytes:
    """A delta that turns ``source`` into ``target``. With ``text`` (both UTF-8) every
    copy starts and ends on a character, so the literal runs are whole characters and the
    delta itself is UTF-8 text (the JSON protocol carries it in a JSON string)."""
    out = [_number(len(target)), b"\n"]
    index: dict[bytes, int] = {}
    for start in range(0, len(source) - BLOCK + 1, BLOCK):
        index.setdefault(source[start:start + BLOCK], start)
    literal = 0  # where the target's bytes not yet written start
    at = 0
    end = len(target)
    while index and at + BLOCK <= end:
        found = index.get(target[at:at + BLOCK])
        if found is None:
            at += 1
            continue
        begin, origin = at, found
        while begin > literal and origin > 0 and target[begin - 1] == source[origin - 1]:
            begin -= 1
            origin -= 1
        stop = _match_end(source, target, origin, begin, at + BLOCK)
        if text:
            while begin < stop and _continues(target[begin]):
                begin += 1
                origin += 1
            while stop > begin and stop < end and _continues(target[stop]):
                stop -= 1
        if stop - begin < BLOCK:
            at += 1
            continue
        if begin > literal:
            out += [_number(begin - literal), b":", target[literal:begin]]
        out += [_number(stop - begin), b"@", _number(origin), b","]
        literal = at = stop
    if literal < end:
        out += [_number(end - literal), b":", target[literal:]]
    out += [_number(checksum(target)), b";"]
    return b"".join(out)


def _match_end(source: bytes, target: bytes, origin: int, begin: int, known: int) -> int:
    """Where the run of ``target`` from ``begin`` equal to ``source`` from ``origin`` ends
    (``known``: at least there): doubling steps, then halving ones, slices compared in C."""
    shift = origin - begin
    limit = min(len(target), len(source) - shift)
    stop, step = known, BLOCK
    while stop < limit:
        ahead = min(stop + step, limit)
        if target[stop:ahead] != source[stop + shift:ahead + shift]:
            break
        stop = ahead
        step *= 2
    while step > 1 and stop < limit:
        step //= 2
        ahead = min(stop + step, limit)
        if target[stop:ahead] == source[stop + shift:ahead + shift]:
            stop = ahead
    while stop < limit and target[stop] == source[stop + shift]:
        stop += 1
    return stop


def apply(source: bytes, delta: bytes) -> bytes:
    """The target ``delta`` makes of ``source``; ``DeltaError`` for a delta that does not
    fit it (a copy past its end, a wrong length or checksum)."""
    at = 0

    def number() -> int:
        nonlocal at
        value, begin = 0, at
        while at < len(delta) and delta[at] in _VALUE:
            value = (value << 6) | _VALUE[delta[at]]
            at += 1
        if at == begin:
            raise DeltaError(f"a number expected at byte {begin}")
        return value

    def operator() -> int:
        nonlocal at
        if at >= len(delta):
            raise DeltaError("the delta ends without its checksum")
        at += 1
        return delta[at - 1]

    size = number()
    if operator() != ord("\n"):
        raise DeltaError("the target's length is not followed by a newline")
    out = bytearray()
    while True:
        count = number()
        kind = operator()
        if kind == ord("@"):
            offset = number()
            if operator() != ord(","):
                raise DeltaError("a copy command does not end with ','")
            if offset + count > len(source):
                raise DeltaError("a copy reaches past the end of the source")
            out += source[offset:offset + count]
        elif kind == ord(":"):
            if at + count > len(delta):
                raise DeltaError("an insert reaches past the end of the delta")
            out += delta[at:at + count]
            at += count
        elif kind == ord(";"):
            if len(out) != size:
                raise DeltaError(f"the target is {len(out)} bytes, the delta says {size}")
            if checksum(bytes(out)) != count:
                raise DeltaError("the target's checksum does not match")
            return bytes(out)
        else:
            raise DeltaError(f"unknown operator {chr(kind)!r}")
        if len(out) > size:
            raise DeltaError("the commands make more than the target's length")
