"""Framing of every hsmd socket: a 4-byte big-endian body length, then the body.

Sans-IO: ``FrameReader`` takes bytes in any chunking and hands back complete bodies.
"""

from __future__ import annotations

import struct

# hsmd rejects lengths >= 2^27 (WIRE_LEN_LIMIT); it drops the connection when it sees one.
MAX_BODY_LEN = (1 << 27) - 1
HEADER_LEN = 4

_HEADER = struct.Struct(">I")


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


class FrameReader:
    """Accumulates stream bytes and yields complete frame bodies.

    After a ``FramingError`` the reader stays broken (``broken`` is true): the stream has no
    recoverable frame boundaries any more, and callers fall back to relaying raw bytes.
    """

    __slots__ = ("_buf", "_consumed", "broken")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._consumed = 0  # stream offset of _buf[0], for error messages
        self.broken = False

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return every body that is now complete, in order."""
        if self.broken:
            raise FramingError("reader is broken; relay raw bytes instead", offset=self._consumed)
        buf = self._buf
        buf += data
        bodies = []
        pos = 0
        end = len(buf)
        while end - pos >= HEADER_LEN:
            (length,) = _HEADER.unpack_from(buf, pos)
            if length > MAX_BODY_LEN:
                self.broken = True
                offset = self._consumed + pos
                del buf[:pos]
                self._consumed = offset
                raise FramingError(
                    f"frame length {length} at stream offset {offset} is >= 2^27; "
                    "framing is lost on this connection",
                    offset=offset,
                    length=length,
                )
            if end - pos - HEADER_LEN < length:
                break
            start = pos + HEADER_LEN
            bodies.append(bytes(buf[start : start + length]))
            pos = start + length
        if pos:
            del buf[:pos]
            self._consumed += pos
        return bodies

    @property
    def pending(self) -> bytes:
        """Bytes received but not yet part of a complete frame."""
        return bytes(self._buf)
