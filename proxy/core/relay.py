"""The relay core, sans-IO: bytes (and passed fds) in, segments to forward out.

One ``StreamSplitter`` per direction of a connection cuts the byte stream into what must be
forwarded as units: whole frames, the 1-byte fd carrier that follows a ``hsmd_client_hsmfd_reply``
(109), and, once framing is lost (a length of 2^27 or more), raw bytes. Every segment keeps the
exact bytes received, so the shell forwards the original, garbage included.

One ``ConnectionRelay`` per connection pairs requests with replies by order (never by reply type:
19, 20, 21, ... all answer 112, and 51 answers 138) and builds the ``Exchange`` objects hooks see.
``hsmd_dev_preinit`` (99) has no reply, so it takes no pairing slot.

File descriptors: the kernel attaches SCM_RIGHTS to a byte, and a ``recvmsg`` that receives fds
stops right after that byte. So the shell passes the fds of one ``recvmsg`` with the data they
arrived with, and they belong to its last byte; the splitter hands them on with the segment that
holds that byte.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field

import wire

from proxy.core.hooks import ROLE_STATUS, ConnContext, Exchange

MAX_BODY_LEN = wire.MAX_BODY_LEN
HEADER_LEN = 4
_HEADER = struct.Struct(">I")

TYPE_DEV_PREINIT = 99
TYPE_CLIENT_HSMFD = 9
TYPE_CLIENT_HSMFD_REPLY = 109
_CLIENT_HSMFD_REPLY_PREFIX = struct.pack(">H", TYPE_CLIENT_HSMFD_REPLY)

REQUEST = "request"  # node -> signer
REPLY = "reply"  # signer -> node


# ---- segments -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Frame:
    raw: bytes  # header + body, as received
    body: bytes
    fds: list = field(default_factory=list)


@dataclass(slots=True)
class Carrier:
    """The 1-byte fd carrier after a 109 reply (CLN sends 0x00, VLS 0xff; nobody checks it)."""

    raw: bytes
    fds: list = field(default_factory=list)


@dataclass(slots=True)
class RawBytes:
    """Bytes that are not (or no longer) framed: forwarded as they are."""

    raw: bytes
    fds: list = field(default_factory=list)


@dataclass(slots=True)
class FramingLost:
    """Framing broke at stream ``offset``; everything after is relayed as raw bytes."""

    offset: int
    length: int
    reason: str


def _is_client_hsmfd_reply(body: bytes) -> bool:
    return body[:2] == _CLIENT_HSMFD_REPLY_PREFIX


class StreamSplitter:
    """Cuts one direction of one connection into segments.

    ``carrier_follows(body)`` says whether a frame is followed by a 1-byte fd carrier.
    """

    __slots__ = ("_buf", "_offset", "_pending_fds", "_expect_carrier", "_carrier_follows", "broken")

    def __init__(self, carrier_follows=None):
        self._buf = bytearray()
        self._offset = 0  # stream offset of _buf[0]
        self._pending_fds: list[tuple[int, list]] = []  # (stream offset of the byte, fds)
        self._expect_carrier = False
        self._carrier_follows = carrier_follows
        self.broken = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes, fds: list | tuple = ()) -> list:
        """Add ``data`` (``fds`` arrived with its last byte); return the segments now complete."""
        if fds:
            if not data:
                raise ValueError("file descriptors arrived without a data byte to carry them")
            self._pending_fds.append((self._offset + len(self._buf) + len(data) - 1, list(fds)))
        if self.broken:
            return self._emit_raw(data) if data else []
        if not self._buf and not self._pending_fds and not self._expect_carrier:
            fast = self._whole_frame(data)
            if fast is not None:
                return fast
        buf = self._buf
        buf += data
        out: list = []
        pos = 0
        end = len(buf)
        carrier_follows = self._carrier_follows
        while pos < end:
            if self._expect_carrier:
                self._expect_carrier = False
                out.append(Carrier(bytes(buf[pos : pos + 1]), self._take_fds(pos, pos + 1)))
                pos += 1
                continue
            if end - pos < HEADER_LEN:
                break
            (length,) = _HEADER.unpack_from(buf, pos)
            if length > MAX_BODY_LEN:
                self.broken = True
                offset = self._offset + pos
                out.append(
                    FramingLost(offset, length, f"frame length {length} at stream offset {offset} is >= 2^27")
                )
                rest = bytes(buf[pos:])
                fds_rest = self._take_fds(pos, end)
                del buf[:]
                self._offset += end
                out.append(RawBytes(rest, fds_rest))
                return out
            stop = pos + HEADER_LEN + length
            if stop > end:
                break
            raw = bytes(buf[pos:stop])
            body = raw[HEADER_LEN:]
            out.append(Frame(raw, body, self._take_fds(pos, stop) if self._pending_fds else []))
            if carrier_follows is not None and carrier_follows(body):
                self._expect_carrier = True
            pos = stop
        if pos:
            del buf[:pos]
            self._offset += pos
        return out

    def _whole_frame(self, data: bytes) -> list | None:
        """The common case, one read holding exactly one frame: no buffering, no copy."""
        if len(data) < HEADER_LEN:
            return None
        (length,) = _HEADER.unpack_from(data)
        if length > MAX_BODY_LEN or len(data) != HEADER_LEN + length:
            return None
        body = data[HEADER_LEN:]
        self._offset += len(data)
        if self._carrier_follows is not None and self._carrier_follows(body):
            self._expect_carrier = True
        return [Frame(data, body, [])]

    def flush(self) -> list:
        """At end of stream: whatever is left (a partial frame) as raw bytes, so it is not lost."""
        if not self._buf:
            return []
        rest = bytes(self._buf)
        fds = self._take_fds(0, len(rest))
        self._offset += len(rest)
        self._buf.clear()
        return [RawBytes(rest, fds)]

    def _emit_raw(self, data: bytes) -> list:
        fds = self._take_fds(0, len(data))  # the buffer is empty once broken: offsets start here
        self._offset += len(data)
        return [RawBytes(data, fds)]

    def _take_fds(self, start: int, stop: int) -> list:
        """The fds attached to bytes before buffer position ``stop`` (segments leave in order,
        so no earlier byte can still be waiting)."""
        if not self._pending_fds:
            return []
        hi = self._offset + stop
        taken = [fd for off, group in self._pending_fds if off < hi for fd in group]
        self._pending_fds = [(off, group) for off, group in self._pending_fds if off >= hi]
        return taken


# ---- one connection -----------------------------------------------------------------------------


@dataclass
class RelayStats:
    requests: int = 0
    replies: int = 0
    undecodable: int = 0
    unpaired_replies: int = 0
    fds_passed: int = 0
    framing_lost: int = 0


class ConnectionRelay:
    """Both directions of one node<->signer connection: splitting, decoding, pairing."""

    def __init__(self, ctx: ConnContext, *, decode: bool = True):
        self.ctx = ctx
        self.decode = decode
        self.stats = RelayStats()
        status = ctx.role == ROLE_STATUS
        self.requests = StreamSplitter()
        # Only a reply stream can carry the fd after 109; the status socket carries none.
        self.replies = StreamSplitter(None if status else _is_client_hsmfd_reply)
        self._pending: deque[Exchange] = deque()
        self._next_seq = 0
        self.last_reply: Exchange | None = None  # the exchange a following Carrier belongs to

    def parse(self, body: bytes):
        """The decoded message, or None (counted) when the body does not decode."""
        if not self.decode:
            return None
        try:
            return wire.decode(body)
        except Exception:  # noqa: BLE001 - a parser behind the protocol must never break a node
            self.stats.undecodable += 1
            return None

    def request_frame(self, frame: Frame) -> Exchange:
        """A node->signer frame: a new exchange, waiting for its reply unless it is dev_preinit."""
        msg = self.parse(frame.body)
        ex = Exchange(conn=self.ctx, seq=self._next_seq, request_raw=frame.body, request=msg)
        self._next_seq += 1
        self.stats.requests += 1
        if frame.body[:2] != b"\x00\x63":  # 99 hsmd_dev_preinit: no reply
            self._pending.append(ex)
        return ex

    def reply_frame(self, frame: Frame) -> Exchange:
        """A signer->node frame, paired with the oldest request still waiting. A reply nobody
        asked for gets an exchange of its own with an empty request (and is counted)."""
        msg = self.parse(frame.body)
        self.stats.replies += 1
        if self._pending:
            ex = self._pending.popleft()
        else:
            self.stats.unpaired_replies += 1
            ex = Exchange(conn=self.ctx, seq=-1, request_raw=b"", request=None)
        ex.reply_raw = frame.body
        ex.reply = msg
        self.last_reply = ex
        return ex

    def forget(self, ex: Exchange) -> None:
        """A request that was not forwarded (dropped, refused): it will get no reply."""
        for i, waiting in enumerate(self._pending):
            if waiting is ex:
                del self._pending[i]
                return

    def expect_extra_reply(self, ex: Exchange) -> None:
        """A request forwarded twice gets two replies; keep the order of the slots."""
        extra = Exchange(conn=ex.conn, seq=ex.seq, request_raw=ex.request_raw, request=ex.request, duplicate=True)
        for i, waiting in enumerate(self._pending):
            if waiting is ex:
                self._pending.insert(i + 1, extra)
                return
        self._pending.append(extra)

    @property
    def waiting(self) -> int:
        return len(self._pending)


def client_context(conn_id: int, parent: ConnContext, request) -> ConnContext:
    """The context of a client connection created by ``hsmd_client_hsmfd`` (``request`` may be
    None when it did not decode: the connection is still relayed, just without a context)."""
    from proxy.core.hooks import ROLE_CLIENT

    fields = request.fields if request is not None and request.type == TYPE_CLIENT_HSMFD else {}
    return ConnContext(
        conn_id=conn_id,
        role=ROLE_CLIENT,
        peer_id=fields.get("id"),
        dbid=fields.get("dbid"),
        permissions=fields.get("permissions"),
        parent_id=parent.conn_id,
    )
