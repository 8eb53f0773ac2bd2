"""Sans-IO codec for Core Lightning's hsmd protocol (hsmd_wire.csv, v26.06-258) and status messages.

Public API::

    msg = wire.decode(body)          # body: a frame without its 4-byte length -> Message
    msg.type, msg.name, msg.fields, msg.trailing
    wire.encode(msg) -> bytes        # the exact original body for decoded messages
    wire.build("hsmd_init", ...)     # a new Message from field values
    wire.frame(body)                 # a frame: 4-byte length + body
    wire.FrameReader(fd_carriers=..., whole_limit=...).feed(data, fds)
        -> [Frame | FramePiece | FdCarrier | Unframed | FramingLost]
    wire.FrameReader().bodies(data)  # complete bodies; lost framing raises FramingError
    wire.conversation                # message facts (no reply, fd carrier), roles, points
    wire.to_jsonable(msg, show_secrets=False)
    wire.holds_no_secret(msg)        # True only when the bytes provably carry no secret
"""

from . import conversation
from .codec import ALL_SPECS, SPECS_BY_NAME, SPECS_BY_TYPE, Message, build, decode, encode, lookup, type_name, unknown_name
from .errors import DecodeError, EncodeError
from .framing import (
    HEADER_LEN,
    MAX_BODY_LEN,
    FdCarrier,
    Frame,
    FramePiece,
    FrameReader,
    FramingError,
    FramingLost,
    Segment,
    Unframed,
    frame,
)
from .render import REDACTED, holds_no_secret, is_redacted, redacted_fields, to_jsonable
from .schema import FieldSpec, MessageSpec

__all__ = [
    "conversation",
    "ALL_SPECS",
    "SPECS_BY_NAME",
    "SPECS_BY_TYPE",
    "Message",
    "build",
    "decode",
    "encode",
    "lookup",
    "type_name",
    "unknown_name",
    "DecodeError",
    "EncodeError",
    "HEADER_LEN",
    "MAX_BODY_LEN",
    "FdCarrier",
    "Frame",
    "FramePiece",
    "FrameReader",
    "FramingError",
    "FramingLost",
    "Segment",
    "Unframed",
    "frame",
    "REDACTED",
    "holds_no_secret",
    "is_redacted",
    "redacted_fields",
    "to_jsonable",
    "FieldSpec",
    "MessageSpec",
]
