"""FrameReader under arbitrary chunking, and the 2^27 length limit."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import wire


@settings(max_examples=300, deadline=None)
@given(
    bodies=st.lists(st.binary(max_size=300), max_size=12),
    cuts=st.lists(st.integers(0, 4000), max_size=30),
)
def test_any_chunking_yields_the_same_bodies(bodies, cuts):
    stream = b"".join(wire.frame(b) for b in bodies)
    points = sorted({c for c in cuts if c < len(stream)} | {0, len(stream)})
    reader = wire.FrameReader()
    got = []
    for start, end in zip(points, points[1:]):
        got.extend(reader.feed(stream[start:end]))
    assert got == bodies
    assert reader.pending == b""


def test_byte_at_a_time():
    stream = wire.frame(b"\x00\x12" + bytes(8))
    reader = wire.FrameReader()
    out = []
    for i in range(len(stream)):
        out += reader.feed(stream[i : i + 1])
        assert out == ([] if i < len(stream) - 1 else [b"\x00\x12" + bytes(8)])
    assert reader.pending == b""


def test_oversize_length_breaks_framing_and_keeps_the_bytes():
    reader = wire.FrameReader()
    good = wire.frame(b"\x00\x01")
    bad = (1 << 27).to_bytes(4, "big") + b"garbage"
    with pytest.raises(wire.FramingError) as info:
        reader.feed(good + bad)
    assert info.value.offset == len(good) and info.value.length == 1 << 27
    assert reader.broken and reader.pending == bad
    with pytest.raises(wire.FramingError):
        reader.feed(b"more")


def test_largest_allowed_length_is_not_an_error():
    reader = wire.FrameReader()
    assert reader.feed(((1 << 27) - 1).to_bytes(4, "big")) == []
    assert not reader.broken


def test_zero_and_one_byte_frames_are_frames():
    reader = wire.FrameReader()
    assert reader.feed(bytes(4) + b"\x00\x00\x00\x01\x07") == [b"", b"\x07"]


def test_frame_refuses_oversize_body():
    class Huge(bytes):
        def __len__(self):
            return 1 << 27

    with pytest.raises(wire.FramingError):
        wire.frame(Huge())
