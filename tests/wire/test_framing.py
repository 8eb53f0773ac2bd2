"""The one framer: frames under any chunking, fd carriers only where fds came, fds with the right
segment, framing lost at 2^27 (then raw bytes, none lost), partial frames flushed at EOF."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import wire
from wire import FdCarrier, Frame, FramePiece, FrameReader, FramingLost, Unframed

REPLY_109 = wire.frame(b"\x00\x6d")


def chunk(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


bodies = st.lists(st.binary(max_size=300), max_size=12)
cuts = st.lists(st.integers(0, 5000), max_size=30)


@settings(max_examples=300, deadline=None)
@given(bodies=bodies, cuts=cuts, fd_carriers=st.booleans())
def test_any_chunking_gives_the_same_frames_and_the_same_bytes(bodies, cuts, fd_carriers):
    stream = b"".join(wire.frame(b) for b in bodies)
    reader = FrameReader(fd_carriers=fd_carriers)  # no fds arrive: no carrier, even after a 109
    segments = [seg for piece in chunk(stream, cuts) for seg in reader.feed(piece)]
    assert [s.body for s in segments] == bodies
    assert b"".join(s.raw for s in segments) == stream
    assert reader.pending == b"" and reader.flush() == []


@settings(max_examples=100, deadline=None)
@given(before=bodies, after=bodies, garbage=st.binary(max_size=200),
       length=st.integers(min_value=1 << 27, max_value=(1 << 32) - 1), cuts=cuts)
def test_framing_loss_degrades_to_raw_bytes_without_losing_any(before, after, garbage, length, cuts):
    head = b"".join(wire.frame(b) for b in before)
    stream = head + length.to_bytes(4, "big") + garbage + b"".join(wire.frame(b) for b in after)
    reader = FrameReader()
    segments = [seg for piece in chunk(stream, cuts) for seg in reader.feed(piece)] + reader.flush()
    lost = [s for s in segments if isinstance(s, FramingLost)]
    assert len(lost) == 1 and lost[0].offset == len(head) and lost[0].length == length
    assert [s.body for s in segments if isinstance(s, Frame)] == before
    assert all(isinstance(s, Unframed) for s in segments[segments.index(lost[0]) + 1 :])
    assert b"".join(s.raw for s in segments if not isinstance(s, FramingLost)) == stream
    assert reader.broken


def test_byte_at_a_time():
    stream = wire.frame(b"\x00\x12" + bytes(8))
    reader = FrameReader()
    out = []
    for i in range(len(stream)):
        out += reader.feed(stream[i : i + 1])
        assert len(out) == (0 if i < len(stream) - 1 else 1)
    assert out[0].body == b"\x00\x12" + bytes(8) and reader.pending == b""


def test_one_read_holding_one_frame_is_passed_on_without_a_copy():
    data = wire.frame(b"\x00\x12" + bytes(8))
    (seg,) = FrameReader().feed(data)
    assert seg.raw is data and seg.body == data[4:]


def test_largest_allowed_length_is_not_an_error():
    reader = FrameReader()
    assert reader.feed(wire.MAX_BODY_LEN.to_bytes(4, "big")) == []
    assert not reader.broken


def test_zero_and_one_byte_frames_are_frames():
    assert [s.body for s in FrameReader().feed(bytes(4) + b"\x00\x00\x00\x01\x07")] == [b"", b"\x07"]


def test_a_partial_frame_at_end_of_stream_is_flushed_as_raw_bytes():
    reader = FrameReader()
    assert reader.feed(b"\x00\x00\x00\x05\x00\x0b", fds=[3]) == []
    assert reader.flush() == [Unframed(b"\x00\x00\x00\x05\x00\x0b", (3,))]


# ---- fds and carriers ---------------------------------------------------------------------------


def test_the_byte_after_109_is_a_carrier_when_its_fd_came_with_it_in_one_read():
    reader = FrameReader(fd_carriers=True)
    (seg,) = reader.feed(REPLY_109 + b"\x00", fds=[42])
    assert seg == Frame(REPLY_109, b"\x00\x6d", (), carrier=FdCarrier(b"\x00", (42,)))
    nxt = wire.frame(b"\x00\x70")
    assert reader.feed(nxt) == [Frame(nxt, b"\x00\x70")]  # framed normally again


def test_a_carrier_in_a_read_of_its_own_and_a_109_split_across_reads():
    reader = FrameReader(fd_carriers=True)
    assert reader.feed(b"\x00\x00\x00\x02\x00") == []
    assert reader.feed(b"\x6d") == [Frame(REPLY_109, b"\x00\x6d")]
    assert reader.feed(b"\xff", fds=[7]) == [FdCarrier(b"\xff", (7,))]


def test_a_109_without_a_carrier_leaves_the_next_frames_intact():
    """A signer over TCP cannot pass an fd and sends no carrier: the next reply's first length
    byte is not a carrier (issue 12 item 4)."""
    replies = [wire.frame(b"\x00\x76" + bytes(33)), wire.frame(b"\x00\x70")]
    for reads in ([REPLY_109, *replies], [REPLY_109 + b"".join(replies)], [REPLY_109 + replies[0][:1], replies[0][1:] + replies[1]]):
        reader = FrameReader(fd_carriers=True)
        segments = [seg for data in reads for seg in reader.feed(data)]
        assert segments == [Frame(REPLY_109, b"\x00\x6d"), *(Frame(r, r[4:]) for r in replies)]


def test_a_stream_that_passes_no_fds_never_has_carriers():
    reader = FrameReader()  # requests, the status socket
    assert reader.feed(REPLY_109 + b"\x00", fds=[5]) == [Frame(REPLY_109, b"\x00\x6d")]
    assert reader.pending == b"\x00"  # the start of a length, with the fds of its read
    assert reader.flush() == [Unframed(b"\x00", (5,))]


def test_fds_on_an_unexpected_byte_travel_with_the_frame_holding_it():
    reader = FrameReader(fd_carriers=True)
    raw = wire.frame(b"\x00\x0b" + bytes(10))
    assert reader.feed(raw[:6], fds=[5]) == []
    assert reader.feed(raw[6:]) == [Frame(raw, raw[4:], (5,))]


def test_fds_without_data_are_refused():
    with pytest.raises(ValueError):
        FrameReader().feed(b"", fds=[3])


@settings(max_examples=200, deadline=None)
@given(bodies=bodies, cuts=cuts, carrier=st.sampled_from([b"\x00", b"\xff"]), with_carrier=st.booleans())
def test_a_109_in_any_stream_keeps_every_byte_and_its_fd(bodies, cuts, carrier, with_carrier):
    """A 109 somewhere in a reply stream, its carrier sent with an fd (as hsmd does) or not at
    all (as over TCP), every other piece in any chunking: same frames, same bytes, fd on the carrier."""
    head = b"".join(wire.frame(b) for b in bodies[: len(bodies) // 2])
    tail = b"".join(wire.frame(b) for b in bodies[len(bodies) // 2 :])
    reads = [(piece, ()) for piece in chunk(head + REPLY_109, cuts)]
    if with_carrier:
        reads.append((carrier, (9,)))
    reads += [(piece, ()) for piece in chunk(tail, cuts)]
    reader = FrameReader(fd_carriers=True)
    segments = [seg for data, fds in reads for seg in reader.feed(data, fds)]
    flat = []
    for seg in segments:
        flat.append(seg)
        if type(seg) is Frame and seg.carrier is not None:
            flat.append(seg.carrier)
    carriers = [s for s in flat if type(s) is FdCarrier]
    assert carriers == ([FdCarrier(carrier, (9,))] if with_carrier else [])
    assert [s.body for s in flat if type(s) is Frame] == [*bodies[: len(bodies) // 2], b"\x00\x6d", *bodies[len(bodies) // 2 :]]
    assert b"".join(s.raw for s in flat) == head + REPLY_109 + (carrier if with_carrier else b"") + tail
    assert reader.pending == b""


# ---- frames longer than a whole_limit: in pieces as they arrive -------------------------------


@settings(max_examples=300, deadline=None)
@given(bodies=st.lists(st.binary(min_size=0, max_size=120), max_size=10), limit=st.integers(2, 60), cuts=cuts,
       tail_body=st.binary(max_size=90))
def test_frames_over_the_limit_come_in_pieces_and_every_byte_stays(bodies, limit, cuts, tail_body):
    """Any chunking: frames up to ``limit`` whole, longer ones in pieces: the first holds the header
    and exactly ``limit`` body bytes, the others never more than the read they came in; the same
    bytes in the same order; a cut-off tail is not lost."""
    tail = wire.frame(tail_body)[:-1]  # a frame cut short by the end of the stream
    stream = b"".join(wire.frame(b) for b in bodies) + tail
    reader = FrameReader(whole_limit=limit)
    reads = chunk(stream, cuts)
    segments = []
    for data in reads:
        got = reader.feed(data)
        assert sum(len(s.raw) for s in got if type(s) is FramePiece and not s.start) <= len(data)
        segments += got
    segments += reader.flush()
    assert b"".join(s.raw for s in segments) == stream
    assert [s.body for s in segments if type(s) is Frame] == [b for b in bodies if len(b) <= limit]
    starts = [s for s in segments if type(s) is FramePiece and s.start]
    long_bodies = [b for b in bodies if len(b) > limit]
    started = len(tail_body) > limit and len(tail) >= wire.HEADER_LEN + limit
    cut_long = [tail_body] if started else []  # started, never ends
    assert [(s.type, s.length) for s in starts] == [(int.from_bytes(b[:2], "big"), len(b)) for b in long_bodies + cut_long]
    assert sum(1 for s in segments if type(s) is FramePiece and s.end) == len(long_bodies)
    for s in starts:
        assert len(s.raw) == wire.HEADER_LEN + limit and s.prefix == s.raw[wire.HEADER_LEN:]  # what a relay parses


def test_a_long_frame_comes_once_its_prefix_is_complete_then_as_each_read_arrives():
    reader = FrameReader(whole_limit=100)
    body = b"\x00\x70" + bytes(range(256)) * 3 + bytes(230)
    raw = wire.frame(body)
    assert reader.feed(raw[:5]) == []
    assert reader.feed(raw[5:103]) == []  # the prefix is one byte short
    assert reader.feed(raw[103:300]) == [FramePiece(raw[:104], 0x70, 1000, True, False),
                                         FramePiece(raw[104:300], 0x70, 1000, False, False)]
    assert reader.feed(raw[300:] + REPLY_109) == [FramePiece(raw[300:], 0x70, 1000, False, True),
                                                  Frame(REPLY_109, b"\x00\x6d")]
    assert reader.pending == b""


def test_a_long_109_keeps_its_carrier_and_fds_stay_with_their_bytes():
    reader = FrameReader(fd_carriers=True, whole_limit=10)
    raw = wire.frame(b"\x00\x6d" + bytes(20))
    assert reader.feed(raw[:14], fds=[4]) == [FramePiece(raw[:14], 109, 22, True, False, (4,))]
    assert reader.feed(raw[14:]) == [FramePiece(raw[14:], 109, 22, False, True)]
    assert reader.feed(b"\x00", fds=[8]) == [FdCarrier(b"\x00", (8,))]


def test_a_limit_outside_the_framing_is_refused():
    with pytest.raises(ValueError, match="whole_limit"):
        FrameReader(whole_limit=1)


# ---- bodies only (the simulators, `hsmproxy decode`) --------------------------------------------


def test_bodies_raise_when_framing_is_lost_and_keep_raising():
    reader = FrameReader()
    good = wire.frame(b"\x00\x01")
    bad = (1 << 27).to_bytes(4, "big") + b"garbage"
    with pytest.raises(wire.FramingError) as info:
        reader.bodies(good + bad)
    assert info.value.offset == len(good) and info.value.length == 1 << 27
    assert reader.broken
    with pytest.raises(wire.FramingError):
        reader.bodies(b"more")


def test_bodies_in_pieces():
    reader = FrameReader()
    stream = wire.frame(b"\x00\x01") + wire.frame(b"\x00\x02\x03")
    assert reader.bodies(stream[:7]) == [b"\x00\x01"]
    assert reader.bodies(stream[7:]) == [b"\x00\x02\x03"]


def test_frame_refuses_oversize_body():
    class Huge(bytes):
        def __len__(self):
            return 1 << 27

    with pytest.raises(wire.FramingError):
        wire.frame(Huge())
