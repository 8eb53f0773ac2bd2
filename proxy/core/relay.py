"""The relay core, sans-IO: frames in, exchanges for the hooks out; verdicts in, actions out.

One ``ConnectionRelay`` per node<->signer connection:

* one ``wire.FrameReader`` per direction cuts the byte stream into what travels as units: whole
  frames, the fd carrier after a ``hsmd_client_hsmfd_reply`` (109), and unframed bytes once
  framing is lost. Segments keep the exact bytes received, so the shell forwards originals;
* requests pair with replies by order (never by reply type: 19, 20, 21, ... all answer 112, and
  51 answers 138) into the ``Exchange`` objects hooks see. A request hsmd never answers
  (``hsmd_dev_preinit``) takes no pairing slot;
* limits keep memory bounded whatever the peers send (``Limits``): a request or reply longer
  than ``whole_frame`` is held up to its first ``whole_frame`` body bytes only, decoded from
  those and decided on like any frame (hsmd ignores bytes after a message's fields, so the rest
  is trailing bytes); once it goes on, the rest follows in pieces as it arrives. Past
  ``max_unanswered`` requests waiting for the signer (or ``max_unanswered_bytes`` of their
  bodies) the node's next request waits: the shell stops reading from the node
  (backpressure), nothing is dropped;
* a verdict on a frame becomes a ``Plan``: the actions the shell carries out, in order, and
  whether the message went on (then the ``*.after_forward`` point follows). This is the one
  place where verdicts mean something, and the pairing follows from them: a request that is not
  forwarded leaves no slot, a duplicated one expects two replies.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import wire
from wire.conversation import NO_REPLY_PREFIXES, TYPE_CLIENT_HSMFD, expects_reply
from wire.framing import FdCarrier, Frame, FramePiece, FrameReader, FramingLost

from proxy.core.hooks import (
    FORWARD,
    ROLE_CLIENT,
    ROLE_MASTER,
    ROLE_STATUS,
    ConnContext,
    Disconnect,
    Drop,
    Duplicate,
    Exchange,
    FailClosed,
    Forward,
    Hold,
    Refuse,
    Replace,
    UnparsedFrame,
)

REQUEST = "request"  # node -> signer
REPLY = "reply"  # signer -> node

BAD_REQUEST = "hsmstatus_client_bad_request"
STATUS = "status"  # signer -> node on the status socket
BAD_REQUEST_MSG_MAX = 0xFFFF  # its msg field has a u16 length

# lightningd waits for each reply before its next request on a connection (hsm_sync_req), so a
# node that lets more than a few requests wait is not lightningd; 64 leaves room for a pipelining
# client. Their bodies are held (hooks see the request again with its reply), at most as many
# bytes as one whole frame.
MAX_UNANSWERED = 64
# The longest body parsed whole. Real hsmd messages are far shorter: the longest are PSBTs of
# tens of KiB, and a standard transaction is at most 400 kB, so 4 MiB is ten times the longest
# sane message; a longer frame (up to hsmd's own 128 MiB) is decided on by this prefix, and the
# rest goes on in pieces as it arrives.
WHOLE_FRAME_LIMIT = 4 << 20


@dataclass(frozen=True, slots=True)
class Limits:
    """What one connection may hold, whatever the node or the signer sends (docs/proxy.md#memory-bounds)."""

    max_unanswered: int = MAX_UNANSWERED  # requests per connection
    max_unanswered_bytes: int = WHOLE_FRAME_LIMIT  # of their bodies, per connection
    whole_frame: int = WHOLE_FRAME_LIMIT  # body bytes

    def __post_init__(self):
        if self.max_unanswered < 1 or self.max_unanswered_bytes < 1:
            raise ValueError(f"unanswered requests need room for at least one: {self}")


DEFAULT_LIMITS = Limits()


# ---- actions for the shell ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendReceived:
    """Send the segment on to the other side as it was received: its bytes and its fds."""


@dataclass(frozen=True, slots=True)
class Send:
    """Send these bytes (and fds) to the other side."""

    data: bytes
    fds: tuple = ()


@dataclass(frozen=True, slots=True)
class WriteStatus:
    """Write this frame on the node's status socket (fd 0); where there is none (socket mode),
    nothing is written."""

    data: bytes


@dataclass(frozen=True, slots=True)
class WaitRelease:
    """Wait until ``release.wait()`` returns."""

    release: Any = field(compare=False)


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Close this connection both ways, now; nothing more is relayed on it."""


@dataclass(frozen=True, slots=True)
class PassClient:
    """Hand the node the client connection whose fd ``carrier`` brings (the shell relays it as a
    connection of its own, in the context of ``request``, the ``hsmd_client_hsmfd`` that asked
    for it). ``frame``, the 109 reply, goes first in the same write when it is not sent yet."""

    carrier: FdCarrier
    request: Any = None
    frame: Frame | None = None


Action = SendReceived | Send | WriteStatus | WaitRelease | CloseConnection | PassClient


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple
    forwarded: bool  # the message went on: its after_forward point follows
    note: str | None = None  # what the shell logs: a verdict that could not apply as asked


SEND_RECEIVED = SendReceived()
CLOSE_CONNECTION = CloseConnection()
FORWARD_AS_RECEIVED = Plan((SEND_RECEIVED,), forwarded=True)
NOTHING = Plan((), forwarded=False)
CLOSE = Plan((CLOSE_CONNECTION,), forwarded=False)


@dataclass(frozen=True, slots=True)
class StatusMessage:
    """A frame on the status socket (signer -> node): hooks see it, none decides on it."""

    conn: ConnContext
    raw: bytes  # the frame body
    msg: Any  # wire.Message, or None when it does not decode


# ---- one connection -----------------------------------------------------------------------------


@dataclass
class RelayStats:
    requests: int = 0
    replies: int = 0
    undecodable: int = 0
    unpaired_replies: int = 0
    framing_lost: int = 0
    long: int = 0  # frames longer than the whole-frame limit, decided on by their prefix
    requests_paused: int = 0  # times the node's requests had to wait for answers


class ConnectionRelay:
    """Both directions of one node<->signer connection: framing, decoding, pairing, verdicts."""

    def __init__(self, ctx: ConnContext, *, decode: bool = True, limits: Limits = DEFAULT_LIMITS):
        self.ctx = ctx
        self.decode = decode
        self.limits = limits
        self.stats = RelayStats()
        self._on_master = ctx.role == ROLE_MASTER
        whole = limits.whole_frame
        if ctx.role == ROLE_STATUS:
            # The node writes nothing on fd 0 in hsmd; whatever it writes is relayed as it is.
            self.requests = FrameReader(framed=False)
            self.replies = FrameReader(whole_limit=whole)
        else:
            self.requests = FrameReader(whole_limit=whole)
            # fds come only with a signer's 109 replies
            self.replies = FrameReader(fd_carriers=True, whole_limit=whole)
        self._pending: deque[Exchange] = deque()
        self._pending_bytes = 0  # request bodies held by the exchanges in _pending
        self._replies_ended = False
        self._rest_goes_on = {REQUEST: False, REPLY: False}  # the rest of the long frame under way
        self._next_seq = 0
        self._last_reply: Exchange | None = None  # the exchange a later carrier belongs to

    def parse(self, body: bytes):
        """The decoded message, or None (counted) when the body does not decode."""
        if not self.decode:
            return None
        try:
            return wire.decode(body)
        except Exception:  # noqa: BLE001 - a parser behind the protocol must never break a node
            self.stats.undecodable += 1
            return None

    def framing_lost(self, direction: str, lost: FramingLost) -> str:
        """Count it; what to log."""
        self.stats.framing_lost += 1
        return f"{self.ctx.describe()} {direction}: {lost.reason}; relaying raw bytes from here on"

    # ---- frames in ------------------------------------------------------------------------------

    def request_frame(self, frame: Frame | FramePiece) -> Exchange:
        """A node->signer frame (or the first piece of a long one: see ``Exchange.request_tail``):
        a new exchange, waiting for its reply unless hsmd never answers it."""
        body = frame.body if type(frame) is Frame else frame.prefix
        ex = Exchange(conn=self.ctx, seq=self._next_seq, request_raw=body, request=self.parse(body))
        if type(frame) is not Frame:
            ex.request_tail = self._count_long(frame, body)
        self._next_seq += 1
        self.stats.requests += 1
        if body[:2] not in NO_REPLY_PREFIXES:  # expects_reply(body), inline: every request passes here
            self._pending.append(ex)
            self._pending_bytes += len(body)
        return ex

    def reply_frame(self, frame: Frame | FramePiece) -> Exchange:
        """A signer->node frame (or the first piece of a long one), paired with the oldest request
        still waiting. A reply nobody asked for gets an exchange of its own with an empty request
        (and is counted)."""
        body = frame.body if type(frame) is Frame else frame.prefix
        msg = self.parse(body)
        self.stats.replies += 1
        ex = self._answered()
        ex.reply_raw = body
        ex.reply = msg
        if type(frame) is not Frame:
            ex.reply_tail = self._count_long(frame, body)
        return ex

    def _count_long(self, first: FramePiece, prefix: bytes) -> int:
        """Count a long frame; the body bytes after its prefix."""
        self.stats.long += 1
        return first.length - len(prefix)

    def _answered(self) -> Exchange:
        """The exchange a reply answers: the oldest waiting, else one of its own (counted)."""
        if self._pending:
            ex = self._pending.popleft()
            self._pending_bytes -= len(ex.request_raw)
        else:
            self.stats.unpaired_replies += 1
            ex = Exchange(conn=self.ctx, seq=-1, request_raw=b"", request=None)
        self._last_reply = ex
        return ex

    def piece(self, direction: str) -> Plan:
        """A piece of a long request or reply after its first (which came as a frame, through
        ``request_frame`` / ``reply_frame`` and a verdict): on as it came if the frame went on
        as it came, else dropped (it was dropped, refused or replaced whole)."""
        return FORWARD_AS_RECEIVED if self._rest_goes_on[direction] else NOTHING

    def status_piece(self, piece: FramePiece) -> UnparsedFrame | None:
        """A piece of a long status frame: it goes on as it came, and nobody decides on status
        frames, so hooks hear of its type and length once, at its first piece."""
        if not piece.start:
            return None
        self.stats.long += 1
        return UnparsedFrame(self.ctx, STATUS, None, piece.type, piece.length)

    # ---- backpressure -------------------------------------------------------------------------

    @property
    def requests_blocked(self) -> bool:
        """Whether the node's next request must wait for answers: ``max_unanswered`` requests
        wait for the signer, or their bodies hold ``max_unanswered_bytes``. Never once the signer's
        side has ended: no answer will come, and the node's requests then meet the closed signer."""
        return (len(self._pending) >= self.limits.max_unanswered
                or self._pending_bytes >= self.limits.max_unanswered_bytes) and not self._replies_ended

    def requests_paused(self) -> str | None:
        """The node's requests wait from here (counted); what to log the first time on this
        connection (a slow signer may pause a pipelining node at every request)."""
        self.stats.requests_paused += 1
        if self.stats.requests_paused > 1:
            return None
        return (f"{self.ctx.describe()}: {len(self._pending)} requests wait for the signer; the node's next "
                f"requests wait until it answers (backpressure; counted in hsmproxy_requests_paused_total)")

    def replies_ended(self) -> None:
        """The signer -> node direction has ended: nothing more will be answered."""
        self._replies_ended = True

    def status_frame(self, frame: Frame) -> StatusMessage:
        return StatusMessage(self.ctx, frame.body, self.parse(frame.body))

    @property
    def waiting(self) -> int:
        """Requests forwarded and not answered yet (pairing slots)."""
        return len(self._pending)

    # ---- verdicts into actions ------------------------------------------------------------------

    def apply_to_request(self, ex: Exchange, frame: Frame | FramePiece, verdict) -> Plan:
        if type(frame) is FramePiece:
            return self._long_frame(REQUEST, ex, frame, verdict, self._request_plan)
        return self._request_plan(ex, frame, verdict)

    def _request_plan(self, ex: Exchange, frame, verdict) -> Plan:
        kind = type(verdict)
        if kind is Forward or (kind is Refuse and self._on_master):
            return FORWARD_AS_RECEIVED  # the proxy never refuses the master: hsmd would exit
        if kind is Hold:
            return Plan((WaitRelease(verdict.release), SEND_RECEIVED), forwarded=True)
        if kind is Replace:
            return Plan((Send(wire.frame(verdict.raw), frame.fds),), forwarded=True)
        if kind is Duplicate:
            self._expect_extra_reply(ex)
            return Plan((SEND_RECEIVED, Send(frame.raw)), forwarded=True)
        self._forget(ex)  # not forwarded: no reply will come for it
        if kind is Drop:
            return NOTHING
        if kind is Disconnect or (kind is FailClosed and self._on_master):
            return CLOSE  # on the master, lightningd sees its signer go, as when hsmd exits
        if kind is Refuse or kind is FailClosed:
            return Plan((WriteStatus(self._bad_request(verdict.description, ex.request_raw)), CLOSE_CONNECTION),
                        forwarded=False)
        raise TypeError(f"not a verdict: {verdict!r}")

    def apply_to_reply(self, ex: Exchange, frame: Frame | FramePiece, verdict) -> Plan:
        """Replies do not change pairing. A 109's carrier follows unless the connection closes
        (a long 109's carrier comes after its last piece: ``carrier_arrived``)."""
        if type(frame) is FramePiece:
            return self._long_frame(REPLY, ex, frame, verdict, self._reply_plan)
        return self._reply_plan(ex, frame, verdict)

    def _reply_plan(self, ex: Exchange, frame, verdict) -> Plan:
        kind = type(verdict)
        carrier = getattr(frame, "carrier", None)
        if kind is Forward or (kind is Refuse and self._on_master):
            if carrier is None:
                return FORWARD_AS_RECEIVED
            return Plan((PassClient(carrier, ex.request, frame),), forwarded=True)
        if kind is Hold:
            actions: tuple = (WaitRelease(verdict.release), SEND_RECEIVED)
        elif kind is Replace:
            actions = (Send(wire.frame(verdict.raw), frame.fds),)
        elif kind is Duplicate:
            actions = (SEND_RECEIVED, Send(frame.raw))
        elif kind is Drop:
            actions = ()
        elif kind is Refuse or kind is Disconnect or kind is FailClosed:
            return CLOSE  # a refused or unrecordable answer never reaches the node
        else:
            raise TypeError(f"not a verdict: {verdict!r}")
        if carrier is not None:
            actions += (PassClient(carrier, ex.request),)
        return Plan(actions, forwarded=kind is not Drop)

    def _long_frame(self, direction: str, ex: Exchange, first: FramePiece, verdict, plan_of) -> Plan:
        """A verdict on a long frame, given on its first piece. The rest follows that piece only
        if it went on as it came (forwarded or held); dropped, refused or replaced, none of the
        rest goes (``piece``). Never held whole, it cannot be sent twice: a Duplicate goes once."""
        duplicate = type(verdict) is Duplicate
        plan = plan_of(ex, first, FORWARD if duplicate else verdict)
        self._rest_goes_on[direction] = SEND_RECEIVED in plan.actions
        if duplicate:
            return Plan(plan.actions, plan.forwarded,
                        note=f"{self.ctx.describe()} {direction}: a frame longer than {self.limits.whole_frame} bytes "
                             "is never held whole, so it cannot be duplicated; forwarded once")
        return plan

    def apply_to_status(self, message: StatusMessage, frame: Frame, verdict) -> Plan:
        """Hooks watch the status socket and never decide on it: every frame goes on."""
        return FORWARD_AS_RECEIVED

    def carrier_arrived(self, carrier: FdCarrier) -> Plan:
        """A carrier read after its 109 reply had gone."""
        request = self._last_reply.request if self._last_reply is not None else None
        return Plan((PassClient(carrier, request),), forwarded=True)

    # ---- pairing --------------------------------------------------------------------------------

    def _forget(self, ex: Exchange) -> None:
        for i, waiting in enumerate(self._pending):
            if waiting is ex:
                del self._pending[i]
                self._pending_bytes -= len(ex.request_raw)
                return

    def _expect_extra_reply(self, ex: Exchange) -> None:
        """A request forwarded twice gets two replies; keep the order of the slots."""
        if not expects_reply(ex.request_raw):
            return
        extra = Exchange(conn=ex.conn, seq=ex.seq, request_raw=ex.request_raw, request=ex.request, duplicate=True)
        self._pending_bytes += len(extra.request_raw)
        for i, waiting in enumerate(self._pending):
            if waiting is ex:
                self._pending.insert(i + 1, extra)
                return
        self._pending.append(extra)

    def _bad_request(self, description: str, request_raw: bytes) -> bytes:
        """What hsmd writes on the status socket when it refuses a client's request. Its ``msg``
        has a u16 length: a longer request is embedded up to that many bytes."""
        msg = wire.build(BAD_REQUEST, id=self.ctx.peer_id or bytes(33), description=description,
                         msg=request_raw[:BAD_REQUEST_MSG_MAX])
        return wire.frame(wire.encode(msg))


def client_context(conn_id: int, parent: ConnContext, request) -> ConnContext:
    """The context of a client connection created by ``hsmd_client_hsmfd`` (``request`` may be
    None when it did not decode: the connection is still relayed, just without a context)."""
    fields = request.fields if request is not None and request.type == TYPE_CLIENT_HSMFD else {}
    return ConnContext(
        conn_id=conn_id,
        role=ROLE_CLIENT,
        peer_id=fields.get("id"),
        dbid=fields.get("dbid"),
        permissions=fields.get("permissions"),
        parent_id=parent.conn_id,
    )
