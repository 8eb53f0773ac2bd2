"""Framing of every hsmd socket: a 4-byte big-endian body length, then the body.

Sans-IO. ``FrameReader`` is the one framer: it takes bytes (and the fds that came with them) in
any chunking and cuts them into what must travel as units:

* ``Frame``: a whole frame, its exact bytes and its body;
* ``FdCarrier``: the 1-byte carrier of a passed fd after ``hsmd_client_hsmfd_reply`` (109);
* ``FramePiece``: with a ``whole_limit``, a frame whose body is longer comes in pieces: the
  first holds the header and the first ``whole_limit`` body bytes (the prefix a relay parses),
  the others whatever arrives after it, as it arrives, so a reader never holds more of it than
  a whole frame of ``whole_limit`` bytes;
* ``Unframed``: bytes that are not (or no longer) framed, e.g. everything after a length of
  2^27 or more (``FramingLost`` marks the place), or a partial frame at end of stream.

Every segment keeps the exact bytes received, garbage included, so a relay forwards originals.

File descriptors: the kernel attaches SCM_RIGHTS to the bytes of one ``sendmsg``, and a
``recvmsg`` that receives fds stops right after those bytes. So a reader passes the fds of one
``recvmsg`` with the data they arrived with; they travel with the segment that holds the last
byte of that read, except that a carrier takes the fds of the read it arrived in.

A carrier is only expected where one can exist: the byte after a 109 reply is a carrier when
fds arrived in the read that holds it. A signer that cannot pass fds (one reached over TCP)
sends no carrier, and the next frame's first byte stays a length byte.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .conversation import FD_CARRIER_PREFIX, TYPE_CLIENT_HSMFD_REPLY

# hsmd rejects lengths >= 2^27 (WIRE_LEN_LIMIT); it drops the connection when it sees one.
MAX_BODY_LEN = (1 << 27) - 1
HEADER_LEN = 4

_HEADER = struct.Struct(">I")
_NO_FDS: tuple = ()


class FramingError(ValueError):
    """The byte stream cannot be split into frames any more (e.g. a length of 2^27 or more)."""

    def __init__(self, message: str, *, offset: int, length: int | None = None):
        super().__init__(message)
        self.offset = offset
        self.length = length


def frame(body: bytes) -> bytes:
    """Prefix ``body`` with its length, as every hsmd peer writes it."""
    if len(body) > MAX_BODY_LEN:
        raise FramingError(
            f"body of {len(body)} bytes exceeds the hsmd limit of {MAX_BODY_LEN}", offset=0, length=len(body)
        )
    return _HEADER.pack(len(body)) + body


# ---- segments -----------------------------------------------------------------------------------


@dataclass(slots=True)
class FdCarrier:
    """The 1-byte fd carrier after a 109 reply (CLN sends 0x00, VLS 0xff; nobody checks it)."""

    raw: bytes
    fds: tuple = _NO_FDS


@dataclass(slots=True)
class Frame:
    raw: bytes  # header + body, as received
    body: bytes
    fds: tuple = _NO_FDS
    carrier: FdCarrier | None = None  # a 109 reply's carrier that arrived in the same read


@dataclass(slots=True)
class FramePiece:
    """Part of a frame longer than the reader's ``whole_limit``: never buffered whole. The first
    piece (``start``) holds the 4-byte header and exactly the first ``whole_limit`` body bytes
    (``prefix``); the others come as their bytes arrive; the last (``end``) holds the frame's
    last byte."""

    raw: bytes
    type: int  # the frame's message type
    length: int  # the frame's body length
    start: bool
    end: bool
    fds: tuple = _NO_FDS

    @property
    def prefix(self) -> bytes:
        """The first piece's part of the body (its first ``whole_limit`` bytes)."""
        return self.raw[HEADER_LEN:] if self.start else b""


@dataclass(slots=True)
class Unframed:
    """Bytes that are not (or no longer) framed: forwarded as they are."""

    raw: bytes
    fds: tuple = _NO_FDS


@dataclass(slots=True)
class FramingLost:
    """Framing broke at stream ``offset``; everything after is ``Unframed``."""

    offset: int
    length: int
    reason: str


Segment = Frame | FramePiece | FdCarrier | Unframed | FramingLost


# ---- the framer ---------------------------------------------------------------------------------


class FrameReader:
    """Cuts one direction of one byte stream into segments.

    ``fd_carriers``: the stream may pass fds after 109 replies (a signer's replies; never the
    node's requests or the status socket). ``framed=False``: a stream relayed as it comes, every
    byte ``Unframed``, as it is once framing is lost (``broken``): then the stream has no
    recoverable frame boundaries any more. ``whole_limit``: a frame with a longer body comes as
    ``FramePiece`` segments instead of one ``Frame``.
    """

    __slots__ = ("_buf", "_offset", "_fd_reads", "_carrier_at", "_fd_carriers", "broken", "_whole_limit",
                 "_piece_left", "_piece_type", "_piece_length")

    def __init__(self, *, fd_carriers: bool = False, framed: bool = True, whole_limit: int = MAX_BODY_LEN) -> None:
        if not 2 <= whole_limit <= MAX_BODY_LEN:
            raise ValueError(f"whole_limit must be between 2 and {MAX_BODY_LEN}, not {whole_limit}")
        self._whole_limit = whole_limit
        self._piece_left = 0  # bytes of the frame being cut into pieces that have not arrived yet
        self._piece_type = self._piece_length = 0
        self._buf = bytearray()
        self._offset = 0  # stream offset of _buf[0]
        self._fd_reads: list[tuple[int, int, tuple]] = []  # (first, last stream offset of a read, its fds)
        self._carrier_at: int | None = None  # stream offset of the byte after a 109 reply
        self._fd_carriers = fd_carriers
        self.broken = not framed

    @property
    def pending(self) -> bytes:
        """Bytes received but not yet part of a complete segment."""
        return bytes(self._buf)

    def feed(self, data: bytes, fds=_NO_FDS) -> list[Segment]:
        """Add ``data`` (``fds`` arrived with it); return the segments now complete, in order."""
        if fds:
            if not data:
                raise ValueError("file descriptors arrived without a data byte to carry them")
            first = self._offset + len(self._buf)
            self._fd_reads.append((first, first + len(data) - 1, tuple(fds)))
        if self.broken:
            return self._unframed(data) if data else []
        out: list[Segment] = []
        if self._piece_left:  # the buffer is empty while a frame comes in pieces
            piece, data = data[: self._piece_left], data[self._piece_left :]
            out.append(self._piece(piece, start=False))
            if not data:
                return out
        if not self._buf and not self._fd_reads and not out:
            self._carrier_at = None  # no fds came with the byte after a 109: it is no carrier
            whole = self._whole_frame(data)
            if whole is not None:
                return whole
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        last_frame: Frame | None = None  # the latest frame of this read, which a carrier joins
        while pos < end:
            if self._carrier_at is not None:
                carrier = self._carrier(pos)
                if carrier is not None:
                    if last_frame is not None and out[-1] is last_frame:
                        last_frame.carrier = carrier
                    else:
                        out.append(carrier)
                    pos += 1
                    continue
            if end - pos < HEADER_LEN:
                break
            (length,) = _HEADER.unpack_from(buf, pos)
            if length > MAX_BODY_LEN:
                return out + self._lose_framing(pos, length)
            if length > self._whole_limit:
                prefix = HEADER_LEN + self._whole_limit
                if end - pos < prefix:
                    break  # the first piece holds the header and the first whole_limit body bytes
                self._piece_type = int.from_bytes(buf[pos + HEADER_LEN : pos + HEADER_LEN + 2], "big")
                self._piece_length = self._piece_left = HEADER_LEN + length
                del buf[:pos]  # the piece starts the buffer, at stream offset _offset
                self._offset += pos
                raw = bytes(buf[:prefix])
                del buf[:prefix]
                out.append(self._piece(raw, start=True))
                if buf:  # the rest of the frame that came in this read
                    raw = bytes(buf[: self._piece_left])
                    del buf[: len(raw)]
                    out.append(self._piece(raw, start=False))
                pos, end = 0, len(buf)
                continue
            stop = pos + HEADER_LEN + length
            if stop > end:
                break
            raw = bytes(buf[pos:stop])
            last_frame = Frame(raw, raw[HEADER_LEN:], self._take_fds(stop) if self._fd_reads else _NO_FDS)
            out.append(last_frame)
            if self._fd_carriers and last_frame.body[:2] == FD_CARRIER_PREFIX:
                self._carrier_at = self._offset + stop
            pos = stop
        if pos:
            del buf[:pos]
            self._offset += pos
        return out

    def bodies(self, data: bytes) -> list[bytes]:
        """The bodies of the frames now complete, for readers that end a stream whose framing is
        lost (the simulators, ``hsmproxy decode``): that raises ``FramingError``."""
        if self.broken:
            raise FramingError("framing was lost earlier on this stream", offset=self._offset)
        out = []
        for seg in self.feed(data):
            if type(seg) is Frame:
                out.append(seg.body)
            elif type(seg) is FramingLost:
                raise FramingError(seg.reason, offset=seg.offset, length=seg.length)
        return out

    def flush(self) -> list[Segment]:
        """At end of stream: whatever is left (a partial frame) as unframed bytes, so it is not lost."""
        if not self._buf:
            return []
        rest = bytes(self._buf)
        fds = self._take_fds(len(rest))
        self._offset += len(rest)
        self._buf.clear()
        return [Unframed(rest, fds)]

    # ---- internals ------------------------------------------------------------------------------

    def _whole_frame(self, data: bytes) -> list[Segment] | None:
        """The common case, one read holding exactly one frame: no buffering, no copy of the read."""
        if len(data) < HEADER_LEN:
            return None
        (length,) = _HEADER.unpack_from(data)
        if length > self._whole_limit or len(data) != HEADER_LEN + length:
            return None
        body = data[HEADER_LEN:]
        self._offset += len(data)
        if self._fd_carriers and body[:2] == FD_CARRIER_PREFIX:  # wire.conversation.fd_carrier_follows
            self._carrier_at = self._offset
        return [Frame(data, body)]

    def _piece(self, raw: bytes, *, start: bool) -> FramePiece:
        """The next piece of the frame being cut into pieces; ``raw`` starts at stream offset
        ``_offset`` (nothing before it is buffered)."""
        fds = self._take_fds(len(raw))
        self._offset += len(raw)
        self._piece_left -= len(raw)
        end = not self._piece_left
        if end and self._fd_carriers and self._piece_type == TYPE_CLIENT_HSMFD_REPLY:
            self._carrier_at = self._offset
        return FramePiece(raw, self._piece_type, self._piece_length - HEADER_LEN, start, end, fds)

    def _carrier(self, pos: int) -> FdCarrier | None:
        """The carrier at buffer position ``pos`` if one is expected there and fds came with it."""
        at = self._offset + pos
        if at != self._carrier_at:
            return None
        self._carrier_at = None
        for i, (first, last, fds) in enumerate(self._fd_reads):
            if first <= at <= last:
                taken = [fd for _, _, group in self._fd_reads[: i + 1] for fd in group]
                del self._fd_reads[: i + 1]
                return FdCarrier(bytes(self._buf[pos : pos + 1]), tuple(taken))
        return None

    def _lose_framing(self, pos: int, length: int) -> list[Segment]:
        self.broken = True
        offset = self._offset + pos
        buf = self._buf
        rest = bytes(buf[pos:])
        fds = self._take_fds(len(buf))
        self._offset += len(buf)
        buf.clear()
        lost = FramingLost(offset, length, f"frame length {length} at stream offset {offset} is >= 2^27")
        return [lost, Unframed(rest, fds)]

    def _unframed(self, data: bytes) -> list[Segment]:
        fds = self._take_fds(len(data))  # the buffer is empty once broken: positions start here
        self._offset += len(data)
        return [Unframed(data, fds)]

    def _take_fds(self, stop: int) -> tuple:
        """The fds of reads whose last byte lies before buffer position ``stop`` (segments leave
        in order, so no earlier byte can still be waiting)."""
        if not self._fd_reads:
            return _NO_FDS
        hi = self._offset + stop
        taken: list[int] = []
        while self._fd_reads and self._fd_reads[0][1] < hi:
            taken += self._fd_reads.pop(0)[2]
        return tuple(taken)
