"""The sans-IO relay core: pairing, and what every verdict means, without a socket.

Hypothesis runs sequences of (direction, message, verdict) on a connection of each role against
a small model of the pairing: the actions the core returns are checked against the hook
contract (proxy/core/hooks.py), and the pairing slots against the model after every step.
"""

from __future__ import annotations

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import wire
from wire import FdCarrier, Frame, FramePiece, Unframed
from wire.conversation import ROLE_CLIENT, ROLE_MASTER, ROLE_STATUS, ROLES, expects_reply

from proxy.core.hooks import (
    FORWARD,
    ConnContext,
    Disconnect,
    Drop,
    Duplicate,
    FailClosed,
    Hold,
    Refuse,
    Replace,
)
from proxy.core.relay import (
    CloseConnection,
    ConnectionRelay,
    Limits,
    PassClient,
    Plan,
    Send,
    SendReceived,
    WaitRelease,
    WriteStatus,
    client_context,
)

NODE_ID = bytes.fromhex("03653e90") + bytes(29)


def frame_of(body: bytes, fds=(), carrier: FdCarrier | None = None) -> Frame:
    return Frame(wire.frame(body), body, tuple(fds), carrier)


def relay_for(role: str, limits: Limits = Limits()) -> ConnectionRelay:
    peer = NODE_ID if role == ROLE_CLIENT else None
    return ConnectionRelay(ConnContext(conn_id=0, role=role, peer_id=peer, dbid=1 if peer else None), limits=limits)


def pieces_of(body: bytes, limit: int) -> list[FramePiece]:
    """A frame longer than ``limit``, in two pieces as a reader cuts it: the header and the
    first ``limit`` body bytes, then the rest."""
    raw, kind, cut = wire.frame(body), int.from_bytes(body[:2], "big"), wire.HEADER_LEN + limit
    return [FramePiece(raw[:cut], kind, len(body), True, False), FramePiece(raw[cut:], kind, len(body), False, True)]


# ---- pairing --------------------------------------------------------------------------------------


def test_requests_pair_with_replies_by_order_and_preinit_takes_no_slot():
    relay = relay_for(ROLE_MASTER)
    preinit = relay.request_frame(frame_of(b"\x00\x63\x00\x00"))
    first = relay.request_frame(frame_of(bytes.fromhex("001b") + b"\x00\x05hello"))
    second = relay.request_frame(frame_of(b"\x27\x0f garbage"))
    assert (preinit.seq, first.seq, second.seq) == (0, 1, 2)
    assert second.request.name == "unknown_9999"
    assert relay.waiting == 2
    r1 = relay.reply_frame(frame_of(b"\x00\x7b" + bytes(32)))
    r2 = relay.reply_frame(frame_of(b"\x00\x7b" + bytes(32)))
    assert r1 is first and r2 is second and r2.reply_raw == b"\x00\x7b" + bytes(32)
    stray = relay.reply_frame(frame_of(b"\x00\x7b"))
    assert stray.seq == -1 and relay.stats.unpaired_replies == 1


def test_undecodable_bodies_are_counted_not_fatal():
    relay = relay_for(ROLE_MASTER)
    ex = relay.request_frame(frame_of(b"\x00"))
    assert ex.request is None and relay.stats.undecodable == 1


def test_dropped_and_duplicated_requests_keep_pairing_aligned():
    relay = relay_for(ROLE_CLIENT)
    frames = [frame_of(b"\x00\x12" + bytes(8)) for _ in range(3)]
    a, b, c = (relay.request_frame(f) for f in frames)
    relay.apply_to_request(b, frames[1], Drop())
    relay.apply_to_request(a, frames[0], Duplicate())
    got = [relay.reply_frame(frame_of(b"\x00\x76")) for _ in range(3)]
    assert got[0] is a and got[1].duplicate and got[1].seq == a.seq and got[2] is c


def test_the_status_connection_relays_the_nodes_side_unframed():
    relay = relay_for(ROLE_STATUS)
    assert relay.requests.feed(wire.frame(b"\x00\x12"), (4,)) == [Unframed(wire.frame(b"\x00\x12"), (4,))]
    assert [s.body for s in relay.replies.feed(wire.frame(b"\x00\x6d") + wire.frame(b"\xff\xf6v1\x00"), (5,))] == [
        b"\x00\x6d", b"\xff\xf6v1\x00"]  # no carriers on fd 0


def test_a_carrier_after_its_reply_passes_a_client_in_the_requests_context():
    relay = relay_for(ROLE_MASTER)
    request = wire.encode(wire.build("hsmd_client_hsmfd", id=NODE_ID, dbid=5, permissions=447))
    ex = relay.request_frame(frame_of(request))
    (reply,) = relay.replies.feed(wire.frame(b"\x00\x6d"))
    assert relay.reply_frame(reply) is ex
    assert relay.apply_to_reply(ex, reply, FORWARD).actions == (SendReceived(),)
    (carrier,) = relay.replies.feed(b"\x00", (8,))
    (action,) = relay.carrier_arrived(carrier).actions
    assert action == PassClient(carrier, ex.request) and action.request.fields["dbid"] == 5


def test_client_context_comes_from_the_client_hsmfd_request():
    request = wire.build("hsmd_client_hsmfd", id=NODE_ID, dbid=5, permissions=447)
    ctx = client_context(9, ConnContext(conn_id=1, role=ROLE_MASTER), request)
    assert (ctx.conn_id, ctx.role, ctx.peer_id, ctx.dbid, ctx.permissions, ctx.parent_id) == (
        9, ROLE_CLIENT, NODE_ID, 5, 447, 1)
    assert client_context(10, ctx, None).dbid is None


# ---- limits -------------------------------------------------------------------------------------


def test_requests_wait_past_the_cap_until_answered_or_the_signer_side_ends():
    relay = relay_for(ROLE_CLIENT, Limits(max_unanswered=2))
    relay.request_frame(frame_of(b"\x00\x12" + bytes(8)))
    assert not relay.requests_blocked
    relay.request_frame(frame_of(b"\x00\x63\x00\x00"))  # dev_preinit waits for no answer
    assert not relay.requests_blocked
    relay.request_frame(frame_of(b"\x00\x12" + bytes(8)))
    assert relay.requests_blocked
    assert "2 requests wait for the signer" in relay.requests_paused() and relay.requests_paused() is None
    assert relay.stats.requests_paused == 2
    relay.reply_frame(frame_of(b"\x00\x76"))
    assert not relay.requests_blocked
    relay.request_frame(frame_of(b"\x00\x12" + bytes(8)))
    assert relay.requests_blocked
    relay.replies_ended()
    assert not relay.requests_blocked  # no answer will come: the node's requests meet the closed signer


def test_the_bytes_of_unanswered_requests_are_capped_too():
    relay = relay_for(ROLE_CLIENT, Limits(max_unanswered_bytes=30))
    ex = relay.request_frame(frame_of(b"\x00\x12" + bytes(20)))
    assert not relay.requests_blocked
    relay.request_frame(frame_of(b"\x00\x12" + bytes(8)))
    assert relay.requests_blocked
    relay.apply_to_request(ex, frame_of(b"\x00\x12" + bytes(20)), Drop())  # forgotten: its bytes too
    assert not relay.requests_blocked


def test_a_long_frame_is_decoded_from_its_prefix_and_the_rest_is_trailing():
    relay = relay_for(ROLE_CLIENT, Limits(whole_frame=20))
    request = wire.encode(wire.build("hsmd_get_per_commitment_point", n=7))
    first, rest = pieces_of(request + b"\xee" * 100, 20)
    ex = relay.request_frame(first)
    assert (ex.seq, ex.request.name, ex.request.fields["n"]) == (0, "hsmd_get_per_commitment_point", 7)
    assert ex.request_raw == first.raw[4:] and len(ex.request_raw) == 20 and ex.request_tail == 90
    assert ex.request.trailing == b"\xee" * 10 and relay.waiting == 1
    assert relay.apply_to_request(ex, first, FORWARD).actions == (SendReceived(),)
    assert relay.piece("request") == relay.piece("request") == Plan((SendReceived(),), forwarded=True)
    reply = relay.reply_frame(pieces_of(b"\x00\x76" + bytes(100), 20)[0])
    assert (reply.seq, reply.request is ex.request, reply.reply_tail) == (0, True, 82)
    assert relay.stats.long == 2


def test_a_long_frame_dropped_or_replaced_goes_whole_and_is_never_duplicated():
    relay = relay_for(ROLE_CLIENT, Limits(whole_frame=20))
    first, rest = pieces_of(b"\x00\x12" + bytes(100), 20)
    relay.apply_to_request(relay.request_frame(first), first, Drop())
    assert relay.piece("request").actions == () and relay.waiting == 0
    plan = relay.apply_to_request(relay.request_frame(first), first, Replace(b"\x00\x12" + bytes(8)))
    assert plan.actions == (Send(wire.frame(b"\x00\x12" + bytes(8))),) and relay.piece("request").actions == ()
    plan = relay.apply_to_request(relay.request_frame(first), first, Duplicate())
    assert plan.actions == (SendReceived(),) and "cannot be duplicated" in plan.note
    assert relay.piece("request").actions == (SendReceived(),) and relay.waiting == 2  # one slot each


def test_a_refused_request_longer_than_the_bad_request_field_is_embedded_up_to_its_u16_length():
    relay = relay_for(ROLE_CLIENT)
    body = b"\x00\x12" + bytes(8) + b"\xee" * 70_000  # a PSBT-sized request: more than a u16 holds
    ex = relay.request_frame(frame_of(body))
    status, _ = relay.apply_to_request(ex, frame_of(body), Refuse("no")).actions
    assert wire.decode(status.data[4:]).fields["msg"] == body[:0xFFFF]


# ---- verdict semantics: Hypothesis over verdict x message x role x direction ---------------------

RELEASE = trio.Event()
VERDICTS = [FORWARD, Drop(), Replace(b"\x00\x12" + bytes(7) + b"\x01"), Duplicate(), Refuse("no thanks"),
            Disconnect(), Hold(RELEASE), FailClosed("the WAL is full")]
REQUESTS = [
    bytes.fromhex("00120000000000000000"),  # get_per_commitment_point
    b"\x00\x63\x00\x00",  # dev_preinit: no reply
    wire.encode(wire.build("hsmd_client_hsmfd", id=NODE_ID, dbid=5, permissions=8)),
    b"\x27\x0f garbage",  # an unknown type
    b"\x00",  # undecodable
]
REPLIES = [bytes.fromhex("0076") + bytes(33), b"\x00\x6d", b"\x00"]

steps = st.lists(
    st.tuples(
        st.sampled_from(["request", "reply"]),
        st.integers(0, len(REQUESTS) - 1),
        st.sampled_from(VERDICTS),
        st.booleans(),  # a 109 reply brings its carrier in the same read
        st.integers(0, 4),  # 0: the frame is longer than the whole-frame limit and comes in pieces
    ),
    max_size=25,
)
LIMITS = Limits(max_unanswered=3, max_unanswered_bytes=40, whole_frame=60)


def long_frame(body: bytes) -> tuple[bytes, FramePiece, FramePiece]:
    """``body`` padded past the whole-frame limit with trailing bytes (its fields fit in the
    prefix); the padded body and its two pieces."""
    padded = body + b"\xee" * (LIMITS.whole_frame + 9 - len(body))
    return (padded, *pieces_of(padded, LIMITS.whole_frame))


def sent_bytes(plan, frame: Frame | FramePiece) -> bytes:
    """What the plan sends to the other side, in order."""
    out = b""
    for action in plan.actions:
        if type(action) is SendReceived:
            out += frame.raw
        elif type(action) is Send:
            out += action.data
        elif type(action) is PassClient:
            out += (action.frame.raw if action.frame is not None else b"") + action.carrier.raw
    return out


def carried(relay: ConnectionRelay, direction: str, plan, frame, rest: FramePiece | None) -> bytes:
    """What goes to the other side for a frame: its plan, then a long frame's rest as the core says."""
    out = sent_bytes(plan, frame)
    if rest is not None:
        rest_plan = relay.piece(direction)
        assert rest_plan.actions in ((), (SendReceived(),))
        out += sent_bytes(rest_plan, rest)
    return out


@settings(max_examples=400, deadline=None)
@given(role=st.sampled_from(ROLES), steps=steps)
def test_every_verdict_means_what_the_hook_contract_says(role, steps):
    """... and a frame too long to parse pairs like any other, and the node's requests wait
    exactly when the model says too many (or too many bytes of them) are unanswered."""
    relay = relay_for(role, LIMITS)
    slots: list[tuple[int, bool, int]] = []  # the model: (seq, duplicate, body bytes) of requests awaiting a reply
    seq = 0
    for direction, which, verdict, with_carrier, size in steps:
        kind = type(verdict)
        body = (REQUESTS if direction == "request" else REPLIES)[which % (len(REQUESTS) if direction == "request" else len(REPLIES))]
        long = size == 0 and len(body) >= 2
        if long and role == ROLE_STATUS:
            padded, first, rest = long_frame(body)
            unparsed = relay.status_piece(first)
            assert relay.status_piece(rest) is None
            assert (unparsed.direction, unparsed.seq, unparsed.type, unparsed.length) == ("status", None, first.type,
                                                                                          len(padded))
            continue
        if role == ROLE_STATUS:
            # Status frames (signer -> node) go on whatever happens; nothing pairs on fd 0.
            frame = frame_of(REPLIES[which % len(REPLIES)])
            message = relay.status_frame(frame)
            assert relay.apply_to_status(message, frame, verdict).actions == (SendReceived(),)
            assert relay.waiting == 0
            continue
        if direction == "request":
            body = REQUESTS[which]
            if long:  # held and decided on by its prefix, the rest as the verdict says
                whole, frame, rest = long_frame(body)
                held = frame.prefix
            else:
                frame, rest, held = frame_of(body), None, body
                whole = body
            ex = relay.request_frame(frame)
            assert (ex.seq, ex.request_raw, ex.request_tail) == (seq, held, len(whole) - len(held))
            if ex.request is not None and ex.request.name in wire.SPECS_BY_NAME:  # the fields fit in the prefix:
                plain = wire.decode(body)  # the same message, the padding trailing (an unknown type's payload is all)
                assert (ex.request.name, ex.request.fields) == (plain.name, plain.fields)
            plan = relay.apply_to_request(ex, frame, verdict)
            actions = plan.actions
            answered = expects_reply(body)
            refused_here = role != ROLE_MASTER and kind in (Refuse, FailClosed)
            if kind in (Drop, Disconnect) or refused_here or (kind is FailClosed and role == ROLE_MASTER):
                assert not plan.forwarded  # and never reaches the signer:
                assert carried(relay, direction, plan, frame, rest) == b""
            if kind is Drop:
                assert actions == ()
            elif refused_here:
                status, close = actions
                assert type(status) is WriteStatus and type(close) is CloseConnection
                bad = wire.decode(status.data[4:])
                assert bad.name == "hsmstatus_client_bad_request"
                assert (bad.fields["id"], bad.fields["description"], bad.fields["msg"]) == (
                    relay.ctx.peer_id or bytes(33), verdict.description, held)
            elif kind in (Disconnect, FailClosed):  # FailClosed on the master: lightningd sees hsmd go
                assert actions == (CloseConnection(),)
            else:
                assert plan.forwarded
                doubled = kind is Duplicate and not long  # a long frame is never held whole: once
                expected = wire.frame(verdict.raw) if kind is Replace else wire.frame(whole)
                assert carried(relay, direction, plan, frame, rest) == expected * (2 if doubled else 1)
                if kind is Hold:
                    assert type(actions[0]) is WaitRelease and actions[0].release is RELEASE
                if answered:
                    slots += [(seq, False, len(held))] + ([(seq, True, len(held))] if doubled else [])
            seq += 1
        else:
            body = REPLIES[which % len(REPLIES)]
            carrier = FdCarrier(b"\x00", (11,)) if body == b"\x00\x6d" and with_carrier and not long else None
            if long:
                whole, frame, rest = long_frame(body)
            else:
                whole, frame, rest = body, frame_of(body, carrier=carrier), None
            ex = relay.reply_frame(frame)
            expected_seq, duplicate, _ = slots.pop(0) if slots else (-1, False, 0)
            assert (ex.seq, ex.duplicate) == (expected_seq, duplicate)
            assert len(ex.reply_raw) + ex.reply_tail == len(whole)
            plan = relay.apply_to_reply(ex, frame, verdict)
            closes = kind in (Disconnect, FailClosed) or (kind is Refuse and role != ROLE_MASTER)
            if closes:
                assert plan.actions == (CloseConnection(),) and not plan.forwarded
            else:
                assert plan.forwarded == (kind is not Drop)
                copies = 0 if kind is Drop else 2 if kind is Duplicate and not long else 1
                expected = wire.frame(verdict.raw) if kind is Replace else wire.frame(whole)
                assert carried(relay, direction, plan, frame, rest) == expected * copies + (b"\x00" if carrier else b"")
                passes = [a for a in plan.actions if type(a) is PassClient]
                assert [p.carrier for p in passes] == ([carrier] if carrier else [])
        assert relay.waiting == len(slots)
        assert relay.requests_blocked == (len(slots) >= LIMITS.max_unanswered
                                          or sum(size for *_, size in slots) >= LIMITS.max_unanswered_bytes)
        if any(type(a) is CloseConnection for a in plan.actions):
            return  # nothing more happens on a closed connection
