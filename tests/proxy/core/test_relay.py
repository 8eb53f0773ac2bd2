"""The sans-IO relay core: splitting, carriers, fds, framing loss, pairing."""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

import wire
from proxy.core.hooks import ConnContext
from proxy.core.relay import (
    Carrier,
    ConnectionRelay,
    Frame,
    FramingLost,
    RawBytes,
    StreamSplitter,
    client_context,
)

NODE_ID = bytes.fromhex("03653e90") + bytes(29)


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def chunk(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


bodies = st.lists(st.binary(min_size=0, max_size=300), max_size=12)


@settings(max_examples=60, deadline=None)
@given(bodies=bodies, cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=20))
def test_any_chunking_gives_the_same_frames_and_the_same_bytes(bodies, cuts):
    stream = b"".join(framed(b) for b in bodies)
    splitter = StreamSplitter()
    segments = [seg for piece in chunk(stream, cuts) for seg in splitter.feed(piece)]
    assert [s.body for s in segments] == bodies
    assert b"".join(s.raw for s in segments) == stream
    assert splitter.buffered == 0


@settings(max_examples=60, deadline=None)
@given(
    before=bodies,
    after=bodies,
    garbage=st.binary(max_size=200),
    length=st.integers(min_value=1 << 27, max_value=(1 << 32) - 1),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=20),
)
def test_framing_loss_degrades_to_raw_bytes_without_losing_any(before, after, garbage, length, cuts):
    head = b"".join(framed(b) for b in before)
    stream = head + struct.pack(">I", length) + garbage + b"".join(framed(b) for b in after)
    splitter = StreamSplitter()
    segments = [seg for piece in chunk(stream, cuts) for seg in splitter.feed(piece)]
    segments += splitter.flush()
    lost = [s for s in segments if isinstance(s, FramingLost)]
    assert len(lost) == 1 and lost[0].offset == len(head) and lost[0].length == length
    assert [s.body for s in segments if isinstance(s, Frame)] == before
    assert b"".join(s.raw for s in segments if not isinstance(s, FramingLost)) == stream
    assert splitter.broken


def test_a_partial_frame_at_end_of_stream_is_flushed_as_raw_bytes():
    splitter = StreamSplitter()
    assert splitter.feed(b"\x00\x00\x00\x05\x00\x0b") == []
    assert splitter.flush() == [RawBytes(b"\x00\x00\x00\x05\x00\x0b", [])]


def test_the_byte_after_109_is_a_carrier_with_its_fd_even_in_one_read():
    relay = ConnectionRelay(ConnContext(conn_id=0, role="master"))
    reply_109 = framed(b"\x00\x6d")
    segments = relay.replies.feed(reply_109 + b"\x00", fds=[42])
    assert segments == [Frame(reply_109, b"\x00\x6d", []), Carrier(b"\x00", [42])]
    # next frame is framed normally again
    assert relay.replies.feed(framed(b"\x00\x70")) == [Frame(framed(b"\x00\x70"), b"\x00\x70", [])]


def test_carrier_split_across_reads_and_fd_on_a_later_read():
    splitter = ConnectionRelay(ConnContext(conn_id=0, role="master")).replies
    assert splitter.feed(b"\x00\x00\x00\x02\x00") == []
    assert [type(s) for s in splitter.feed(b"\x6d")] == [Frame]
    assert splitter.feed(b"\xff", fds=[7]) == [Carrier(b"\xff", [7])]


def test_status_stream_never_expects_a_carrier():
    relay = ConnectionRelay(ConnContext(conn_id=0, role="status"))
    data = framed(b"\x00\x6d") + framed(b"\xff\xf6v1\x00")
    assert [s.body for s in relay.replies.feed(data)] == [b"\x00\x6d", b"\xff\xf6v1\x00"]


def test_fds_on_an_unexpected_byte_travel_with_the_frame_holding_it():
    splitter = StreamSplitter()
    body = b"\x00\x0b" + bytes(10)
    assert splitter.feed(framed(body)[:6], fds=[5]) == []
    assert splitter.feed(framed(body)[6:]) == [Frame(framed(body), body, [5])]


def test_requests_pair_with_replies_by_order_and_preinit_takes_no_slot():
    relay = ConnectionRelay(ConnContext(conn_id=0, role="master"))
    preinit = relay.request_frame(Frame(b"", b"\x00\x63\x00\x00"))
    first = relay.request_frame(Frame(b"", bytes.fromhex("001b") + b"\x00\x05hello"))
    second = relay.request_frame(Frame(b"", b"\x27\x0f garbage"))
    assert (preinit.seq, first.seq, second.seq) == (0, 1, 2)
    assert second.request.name == "unknown_9999"
    assert relay.waiting == 2
    r1 = relay.reply_frame(Frame(b"", b"\x00\x7b" + bytes(32)))
    r2 = relay.reply_frame(Frame(b"", b"\x00\x7b" + bytes(32)))
    assert r1 is first and r2 is second and r2.reply_raw == b"\x00\x7b" + bytes(32)
    stray = relay.reply_frame(Frame(b"", b"\x00\x7b"))
    assert stray.seq == -1 and relay.stats.unpaired_replies == 1


def test_undecodable_bodies_are_counted_not_fatal():
    relay = ConnectionRelay(ConnContext(conn_id=0, role="master"))
    ex = relay.request_frame(Frame(b"", b"\x00"))
    assert ex.request is None and relay.stats.undecodable == 1


def test_dropped_and_duplicated_requests_keep_pairing_aligned():
    relay = ConnectionRelay(ConnContext(conn_id=0, role="client"))
    a = relay.request_frame(Frame(b"", b"\x00\x12" + bytes(8)))
    b = relay.request_frame(Frame(b"", b"\x00\x12" + bytes(8)))
    c = relay.request_frame(Frame(b"", b"\x00\x12" + bytes(8)))
    relay.forget(b)
    relay.expect_extra_reply(a)
    got = [relay.reply_frame(Frame(b"", b"\x00\x76")) for _ in range(3)]
    assert got[0] is a and got[1].duplicate and got[1].seq == a.seq and got[2] is c


def test_client_context_comes_from_the_client_hsmfd_request():
    request = wire.build("hsmd_client_hsmfd", id=NODE_ID, dbid=5, permissions=447)
    ctx = client_context(9, ConnContext(conn_id=1, role="master"), request)
    assert (ctx.conn_id, ctx.role, ctx.peer_id, ctx.dbid, ctx.permissions, ctx.parent_id) == (
        9, "client", NODE_ID, 5, 447, 1)
    assert client_context(10, ctx, None).dbid is None
