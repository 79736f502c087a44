"""The small-frame masker gives the same bytes as Autobahn's, at any chunking."""

from __future__ import annotations

import os

from autobahn.websocket.xormasker import create_xor_masker
from hypothesis import given
from hypothesis import strategies as st

from realtime._masking import SmallMasker


@given(st.binary(min_size=4, max_size=4), st.binary(max_size=300),
       st.lists(st.integers(min_value=0, max_value=50), max_size=8))
def test_small_masker_matches_autobahn(mask, data, cuts):
    reference = create_xor_masker(mask, len(data)).process(data) if data else b""
    ours = SmallMasker(mask)
    out, position = b"", 0
    for cut in cuts:  # the parser may feed a frame in pieces
        out += ours.process(data[position : position + cut])
        position += cut
    out += ours.process(data[position:])
    assert out == reference
    assert ours.pointer() == len(data)
    ours.reset()
    assert ours.pointer() == 0


def test_round_trip():
    mask, data = os.urandom(4), os.urandom(1000)
    assert SmallMasker(mask).process(SmallMasker(mask).process(data)) == data


def test_lazy_debug_formatting_reads_the_same_when_written():
    from pprint import pformat

    from realtime._masking import Lazy

    data = [("maxFramePayloadSize", 1048576, "WebSocketServerFactory")]
    calls = []

    def counting(value):
        calls.append(value)
        return pformat(value)

    lazy = Lazy(counting, data)
    assert calls == []  # nothing formatted until a log line is written
    assert f"\n{lazy}" == "\n" + pformat(data)
    assert f"{lazy}" == pformat(data)
    assert len(calls) == 2
